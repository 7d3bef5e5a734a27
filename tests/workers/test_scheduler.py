"""The scheduler enqueues each duty once per time slot, however many schedulers run."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from app.models import AuditEvent
from workers.schedule import DUTIES, Duty
from workers.scheduler import run_forever, slot_job_id, tick
from workers.sweep import run_sweep
from workers.worker import build_worker

DUTY = Duty("marker", "tests.workers.sample_jobs.marker_duty", every_seconds=60)
QUIET = Duty("quiet", "tests.workers.sample_jobs.quiet_duty", every_seconds=300)
T0 = datetime(2026, 11, 21, 12, 0, 5, tzinfo=UTC)


def duty_runs(app) -> int:
    with app.extensions["paylink.db"].transaction() as session:
        return session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "test.duty")
        )


def test_duty_table_names_importable_functions():
    from rq.utils import import_attribute

    assert "outbox" in {d.name for d in DUTIES}
    for duty in DUTIES:
        assert callable(import_attribute(duty.func))
        assert duty.every_seconds > 0


def test_one_slot_is_enqueued_once(app):
    job_queue = app.extensions["paylink.queue"]
    first = tick(job_queue, T0, (DUTY, QUIET))
    again = tick(job_queue, T0 + timedelta(seconds=30), (DUTY, QUIET))  # same slots
    assert first == [slot_job_id(DUTY, T0), slot_job_id(QUIET, T0)]
    assert again == []
    later = tick(job_queue, T0 + timedelta(seconds=60), (DUTY, QUIET))  # DUTY's next slot
    assert later == [slot_job_id(DUTY, T0 + timedelta(seconds=60))]


def test_concurrent_schedulers_enqueue_each_slot_once(app):
    job_queue = app.extensions["paylink.queue"]
    results: list[list[str]] = []
    barrier = threading.Barrier(4)

    def scheduler() -> None:
        barrier.wait()
        results.append(tick(job_queue, T0, (DUTY,)))

    threads = [threading.Thread(target=scheduler) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    assert build_worker(app).work(burst=True)
    assert duty_runs(app) == 1


def test_run_forever_ticks_until_stopped(app):
    job_queue = app.extensions["paylink.queue"]
    stop = threading.Event()
    clock_calls: list[datetime] = []

    def clock() -> datetime:
        clock_calls.append(T0)
        if len(clock_calls) >= 3:
            stop.set()
        return T0

    run_forever(job_queue, clock, 0.001, stop, (DUTY,))
    assert len(clock_calls) == 3
    assert job_queue.queue().job_ids == [slot_job_id(DUTY, T0)]


def test_run_forever_survives_a_redis_outage(app_config):
    from app import create_app
    from app.embedded_redis import free_port

    broken = create_app({**app_config, "redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    stop = threading.Event()
    ticks = []

    def clock() -> datetime:
        ticks.append(1)
        if len(ticks) == 2:
            stop.set()
        return T0

    run_forever(broken.extensions["paylink.queue"], clock, 0.001, stop, (DUTY,))
    assert len(ticks) == 2  # kept ticking after the first failure
    broken.extensions["paylink.db"].dispose()


def test_sweep_runs_duties_in_order_with_counts(app):
    with app.app_context():
        results = run_sweep(T0, (DUTY, QUIET))
    assert results == {"marker": {"markers": 1}, "quiet": {}}
    assert duty_runs(app) == 1


def test_sweep_cli(app):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["sweep", "--at", "2026-11-21T12:00:00Z"])
    assert result.exit_code == 0, result.output
    assert "sweep at 2026-11-21T12:00:00Z" in result.output
    assert "outbox: jobs=0 stuck_messages=0" in result.output
    bad = runner.invoke(args=["sweep", "--at", "next tuesday"])
    assert bad.exit_code == 2
    assert "not an ISO 8601 instant" in bad.output
