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


def index_plans(app: Flask, work, markers: dict[str, str]) -> dict[str, str]:
    """Run ``work()`` in an app context, capture its SQL, and return, for each marker (a
    piece of SQL such as ``"offer.expires_at <="``) found in a statement, the database's
    plan for that statement, keyed by the index the caller expects in it. On PostgreSQL
    sequential scans are switched off for the EXPLAIN: test tables are tiny, and the
    question is whether the index *can* serve the query as written."""
    from sqlalchemy import event, text

    engine = app.extensions["paylink.db"].engine
    statements: list[tuple[str, object]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with app.app_context():
            work()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    plans: dict[str, str] = {}
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET enable_seqscan = off"))
        prefix = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
        for statement, parameters in statements:
            for marker, index in markers.items():
                if marker in statement and index not in plans:
                    rows = conn.exec_driver_sql(prefix + statement, parameters).all()
                    plans[index] = " ".join(str(row) for row in rows)
    return plans
