"""The outbox end to end with the outbox backends: queue in a transaction, a real worker
sends after commit, the compliance gate decides at send time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import select

from app.clock import utcnow
from app.messaging.outbox import MessageEnv, advance, queue_message
from app.models import Account, Message, MessageStatus
from tests.helpers import drain

# 15:00 UTC is 10:00 in New York: inside the default 08:00-21:00 window.
NOON_NY = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
LATE_NY = datetime(2026, 11, 24, 3, 30, tzinfo=UTC)  # 22:30 in New York


@pytest.fixture
def account(app):
    with app.extensions["paylink.db"].transaction() as session:
        acct = Account(
            external_id="M-1", name="Maya Brooks", phone="+12025550143", email="maya@example.com",
            timezone="America/New_York", balance_cents=5000, currency="USD",
            created_at=utcnow(), updated_at=utcnow(),
        )  # fmt: skip
        session.add(acct)
    return acct


def queue(app, account_id, kind="link", channels=("sms", "email"), **kw):
    env = MessageEnv.from_config(app.extensions["paylink.config"])
    ctx = {
        "url": "https://pay.example.test/p/abc",
        "amount_cents": 5000,
        "expires_at_text": "Nov 30",
    }
    with app.extensions["paylink.db"].transaction() as session:
        acct = session.get(Account, account_id)
        msgs = queue_message(session, acct, kind, channels, ctx, now=utcnow(), env=env, **kw)
        return [m.id for m in msgs]


def messages(app):
    with app.extensions["paylink.db"].transaction() as session:
        return {m.channel: m for m in session.scalars(select(Message).order_by(Message.id))}


def test_queued_messages_are_sent_by_a_worker_after_commit(app, account):
    with time_machine.travel(NOON_NY, tick=False):
        queue(app, account.id)
        pending = messages(app)
        assert {m.status for m in pending.values()} == {"queued"}
        drain(app)
    sent = messages(app)
    sms, email = sent["sms"], sent["email"]
    assert (sms.status, email.status, email.error) == ("delivered", "delivered", None)
    assert sms.provider_id.startswith("OUTBOX-SM")
    assert sms.body.endswith("Reply STOP to opt out.")
    assert "https://pay.example.test/p/abc" in sms.body
    assert email.subject == "Your payment link from Paylink Demo Creditor"
    assert "/u/" in email.body  # the unsubscribe link
    assert sms.attempts == email.attempts == 1


def test_dedupe_key_writes_one_message_per_event(app, account):
    first = queue(app, account.id, channels=("sms",), dedupe_key="link-1")
    again = queue(app, account.id, channels=("sms",), dedupe_key="link-1")
    assert first == again
    assert len(messages(app)) == 1


def test_quiet_hours_defer_to_next_morning_then_send(app, account):
    with time_machine.travel(LATE_NY, tick=False):
        queue(app, account.id, channels=("sms",))
        drain(app)
        msg = messages(app)["sms"]
        assert msg.status == "deferred"
        assert msg.status_reason == "quiet hours"
        # 08:00 in New York on Nov 24 is 13:00 UTC.
        assert msg.scheduled_for == datetime(2026, 11, 24, 13, 0, tzinfo=UTC)
    with time_machine.travel(datetime(2026, 11, 24, 13, 0, 1, tzinfo=UTC), tick=False):
        drain(app)
    assert messages(app)["sms"].status == "delivered"


def test_opted_out_and_held_accounts_are_suppressed_at_send_time(app, account):
    with time_machine.travel(NOON_NY, tick=False):
        queue(app, account.id)
        # Opted out after queueing, before sending: the gate runs at send time.
        with app.extensions["paylink.db"].transaction() as session:
            acct = session.get(Account, account.id)
            acct.sms_opted_out_at = utcnow()
            acct.hold = None
        drain(app)
    result = messages(app)
    assert result["sms"].status == "suppressed"
    assert result["sms"].status_reason == "sms opted out"
    assert result["sms"].provider_id is None
    assert result["email"].status == "delivered"


def test_account_without_phone_is_suppressed(app, account):
    with app.extensions["paylink.db"].transaction() as session:
        session.get(Account, account.id).phone = None
    with time_machine.travel(NOON_NY, tick=False):
        queue(app, account.id, channels=("sms",))
        drain(app)
    msg = messages(app)["sms"]
    assert msg.status == "suppressed"
    assert msg.status_reason == "no phone on file"


def test_statuses_only_move_forward(app, account):
    queue(app, account.id, channels=("sms",))
    with app.extensions["paylink.db"].transaction() as session:
        msg = session.scalar(select(Message))
        now = utcnow()
        assert advance(session, msg, MessageStatus.delivered, now)
        assert not advance(session, msg, MessageStatus.sent, now + timedelta(seconds=1))
        assert msg.status == "delivered"
        assert advance(session, msg, MessageStatus.undelivered, now)
        assert not advance(session, msg, MessageStatus.delivered, now)
        assert msg.status == "undelivered"


def test_same_job_twice_sends_once(app, account):
    from workers.messaging import send_messages

    with time_machine.travel(NOON_NY, tick=False):
        ids = queue(app, account.id, channels=("sms",), enqueue=False)
        with app.app_context():
            first = send_messages(ids)
            second = send_messages(ids)
    assert first == {"sent": 1}
    assert second == {}
    assert messages(app)["sms"].attempts == 1


def test_stuck_sweep_finds_messages_whose_job_was_lost(app, account, redis_client):
    from workers.messaging import resend_stuck

    with time_machine.travel(NOON_NY, tick=False):
        queue(app, account.id, channels=("sms",))
        redis_client.flushall()  # Redis lost everything after the commit
        with app.app_context():
            assert resend_stuck(utcnow()) == {"stuck_messages": 0, "jobs": 0}  # not stuck yet
    with time_machine.travel(NOON_NY + timedelta(minutes=5), tick=False):
        with app.app_context():
            assert resend_stuck(utcnow()) == {"stuck_messages": 1, "jobs": 1}
        drain(app)
    assert messages(app)["sms"].status == "delivered"


def _dispatcher(app, **overrides):
    from dataclasses import replace as dc_replace

    from workers.messaging import dispatcher

    with app.app_context():
        base = dispatcher()
    return dc_replace(base, counts={}, **overrides)


def test_texts_beyond_the_time_budget_go_to_a_follow_up_job(app, account):
    ticks = iter([0.0, 0.0, 100.0, 100.0, 100.0])  # the budget runs out after the first text
    with time_machine.travel(NOON_NY, tick=False):
        ids = [queue(app, account.id, channels=("sms",), enqueue=False)[0] for _ in range(3)]
        counts = _dispatcher(app, monotonic=lambda: next(ticks, 100.0)).run(ids)
        assert counts == {"sent": 1, "released": 2}
        with app.extensions["paylink.db"].transaction() as session:
            statuses = [session.get(Message, i).status for i in ids]
            attempts = [session.get(Message, i).attempts for i in ids]
        assert statuses == ["delivered", "queued", "queued"]
        assert attempts == [1, 0, 0]  # a released claim was not an attempt
        drain(app)  # the follow-up job
    with app.extensions["paylink.db"].transaction() as session:
        assert [session.get(Message, i).status for i in ids] == ["delivered"] * 3


def test_a_text_is_not_sent_once_the_window_has_closed(app, account):
    # Claimed at 20:59:59 New York time; by the time its turn comes it is 21:00.
    claim_time = datetime(2026, 11, 24, 1, 59, 59, tzinfo=UTC)
    times = iter([claim_time])  # the claim asks once; later asks see 21:00:01

    def clock():
        return next(times, claim_time + timedelta(seconds=2))

    with time_machine.travel(claim_time, tick=False):
        ids = queue(app, account.id, channels=("sms",), enqueue=False)
    counts = _dispatcher(app, clock=clock).run(ids)
    assert counts == {"released": 1}
    with app.extensions["paylink.db"].transaction() as session:
        assert session.get(Message, ids[0]).provider_id is None
    with time_machine.travel(claim_time + timedelta(seconds=5), tick=False):
        drain(app)  # the follow-up claims it again and quiet hours defer it
    with app.extensions["paylink.db"].transaction() as session:
        msg = session.get(Message, ids[0])
        assert msg.status == "deferred"
        assert msg.scheduled_for == datetime(2026, 11, 24, 13, 0, tzinfo=UTC)
