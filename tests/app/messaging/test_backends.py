"""The twilio and sendgrid backends through the real SDKs against the local fake providers:
what the providers receive, and how each answer becomes a result."""

from __future__ import annotations

import base64
import socket
from typing import Any

import pytest

from app.config import Config
from app.messaging.backends import build_email_backend, build_sms_backend
from app.messaging.backends.base import Attachment, OutgoingEmail, OutgoingSms
from app.messaging.backends.sendgrid import (
    HTML_TAG,
    MAX_SUBSTITUTION_BYTES,
    TEXT_TAG,
    SendgridEmail,
    plan_calls,
)
from app.messaging.backends.twilio import TwilioSms
from tests.fakes.providers import (
    INVALID_NUMBER,
    OK,
    RATE_LIMITED,
    SENDGRID_API_KEY,
    SENDGRID_FROM_EMAIL,
    SERVER_ERROR,
    TWILIO_ACCOUNT_SID,
    TWILIO_AUTH_TOKEN,
    TWILIO_FROM_NUMBER,
    UNSUBSCRIBED,
    FakeProviders,
    Reply,
    slow,
)

MESSAGING_SERVICE_SID = "MG" + "7c" * 16
CALLBACK = "https://pay.example.test/webhooks/twilio/status"


def closed_port_url() -> str:
    """A loopback URL nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def twilio(fake: FakeProviders, **kw: Any) -> TwilioSms:
    options: dict[str, Any] = {"from_number": TWILIO_FROM_NUMBER, "api_base": fake.url}
    options.update(kw)
    return TwilioSms(TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, **options)


def sendgrid(fake: FakeProviders, **kw: Any) -> SendgridEmail:
    options: dict[str, Any] = {"host": fake.url}
    options.update(kw)
    return SendgridEmail(SENDGRID_API_KEY, SENDGRID_FROM_EMAIL, **options)


def sms(message_id: int = 1, **kw: Any) -> OutgoingSms:
    values: dict[str, Any] = {
        "message_id": message_id,
        "to": "+12025550143",
        "body": "Maya, you can pay your balance securely here: https://pay.example.test/p/abc "
        "Reply STOP to opt out.",
        "status_callback": CALLBACK,
        "validity_seconds": 3600,
    }
    values.update(kw)
    return OutgoingSms(**values)


def email(message_id: int, kind: str = "reminder_1", **kw: Any) -> OutgoingEmail:
    unsubscribe = f"https://pay.example.test/u/token-{message_id}"
    values: dict[str, Any] = {
        "message_id": message_id,
        "kind": kind,
        "to": f"customer{message_id}@example.com",
        "subject": f"Reminder {message_id}",
        "text": f"Hi {message_id}, pay here: https://pay.example.test/p/{message_id}\n"
        f"Unsubscribe: {unsubscribe}\n",
        "html": f'<p>Hi {message_id}</p><a href="{unsubscribe}">Unsubscribe</a>\n',
        "headers": {
            "List-Unsubscribe": f"<{unsubscribe}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    }
    values.update(kw)
    return OutgoingEmail(**values)


def as_delivered(body: dict[str, Any]) -> list[dict[str, Any]]:
    """What each recipient of one Mail Send call gets: SendGrid puts each
    personalization's substitutions into the shared content."""
    out = []
    for p in body["personalizations"]:
        parts = {}
        for content in body["content"]:
            value = content["value"]
            for tag, sub in (p.get("substitutions") or {}).items():
                value = value.replace(tag, sub)
            parts[content["type"]] = value
        out.append(
            {
                "to": [t["email"] for t in p["to"]],
                "subject": p.get("subject") or body.get("subject"),
                "text": parts.get("text/plain"),
                "html": parts.get("text/html"),
                "headers": p.get("headers"),
                "custom_args": p.get("custom_args"),
            }
        )
    return out


# --- backends chosen by configuration -------------------------------------------------------


def test_configuration_chooses_the_provider_backends(provider_server):
    config = Config(**provider_server.config())
    sms_backend = build_sms_backend(config)
    email_backend = build_email_backend(config)
    assert isinstance(sms_backend, TwilioSms)
    assert isinstance(email_backend, SendgridEmail)
    assert (sms_backend.name, sms_backend.sender) == ("twilio", TWILIO_FROM_NUMBER)
    assert (email_backend.name, email_backend.sender) == ("sendgrid", SENDGRID_FROM_EMAIL)
    assert email_backend.max_batch == 1000
    # Both have a timeout: the SDKs have none of their own.
    assert sms_backend.client.http_client.timeout == 10
    assert email_backend.client.client.timeout == 10
    assert sms_backend.send(sms()).ok
    assert email_backend.send_batch([email(1)])[0].ok
    assert len(provider_server.twilio.requests) == len(provider_server.sendgrid.requests) == 1


# --- Twilio ---------------------------------------------------------------------------------


def test_twilio_receives_the_form_fields_of_messages_create(provider_server):
    result = twilio(provider_server).send(sms(7))
    [request] = provider_server.twilio.requests
    assert request.path == f"/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Messages.json"
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.form == {
        "To": "+12025550143",
        "From": TWILIO_FROM_NUMBER,
        "Body": sms().body,
        "StatusCallback": CALLBACK,
        "ValidityPeriod": "3600",
    }
    assert result.ok
    assert result.message_id == 7
    assert result.provider_id == request.provider_id
    assert result.provider_id.startswith("SM")
    assert not result.delivered  # Twilio reports delivery later, by status callback


def test_twilio_with_a_messaging_service_sends_its_sid_and_no_from_number(provider_server):
    backend = twilio(provider_server, messaging_service_sid=MESSAGING_SERVICE_SID)
    assert backend.sender == MESSAGING_SERVICE_SID  # the rate-limit key
    assert backend.send(sms()).ok
    form = provider_server.twilio.requests[0].form
    assert form["MessagingServiceSid"] == MESSAGING_SERVICE_SID
    assert "From" not in form


def test_twilio_leaves_out_a_callback_and_validity_it_was_not_given(provider_server):
    assert twilio(provider_server).send(sms(status_callback=None, validity_seconds=None)).ok
    assert set(provider_server.twilio.requests[0].form) == {"To", "From", "Body"}


def test_twilio_needs_a_sender():
    with pytest.raises(ValueError, match="from number or a messaging service"):
        TwilioSms(TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)


@pytest.mark.parametrize(
    ("reply", "transient", "code"),
    [
        pytest.param(INVALID_NUMBER, False, "21211", id="invalid-number"),
        pytest.param(UNSUBSCRIBED, False, "21610", id="unsubscribed"),
        pytest.param(RATE_LIMITED, True, "20429", id="429"),
        pytest.param(SERVER_ERROR, True, "20500", id="500"),
        pytest.param(Reply(503, 20503, "Service unavailable"), True, "20503", id="503"),
        # The newer RFC 9457 bodies raise TwilioServiceException, not TwilioRestException.
        pytest.param(
            Reply(400, 21211, "Invalid 'To' Phone Number", problem=True),
            False,
            "21211",
            id="rfc9457-400",
        ),
        pytest.param(
            Reply(429, 20429, "Too Many Requests", problem=True), True, "20429", id="rfc9457-429"
        ),
        pytest.param(
            Reply(502, 20500, "Bad gateway", problem=True), True, "20500", id="rfc9457-502"
        ),
    ],
)
def test_twilio_errors_are_transient_or_permanent(provider_server, reply, transient, code):
    provider_server.twilio.reply(reply)
    result = twilio(provider_server).send(sms())
    assert not result.ok
    assert result.provider_id is None
    assert (result.error.transient, result.error.code) == (transient, code)
    assert reply.message in result.error.detail


def test_twilio_wrong_credentials_are_permanent(provider_server):
    backend = TwilioSms(
        TWILIO_ACCOUNT_SID,
        "wrong-token",
        from_number=TWILIO_FROM_NUMBER,
        api_base=provider_server.url,
    )
    result = backend.send(sms())
    assert (result.error.transient, result.error.code) == (False, "20003")


def test_twilio_timeout_is_transient(provider_server):
    provider_server.twilio.reply(slow(5))
    result = twilio(provider_server, timeout=0.5).send(sms())
    assert (result.error.transient, result.error.code) == (True, "timeout")
    [request] = provider_server.twilio.requests
    assert request.status == 0  # received, never answered


def test_twilio_unreachable_is_transient():
    backend = TwilioSms(
        TWILIO_ACCOUNT_SID,
        TWILIO_AUTH_TOKEN,
        from_number=TWILIO_FROM_NUMBER,
        api_base=closed_port_url(),
        timeout=2,
    )
    result = backend.send(sms())
    assert (result.error.transient, result.error.code) == (True, "network")


def test_twilio_sequence_of_answers(provider_server):
    provider_server.twilio.reply(SERVER_ERROR, RATE_LIMITED, then=OK)
    backend = twilio(provider_server)
    codes = [backend.send(sms(n)).error for n in range(3)]
    assert [c.code if c else None for c in codes] == ["20500", "20429", None]
    assert [r.status for r in provider_server.twilio.requests] == [500, 429, 201]


# --- SendGrid -------------------------------------------------------------------------------


def test_sendgrid_sends_a_batch_as_one_call_with_a_personalization_each(provider_server):
    emails = [email(n) for n in (11, 12, 13)]
    results = sendgrid(provider_server).send_batch(emails)
    [request] = provider_server.sendgrid.requests
    body = request.json
    assert request.headers["Authorization"] == f"Bearer {SENDGRID_API_KEY}"
    assert body["from"] == {"email": SENDGRID_FROM_EMAIL}
    assert body["categories"] == ["reminder_1"]
    assert body["content"] == [
        {"type": "text/plain", "value": TEXT_TAG},
        {"type": "text/html", "value": HTML_TAG},
    ]
    assert "attachments" not in body
    assert body["personalizations"][0] == {
        "to": [{"email": "customer11@example.com"}],
        "subject": "Reminder 11",
        "headers": {
            "List-Unsubscribe": "<https://pay.example.test/u/token-11>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        "substitutions": {TEXT_TAG: emails[0].text, HTML_TAG: emails[0].html},
        "custom_args": {"paylink_message_id": "11"},
    }
    # Each recipient ends up with exactly their own email.
    assert as_delivered(body) == [
        {
            "to": [e.to],
            "subject": e.subject,
            "text": e.text,
            "html": e.html,
            "headers": e.headers,
            "custom_args": {"paylink_message_id": str(e.message_id)},
        }
        for e in emails
    ]
    # One X-Message-Id for the call; each email's provider id is unique.
    assert [r.message_id for r in results] == [11, 12, 13]
    assert [r.provider_id for r in results] == [f"{request.provider_id}.{n}" for n in (11, 12, 13)]
    assert all(r.ok and not r.delivered for r in results)


@pytest.mark.parametrize(("count", "calls"), [(1000, [1000]), (2500, [1000, 1000, 500])])
def test_sendgrid_carries_up_to_1000_personalizations_a_call(provider_server, count, calls):
    results = sendgrid(provider_server).send_batch([email(n) for n in range(1, count + 1)])
    requests = provider_server.sendgrid.requests
    assert [len(r.json["personalizations"]) for r in requests] == calls
    assert all(r.ok for r in results)
    assert len({r.provider_id for r in results}) == count


def test_sendgrid_never_names_an_address_twice_in_one_call(provider_server):
    # SendGrid refuses a request that includes an address more than once.
    emails = [email(1), email(2, to="Same@Example.com"), email(3, to="same@example.com")]
    results = sendgrid(provider_server).send_batch(emails)
    assert all(r.ok for r in results)
    sent = [
        [p["to"][0]["email"] for p in r.json["personalizations"]]
        for r in provider_server.sendgrid.requests
    ]
    assert sent == [["customer1@example.com", "Same@Example.com"], ["same@example.com"]]


def test_sendgrid_sends_an_email_with_attachments_alone_with_real_content(provider_server):
    pdf = b"%PDF-1.7 signed agreement"
    emails = [
        email(1, kind="plan_confirmed"),
        email(
            2,
            kind="plan_confirmed",
            attachments=(Attachment("agreement.pdf", "application/pdf", pdf),),
        ),
        email(3, kind="plan_confirmed"),
    ]
    results = sendgrid(provider_server).send_batch(emails)
    assert all(r.ok for r in results)
    shared, alone = (r.json for r in provider_server.sendgrid.requests)
    assert [p["custom_args"]["paylink_message_id"] for p in shared["personalizations"]] == [
        "1",
        "3",
    ]
    assert [p["custom_args"]["paylink_message_id"] for p in alone["personalizations"]] == ["2"]
    assert "substitutions" not in alone["personalizations"][0]
    assert alone["content"] == [
        {"type": "text/plain", "value": emails[1].text},
        {"type": "text/html", "value": emails[1].html},
    ]
    assert alone["attachments"] == [
        {
            "content": base64.b64encode(pdf).decode(),
            "filename": "agreement.pdf",
            "type": "application/pdf",
            "disposition": "attachment",
        }
    ]
    assert alone["categories"] == ["plan_confirmed"]
    assert alone["personalizations"][0]["headers"] == emails[1].headers


def test_sendgrid_sends_a_body_over_the_substitution_limit_alone(provider_server):
    big_html = "<p>" + "x" * MAX_SUBSTITUTION_BYTES + "</p>"
    emails = [email(1), email(2, html=big_html), email(3)]
    results = sendgrid(provider_server).send_batch(emails)
    assert all(r.ok for r in results)  # the fake refuses substitutions over 10,000 bytes
    shared, alone = (r.json for r in provider_server.sendgrid.requests)
    assert len(shared["personalizations"]) == 2
    assert alone["content"][1] == {"type": "text/html", "value": big_html}


def test_sendgrid_counts_substitution_bytes_not_characters():
    # 3,400 three-byte characters: 3,400 characters but 10,200 bytes.
    emails = [email(1, text="€" * 3400), email(2)]
    assert [(shared, [e.message_id for e in group]) for shared, group in plan_calls(emails)] == [
        (True, [2]),
        (False, [1]),
    ]


def test_sendgrid_text_that_looks_like_a_placeholder_goes_alone(provider_server):
    emails = [email(1, text="Dear -paylink_html- customer"), email(2)]
    results = sendgrid(provider_server).send_batch(emails)
    assert all(r.ok for r in results)
    shared, alone = (r.json for r in provider_server.sendgrid.requests)
    assert alone["content"][0]["value"] == "Dear -paylink_html- customer"
    assert len(shared["personalizations"]) == 1


def test_sendgrid_keeps_kinds_in_separate_calls(provider_server):
    results = sendgrid(provider_server).send_batch([email(1, "receipt"), email(2, "link")])
    assert all(r.ok for r in results)
    assert [r.json["categories"] for r in provider_server.sendgrid.requests] == [
        ["receipt"],
        ["link"],
    ]


@pytest.mark.parametrize(
    ("reply", "transient", "code"),
    [
        pytest.param(Reply(429, message="too many requests"), True, "429", id="429"),
        pytest.param(Reply(500, message="internal error"), True, "500", id="500"),
        pytest.param(Reply(503, message="unavailable"), True, "503", id="503"),
        pytest.param(Reply(400, message="bad request"), False, "400", id="400"),
        pytest.param(Reply(403, message="access forbidden"), False, "403", id="403"),
        pytest.param(Reply(413, message="payload too large"), False, "413", id="413"),
    ],
)
def test_sendgrid_errors_apply_to_every_email_of_the_call(provider_server, reply, transient, code):
    provider_server.sendgrid.reply(reply)
    results = sendgrid(provider_server).send_batch([email(1), email(2)])
    assert len(provider_server.sendgrid.requests) == 1
    for result in results:
        assert result.provider_id is None
        assert (result.error.transient, result.error.code) == (transient, code)
        assert result.error.detail == reply.message


def test_sendgrid_400_naming_one_personalization_fails_only_that_email(provider_server):
    provider_server.sendgrid.reply(
        Reply(
            400, message="Does not contain a valid address.", field="personalizations.1.to.0.email"
        )
    )
    results = sendgrid(provider_server).send_batch([email(1), email(2), email(3)])
    assert [r.ok for r in results] == [True, False, True]
    assert (results[1].error.transient, results[1].error.code) == (False, "400")
    assert results[1].error.detail == "Does not contain a valid address."
    first, second = provider_server.sendgrid.requests
    assert (first.status, second.status) == (400, 202)
    assert [p["custom_args"]["paylink_message_id"] for p in second.json["personalizations"]] == [
        "1",
        "3",
    ]


def test_sendgrid_wrong_key_is_permanent(provider_server):
    backend = SendgridEmail("SG.wrong.key", SENDGRID_FROM_EMAIL, host=provider_server.url)
    [result] = backend.send_batch([email(1)])
    assert (result.error.transient, result.error.code) == (False, "401")


def test_sendgrid_timeout_is_transient_for_the_whole_call(provider_server):
    provider_server.sendgrid.reply(slow(5))
    results = sendgrid(provider_server, timeout=0.5).send_batch([email(1), email(2)])
    assert [(r.error.transient, r.error.code) for r in results] == [(True, "timeout")] * 2
    [request] = provider_server.sendgrid.requests
    assert request.status == 0


def test_sendgrid_unreachable_is_transient():
    backend = SendgridEmail(
        SENDGRID_API_KEY, SENDGRID_FROM_EMAIL, host=closed_port_url(), timeout=2
    )
    [result] = backend.send_batch([email(1)])
    assert (result.error.transient, result.error.code) == (True, "network")


def test_sendgrid_empty_batch_makes_no_call(provider_server):
    assert sendgrid(provider_server).send_batch([]) == []
    assert provider_server.sendgrid.requests == []


def test_sendgrid_content_the_sdk_refuses_fails_permanently(provider_server):
    # The SDK refuses real content that starts like an API key ("SG.x.y"); retrying
    # could not help. Such an email goes alone, so nothing else is held up.
    results = sendgrid(provider_server).send_batch(
        [email(1, text="SG.abc.def is your code -paylink_x"), email(2)]
    )
    assert (results[0].error.transient, results[0].error.code) == (False, "content")
    assert results[1].ok
    assert len(provider_server.sendgrid.requests) == 1
