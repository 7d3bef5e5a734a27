"""The inbound service functions on a real database: keywords, opt-out state, replies,
status ordering and SendGrid event handling, without HTTP."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import permutations

import pytest
from sqlalchemy import func, select

from app.messaging import inbound
from app.messaging.outbox import MessageEnv, queue_message
from app.models import (
    Account,
    AuditEvent,
    EmailSuppression,
    Message,
    MessageEvent,
    WebhookReceipt,
)

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
PHONE = "+12025550143"


@pytest.fixture
def env(app) -> MessageEnv:
    return MessageEnv.from_config(app.extensions["paylink.config"])


def add_account(db, external_id="A-1", phone=PHONE, email="maya@example.com", **kw) -> Account:
    account = Account(
        external_id=external_id, name="Maya Brooks", phone=phone, email=email,
        timezone="America/New_York", balance_cents=5000, created_at=NOW, updated_at=NOW, **kw,
    )  # fmt: skip
    db.add(account)
    db.commit()
    return account


def count(db, model, *where) -> int:
    return db.scalar(select(func.count()).select_from(model).where(*where))


def replies(db) -> list[Message]:
    return list(db.scalars(select(Message).order_by(Message.id)))


def audit_actions(db) -> list[str]:
    return list(db.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))


# --- keywords -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["STOP", " stop! ", "Stop.", "STOPALL", "stop all", "UNSUBSCRIBE", "cancel", "End", "QUIT",
     "revoke", "opt out", "Stop texting me", "please stop", "PLEASE STOP!!", "stop please",
     "Remove me from your list", "unsubscribe me", "Don\u2019t text me", "do not text me again",
     "stop sending me messages", "No more texts please", "wrong number"],
)  # fmt: skip
def test_opt_out_words_and_plain_language(text):
    assert inbound.classify(text) == inbound.OPT_OUT


@pytest.mark.parametrize("text", ["START", "yes", "Yes!", "unstop"])
def test_opt_in_words(text):
    assert inbound.classify(text) == inbound.OPT_IN


@pytest.mark.parametrize("text", ["HELP", "help?", "INFO"])
def test_help_words(text):
    assert inbound.classify(text) == inbound.HELP


@pytest.mark.parametrize(
    "text",
    ["I will pay on Friday", "Can I stop by your office?", "Reply STOP to opt out.",
     "don't stop texting me", "stopped by yesterday", "help me understand my bill",
     "yes I can pay 50", "", "   "],
)  # fmt: skip
def test_anything_else_is_no_keyword(text):
    assert inbound.classify(text) is None


# --- inbound SMS --------------------------------------------------------------------------


def inbound_sms(db, env, body, sid="SM1", phone=PHONE, now=NOW) -> inbound.InboundResult:
    result = inbound.handle_inbound_sms(
        db, message_sid=sid, phone=phone, body=body, now=now, env=env
    )
    db.commit()
    return result


def test_stop_opts_out_every_account_with_the_phone_and_replies_once(db, env):
    earlier = NOW - timedelta(days=3)
    first = add_account(db, "A-1")
    second = add_account(db, "A-2")
    already = add_account(db, "A-3", sms_opted_out_at=earlier)
    other = add_account(db, "A-4", phone="+12025550199")
    result = inbound_sms(db, env, "STOP")
    assert result.intent == inbound.OPT_OUT
    assert result.changed_ids == (first.id, second.id)
    for account in (first, second, already, other):
        db.refresh(account)
    assert first.sms_opted_out_at == second.sms_opted_out_at == NOW
    assert already.sms_opted_out_at == earlier  # unchanged
    assert other.sms_opted_out_at is None
    [reply] = replies(db)
    assert (reply.kind, reply.channel, reply.recipient) == ("sms_opted_out", "sms", PHONE)
    assert reply.id == result.reply_id
    assert reply.body.startswith("You are unsubscribed from Paylink Demo Creditor texts")
    events = db.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    assert [(e.action, e.actor_type, e.actor_id) for e in events] == [
        ("account.sms_opted_out", "customer", str(first.id)),
        ("account.sms_opted_out", "customer", str(second.id)),
        ("account.sms_received", "customer", str(already.id)),
    ]
    assert events[0].data == {"message_sid": "SM1", "intent": "opt_out", "text": "STOP"}


def test_same_message_sid_twice_changes_nothing(db, env):
    account = add_account(db)
    inbound_sms(db, env, "STOP")
    again = inbound_sms(db, env, "STOP", now=NOW + timedelta(minutes=1))
    assert again.duplicate
    db.refresh(account)
    assert account.sms_opted_out_at == NOW
    assert len(replies(db)) == 1
    assert count(db, AuditEvent) == 1
    assert count(db, WebhookReceipt, WebhookReceipt.provider == "twilio-inbound") == 1


def test_a_second_stop_gets_no_second_confirmation(db, env):
    add_account(db)
    inbound_sms(db, env, "STOP", sid="SM1")
    result = inbound_sms(db, env, "stop texting me", sid="SM2")
    assert result.intent == inbound.OPT_OUT
    assert result.changed_ids == ()
    assert [m.kind for m in replies(db)] == ["sms_opted_out"]
    assert audit_actions(db) == ["account.sms_opted_out", "account.sms_received"]


def test_start_after_stop_opts_back_in_with_one_confirmation(db, env):
    account = add_account(db)
    inbound_sms(db, env, "STOP", sid="SM1")
    result = inbound_sms(db, env, "Start", sid="SM2")
    assert result.intent == inbound.OPT_IN
    assert result.changed_ids == (account.id,)
    db.refresh(account)
    assert account.sms_opted_out_at is None
    assert [m.kind for m in replies(db)] == ["sms_opted_out", "sms_opted_in"]
    assert audit_actions(db) == ["account.sms_opted_out", "account.sms_opted_in"]


def test_yes_from_a_subscribed_customer_is_just_a_text(db, env):
    add_account(db)
    result = inbound_sms(db, env, "yes")
    assert result.changed_ids == ()
    assert result.reply_id is None
    assert replies(db) == []
    assert audit_actions(db) == ["account.sms_received"]


def test_help_replies_with_the_creditors_contact(db, env):
    add_account(db)
    add_account(db, "A-2")
    result = inbound_sms(db, env, "HELP")
    [reply] = replies(db)
    assert reply.id == result.reply_id
    assert reply.kind == "sms_help"
    assert "+18005550100" in reply.body
    assert "billing@example.com" in reply.body
    assert audit_actions(db) == ["account.sms_help", "account.sms_help"]


def test_other_text_is_recorded_without_reply(db, env):
    account = add_account(db)
    inbound_sms(db, env, "I will pay on Friday")
    assert replies(db) == []
    event = db.scalar(select(AuditEvent))
    assert (event.action, event.object_id) == ("account.sms_received", str(account.id))
    assert event.data["text"] == "I will pay on Friday"


def test_unknown_number_changes_nothing(db, env):
    account = add_account(db)
    result = inbound_sms(db, env, "STOP", phone="+12025550111")
    assert result.account_ids == ()
    assert result.reply_id is None
    db.refresh(account)
    assert account.sms_opted_out_at is None
    assert replies(db) == []
    assert count(db, AuditEvent) == 0


def test_sender_number_is_matched_in_e164(db, env):
    account = add_account(db)
    inbound_sms(db, env, "STOP", phone="(202) 555-0143")
    db.refresh(account)
    assert account.sms_opted_out_at == NOW


# --- Twilio status callbacks --------------------------------------------------------------


@pytest.fixture
def sent_sms(db, env) -> Message:
    account = add_account(db)
    [message] = queue_message(db, account, "sms_help", ["sms"], {}, now=NOW, env=env)
    message.status, message.provider_id = "sent", "SMabc"
    db.commit()
    return message


def status(db, name, code=None, sid="SMabc", now=NOW) -> inbound.StatusResult:
    result = inbound.record_sms_status(db, message_sid=sid, status=name, error_code=code, now=now)
    db.commit()
    return result


@pytest.mark.parametrize("order", list(permutations(["sending", "sent", "delivered", "read"])))
def test_status_callbacks_in_any_order_end_delivered(db, sent_sms, order):
    for name in order:
        status(db, name)
    db.refresh(sent_sms)
    assert sent_sms.status == "delivered"
    assert sent_sms.delivered_at == NOW


@pytest.mark.parametrize("order", [("delivered", "undelivered"), ("undelivered", "delivered")])
def test_undelivered_is_final(db, sent_sms, order):
    for name in order:
        status(db, name, code="30003" if name == "undelivered" else None)
    db.refresh(sent_sms)
    assert sent_sms.status == "undelivered"
    assert sent_sms.error == "30003: undelivered"


def test_repeated_callback_records_nothing_new(db, sent_sms):
    assert status(db, "delivered").moved
    events = count(db, MessageEvent)
    again = status(db, "delivered", now=NOW + timedelta(minutes=1))
    assert again.duplicate
    assert not again.moved
    assert count(db, MessageEvent) == events


def test_failed_21610_opts_the_account_out(db, sent_sms):
    result = status(db, "failed", code="21610")
    assert result.moved
    assert result.status == "failed"
    db.refresh(sent_sms)
    assert sent_sms.error == "21610: failed"
    assert sent_sms.account.sms_opted_out_at == NOW
    event = db.scalar(
        select(MessageEvent).where(MessageEvent.type == "status").order_by(MessageEvent.id.desc())
    )
    assert event.detail["error_code"] == "21610"
    assert event.detail["status"] == "failed"
    assert audit_actions(db) == ["account.sms_opted_out"]


def test_unknown_sid_and_unknown_status(db, sent_sms):
    assert not status(db, "delivered", sid="SMnope").found
    result = status(db, "canceled")
    assert result.found
    assert not result.moved
    db.refresh(sent_sms)
    assert sent_sms.status == "sent"
    assert sent_sms.events[-1].type == "provider_status"


# --- SendGrid events ----------------------------------------------------------------------


@pytest.fixture
def sent_email(db, env) -> Message:
    account = add_account(db)
    context = {"url": "https://pay.example.test/p/abc", "amount_cents": 5000,
               "expires_at_text": "Nov 30"}  # fmt: skip
    [message] = queue_message(db, account, "link", ["email"], context, now=NOW, env=env)
    message.status, message.provider_id = "delivered", "sg-1"
    db.commit()
    return message


def sg(kind, message_id, event_id, **extra):
    return {"event": kind, "email": "maya@example.com", "sg_event_id": event_id,
            "paylink_message_id": str(message_id), "timestamp": 1795446000, **extra}  # fmt: skip


def events(db, batch, now=NOW) -> inbound.EmailEventsResult:
    result = inbound.record_email_events(db, inbound.check_events(batch), now)
    db.commit()
    return result


def test_delivered_email_can_still_bounce_and_the_address_is_suppressed(db, sent_email):
    result = events(db, [sg("bounce", sent_email.id, "e1", reason="550 no such user")])
    assert result.applied == 1
    assert result.suppressed == ["maya@example.com"]
    db.refresh(sent_email)
    assert sent_email.status == "bounced"
    assert sent_email.error == "bounce: 550 no such user"
    assert db.get(EmailSuppression, "maya@example.com").reason == "bounce"
    # A late "delivered" does not undo it.
    events(db, [sg("delivered", sent_email.id, "e2")])
    db.refresh(sent_email)
    assert sent_email.status == "bounced"


def test_events_deduplicated_within_and_across_posts(db, sent_email):
    first = events(db, [sg("open", sent_email.id, "e1"), sg("open", sent_email.id, "e1")])
    second = events(db, [sg("open", sent_email.id, "e1")])
    assert (first.applied, first.duplicates, second.applied, second.duplicates) == (1, 1, 0, 1)
    assert count(db, MessageEvent, MessageEvent.type == "open") == 1


@pytest.mark.parametrize(
    ("kind", "extra", "reason", "opted_out"),
    [
        ("bounce", {"type": "blocked"}, "blocked", False),
        ("dropped", {"reason": "Bounced Address"}, "dropped", False),
        ("spamreport", {}, "spamreport", True),
        ("unsubscribe", {}, "unsubscribe", True),
        ("group_unsubscribe", {"asm_group_id": 1}, "unsubscribe", True),
    ],
)
def test_events_that_stop_email(db, sent_email, kind, extra, reason, opted_out):
    events(db, [sg(kind, sent_email.id, "e1", **extra)])
    assert db.get(EmailSuppression, "maya@example.com").reason == reason
    db.refresh(sent_email)
    assert (sent_email.account.email_opted_out_at == NOW) is opted_out
    assert sent_email.status == ("delivered" if opted_out else "bounced")


def test_first_suppression_reason_is_kept(db, sent_email):
    events(db, [sg("bounce", sent_email.id, "e1"), sg("spamreport", sent_email.id, "e2")])
    assert db.get(EmailSuppression, "maya@example.com").reason == "bounce"


def test_bounce_for_no_message_of_ours_still_suppresses(db):
    result = events(db, [{"event": "bounce", "email": "X@example.com", "sg_event_id": "e9"}])
    assert (result.applied, result.unmatched) == (0, 1)
    assert db.get(EmailSuppression, "x@example.com").reason == "bounce"


def test_sms_message_ids_are_not_email_events(db, sent_sms):
    result = events(db, [sg("delivered", sent_sms.id, "e1")])
    assert result.unmatched == 1


@pytest.mark.parametrize("payload", [{}, "x", [1], [{"email": "a@b.c"}], [{"event": 3}]])
def test_malformed_batches_are_refused(payload):
    with pytest.raises(inbound.BadEvents):
        inbound.check_events(payload)


def test_an_overlong_message_sid_still_fits_the_columns(db, env):
    add_account(db)
    result = inbound_sms(db, env, "HELP", sid="SM" + "9" * 300)
    [reply] = replies(db)
    assert reply.id == result.reply_id
    assert len(reply.dedupe_key) <= 120
    assert inbound_sms(db, env, "HELP", sid="SM" + "9" * 300).duplicate
