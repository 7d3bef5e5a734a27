"""Operations endpoints and request instrumentation: health, readiness, metrics, request ids."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid

import redis
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from sqlalchemy import text

from app.logs import request_id_var

log = logging.getLogger("paylink.request")
bp = Blueprint("ops", __name__)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
READY_TIMEOUT = 1.0  # seconds each dependency may take to answer /readyz

REQUESTS = Counter(
    "paylink_http_requests_total", "HTTP requests answered", ["method", "endpoint", "status"]
)
LATENCY = Histogram(
    "paylink_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "endpoint"],
)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


def _check_database() -> str | None:
    db = current_app.extensions["paylink.db"]
    try:
        with db.engine.connect() as conn:
            if db.engine.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SET statement_timeout = {int(READY_TIMEOUT * 1000)}")
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means not ready
        return type(exc).__name__
    return None


def _check_redis() -> str | None:
    url = current_app.extensions["paylink.redis_url"]()
    client = redis.Redis.from_url(
        url, socket_timeout=READY_TIMEOUT, socket_connect_timeout=READY_TIMEOUT
    )
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return type(exc).__name__
    finally:
        client.close()
    return None


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    checks = {"database": _check_database(), "redis": _check_redis()}
    ready = all(v is None for v in checks.values())
    body = {
        "status": "ready" if ready else "unavailable",
        "checks": {k: ("ok" if v is None else f"failed: {v}") for k, v in checks.items()},
    }
    return jsonify(body), 200 if ready else 503


@bp.get("/metrics")
def metrics() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several gunicorn workers: add up every worker's files.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = DEFAULT_REGISTRY
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        g.request_token = request_id_var.set(g.request_id)
        g.request_started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id", "")
        endpoint = request.url_rule.endpoint if request.url_rule else "unmatched"
        REQUESTS.labels(request.method, endpoint, str(response.status_code)).inc()
        started = g.get("request_started")
        elapsed = time.perf_counter() - started if started is not None else 0.0
        LATENCY.labels(request.method, endpoint).observe(elapsed)
        log.info(
            "%s %s %s",
            request.method,
            endpoint,
            response.status_code,
            extra={"status": response.status_code, "duration_ms": round(elapsed * 1000, 2)},
        )
        return response

    @app.teardown_request
    def _reset(_exc: BaseException | None) -> None:
        token = g.pop("request_token", None)
        if token is not None:
            request_id_var.reset(token)
