"""Small helpers shared by tests."""

from __future__ import annotations

from flask import Flask
from rq.job import Job

from workers.worker import build_worker


def drain(app: Flask) -> bool:
    """Run a real worker (forking, with RQ's scheduler) until the queues are empty, and
    fail the test if any job failed: a job's exception is otherwise easy to miss."""
    ran = build_worker(app).work(burst=True, with_scheduler=True)
    job_queue = app.extensions["paylink.queue"]
    failures = []
    for queue in job_queue.queues():
        for job_id in queue.failed_job_registry.get_job_ids():
            job = Job.fetch(job_id, connection=job_queue.connection, serializer=queue.serializer)
            result = job.latest_result()
            failures.append(f"{job_id}: {result.exc_string if result else 'no result'}")
    assert not failures, "jobs failed:\n" + "\n".join(failures)
    return ran
