"""Operations endpoints and request instrumentation: health, readiness, metrics, request ids."""

from __future__ import annotations

import itertools
import os
import re
import secrets
import time
from typing import Any

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

from app.logs import ENVIRON_ENDPOINT, ENVIRON_REQUEST_ID, request_id_var

bp = Blueprint("ops", __name__)
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
ENVIRON_BEGUN = "paylink.begun"  # (request id, perf_counter at the start), see begin()


class RequestIds:
    """Request ids of 32 hex characters, unique without asking the OS for randomness on
    every request (``os.urandom`` is a system call): 16 random ones drawn once per process
    (again in a forked child), then a counter."""

    def __init__(self) -> None:
        self._reseed()
        os.register_at_fork(after_in_child=self._reseed)

    def _reseed(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


request_ids = RequestIds()
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


# Methods counted by name in the metrics; any other (a client may send anything) as OTHER.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_instruments: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def instruments(method: str, endpoint: str, status: int) -> tuple[Any, Any]:
    """The request counter and latency histogram of one (method, endpoint, status), looked
    up once: endpoints and statuses are few, and methods are counted by name only when
    they are standard ones."""
    key = (method if method in METHODS else "OTHER", endpoint, status)
    pair = _instruments.get(key)
    if pair is None:
        pair = _instruments[key] = (
            REQUESTS.labels(key[0], endpoint, str(status)),
            LATENCY.labels(key[0], endpoint),
        )
    return pair


def begin(environ: dict[str, Any]) -> tuple[str, float]:
    """The request's id and start (``perf_counter``), made once per request and kept in its
    environ (whoever looks first, the open lane or the app, makes them). The id is the
    caller's ``X-Request-ID`` when it is a sane one, else a new one."""
    begun = environ.get(ENVIRON_BEGUN)
    if begun is None:
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else request_ids.next()
        begun = environ[ENVIRON_BEGUN] = (request_id, time.perf_counter())
    return begun


def finish(
    response: Response,
    environ: dict[str, Any],
    method: str,
    endpoint: str,
    request_id: str | None,
    started: float | None,
) -> None:
    """What every answer gets on its way out: its ``X-Request-ID``, its count and latency
    in the metrics (``started`` is its ``perf_counter`` at the start), and the request id
    and endpoint for the access line gunicorn writes once it is sent (app/logs.py)."""
    response.headers["X-Request-ID"] = request_id or ""
    elapsed = time.perf_counter() - started if started is not None else 0.0
    count, latency = instruments(method, endpoint, response.status_code)
    count.inc()
    latency.observe(elapsed)
    environ[ENVIRON_REQUEST_ID] = request_id
    environ[ENVIRON_ENDPOINT] = endpoint


def init_app(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        request_id, started = begin(request.environ)
        state = g._get_current_object()
        state.request_id = request_id
        state.request_token = request_id_var.set(request_id)
        state.request_started = started

    @app.after_request
    def _finish(response: Response) -> Response:
        state = g._get_current_object()
        rule = request.url_rule
        finish(
            response,
            request.environ,
            request.method,
            rule.endpoint if rule is not None else "unmatched",
            getattr(state, "request_id", None),
            getattr(state, "request_started", None),
        )
        return response

    @app.teardown_request
    def _reset(_exc: BaseException | None) -> None:
        token = g.pop("request_token", None)
        if token is not None:
            request_id_var.reset(token)
