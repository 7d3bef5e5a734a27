"""The scheduler process: every few seconds, enqueue each periodic duty whose time slot
has started. Any number of schedulers may run: a slot is claimed in Redis with SET NX
and enqueued under a unique per-slot job id, so each slot runs once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import datetime

from app.queue import JobQueue, JobSpec, job_id
from workers.schedule import DUTIES, Duty

log = logging.getLogger(__name__)
CLAIM_PREFIX = "paylink:duty-slot:"


def slot_job_id(duty: Duty, now: datetime) -> str:
    return job_id("duty", duty.name, int(now.timestamp()) // duty.every_seconds)


def tick(job_queue: JobQueue, now: datetime, duties: Iterable[Duty] = DUTIES) -> list[str]:
    """Enqueue each duty whose current slot nobody has claimed; returns the job ids."""
    enqueued: list[str] = []
    for duty in duties:
        jid = slot_job_id(duty, now)
        claimed = job_queue.connection.set(
            CLAIM_PREFIX + jid, "1", nx=True, ex=duty.every_seconds + 3600
        )
        if not claimed:
            continue
        spec = JobSpec(
            "workers.sweep.run_duty", (duty.name, duty.func), job_id=jid, queue=duty.queue,
            timeout=duty.timeout, retry=(), unique=True,
        )  # fmt: skip
        if job_queue.enqueue(spec) is not None:
            enqueued.append(jid)
    return enqueued


def run_forever(
    job_queue: JobQueue,
    clock: callable,  # type: ignore[valid-type]
    tick_seconds: float,
    stop: threading.Event,
    duties: Iterable[Duty] = DUTIES,
) -> None:
    """Tick until ``stop`` is set; a Redis outage is logged and retried next tick."""
    duties = tuple(duties)
    log.info("scheduler started with %d duties", len(duties))
    while not stop.is_set():
        try:
            for jid in tick(job_queue, clock(), duties):
                log.info("enqueued %s", jid)
        except Exception:
            log.exception("scheduler tick failed; retrying")
        stop.wait(tick_seconds)
    log.info("scheduler stopped")
