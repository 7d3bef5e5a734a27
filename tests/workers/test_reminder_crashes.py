"""Reminders exactly once when things break: a `flask worker` killed with SIGKILL in the
middle of a reminder job, Redis emptied between the sweep and the jobs, a provider
answering 500. Each time the next sweep re-derives the work from the database and every
reminder reaches the customer once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.models import Message
from app.settings import get_settings
from offers.models import OfferEvent, OfferReminder
from tests.fakes.providers import SERVER_ERROR
from tests.fakes.providers import provider_server as provider_server
from tests.helpers import drain
from tests.offers.test_reminders import make_account, make_offer
from tests.workers.test_processes import wait_for, waiting_on_a_lock, worker_to_kill
from workers import messaging as message_jobs
from workers import offers as offer_jobs

pytestmark = pytest.mark.slow


def reminder_messages(app) -> list[tuple[str, str, str]]:
    with app.extensions["paylink.db"].transaction() as session:
        rows = session.execute(
            select(Message.dedupe_key, Message.status, Message.channel)
            .where(Message.kind.like("reminder_%"))
            .order_by(Message.id)
        )
        return [tuple(r) for r in rows]


def reminder_status(app, offer_id: int) -> str:
    with app.extensions["paylink.db"].transaction() as session:
        return session.scalar(
            select(OfferReminder.status).where(OfferReminder.offer_id == offer_id)
        )


def sent_events(app, offer_id: int) -> int:
    with app.extensions["paylink.db"].transaction() as session:
        return session.scalar(
            select(func.count())
            .select_from(OfferEvent)
            .where(OfferEvent.offer_id == offer_id, OfferEvent.type == "offer.reminder_sent")
        )


def due_offer(app, now: datetime, **kw) -> int:
    """An offer sent an hour before ``now`` whose one reminder fell due 30 minutes ago."""
    return make_offer(
        app, offsets=("150m",), expires_at=now + timedelta(hours=2),
        now=now - timedelta(hours=1), **kw,
    )  # fmt: skip


def test_a_worker_killed_mid_reminder_job_is_redone_once(app, app_config, tmp_path):
    db = app.extensions["paylink.db"]
    if db.engine.dialect.name != "postgresql":
        pytest.skip("needs PostgreSQL's row locks to stop the job at a known point")
    with db.transaction() as session:  # the worker runs on the real clock: any hour goes
        settings = get_settings(session)
        settings.quiet_hours_start_minute, settings.quiet_hours_end_minute = 0, 24 * 60
    # A minute in the past, so the redo below (a minute later) is not in the future for
    # the send job, which runs on the real clock.
    now = datetime.now(UTC) - timedelta(minutes=1)
    offer_id = due_offer(app, now, channels=("email",))
    with db.transaction() as session:
        reminder_id = session.scalar(
            select(OfferReminder.id).where(OfferReminder.offer_id == offer_id)
        )
    # The test holds the reminder's row lock: the job takes the offer's lock, then waits
    # here, before it has written anything.
    holder = db.engine.connect()
    holder.begin()
    holder.execute(
        select(OfferReminder.id).where(OfferReminder.id == reminder_id).with_for_update()
    ).all()
    try:
        with worker_to_kill(app_config, tmp_path / "worker.log") as kill:
            with app.app_context():
                assert offer_jobs.send_due_reminders(now)["reminder_jobs"] == 1
            wait_for(
                lambda: waiting_on_a_lock(db.engine, "offer_reminder"),
                what="the reminder job waiting on the reminder's lock",
            )
            kill()
    finally:
        holder.rollback()
        holder.close()
    wait_for(
        lambda: not waiting_on_a_lock(db.engine, "offer_reminder"),
        what="the killed job's session to end",
    )
    assert reminder_status(app, offer_id) == "pending"
    assert reminder_messages(app) == []

    # The next sweep (a minute later: a new job id; the dead one stays where RQ left it)
    # finds the reminder still pending and sends it, once, however often it runs.
    later = now + timedelta(minutes=1)
    with app.app_context():
        assert offer_jobs.send_due_reminders(later)["reminder_jobs"] == 1
    drain(app)
    with app.app_context():
        assert offer_jobs.send_due_reminders(later + timedelta(minutes=1))["reminders_due"] == 0
    drain(app)
    assert reminder_messages(app) == [(f"reminder-{offer_id}-1-email", "delivered", "email")]
    assert reminder_status(app, offer_id) == "sent"
    assert sent_events(app, offer_id) == 1


def test_redis_emptied_before_the_jobs_ran_the_next_sweep_sends_everything_once(app, time_machine):
    now = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # 10:00 in New York
    time_machine.move_to(now, tick=False)
    offer_ids = [due_offer(app, now) for _ in range(3)]
    drain(app)
    redis = app.extensions["paylink.queue"].connection

    # Lost with its jobs: the sweep's page of reminders.
    with app.app_context():
        assert offer_jobs.send_due_reminders(now)["reminder_jobs"] == 1
    redis.flushall()
    drain(app)
    assert {reminder_status(app, o) for o in offer_ids} == {"pending"}

    # Lost after the job wrote the messages: their send job.
    later = now + timedelta(minutes=1)
    time_machine.move_to(later, tick=False)
    with app.app_context():
        offer_jobs.send_due_reminders(later)
        [page] = app.extensions["paylink.queue"].queue("messages").jobs
        page.perform()  # the reminder job alone; its send job goes to Redis after commit
    assert {reminder_status(app, o) for o in offer_ids} == {"sent"}
    redis.flushall()
    drain(app)
    assert {status for _, status, _ in reminder_messages(app)} == {"queued"}

    # The outbox sweep finds queued messages whose job is gone; nothing is sent twice.
    after = later + message_jobs.STUCK_AFTER + timedelta(minutes=1)
    time_machine.move_to(after, tick=False)
    with app.app_context():
        assert offer_jobs.send_due_reminders(after)["reminders_due"] == 0
        assert message_jobs.resend_stuck(after)["stuck_messages"] == 6
    drain(app)
    messages = reminder_messages(app)
    assert len(messages) == 6
    assert {status for _, status, _ in messages} == {"delivered"}
    assert all(sent_events(app, o) == 1 for o in offer_ids)


@pytest.fixture
def provider_app(app_config, provider_server):
    from app import create_app
    from workers.runtime import set_job_app

    application = create_app({**app_config, **provider_server.config(), "sms_per_second": 10_000.0})
    set_job_app(application)
    yield application
    set_job_app(None)
    application.extensions["paylink.queue"].close()
    application.extensions["paylink.db"].dispose()


def test_a_provider_500_is_retried_and_the_reminder_delivered_once(
    provider_app, provider_server, time_machine
):
    app = provider_app
    now = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    time_machine.move_to(now, tick=False)
    offer_id = due_offer(app, now, account_id=make_account(app))
    drain(app)
    offer_requests = len(provider_server.twilio.requests)
    provider_server.twilio.reply(SERVER_ERROR)

    with app.app_context():
        offer_jobs.send_due_reminders(now)
    drain(app)  # the SMS meets the 500; its retry is scheduled after a backoff
    time_machine.move_to(now + timedelta(minutes=10), tick=False)
    drain(app)

    texts = provider_server.twilio.requests[offer_requests:]
    assert len(texts) == 2  # the failed try and the retry
    assert texts[0].form["Body"] == texts[1].form["Body"]
    sms = [m for m in reminder_messages(app) if m[2] == "sms"]
    assert sms == [(f"reminder-{offer_id}-1-sms", "sent", "sms")]
    assert sent_events(app, offer_id) == 1
