"""The worker process: an RQ worker on every Paylink queue, with RQ's scheduler on."""

from __future__ import annotations

from flask import Flask
from rq import Worker
from rq.serializers import JSONSerializer

from app.queue import QUEUE_NAMES
from workers.runtime import set_job_app


def build_worker(app: Flask, queue_names: tuple[str, ...] = QUEUE_NAMES) -> Worker:
    set_job_app(app)
    job_queue = app.extensions["paylink.queue"]
    return Worker(
        [job_queue.queue(name) for name in queue_names],
        connection=job_queue.connection,
        serializer=JSONSerializer,
    )


def run_worker(app: Flask, *, burst: bool = False) -> bool:
    """Work until stopped (or, with ``burst``, until the queues are empty)."""
    worker = build_worker(app)
    return worker.work(burst=burst, with_scheduler=True, logging_level="INFO")
