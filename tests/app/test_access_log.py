"""gunicorn's access log (gunicorn.conf.py) never holds a customer page's token."""

from __future__ import annotations

import re
import runpy
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from gunicorn.config import Config

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "AbCdEfGhIjKlMnOpQrStUv.wXyZ0123456789-_"


@pytest.fixture
def settings() -> dict:
    return runpy.run_path(str(ROOT / "gunicorn.conf.py"))


def access_line(settings: dict, tmp_path: Path, path: str, referer: str = "-") -> str:
    """One request's access log line, as gunicorn's logger of our settings writes it."""
    log_file = tmp_path / "access.log"
    cfg = Config()
    cfg.set("accesslog", str(log_file))
    logger = settings["logger_class"](cfg)
    environ = {
        "REQUEST_METHOD": "GET", "RAW_URI": path, "PATH_INFO": path.split("?")[0],
        "QUERY_STRING": "", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "203.0.113.9",
        "HTTP_REFERER": referer, "HTTP_USER_AGENT": "phone",
    }  # fmt: skip
    resp = SimpleNamespace(status="200 OK", sent=1234, headers=[("Content-Type", "text/html")])
    req = SimpleNamespace(headers=[("REFERER", referer), ("USER-AGENT", "phone")])
    logger.access(resp, req, environ, timedelta(milliseconds=3))
    for handler in list(logger.access_log.handlers):
        handler.close()
        logger.access_log.removeHandler(handler)
    return log_file.read_text()


@pytest.mark.parametrize(
    "path",
    [f"/p/{TOKEN}", f"/p/{TOKEN}/verify", f"/o/{TOKEN}/terms", f"/m/{TOKEN}", f"/u/{TOKEN}"],
)
def test_a_customer_pages_token_is_masked(settings, tmp_path, path):
    line = access_line(settings, tmp_path, path, referer=f"https://pay.example.com{path}")
    assert TOKEN not in line
    masked = path.replace(TOKEN, "[token]")
    assert f'"GET {masked} HTTP/1.1" 200 1234' in line
    assert f"https://pay.example.com{masked}" in line  # the referer too
    assert "203.0.113.9" in line


def test_other_paths_are_logged_as_they_are(settings, tmp_path):
    line = access_line(settings, tmp_path, "/console/accounts/42?page=2")
    assert '"GET /console/accounts/42?page=2 HTTP/1.1" 200' in line


def test_every_token_route_is_masked(app, settings):
    """A new customer page with a token in its path must be covered by the mask."""
    token_rules = [r.rule for r in app.url_map.iter_rules() if "<token>" in r.rule]
    assert token_rules
    for rule in token_rules:
        path = rule.replace("<token>", TOKEN)
        path = re.sub(r"<[^>]+>", "1", path)
        assert TOKEN not in settings["TOKEN_PATH"].sub(settings["TOKEN_MASK"], path), rule
