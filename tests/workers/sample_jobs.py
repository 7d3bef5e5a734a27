"""Jobs and duties used by the queue and scheduler tests. They do real work: each one
writes an audit event, so a test can see from the database that it ran and how often."""

from __future__ import annotations

import logging
from datetime import datetime

import redis
from flask import current_app

from app import audit
from app.clock import utcnow
from workers.runtime import paylink_job

log = logging.getLogger(__name__)


def _write_marker(action: str, object_id: str, data: dict | None = None) -> None:
    db = current_app.extensions["paylink.db"]
    with db.transaction() as session:
        audit.record(
            session, audit.Actor.system("test-job"), action, "marker", object_id, utcnow(), data
        )


@paylink_job
def record_marker(name: str) -> str:
    log.info("marker job ran for %s", name)
    _write_marker("test.marker", name)
    return name


@paylink_job
def flaky_marker(name: str) -> str:
    """Fails on its first attempt, then succeeds: counts attempts in Redis."""
    conn = redis.Redis.from_url(current_app.extensions["paylink.redis_url"]())
    attempts = conn.incr(f"test:flaky:{name}")
    if attempts == 1:
        raise ConnectionError("transient failure on the first attempt")
    _write_marker("test.marker", name, {"attempts": attempts})
    return name


def marker_duty(now: datetime) -> dict[str, int]:
    _write_marker("test.duty", "marker_duty", {"at": now.isoformat()})
    return {"markers": 1}


def quiet_duty(now: datetime) -> dict[str, int]:
    return {}
