"""The access log: one JSON line per request, written by gunicorn through the logger class
of gunicorn.conf.py (app/logs.py ``AccessLog``), carrying the app's request id and
endpoint, and never a customer page's token."""

from __future__ import annotations

import json
import logging
import re
import runpy
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.util import load_class
from werkzeug.test import EnvironBuilder

from app.logs import TOKEN_MASK, TOKEN_PATH

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "AbCdEfGhIjKlMnOpQrStUv.wXyZ0123456789-_"


def gunicorn_logger(tmp_path: Path) -> tuple[Any, Path]:
    """gunicorn's logger as gunicorn.conf.py sets it up, writing to a file."""
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    cfg = Config()
    cfg.set("accesslog", str(tmp_path / "access.log"))
    logger_class = load_class(settings["logger_class"])
    return logger_class(cfg), tmp_path / "access.log"


def access_lines(
    tmp_path: Path, environ: dict[str, Any], status: str = "200 OK", sent: int = 1234
) -> list[dict[str, Any]]:
    logger, log_file = gunicorn_logger(tmp_path)
    resp = SimpleNamespace(status=status, sent=sent, headers=[])
    logger.access(resp, SimpleNamespace(headers=[]), environ, timedelta(milliseconds=3.25))
    for handler in list(logger.access_log.handlers):
        handler.close()
        logger.access_log.removeHandler(handler)
    return [json.loads(line) for line in log_file.read_text().splitlines()]


def environ_for(path: str, **extra: Any) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET", "RAW_URI": path, "PATH_INFO": path.partition("?")[0],
        "QUERY_STRING": path.partition("?")[2], "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "203.0.113.9",
        "HTTP_USER_AGENT": "phone", **extra,
    }  # fmt: skip


@pytest.mark.parametrize(
    "path",
    [f"/p/{TOKEN}", f"/p/{TOKEN}/verify", f"/o/{TOKEN}/terms", f"/m/{TOKEN}", f"/u/{TOKEN}"],
)
def test_a_customer_pages_token_is_masked(tmp_path, path):
    (entry,) = access_lines(tmp_path, environ_for(path))
    assert TOKEN not in json.dumps(entry)
    assert entry["path"] == path.replace(TOKEN, "[token]")


def test_an_access_line_says_what_was_asked_and_answered(tmp_path):
    environ = environ_for(
        "/console/accounts/42?page=2",
        **{"paylink.request_id": "req-77", "paylink.endpoint": "console.account"},
    )
    (entry,) = access_lines(tmp_path, environ, status="404 NOT FOUND", sent=99)
    assert entry == {
        "ts": entry["ts"], "level": "INFO", "logger": "paylink.access",
        "msg": "GET console.account 404", "method": "GET",
        "path": "/console/accounts/42?page=2", "status": 404, "duration_ms": 3.25,
        "bytes": 99, "remote_addr": "203.0.113.9", "user_agent": "phone",
        "request_id": "req-77", "endpoint": "console.account",
    }  # fmt: skip
    assert entry["ts"].endswith("Z")


def test_a_card_number_in_a_path_is_redacted(tmp_path):
    (entry,) = access_lines(tmp_path, environ_for("/pay?n=4111111111111111"))
    assert "4111111111111111" not in json.dumps(entry)


def test_a_request_the_app_never_saw_still_gets_its_line(tmp_path):
    """gunicorn answers some requests itself (a malformed one, say): no request id then."""
    (entry,) = access_lines(tmp_path, environ_for("/nowhere"), status="400 BAD REQUEST")
    assert entry["status"] == 400
    assert entry["msg"] == "GET - 400"
    assert "request_id" not in entry


def test_the_app_leaves_its_request_id_and_endpoint_for_the_line(app, tmp_path):
    environ = EnvironBuilder(path="/healthz", headers={"X-Request-ID": "req-abc-123"}).get_environ()
    answered: list[str] = []
    body = app(environ, lambda status, headers, exc_info=None: answered.append(status))
    b"".join(body)
    (entry,) = access_lines(tmp_path, environ)  # what gunicorn is given after the app
    assert answered == ["200 OK"]
    assert entry["request_id"] == "req-abc-123"
    assert entry["endpoint"] == "ops.healthz"
    assert entry["msg"] == "GET ops.healthz 200"


def test_every_token_route_is_masked(app):
    """A new customer page with a token in its path must be covered by the mask."""
    token_rules = [r.rule for r in app.url_map.iter_rules() if "<token>" in r.rule]
    assert token_rules
    for rule in token_rules:
        path = re.sub(r"<(?!token>)[^>]+>", "1", rule.replace("<token>", TOKEN))
        assert TOKEN not in TOKEN_PATH.sub(TOKEN_MASK, path), rule


def test_a_percent_encoded_token_path_is_masked_as_the_app_routed_it(tmp_path):
    environ = environ_for(f"/%70/{TOKEN}?from=sms")
    environ["PATH_INFO"] = f"/p/{TOKEN}"  # what the server decoded and the app routed
    environ["QUERY_STRING"] = "from=sms"
    (entry,) = access_lines(tmp_path, environ)
    assert entry["path"] == "/p/[token]?from=sms"


def test_an_unexpected_errors_log_line_masks_the_token(app, client, caplog):
    @app.get("/o/<token>/explode")
    def explode(token: str) -> str:
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR):
        assert client.get(f"/o/{TOKEN}/explode").status_code == 500
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "unhandled error on GET /o/[token]/explode" in logged
    assert TOKEN not in logged
