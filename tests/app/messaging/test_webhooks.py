"""The provider webhooks through real HTTP requests, signed with the SDKs' own helpers:
Twilio's RequestValidator and an ECDSA P-256 key standing in for SendGrid's."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from app import create_app
from app.clock import utcnow
from app.messaging import inbound
from app.messaging.outbox import MessageEnv, queue_message
from app.messaging.webhooks import EMPTY_TWIML
from app.models import (
    Account,
    AuditEvent,
    EmailSuppression,
    Message,
    MessageEvent,
    ParkedSmsStatus,
    WebhookReceipt,
)
from tests.helpers import drain
from tests.workers.test_processes import wait_for, waiting_on_a_lock
from workers.messaging import drop_parked_statuses
from workers.runtime import set_job_app

BASE = "https://pay.example.test"  # the base_url of conftest's app_config
TOKEN = "twilio-auth-token-for-tests-0123"
PHONE = "+12025550143"
NOON_NY = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # 10:00 in New York, inside quiet hours
INBOUND = "/webhooks/twilio/inbound"
STATUS = "/webhooks/twilio/status"
EVENTS = "/webhooks/sendgrid/events"


# --- keys, apps, accounts -----------------------------------------------------------------


@pytest.fixture(scope="module")
def sendgrid_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    """The key as SendGrid shows it: base64 DER SubjectPublicKeyInfo, no PEM lines."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


@pytest.fixture
def make_app(app_config) -> Iterator[Any]:
    created: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        application = create_app({**app_config, **overrides})
        set_job_app(application)
        created.append(application)
        return application

    yield make
    set_job_app(None)
    for application in created:
        application.extensions["paylink.queue"].close()
        application.extensions["paylink.db"].dispose()


@pytest.fixture
def app(make_app, sendgrid_key) -> Flask:
    """The outbox backends (nothing leaves the machine, workers can run) with both webhook
    secrets set: the outbox backends do not forbid them."""
    return make_app(
        twilio_auth_token=TOKEN, sendgrid_webhook_public_key=public_key_b64(sendgrid_key)
    )


def client_for(application: Flask, session) -> FlaskClient:
    """A test client that first ends ``session``'s transaction (on SQLite every transaction
    takes the write lock up front, so the test's own reads would block the request), and
    afterwards expires what the session holds, so the test reads what the request wrote."""

    class ReleasingClient(FlaskClient):
        def open(self, *args: Any, **kwargs: Any):
            session.rollback()
            try:
                return super().open(*args, **kwargs)
            finally:
                session.expire_all()

    application.test_client_class = ReleasingClient
    return application.test_client()


@pytest.fixture
def client(app, db) -> FlaskClient:
    return client_for(app, db)


def work(app: Flask, db) -> None:
    """Run a real worker until the queues are empty (the test session lets go first)."""
    db.rollback()
    drain(app)
    db.expire_all()


@pytest.fixture
def account(db) -> Account:
    return add_account(db)


def add_account(db, external_id: str = "M-1", phone: str = PHONE, **kw: Any) -> Account:
    acct = Account(
        external_id=external_id, name="Maya Brooks", phone=phone, email="maya@example.com",
        timezone="America/New_York", balance_cents=5000, currency="USD",
        created_at=utcnow(), updated_at=utcnow(), **kw,
    )  # fmt: skip
    db.add(acct)
    db.commit()
    return acct


def queue(app: Flask, db, account_id: int, kind="link", channels=("sms",), **kw) -> list[int]:
    """Queue a payment-link message as a feature would, committed (send job after commit)."""
    env = MessageEnv.from_config(app.extensions["paylink.config"])
    ctx = {"url": f"{BASE}/p/abc", "amount_cents": 5000, "expires_at_text": "Nov 30"}
    acct = db.get(Account, account_id)
    ids = [m.id for m in queue_message(db, acct, kind, channels, ctx, now=utcnow(), env=env, **kw)]
    db.commit()
    return ids


def all_messages(db) -> list[Message]:
    return list(db.scalars(select(Message).order_by(Message.id)))


def count(db, model, *where) -> int:
    return db.scalar(select(func.count()).select_from(model).where(*where))


# --- signing ------------------------------------------------------------------------------


def twilio_post(client, path: str, form: dict[str, str], *, url: str | None = None,
                token: str = TOKEN, signature: str | None = None):  # fmt: skip
    if signature is None:
        signature = RequestValidator(token).compute_signature(url or BASE + path, form)
    headers = {"X-Twilio-Signature": signature} if signature else {}
    return client.post(path, data=form, headers=headers)


def sms_form(body: str, sid: str = "SM" + "1" * 32, phone: str = PHONE) -> dict[str, str]:
    return {
        "MessageSid": sid, "SmsSid": sid, "AccountSid": "AC" + "0" * 32, "From": phone,
        "To": "+15005550006", "Body": body, "NumMedia": "0", "NumSegments": "1",
    }  # fmt: skip


def texted(client, body: str, sid: str = "SM" + "1" * 32, phone: str = PHONE):
    response = twilio_post(client, INBOUND, sms_form(body, sid, phone))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/xml"
    assert response.get_data(as_text=True) == EMPTY_TWIML
    return response


def status_form(sid: str, status: str, code: str | None = None) -> dict[str, str]:
    form = {"MessageSid": sid, "SmsSid": sid, "MessageStatus": status, "SmsStatus": status,
            "AccountSid": "AC" + "0" * 32, "From": "+15005550006", "To": PHONE}  # fmt: skip
    if code:
        form["ErrorCode"] = code
    return form


def sendgrid_sign(key: ec.EllipticCurvePrivateKey, timestamp: str, body: str) -> str:
    signature = key.sign((timestamp + body).encode(), ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode()


def sendgrid_post(client, key, payload: Any, *, timestamp: int | None = None,
                  signature: str | None = None, sign_body: str | None = None):  # fmt: skip
    body = payload if isinstance(payload, str) else json.dumps(payload) + "\r\n"
    ts = str(int(utcnow().timestamp()) if timestamp is None else timestamp)
    if signature is None:
        signature = sendgrid_sign(key, ts, body if sign_body is None else sign_body)
    headers = {
        "X-Twilio-Email-Event-Webhook-Signature": signature,
        "X-Twilio-Email-Event-Webhook-Timestamp": ts,
    }
    return client.post(EVENTS, data=body, headers=headers, content_type="application/json")


def sg_event(kind: str, message_id: int, event_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "email": "maya@example.com", "timestamp": int(utcnow().timestamp()), "event": kind,
        "sg_event_id": event_id, "sg_message_id": "abc.filter0001", "category": ["link"],
        "paylink_message_id": str(message_id), **extra,
    }  # fmt: skip


def assert_forbidden(response) -> None:
    assert response.status_code == 403
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["status"] == 403


def nothing_changed(db, account: Account) -> None:
    db.expire_all()
    assert db.get(Account, account.id).sms_opted_out_at is None
    assert db.get(Account, account.id).email_opted_out_at is None
    assert count(db, Message) == 0 or all(m.kind == "link" for m in all_messages(db))
    assert count(db, WebhookReceipt) == 0
    assert count(db, AuditEvent) == 0
    assert count(db, EmailSuppression) == 0


# --- no secret, no webhook ----------------------------------------------------------------


def test_without_secrets_every_webhook_answers_403(make_app, sendgrid_key, db_for):
    application = make_app()  # outbox backends, no token, no key
    db = db_for(application)
    client = client_for(application, db)
    acct = add_account(db)
    assert_forbidden(twilio_post(client, INBOUND, sms_form("STOP")))
    assert_forbidden(twilio_post(client, STATUS, status_form("SMx", "delivered")))
    assert_forbidden(sendgrid_post(client, sendgrid_key, [sg_event("bounce", 1, "e1")]))
    nothing_changed(db, acct)


@pytest.fixture
def db_for() -> Iterator[Any]:
    sessions = []

    def open_session(application: Flask):
        session = application.extensions["paylink.db"].Session()
        sessions.append(session)
        return session

    yield open_session
    for session in sessions:
        session.close()


def test_real_provider_backends_accept_signed_webhooks(make_app, sendgrid_key, db_for):
    application = make_app(
        sms_backend="twilio", twilio_account_sid="AC" + "0" * 32, twilio_auth_token=TOKEN,
        twilio_from_number="+15005550006", email_backend="sendgrid",
        sendgrid_api_key="SG.test", sendgrid_from_email="billing@example.com",
        sendgrid_webhook_public_key=public_key_b64(sendgrid_key),
    )  # fmt: skip
    db = db_for(application)
    client = client_for(application, db)
    acct = add_account(db)
    texted(client, "STOP")
    # The confirmation is queued (a worker would send it through Twilio; none runs here).
    assert [(m.kind, m.status) for m in all_messages(db)] == [("sms_opted_out", "queued")]
    response = sendgrid_post(client, sendgrid_key, [sg_event("unsubscribe", 999, "e1")])
    assert response.status_code == 200
    assert db.get(EmailSuppression, "maya@example.com").reason == "unsubscribe"
    assert_forbidden(twilio_post(client, INBOUND, sms_form("START"), token="another-token"))
    assert db.get(Account, acct.id).sms_opted_out_at is not None


# --- Twilio signatures --------------------------------------------------------------------


def test_forged_signature_is_refused_and_changes_nothing(client, db, account):
    assert_forbidden(twilio_post(client, INBOUND, sms_form("STOP"), token="not-our-token"))
    assert_forbidden(twilio_post(client, INBOUND, sms_form("STOP"), signature="Zm9yZ2Vk"))
    nothing_changed(db, account)


def test_missing_signature_is_refused(client, db, account):
    assert_forbidden(twilio_post(client, INBOUND, sms_form("STOP"), signature=""))
    assert_forbidden(twilio_post(client, STATUS, status_form("SMx", "failed"), signature=""))
    nothing_changed(db, account)


def test_signature_for_another_url_is_refused(client, db, account):
    form = sms_form("STOP")
    assert_forbidden(twilio_post(client, INBOUND, form, url=BASE + STATUS))
    assert_forbidden(twilio_post(client, INBOUND, form, url="https://evil.example" + INBOUND))
    # What the app sees locally is not what Twilio called: the public URL is what counts.
    assert_forbidden(twilio_post(client, INBOUND, form, url="http://localhost" + INBOUND))
    nothing_changed(db, account)


def test_signature_over_other_parameters_is_refused(client, db, account):
    signature = RequestValidator(TOKEN).compute_signature(BASE + INBOUND, sms_form("HELP"))
    assert_forbidden(twilio_post(client, INBOUND, sms_form("STOP"), signature=signature))
    nothing_changed(db, account)


def test_query_string_is_part_of_the_signed_url(client, db, account):
    form = sms_form("STOP")
    signature = RequestValidator(TOKEN).compute_signature(f"{BASE}{INBOUND}?site=1", form)
    response = client.post(
        f"{INBOUND}?site=1", data=form, headers={"X-Twilio-Signature": signature}
    )
    assert response.status_code == 200
    # Signed with the query string, sent without it.
    form = sms_form("START", sid="SM2")
    assert_forbidden(twilio_post(client, INBOUND, form, url=f"{BASE}{INBOUND}?site=1"))


def test_signed_request_without_message_sid_is_a_400(client, account):
    form = sms_form("STOP")
    del form["MessageSid"]
    response = twilio_post(client, INBOUND, form)
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"


# --- inbound SMS --------------------------------------------------------------------------


def test_stop_then_a_send_only_the_confirmation_goes_out(app, client, db, account):
    with time_machine.travel(NOON_NY, tick=False):
        texted(client, "STOP")
        queue(app, db, account.id)  # a payment link, queued after the STOP
        work(app, db)
    confirmation, link = all_messages(db)
    assert (confirmation.kind, confirmation.status) == ("sms_opted_out", "delivered")
    assert confirmation.provider_id
    assert confirmation.recipient == PHONE
    assert (link.kind, link.status, link.status_reason) == ("link", "suppressed", "sms opted out")
    assert link.provider_id is None
    assert db.get(Account, account.id).sms_opted_out_at == NOON_NY
    assert db.scalar(select(AuditEvent.action)) == "account.sms_opted_out"


@pytest.mark.parametrize("body", ["Stop texting me", "STOPALL", " quit. ", "please stop"])
def test_opt_out_words(client, db, account, body):
    texted(client, body)
    assert db.get(Account, account.id).sms_opted_out_at is not None
    assert [m.kind for m in all_messages(db)] == ["sms_opted_out"]


def test_start_after_stop(app, client, db, account):
    with time_machine.travel(NOON_NY, tick=False):
        texted(client, "STOP", sid="SM1")
        texted(client, "START", sid="SM2")
        queue(app, db, account.id)
        work(app, db)
    assert db.get(Account, account.id).sms_opted_out_at is None
    assert [(m.kind, m.status) for m in all_messages(db)] == [
        ("sms_opted_out", "delivered"), ("sms_opted_in", "delivered"), ("link", "delivered"),
    ]  # fmt: skip


def test_help_reply_names_the_creditors_phone(app, client, db, account):
    with time_machine.travel(NOON_NY, tick=False):
        texted(client, "HELP")
        work(app, db)
    [reply] = all_messages(db)
    assert (reply.kind, reply.status) == ("sms_help", "delivered")
    assert "+18005550100" in reply.body


def test_inbound_from_unknown_number_sends_nothing(client, db, account):
    response = texted(client, "HELP", phone="+12025550111")
    assert response.get_data(as_text=True) == EMPTY_TWIML  # same answer as a known number
    assert all_messages(db) == []
    assert count(db, AuditEvent) == 0


def test_same_inbound_twice_one_confirmation(client, db, account):
    texted(client, "STOP")
    texted(client, "STOP")
    assert [m.kind for m in all_messages(db)] == ["sms_opted_out"]
    assert count(db, AuditEvent) == 1


def test_other_text_is_recorded_without_reply(client, db, account):
    texted(client, "I get paid on Friday")
    assert all_messages(db) == []
    event = db.scalar(select(AuditEvent))
    assert (event.action, event.actor_type, event.actor_id) == (
        "account.sms_received", "customer", str(account.id),
    )  # fmt: skip
    assert event.data["text"] == "I get paid on Friday"


# --- Twilio status callbacks --------------------------------------------------------------


@pytest.fixture
def sent_sms(app, db, account) -> Message:
    [message_id] = queue(app, db, account.id, enqueue=False)
    message = db.get(Message, message_id)
    message.status, message.provider_id = "sent", "SM" + "a" * 32
    db.commit()
    return message


def callback(client, message: Message, status: str, code: str | None = None):
    response = twilio_post(client, STATUS, status_form(message.provider_id, status, code))
    assert response.status_code == 200
    return response


def test_status_callbacks_out_of_order(client, db, sent_sms):
    callback(client, sent_sms, "delivered")
    callback(client, sent_sms, "sent")
    callback(client, sent_sms, "sending")
    assert sent_sms.status == "delivered"
    assert sent_sms.delivered_at is not None


def test_repeated_status_callback_changes_nothing(client, db, sent_sms):
    callback(client, sent_sms, "delivered")
    events = count(db, MessageEvent)
    callback(client, sent_sms, "delivered")
    assert count(db, MessageEvent) == events


def test_failed_21610_opts_the_account_out(client, db, sent_sms):
    callback(client, sent_sms, "failed", code="21610")
    assert sent_sms.status == "failed"
    assert "21610" in sent_sms.error
    assert sent_sms.events[-2].detail["error_code"] == "21610"
    assert sent_sms.account.sms_opted_out_at is not None


def test_status_for_unknown_sid_is_200_and_parked(client, db, sent_sms):
    """It may belong to a send still being recorded (see test_send_job): kept for it."""
    response = twilio_post(client, STATUS, status_form("SM" + "f" * 32, "failed", "30003"))
    assert response.status_code == 200
    assert sent_sms.status == "sent"
    assert count(db, WebhookReceipt) == 0
    parked = db.scalars(select(ParkedSmsStatus)).all()
    assert [(p.message_sid, p.status, p.error_code) for p in parked] == [
        ("SM" + "f" * 32, "failed", "30003")
    ]
    # Twilio's retry of the same callback is parked once.
    again = twilio_post(client, STATUS, status_form("SM" + "f" * 32, "failed", "30003"))
    assert again.status_code == 200
    assert count(db, ParkedSmsStatus) == 1


def test_the_sweep_applies_a_parked_status_whose_send_is_on_record(app, client, db, account):
    """A send recorded without its parked callbacks (by any path) gets them from the
    hourly sweep."""
    sid = "SM" + "c" * 32
    assert twilio_post(client, STATUS, status_form(sid, "delivered")).status_code == 200
    [message_id] = queue(app, db, account.id, enqueue=False)
    message = db.get(Message, message_id)
    message.status, message.provider_id = "sent", sid
    db.commit()
    with app.app_context():
        assert drop_parked_statuses(utcnow()) == {"applied": 1, "dropped": 0}
    db.expire_all()
    assert db.get(Message, message_id).status == "delivered"
    assert count(db, ParkedSmsStatus) == 0


def test_a_parked_callback_that_fails_leaves_the_send_recorded(
    app, client, db, account, monkeypatch
):
    """Each parked callback is applied in a savepoint: one that raises stays parked (and
    is logged), the others apply, and the send's record commits all the same."""
    sid = "SM" + "e" * 32
    for status, code in (("failed", "30003"), ("delivered", None)):
        assert twilio_post(client, STATUS, status_form(sid, status, code)).status_code == 200
    assert count(db, ParkedSmsStatus) == 2
    real = inbound.record_sms_status

    def failing_on_failed(session, **kwargs):
        result = real(session, **kwargs)  # its writes happen, then it fails
        if kwargs["status"] == "failed":
            raise RuntimeError("a callback that cannot be applied")
        return result

    monkeypatch.setattr(inbound, "record_sms_status", failing_on_failed)
    [message_id] = queue(app, db, account.id, enqueue=False)
    database = app.extensions["paylink.db"]
    with database.transaction() as recording:  # the worker recording the send
        message = recording.get(Message, message_id)
        message.status, message.provider_id = "sent", sid
        assert inbound.apply_parked(recording, message, utcnow()) == 1
    db.expire_all()
    recorded = db.get(Message, message_id)
    assert recorded.provider_id == sid  # the send's record stands
    assert recorded.status == "delivered"  # the good callback applied
    assert recorded.error is None  # nothing of the failed one's writes
    left = db.scalars(select(ParkedSmsStatus)).all()
    assert [(p.status, p.error_code) for p in left] == [("failed", "30003")]


def test_a_callback_racing_the_record_of_its_send_is_not_lost(app, client, db, account):
    """PostgreSQL: the callback finds no message while the send's record is still
    uncommitted; it waits on the sid's lock instead of parking where the send's
    transaction has already looked, and applies to the message once it is committed."""
    database = app.extensions["paylink.db"]
    if database.engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs the two transactions one after the other")
    sid = "SM" + "d" * 32
    [message_id] = queue(app, db, account.id, enqueue=False)
    answers: list[int] = []
    with database.transaction() as recording:  # the worker recording the send
        message = recording.get(Message, message_id)
        message.status, message.provider_id = "sent", sid
        assert inbound.apply_parked(recording, message, utcnow()) == 0  # nothing parked yet
        webhook = threading.Thread(
            target=lambda: answers.append(
                twilio_post(app.test_client(), STATUS, status_form(sid, "delivered")).status_code
            )
        )
        webhook.start()
        wait_for(
            lambda: waiting_on_a_lock(database.engine, "pg_advisory_xact_lock"),
            what="the callback waiting on the sid's lock",
        )
    webhook.join(timeout=30)
    assert answers == [200]
    db.expire_all()
    assert db.get(Message, message_id).status == "delivered"
    assert count(db, ParkedSmsStatus) == 0


def test_forged_status_callback_changes_nothing(client, db, sent_sms):
    form = status_form(sent_sms.provider_id, "failed", "21610")
    assert_forbidden(twilio_post(client, STATUS, form, token="not-our-token"))
    assert sent_sms.status == "sent"
    assert sent_sms.account.sms_opted_out_at is None


# --- SendGrid events ----------------------------------------------------------------------


def test_delivered_then_bounce_suppresses_later_email(app, client, db, account, sendgrid_key):
    with time_machine.travel(NOON_NY, tick=False):
        [first] = queue(app, db, account.id, channels=("email",))
        work(app, db)
        assert db.get(Message, first).status == "delivered"  # the outbox backend's word
        batch = [
            sg_event("delivered", first, "ev-1"),
            sg_event("bounce", first, "ev-2", reason="550 5.1.1 user unknown", status="5.1.1"),
        ]
        assert sendgrid_post(client, sendgrid_key, batch).status_code == 200
        assert db.get(Message, first).status == "bounced"
        assert db.get(EmailSuppression, "maya@example.com").reason == "bounce"
        [later] = queue(app, db, account.id, channels=("email",))
        work(app, db)
    message = db.get(Message, later)
    assert (message.status, message.status_reason) == (
        "suppressed", "address suppressed: bounce",
    )  # fmt: skip
    assert message.provider_id is None


def test_unsubscribe_event_opts_the_account_out_of_email(app, client, db, account, sendgrid_key):
    [message_id] = queue(app, db, account.id, channels=("email",), enqueue=False)
    batch = [sg_event("unsubscribe", message_id, "ev-1")]
    assert sendgrid_post(client, sendgrid_key, batch).status_code == 200
    assert db.get(Account, account.id).email_opted_out_at is not None
    assert db.get(EmailSuppression, "maya@example.com").reason == "unsubscribe"
    assert db.scalar(select(AuditEvent.action)) == "account.email_opted_out"


def test_replayed_event_is_processed_once(app, client, db, account, sendgrid_key):
    [message_id] = queue(app, db, account.id, channels=("email",), enqueue=False)
    batch = [sg_event("open", message_id, "ev-1")]
    assert sendgrid_post(client, sendgrid_key, batch).status_code == 200
    # The same event again, freshly signed a minute later: SendGrid retrying, or a replay.
    later = int(utcnow().timestamp()) + 60
    with time_machine.travel(datetime.fromtimestamp(later, UTC), tick=False):
        assert sendgrid_post(client, sendgrid_key, batch).status_code == 200
    assert count(db, MessageEvent, MessageEvent.type == "open") == 1


@pytest.mark.parametrize("age", [timedelta(minutes=6), -timedelta(minutes=6)])
def test_timestamp_outside_the_window_is_refused(client, db, account, sendgrid_key, age):
    stamp = int((utcnow() - age).timestamp())
    batch = [sg_event("unsubscribe", 1, "ev-1")]
    assert_forbidden(sendgrid_post(client, sendgrid_key, batch, timestamp=stamp))
    nothing_changed(db, account)


def test_timestamp_inside_the_window_is_accepted(client, sendgrid_key):
    stamp = int((utcnow() - timedelta(minutes=4)).timestamp())
    response = sendgrid_post(client, sendgrid_key, [sg_event("open", 1, "ev-1")], timestamp=stamp)
    assert response.status_code == 200


def test_bad_sendgrid_signatures_are_refused(client, db, account, sendgrid_key):
    batch = [sg_event("unsubscribe", 1, "ev-1")]
    other_key = ec.generate_private_key(ec.SECP256R1())
    assert_forbidden(sendgrid_post(client, other_key, batch))  # forged
    assert_forbidden(sendgrid_post(client, sendgrid_key, batch, signature="not base64!"))
    assert_forbidden(sendgrid_post(client, sendgrid_key, batch, signature=""))  # missing
    assert_forbidden(sendgrid_post(client, sendgrid_key, batch, sign_body="[]"))  # other body
    body = json.dumps(batch) + "\r\n"
    assert_forbidden(sendgrid_post(client, sendgrid_key, body, sign_body=body.strip()))
    assert_forbidden(client.post(EVENTS, data=body, content_type="application/json"))
    nothing_changed(db, account)


@pytest.mark.parametrize("body", ["not json", '{"event": "open"}', "[1, 2]", "[" * 5000])
def test_signed_malformed_body_is_a_400(client, sendgrid_key, body):
    response = sendgrid_post(client, sendgrid_key, body)
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert response.get_json()["status"] == 400
