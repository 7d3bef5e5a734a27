"""Queue conventions on a real Redis with real RQ workers (forking work horses)."""

from __future__ import annotations

import json
import logging
import zlib
from datetime import date

import pytest
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from sqlalchemy import func, select

from app import audit, create_app
from app.clock import utcnow
from app.embedded_redis import free_port
from app.models import AuditEvent
from app.queue import DEFAULT, QUEUE_NAMES, JobQueue, JobSpec, enqueue_after_commit, job_id
from tests.helpers import drain
from workers.worker import build_worker

MARKER = "tests.workers.sample_jobs.record_marker"


def markers(app, name: str) -> int:
    with app.extensions["paylink.db"].transaction() as session:
        return session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "test.marker", AuditEvent.object_id == name)
        )


def test_job_enqueued_after_commit_runs_once(app):
    with app.extensions["paylink.db"].transaction() as session:
        enqueue_after_commit(session, JobSpec(MARKER, ("committed",), job_id="marker-committed"))
        # Not in Redis before the commit: a worker must never see uncommitted work.
        assert app.extensions["paylink.queue"].queue(DEFAULT).count == 0
    assert app.extensions["paylink.queue"].queue(DEFAULT).job_ids == ["marker-committed"]
    assert drain(app)
    assert markers(app, "committed") == 1


def test_job_for_rolled_back_transaction_never_runs(app):
    db = app.extensions["paylink.db"]

    def failing_request() -> None:
        with db.transaction() as session:
            enqueue_after_commit(session, JobSpec(MARKER, ("rolled-back",)))
            raise RuntimeError("the request failed")

    with pytest.raises(RuntimeError):
        failing_request()
    session = db.Session()
    enqueue_after_commit(session, JobSpec(MARKER, ("closed",)))
    session.close()  # closed without commit: same as a rollback
    assert all(q.count == 0 for q in app.extensions["paylink.queue"].queues())
    drain(app)
    assert markers(app, "rolled-back") == 0
    assert markers(app, "closed") == 0


def test_queue_and_worker_use_json(app, redis_client):
    job_queue = app.extensions["paylink.queue"]
    job = job_queue.enqueue(JobSpec(MARKER, ("json",), job_id="marker-json"))
    assert job is not None
    assert job_queue.queue().serializer is JSONSerializer
    raw = redis_client.hget("rq:job:marker-json", "data")
    payload = json.loads(zlib.decompress(raw))  # JSON, not pickle
    assert payload[0] == MARKER
    assert payload[2] == ["json"]
    assert build_worker(app).serializer is JSONSerializer
    # Objects are refused at enqueue time: jobs take ids and ISO strings.
    with pytest.raises(TypeError):
        job_queue.enqueue(JobSpec(MARKER, (date(2026, 1, 1),)))


def test_spec_sets_timeout_retries_and_deterministic_id(app):
    job = app.extensions["paylink.queue"].enqueue(
        JobSpec(MARKER, ("opts",), job_id=job_id("marker", 7, 1), timeout=42, retry=(5, 30))
    )
    assert job.id == "marker-7-1"
    assert job.timeout == 42
    assert job.retries_left == 2
    assert job.retry_intervals == [5, 30]


def test_invalid_job_ids_and_queues_are_refused():
    with pytest.raises(ValueError, match="job ids"):
        JobSpec(MARKER, job_id="plan:42")
    with pytest.raises(ValueError, match="unknown queue"):
        JobSpec(MARKER, queue="nope")


def test_unique_job_is_enqueued_once(app):
    job_queue = app.extensions["paylink.queue"]
    spec = JobSpec(MARKER, ("unique",), job_id="marker-unique", unique=True)
    assert job_queue.enqueue(spec) is not None
    assert job_queue.enqueue(spec) is None
    drain(app)
    # Finished jobs keep refusing the id for a while, so a late duplicate cannot run.
    assert job_queue.enqueue(spec) is None
    assert markers(app, "unique") == 1


def test_enqueue_many_pipelines_new_jobs_and_skips_ids_that_exist(app):
    job_queue = app.extensions["paylink.queue"]
    specs = [
        JobSpec(MARKER, (f"many-{n}",), job_id=f"marker-many-{n}", timeout=42, retry=(5,))
        for n in range(3)
    ]
    assert job_queue.enqueue(specs[0]) is not None
    assert job_queue.enqueue_many(specs) == 2  # the first id exists already
    assert job_queue.queue(DEFAULT).job_ids == [f"marker-many-{n}" for n in range(3)]
    job = Job.fetch("marker-many-2", connection=job_queue.connection, serializer=JSONSerializer)
    assert (job.timeout, job.retries_left) == (42, 1)
    drain(app)
    assert job_queue.enqueue_many(specs) == 0  # claimed a minute ago: the same sweep slot
    assert [markers(app, f"many-{n}") for n in range(3)] == [1, 1, 1]
    # Once the claims lapse, a finished job's id is free again: a row still due (or due
    # again) is not left without a job.
    job_queue.connection.delete(*job_queue.connection.keys("paylink:enqueued:*"))
    assert job_queue.enqueue_many(specs[:1]) == 1
    drain(app)
    assert markers(app, "many-0") == 2
    assert job_queue.enqueue_many([]) == 0
    with pytest.raises(ValueError, match="job ids"):
        job_queue.enqueue_many([JobSpec(MARKER, ("no id",))])


def test_a_failed_job_does_not_block_its_id_and_a_waiting_one_is_left_alone(app):
    from rq.registry import FailedJobRegistry

    job_queue = app.extensions["paylink.queue"]
    failing = JobSpec("tests.workers.sample_jobs.no_such_job", job_id="marker-failing", retry=())
    waiting = JobSpec(MARKER, ("waiting",), job_id="marker-waiting")
    assert job_queue.enqueue_many([failing, waiting]) == 2
    build_worker(app).work(burst=True, max_jobs=1)  # only the first: it fails
    assert "marker-failing" in FailedJobRegistry(queue=job_queue.queue(DEFAULT))
    job_queue.connection.delete(*job_queue.connection.keys("paylink:enqueued:*"))

    assert job_queue.enqueue_many([failing, waiting]) == 1  # the failed one, again
    assert "marker-failing" not in FailedJobRegistry(queue=job_queue.queue(DEFAULT))
    assert job_queue.queue(DEFAULT).job_ids == ["marker-waiting", "marker-failing"]


def test_enqueue_many_racing_itself_enqueues_each_id_once(app):
    import threading

    job_queue = app.extensions["paylink.queue"]
    specs = [JobSpec(MARKER, (f"race-{n}",), job_id=f"marker-race-{n}") for n in range(50)]
    barrier = threading.Barrier(4)
    counts: list[int] = []

    def run() -> None:
        barrier.wait()
        counts.append(job_queue.enqueue_many(specs))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(counts) == 50
    assert sorted(job_queue.queue(DEFAULT).job_ids) == sorted(s.job_id for s in specs)


def test_transient_failure_is_retried(app):
    spec = JobSpec("tests.workers.sample_jobs.flaky_marker", ("flaky",), retry=(0,))
    job = app.extensions["paylink.queue"].enqueue(spec)
    drain(app)
    assert (
        Job.fetch(job.id, connection=app.extensions["paylink.queue"].connection).get_status()
        == "finished"
    )
    assert markers(app, "flaky") == 1


def test_commit_survives_redis_outage(app_config, caplog):
    dead = create_app({**app_config, "redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    db = dead.extensions["paylink.db"]
    with caplog.at_level(logging.ERROR), db.transaction() as session:
        audit.record(session, audit.Actor.system("t"), "test.kept", "marker", "x", utcnow())
        enqueue_after_commit(session, JobSpec(MARKER, ("lost",)))
    # The row is committed; the failed enqueue is logged for the sweep to make good.
    with db.transaction() as session:
        assert (
            session.scalar(
                select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "test.kept")
            )
            == 1
        )
    assert "could not enqueue" in caplog.text
    db.dispose()


def test_worker_listens_on_every_paylink_queue(app):
    worker = build_worker(app)
    assert [q.name for q in worker.queues] == list(QUEUE_NAMES)


def test_job_queue_connects_lazily():
    calls = []
    jq = JobQueue(lambda: calls.append(1) or "redis://127.0.0.1:1/0")
    assert calls == []  # building it touched nothing
    assert isinstance(jq.queue(DEFAULT), Queue)
    assert calls == [1]
    jq.close()
