"""Health, readiness, metrics and request ids."""

from __future__ import annotations

import json
import logging
import os
import re

from app import create_app
from app.embedded_redis import free_port
from app.logs import JsonFormatter
from app.ops import request_ids


def test_healthz(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.json == {"status": "ok"}


def test_readyz_when_database_and_redis_answer(client):
    resp = client.get("/readyz")
    assert resp.status_code == 200
    assert resp.json["checks"] == {"database": "ok", "redis": "ok"}


def test_readyz_503_when_redis_is_down_while_api_still_answers(app_config, agent):
    app = create_app({**app_config, "redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    client = app.test_client()
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert resp.json["checks"]["database"] == "ok"
    assert resp.json["checks"]["redis"].startswith("failed")
    # An API call that needs no queue keeps working.
    created = client.post(
        "/api/v1/accounts",
        json={"external_id": "R-1", "name": "Ray Down", "balance_cents": 100},
        headers=agent.headers,
    )
    assert created.status_code == 201
    assert (
        client.get(f"/api/v1/accounts/{created.json['id']}", headers=agent.headers).status_code
        == 200
    )
    app.extensions["paylink.db"].dispose()


def test_readyz_503_when_database_is_unreachable(app_config, tmp_path):
    # A directory where the database file should be: SQLite cannot open it.
    (tmp_path / "not-a-file").mkdir()
    app = create_app({**app_config, "database_url": f"sqlite:///{tmp_path / 'not-a-file'}"})
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503
    assert resp.json["checks"]["database"].startswith("failed")
    assert resp.json["checks"]["redis"] == "ok"
    app.extensions["paylink.db"].dispose()


def test_metrics_count_requests(client):
    client.get("/healthz")
    client.get("/healthz")
    text = client.get("/metrics").get_data(as_text=True)
    assert "# TYPE paylink_http_requests_total counter" in text
    line = next(
        ln for ln in text.splitlines()
        if ln.startswith("paylink_http_requests_total{") and 'endpoint="ops.healthz"' in ln
    )  # fmt: skip
    assert float(line.rsplit(" ", 1)[1]) >= 2


def counted(text: str, method: str, endpoint: str) -> list[str]:
    return [
        ln for ln in text.splitlines()
        if ln.startswith("paylink_http_requests_total{")
        and f'method="{method}"' in ln and f'endpoint="{endpoint}"' in ln
    ]  # fmt: skip


def test_a_made_up_method_is_counted_as_other(client):
    """Clients choose the method: counting each by name would grow the metrics (and the
    per-label lookups kept for them) without bound."""

    def others() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        assert not [ln for ln in text.splitlines() if "BREW" in ln or "FROB" in ln]
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in counted(text, "OTHER", "unmatched"))

    before = others()  # the counter lives as long as the process
    for method in ("BREW", "FROB", "BREW"):
        assert client.open("/healthz", method=method).status_code == 405
    assert others() == before + 3


def test_a_page_keeps_a_security_header_it_sets_itself(app, client):
    @app.get("/own-csp")
    def own_csp():
        return "ok", 200, {"Content-Security-Policy": "default-src 'none'"}

    resp = client.get("/own-csp")
    assert resp.headers.getlist("Content-Security-Policy") == ["default-src 'none'"]
    assert resp.headers["X-Frame-Options"] == "DENY"


def test_request_id_is_echoed(client):
    resp = client.get("/healthz", headers={"X-Request-ID": "req-abc-123"})
    assert resp.headers["X-Request-ID"] == "req-abc-123"
    # A malformed id is replaced, not trusted.
    other = client.get("/healthz", headers={"X-Request-ID": "bad id <script>"})
    assert other.headers["X-Request-ID"] != "bad id <script>"
    assert len(other.headers["X-Request-ID"]) == 32


def test_request_ids_are_unique_across_requests_and_forked_processes(client):
    ids = {client.get("/healthz").headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a forked worker draws its own
        os.write(write, request_ids.next().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    mine = request_ids.next()
    assert child[:16] != mine[:16]
    assert child not in ids


def test_app_logs_carry_the_request_id(app, client, caplog):
    """What the app logs while answering a request carries the request's id (the access
    line itself is gunicorn's: tests/app/test_access_log.py)."""

    @app.get("/logs-something")
    def logs_something():
        logging.getLogger("paylink.test").warning("something happened")
        return "ok"

    with caplog.at_level(logging.INFO, logger="paylink.test"):
        client.get("/logs-something", headers={"X-Request-ID": "req-json-1"})
    (record,) = [r for r in caplog.records if r.name == "paylink.test"]
    entry = json.loads(JsonFormatter().format(record))
    assert entry["request_id"] == "req-json-1"
    assert entry["msg"] == "something happened"
    assert entry["level"] == "WARNING"


def test_security_headers(client):
    resp = client.get("/console/login")
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["Referrer-Policy"] == "no-referrer"
