"""The send job end to end on the provider backends: messages queued in the outbox, a real
forking RQ worker, the real twilio and sendgrid SDKs, the local fake providers, and time
moved with time-machine (retries are scheduled with backoff; nothing sleeps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from sqlalchemy import select

from app.clock import utcnow
from app.messaging.backends.sendgrid import SendgridEmail
from app.messaging.backends.twilio import TwilioSms
from app.messaging.dispatch import BACKOFF, MAX_ATTEMPTS
from app.messaging.outbox import MessageEnv, queue_message, send_job
from app.models import Account, Message, ParkedSmsStatus
from tests.app.messaging.test_webhooks import STATUS, status_form, twilio_post
from tests.fakes.providers import (
    INVALID_NUMBER,
    OK,
    RATE_LIMITED,
    SERVER_ERROR,
    TWILIO_AUTH_TOKEN,
    TWILIO_FROM_NUMBER,
    UNSUBSCRIBED,
    Reply,
    slow,
)
from tests.helpers import drain
from workers.messaging import dispatcher, drop_parked_statuses

# 15:00 UTC is 10:00 in New York: inside the default 08:00-21:00 window.
NOON_NY = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
PHONE = "+12025550143"
CALLBACK = "https://pay.example.test/webhooks/twilio/status"


def make_account(app, n: int = 1, **kw: Any) -> int:
    values: dict[str, Any] = {
        "external_id": f"S-{n}",
        "name": f"Maya Brooks{n}",
        "phone": PHONE,
        "email": f"maya{n}@example.com",
        "timezone": "America/New_York",
        "balance_cents": 5000,
        "currency": "USD",
        "created_at": utcnow(),
        "updated_at": utcnow(),
    }
    values.update(kw)
    with app.extensions["paylink.db"].transaction() as session:
        account = Account(**values)
        session.add(account)
        session.flush()
        return account.id


@pytest.fixture
def account_id(provider_app) -> int:
    return make_account(provider_app)


def queue(app, account_id: int, channels=("sms",), kind: str = "link", **kw: Any) -> list[int]:
    env = MessageEnv.from_config(app.extensions["paylink.config"])
    context = {
        "url": "https://pay.example.test/p/abc",
        "amount_cents": 5000,
        "expires_at_text": "Nov 30",
        "expires_short": "Nov 30",
    }
    with app.extensions["paylink.db"].transaction() as session:
        account = session.get(Account, account_id)
        found = queue_message(
            session, account, kind, channels, context, now=utcnow(), env=env, **kw
        )
        return [m.id for m in found]


def load(app, message_id: int) -> Message:
    with app.extensions["paylink.db"].transaction() as session:
        message = session.get(Message, message_id)
        assert message is not None
        session.expunge(message)
        return message


def event_types(app, message_id: int) -> list[str]:
    with app.extensions["paylink.db"].transaction() as session:
        return [e.type for e in session.get(Message, message_id).events]


def drain_at(app, instant: datetime) -> None:
    with time_machine.travel(instant, tick=False):
        drain(app)


def use_timeouts(app, seconds: float) -> None:
    """Give the app's dispatcher backends a short HTTP timeout; the forked work horses
    inherit it."""
    config = app.extensions["paylink.config"]
    with app.app_context():
        found = dispatcher()
        found.sms = TwilioSms.from_config(config, timeout=seconds)
        found.email = SendgridEmail.from_config(config, timeout=seconds)


# --- SMS ----------------------------------------------------------------------------------


def test_sms_goes_out_through_twilio_and_keeps_its_sid(provider_app, provider_server, account_id):
    with time_machine.travel(NOON_NY, tick=False):
        [message_id] = queue(provider_app, account_id)
        drain(provider_app)
    message = load(provider_app, message_id)
    [request] = provider_server.twilio.requests
    assert request.form == {
        "To": PHONE,
        "From": TWILIO_FROM_NUMBER,
        "Body": message.body,
        "StatusCallback": CALLBACK,
        # 10:00 in New York: the window closes at 21:00, past Paylink's 4-hour cap.
        "ValidityPeriod": "14400",
    }
    assert message.body.endswith("Reply STOP to opt out.")
    assert message.status == "sent"  # delivered comes later, by status callback
    assert message.provider_id == request.provider_id
    assert (message.attempts, message.error, message.sent_at) == (1, None, NOON_NY)


def parked(app) -> list[tuple[str, str]]:
    with app.extensions["paylink.db"].transaction() as session:
        rows = session.scalars(select(ParkedSmsStatus).order_by(ParkedSmsStatus.id))
        return [(r.message_sid, r.status) for r in rows]


def test_a_delivery_report_that_overtakes_the_answer_is_applied_with_it(
    provider_app, provider_server, account_id
):
    """Twilio may call back before its answer to the send reaches the worker: the report
    finds no message with that sid yet, is parked, and is applied when the send is."""
    client = provider_app.test_client()
    reports: list[tuple[int, list[tuple[str, str]]]] = []

    def report(sid: str) -> None:
        form = status_form(sid, "delivered")
        answer = twilio_post(client, STATUS, form, token=provider_server.twilio_auth_token)
        reports.append((answer.status_code, parked(provider_app)))

    provider_server.twilio_before_answer = report
    with time_machine.travel(NOON_NY, tick=False):
        [message_id] = queue(provider_app, account_id)
        drain(provider_app)
    [request] = provider_server.twilio.requests
    assert reports == [(200, [(request.provider_id, "delivered")])]  # parked, then applied
    message = load(provider_app, message_id)
    assert (message.provider_id, message.status) == (request.provider_id, "delivered")
    assert message.delivered_at == NOON_NY
    assert parked(provider_app) == []


def test_parked_reports_that_no_send_claims_are_dropped_after_a_day(provider_app, account_id):
    client = provider_app.test_client()
    with time_machine.travel(NOON_NY, tick=False):
        stray = status_form("SM" + "e" * 32, "delivered")
        assert twilio_post(client, STATUS, stray, token=TWILIO_AUTH_TOKEN).status_code == 200
    assert parked(provider_app) == [("SM" + "e" * 32, "delivered")]
    with provider_app.app_context():
        assert drop_parked_statuses(NOON_NY + timedelta(hours=23)) == {"applied": 0, "dropped": 0}
        assert drop_parked_statuses(NOON_NY + timedelta(hours=25)) == {"applied": 0, "dropped": 1}
    assert parked(provider_app) == []


def test_validity_period_ends_when_the_allowed_window_does(
    provider_app, provider_server, account_id
):
    # 01:30 UTC is 20:30 in New York: half an hour before quiet hours begin.
    with time_machine.travel(datetime(2026, 11, 24, 1, 30, tzinfo=UTC), tick=False):
        queue(provider_app, account_id)
        drain(provider_app)
    assert provider_server.twilio.requests[0].form["ValidityPeriod"] == "1800"


def test_validity_period_ends_at_the_messages_deadline_when_sooner(
    provider_app, provider_server, account_id
):
    with time_machine.travel(NOON_NY, tick=False):
        queue(provider_app, account_id, send_before=NOON_NY + timedelta(minutes=10))
        drain(provider_app)
    assert provider_server.twilio.requests[0].form["ValidityPeriod"] == "600"


def test_a_message_past_its_deadline_is_suppressed_not_sent(
    provider_app, provider_server, account_id
):
    with time_machine.travel(NOON_NY - timedelta(hours=1), tick=False):
        [message_id] = queue(provider_app, account_id, not_before=NOON_NY, send_before=NOON_NY)
    drain_at(provider_app, NOON_NY + timedelta(minutes=5))
    message = load(provider_app, message_id)
    assert provider_server.twilio.requests == []
    assert (message.status, message.status_reason) == (
        "suppressed",
        "too late: its deadline has passed",
    )


def test_a_message_whose_quiet_hours_outlast_its_deadline_is_suppressed(
    provider_app, provider_server, account_id
):
    # 03:00 UTC is 22:00 in New York: quiet until 08:00 local (13:00 UTC), after the deadline.
    night = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)
    with time_machine.travel(night, tick=False):
        [late] = queue(provider_app, account_id, send_before=night + timedelta(hours=2))
        [fine] = queue(
            provider_app, make_account(provider_app, 2), send_before=night + timedelta(days=1)
        )
        drain(provider_app)
    assert load(provider_app, late).status == "suppressed"
    assert load(provider_app, late).status_reason == "quiet hours last past its deadline"
    assert load(provider_app, fine).status == "deferred"  # goes at 08:00, inside its deadline
    assert provider_server.twilio.requests == []


def test_invalid_number_fails_at_once(provider_app, provider_server, account_id):
    provider_server.twilio.reply(INVALID_NUMBER)
    with time_machine.travel(NOON_NY, tick=False):
        [message_id] = queue(provider_app, account_id)
        drain(provider_app)
    message = load(provider_app, message_id)
    assert message.status == "failed"
    assert message.status_reason == "21211"
    assert message.error.startswith("21211: ")
    assert (message.attempts, message.provider_id) == (1, None)
    # Nothing was scheduled again: an hour later there is still one request.
    drain_at(provider_app, NOON_NY + timedelta(hours=1))
    assert len(provider_server.twilio.requests) == 1


def test_unsubscribed_recipient_fails_and_opts_the_account_out(
    provider_app, provider_server, account_id
):
    provider_server.twilio.reply(UNSUBSCRIBED)
    with time_machine.travel(NOON_NY, tick=False):
        [message_id] = queue(provider_app, account_id)
        drain(provider_app)
        message = load(provider_app, message_id)
        assert (message.status, message.status_reason) == ("failed", "21610")
        assert "opted_out" in event_types(provider_app, message_id)
        with provider_app.extensions["paylink.db"].transaction() as session:
            assert session.get(Account, account_id).sms_opted_out_at == NOON_NY
        # The next text to that account is suppressed without asking Twilio.
        [later_id] = queue(provider_app, account_id, kind="offer")
        drain(provider_app)
    later = load(provider_app, later_id)
    assert (later.status, later.status_reason) == ("suppressed", "sms opted out")
    assert len(provider_server.twilio.requests) == 1


@pytest.mark.parametrize("failure", [SERVER_ERROR, RATE_LIMITED], ids=["500", "429"])
def test_transient_error_is_retried_after_backoff(
    provider_app, provider_server, account_id, failure
):
    provider_server.twilio.reply(failure, then=OK)
    with time_machine.travel(NOON_NY, tick=False):
        [message_id] = queue(provider_app, account_id)
        drain(provider_app)
    waiting = load(provider_app, message_id)
    assert waiting.status == "queued"
    assert waiting.scheduled_for == NOON_NY + timedelta(seconds=BACKOFF[0])
    assert waiting.error.startswith(f"{failure.code}: ")
    assert "retry" in event_types(provider_app, message_id)
    # Not yet due: the worker leaves it alone.
    drain_at(provider_app, NOON_NY + timedelta(seconds=BACKOFF[0] - 1))
    assert len(provider_server.twilio.requests) == 1
    drain_at(provider_app, NOON_NY + timedelta(seconds=BACKOFF[0] + 1))
    message = load(provider_app, message_id)
    [success] = provider_server.twilio.succeeded
    assert len(provider_server.twilio.requests) == 2
    assert (message.status, message.attempts, message.error) == ("sent", 2, None)
    assert message.provider_id == success.provider_id


def test_timeout_is_retried(provider_app, provider_server, account_id):
    use_timeouts(provider_app, 0.5)
    provider_server.twilio.reply(slow(10), then=OK)
    with time_machine.travel(NOON_NY, tick=False):
        [message_id] = queue(provider_app, account_id)
        drain(provider_app)
    waiting = load(provider_app, message_id)
    assert (waiting.status, waiting.error.split(":")[0]) == ("queued", "timeout")
    drain_at(provider_app, waiting.scheduled_for + timedelta(seconds=1))
    message = load(provider_app, message_id)
    assert (message.status, message.attempts) == ("sent", 2)
    assert [r.status for r in provider_server.twilio.requests] == [0, 201]  # 0: gave up waiting
    assert message.provider_id == provider_server.twilio.requests[1].provider_id


def test_five_transient_failures_fail_the_message(provider_app, provider_server, account_id):
    provider_server.twilio.always(SERVER_ERROR)
    now = NOON_NY
    with time_machine.travel(now, tick=False):
        [message_id] = queue(provider_app, account_id)
        drain(provider_app)
    waits = []
    for _ in range(MAX_ATTEMPTS - 1):
        due = load(provider_app, message_id).scheduled_for
        waits.append(int((due - now).total_seconds()))
        now = due + timedelta(seconds=1)
        drain_at(provider_app, now)
    assert waits == list(BACKOFF)  # exponential backoff between attempts
    message = load(provider_app, message_id)
    assert (message.status, message.attempts, message.status_reason) == ("failed", 5, "20500")
    assert len(provider_server.twilio.requests) == MAX_ATTEMPTS
    drain_at(provider_app, now + timedelta(hours=2))
    assert len(provider_server.twilio.requests) == MAX_ATTEMPTS


def test_the_same_job_enqueued_twice_sends_once(provider_app, provider_server, account_id):
    job_queue = provider_app.extensions["paylink.queue"]
    with time_machine.travel(NOON_NY, tick=False):
        [message_id] = queue(provider_app, account_id, enqueue=False)
        assert job_queue.enqueue(send_job([message_id], "send-twice")) is not None
        assert job_queue.enqueue(send_job([message_id], "send-twice")) is None  # refused
        # Another job naming the same message finds it already claimed and sent.
        assert job_queue.enqueue(send_job([message_id], "send-again")) is not None
        drain(provider_app)
    message = load(provider_app, message_id)
    assert (message.status, message.attempts) == ("sent", 1)
    assert len(provider_server.twilio.requests) == 1


# --- email --------------------------------------------------------------------------------


def test_email_goes_out_through_sendgrid_carrying_its_message_id(
    provider_app, provider_server, account_id
):
    with time_machine.travel(NOON_NY, tick=False):
        [message_id] = queue(provider_app, account_id, channels=("email",))
        drain(provider_app)
    message = load(provider_app, message_id)
    [request] = provider_server.sendgrid.requests
    body = request.json
    [personalization] = body["personalizations"]
    unsubscribe = personalization["headers"]["List-Unsubscribe"].strip("<>")
    assert unsubscribe.startswith("https://pay.example.test/u/")
    assert unsubscribe in message.body
    assert personalization["to"] == [{"email": "maya1@example.com"}]
    assert personalization["subject"] == message.subject
    assert personalization["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert personalization["custom_args"] == {"paylink_message_id": str(message_id)}
    assert set(personalization["substitutions"].values()) == {message.body, message.html}
    assert body["categories"] == ["link"]
    assert message.status == "sent"
    assert message.provider_id == f"{request.provider_id}.{message_id}"


def test_one_job_sends_many_emails_in_one_call_per_kind(provider_app, provider_server):
    with time_machine.travel(NOON_NY, tick=False):
        ids = []
        for n in range(1, 26):
            account = make_account(provider_app, n)
            kind = "reminder_1" if n <= 20 else "link"
            ids += queue(provider_app, account, channels=("email",), kind=kind, enqueue=False)
        provider_app.extensions["paylink.queue"].enqueue(send_job(ids, "send-batch"))
        drain(provider_app)
    calls = provider_server.sendgrid.requests
    assert sorted((c.json["categories"], len(c.json["personalizations"])) for c in calls) == [
        (["link"], 5),
        (["reminder_1"], 20),
    ]
    messages = [load(provider_app, i) for i in ids]
    assert {m.status for m in messages} == {"sent"}
    assert len({m.provider_id for m in messages}) == 25


def queue_emails(app, count: int) -> list[int]:
    ids = []
    for n in range(1, count + 1):
        account = make_account(app, n)
        ids += queue(app, account, channels=("email",), enqueue=False)
    app.extensions["paylink.queue"].enqueue(send_job(ids, "send-batch"))
    return ids


def test_a_provider_timing_out_mid_batch_retries_every_email(provider_app, provider_server):
    use_timeouts(provider_app, 0.5)
    provider_server.sendgrid.reply(slow(10), then=OK)
    with time_machine.travel(NOON_NY, tick=False):
        ids = queue_emails(provider_app, 3)
        drain(provider_app)
    waiting = [load(provider_app, i) for i in ids]
    assert {(m.status, m.error.split(":")[0]) for m in waiting} == {("queued", "timeout")}
    drain_at(provider_app, max(m.scheduled_for for m in waiting) + timedelta(seconds=1))
    sent = [load(provider_app, i) for i in ids]
    assert {(m.status, m.attempts) for m in sent} == {("sent", 2)}
    # Each email went out once: the first call was never answered.
    delivered = [
        p["custom_args"]["paylink_message_id"]
        for r in provider_server.sendgrid.succeeded
        for p in r.json["personalizations"]
    ]
    assert sorted(delivered) == sorted(str(i) for i in ids)


def test_a_failed_batch_is_retried_as_one_call(provider_app, provider_server):
    provider_server.sendgrid.reply(Reply(429, message="too many requests"), then=OK)
    with time_machine.travel(NOON_NY, tick=False):
        ids = queue_emails(provider_app, 3)
        drain(provider_app)
    due = max(load(provider_app, i).scheduled_for for i in ids)
    drain_at(provider_app, due + timedelta(seconds=1))
    assert {load(provider_app, i).status for i in ids} == {"sent"}
    # A 429 means "slow down": answering it with one call per email makes it worse.
    assert [r.status for r in provider_server.sendgrid.requests] == [429, 202]


def test_email_permanent_error_fails_without_retry(provider_app, provider_server, account_id):
    provider_server.sendgrid.reply(Reply(400, message="The from address does not match"))
    with time_machine.travel(NOON_NY, tick=False):
        [message_id] = queue(provider_app, account_id, channels=("email",))
        drain(provider_app)
    drain_at(provider_app, NOON_NY + timedelta(hours=1))
    message = load(provider_app, message_id)
    assert (message.status, message.status_reason, message.attempts) == ("failed", "400", 1)
    assert message.error == "400: The from address does not match"
    assert len(provider_server.sendgrid.requests) == 1
