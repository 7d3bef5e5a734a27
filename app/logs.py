"""Structured logs: one JSON object a line, carrying the request id or job id.

A filter masks anything shaped like a card number or an SSN before it is written, as a
last line of defence: code must not log such values in the first place.

Each request gets one access line, written by gunicorn through ``AccessLog`` (the
``logger_class`` of gunicorn.conf.py) once the response is sent: JSON like every other
line, with the request id and endpoint the app leaves in the WSGI environ, and the path
with a customer page's token masked. The app writes no line of its own per request.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import traceback
from datetime import UTC, datetime, timedelta
from typing import Any

from gunicorn.glogging import Logger as GunicornLogger

from app.payments.cards import luhn_valid

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("job_id", default=None)

# 13-19 digits standing alone, optionally grouped by spaces or dashes (card numbers),
# and 3-2-4 digit groups or nine digits alone (SSNs).
_CARD = re.compile(r"(?<![0-9A-Za-z])(?:\d[ -]?){12,18}\d(?![0-9A-Za-z])")
_SSN = re.compile(r"(?<![0-9A-Za-z])(?:\d{3}-\d{2}-\d{4}|\d{9})(?![0-9A-Za-z])")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[redacted]" if luhn_valid(digits) else match.group(0)


def redact(text: str) -> str:
    return _SSN.sub("[redacted]", _CARD.sub(_mask_card, text))


def timestamp(seconds: float) -> str:
    """A line's ``ts``: UTC, ISO 8601, with a Z."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.job_id = job_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key in ("request_id", "job_id"):
            value = getattr(record, key, None)
            if value:
                entry[key] = value
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry and key not in ("request_id", "job_id"):
                entry[key] = (
                    value
                    if isinstance(value, int | float | bool) or value is None
                    else redact(str(value))
                )
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s [%(request_id)s%(job_id)s] %(message)s"
        )

    def format(self, record: logging.LogRecord) -> str:
        record.request_id = getattr(record, "request_id", None) or ""
        record.job_id = getattr(record, "job_id", None) or ""
        return redact(super().format(record))


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Send every logger's records through one stderr handler in the chosen format."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_paylink", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._paylink = True  # type: ignore[attr-defined]
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)


# --- the access log --------------------------------------------------------------------------

# The customer pages' paths hold a secret token (/p/<token>, /o/<token>, /m/<token>,
# /u/<token>): whoever has it can open the page, so it must not be written to logs.
TOKEN_PATH = re.compile(r"(/[pomu]/)[^/?#\s]+")
TOKEN_MASK = r"\1[token]"  # noqa: S105 - a placeholder, not a secret
# What the app leaves in the WSGI environ for the access line.
ENVIRON_REQUEST_ID = "paylink.request_id"
ENVIRON_ENDPOINT = "paylink.endpoint"
USER_AGENT_CHARS = 200


def mask_tokens(path: str) -> str:
    return TOKEN_PATH.sub(TOKEN_MASK, path)


def _path(environ: dict[str, Any]) -> str:
    """The path as the app routed it (percent-decoded: ``/%70/<token>`` is ``/p/<token>``),
    with the query string."""
    path = environ.get("PATH_INFO") or environ.get("RAW_URI", "")
    query = environ.get("QUERY_STRING")
    return f"{path}?{query}" if query else path


def access_entry(
    status: int, environ: dict[str, Any], request_time: timedelta, sent: int | None
) -> dict[str, object]:
    """The access line of one request, before it is written."""
    method = environ.get("REQUEST_METHOD", "")
    endpoint = environ.get(ENVIRON_ENDPOINT)
    entry: dict[str, object] = {
        "ts": timestamp(time.time()),
        "level": "INFO",
        "logger": "paylink.access",
        "msg": f"{method} {endpoint or '-'} {status}",
        "method": method,
        "path": redact(mask_tokens(_path(environ))),
        "status": status,
        "duration_ms": round(request_time.total_seconds() * 1000, 2),
        "bytes": sent,
        "remote_addr": environ.get("REMOTE_ADDR"),
        "user_agent": redact(environ.get("HTTP_USER_AGENT", "")[:USER_AGENT_CHARS]),
    }
    request_id = environ.get(ENVIRON_REQUEST_ID)
    if request_id:
        entry["request_id"] = request_id
    if endpoint:
        entry["endpoint"] = endpoint
    return entry


class AccessLog(GunicornLogger):
    """gunicorn's logger, writing each request's access line as one JSON object."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: timedelta) -> None:
        if not self.access_log_enabled:
            return
        status = resp.status
        if isinstance(status, str):
            status = int(status.split(None, 1)[0])
        try:
            entry = access_entry(status, environ, request_time, getattr(resp, "sent", None))
            self.access_log.info(json.dumps(entry))
        except Exception:  # noqa: BLE001 - as gunicorn's own: a log line never fails a request
            self.error(traceback.format_exc())
