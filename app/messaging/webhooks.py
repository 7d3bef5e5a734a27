"""Provider webhooks: Twilio status callbacks and inbound SMS, SendGrid events.

Each request is verified with the provider's own SDK helper before anything is read: a
missing, bad or unverifiable signature, or no secret configured to check it with, is a
403 and changes nothing. The work itself is in ``app.messaging.inbound``; this module
only reads the request, and commits.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timedelta

from flask import Blueprint, Response, current_app, g, request
from sendgrid.helpers.eventwebhook import EventWebhook, EventWebhookHeader
from twilio.request_validator import RequestValidator

from app.clock import utcnow
from app.config import Config
from app.db import db_session
from app.errors import ApiError
from app.messaging import inbound
from app.messaging.outbox import MessageEnv

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

TWILIO_SIGNATURE = "X-Twilio-Signature"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
# SendGrid signs its timestamp; older or newer than this is a replay (or a broken clock).
REPLAY_WINDOW = timedelta(minutes=5)


def _config() -> Config:
    return current_app.extensions["paylink.config"]


def _forbidden() -> ApiError:
    return ApiError(403, "Forbidden", "The webhook signature is missing or invalid.")


def _bad_request(detail: str) -> ApiError:
    return ApiError(400, "Bad Request", detail)


def public_url() -> str:
    """The URL the provider called, as the provider saw it.

    Twilio signs the exact URL it requested. Behind a TLS-terminating proxy or load
    balancer ``request.url`` is the internal address (``http://10.0.0.5:8000/...``), and
    its host comes from a header anyone can set, so the URL is rebuilt from
    PAYLINK_BASE_URL, the public address the status callback URL is built from too, plus
    the path and query string as received.
    """
    url = _config().base_url.rstrip("/") + request.path
    if request.query_string:
        url += "?" + request.query_string.decode("latin-1")
    return url


def _verify_twilio() -> None:
    token = _config().twilio_auth_token
    if not token:
        log.warning("twilio webhook refused: PAYLINK_TWILIO_AUTH_TOKEN is not set")
        raise _forbidden()
    signature = request.headers.get(TWILIO_SIGNATURE, "")
    if not signature or not RequestValidator(token).validate(public_url(), request.form, signature):
        log.warning("twilio webhook refused: bad or missing signature on %s", request.path)
        raise _forbidden()


def _form_value(name: str, *, required: bool = True) -> str:
    value = request.form.get(name, "").strip()
    if required and not value:
        raise _bad_request(f"The form field {name} is missing.")
    return value


@bp.post("/twilio/inbound")
def twilio_inbound() -> Response:
    """A text from a customer. The reply goes through the outbox (recorded and gated like
    every message), so the TwiML answer is always empty."""
    _verify_twilio()
    config = _config()
    session = db_session()
    inbound.handle_inbound_sms(
        session,
        message_sid=_form_value("MessageSid"),
        phone=_form_value("From"),
        body=request.form.get("Body", ""),
        now=utcnow(),
        env=MessageEnv.from_config(config),
        request_id=g.get("request_id"),
    )
    session.commit()
    # The same answer whether or not the number is on file.
    return Response(EMPTY_TWIML, status=200, mimetype="text/xml")


@bp.post("/twilio/status")
def twilio_status() -> Response:
    """A delivery report for a text we sent."""
    _verify_twilio()
    session = db_session()
    inbound.record_sms_status(
        session,
        message_sid=_form_value("MessageSid"),
        status=_form_value("MessageStatus"),
        error_code=_form_value("ErrorCode", required=False) or None,
        now=utcnow(),
    )
    session.commit()
    return Response("", status=200)


def replay_window_ok(timestamp: int, now: datetime, window: timedelta = REPLAY_WINDOW) -> bool:
    """Is a signed timestamp (seconds since the epoch) within ``window`` of ``now``?"""
    return abs(now.timestamp() - timestamp) <= window.total_seconds()


def _verify_sendgrid(body: str, now: datetime) -> None:
    key = _config().sendgrid_webhook_public_key
    if not key:
        log.warning("sendgrid webhook refused: PAYLINK_SENDGRID_WEBHOOK_PUBLIC_KEY is not set")
        raise _forbidden()
    signature = request.headers.get(EventWebhookHeader.SIGNATURE, "")
    timestamp = request.headers.get(EventWebhookHeader.TIMESTAMP, "").strip()
    if not signature or not re.fullmatch(r"\d{1,12}", timestamp):
        raise _forbidden()
    if not replay_window_ok(int(timestamp), now):
        log.warning("sendgrid webhook refused: timestamp %s outside the replay window", timestamp)
        raise _forbidden()
    try:
        verifier = EventWebhook(public_key=key)
    except (ValueError, TypeError):
        log.error("PAYLINK_SENDGRID_WEBHOOK_PUBLIC_KEY is not a base64 public key")
        raise _forbidden() from None
    try:
        ok = verifier.verify_signature(body, signature, timestamp)
    except (ValueError, TypeError):  # binascii.Error (bad base64) is a ValueError
        ok = False
    if not ok:
        log.warning("sendgrid webhook refused: bad signature")
        raise _forbidden()


@bp.post("/sendgrid/events")
def sendgrid_events() -> Response:
    """A batch of email events, applied in one transaction."""
    now = utcnow()
    try:
        # The signature covers the exact bytes sent; decode them without any repair.
        body = request.get_data(cache=True).decode("utf-8")
    except UnicodeDecodeError:
        raise _forbidden() from None
    _verify_sendgrid(body, now)
    try:
        events = inbound.check_events(json.loads(body))
    except inbound.BadEvents as exc:
        raise _bad_request(str(exc)) from None
    except (ValueError, RecursionError):  # not JSON, or nested beyond the parser's depth
        raise _bad_request("The body is not JSON.") from None
    session = db_session()
    inbound.record_email_events(session, events, now)
    session.commit()
    return Response("", status=200)
