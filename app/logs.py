"""Structured logs: one JSON object a line, carrying the request id or job id.

A filter masks anything shaped like a card number or an SSN before it is written, as a
last line of defence: code must not log such values in the first place.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime

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


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.job_id = job_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
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
