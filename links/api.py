"""The links API: /api/v1/links."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, jsonify, request

from app.api import json_body
from app.auth import require_api
from app.clock import utcnow
from app.db import db_session, get_by_id
from app.errors import Conflict, NotFound, ValidationFailed
from app.models import Account, Message
from app.ratelimit import api_caller_key, api_limit, limiter
from app.validation import Errors
from links import service
from links.models import LinkStatus, PaymentLink
from links.web import link_tokens, message_env

bp = Blueprint("links_api", __name__, url_prefix="/api/v1")
# The API's configured limit (PAYLINK_API_RATE_LIMIT), as on the rest of /api/v1.
limiter.limit(api_limit, key_func=api_caller_key)(bp)
CHANNELS = ("sms", "email")


def message_json(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "channel": message.channel,
        "kind": message.kind,
        "status": message.status,
    }


def _whole(value: Any, name: str, errors: Errors, lo: int, hi: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        errors.add(name, "must be a whole number")
    elif not lo <= value <= hi:
        errors.add(name, f"must be between {lo} and {hi}")
    else:
        return value
    return None


def _channels(value: Any, account: Account | None, errors: Errors) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or any(c not in CHANNELS for c in value):
        errors.add("channels", 'must be a non-empty list of "sms" and "email"')
        return None
    if account is not None:
        usable = service.available_channels(account)
        for channel in value:
            if channel not in usable:
                reason = "opted out" if _has_address(account, channel) else "no address on file"
                errors.add("channels", f"{channel}: {reason}")
    return list(dict.fromkeys(value))


def _has_address(account: Account, channel: str) -> bool:
    return bool(account.phone if channel == "sms" else account.email)


def _load(link_id: int, *, lock: bool = False) -> PaymentLink:
    """The link, or 404. ``lock`` takes its row lock (revoke, resend) so a revoke cannot
    cross a payment or another revoke, and two resends are serialized."""
    session = db_session()
    link = get_by_id(session, PaymentLink, link_id, lock=lock)
    if link is None:
        raise NotFound("No link with that id.")
    return link


@bp.post("/links")
@require_api()
def create_link() -> tuple[Response, int]:
    data = json_body()
    session = db_session()
    errors = Errors()
    for name in sorted(set(data) - {"account_id", "amount_cents", "channels", "expires_in_hours"}):
        errors.add(name, "is not a known field")
    account_id = data.get("account_id")
    account = None
    if isinstance(account_id, bool) or not isinstance(account_id, int):
        errors.add("account_id", "is required: the id of an account")
    else:
        account = get_by_id(session, Account, account_id)
        if account is None:
            errors.add("account_id", "no account has this id")
    amount = _whole(data.get("amount_cents"), "amount_cents", errors, 1, 10**12)
    hours = _whole(data.get("expires_in_hours"), "expires_in_hours", errors, 1, 24 * 90)
    channels = _channels(data.get("channels"), account, errors)
    no_channel = account is not None and not service.available_channels(account)
    if no_channel and channels is None and "channels" not in errors.by_field:
        errors.add("channels", "the account has no phone or email that may be used")
    if account is not None and amount is not None and amount > account.balance_cents:
        errors.add("amount_cents", "must not be more than the balance")
    if account is not None and amount is None and account.balance_cents <= 0:
        errors.add("amount_cents", "the account has no balance to pay")
    if errors:
        raise ValidationFailed(errors.by_field)
    assert account is not None
    new = service.create_link(
        session, account, amount_cents=amount, channels=channels, expires_in_hours=hours,
        actor=g.actor, agent_id=g.agent.id, now=utcnow(), env=message_env(), tokens=link_tokens(),
    )  # fmt: skip
    session.commit()
    body = service.link_json(session, new.link, new.url)
    body["messages"] = [message_json(m) for m in new.messages]
    response = jsonify(body)
    response.headers["Location"] = f"/api/v1/links/{new.link.id}"
    return response, 201


@bp.get("/links/<int:link_id>")
@require_api()
def get_link(link_id: int) -> Response:
    link = _load(link_id)
    service.refresh_status(link, utcnow())  # an active link past its expiry reads expired
    return jsonify(_link_body(link))


def _link_body(link: PaymentLink) -> dict[str, Any]:
    session = db_session()
    url = service.link_url(message_env(), link_tokens(), link)
    body = service.link_json(session, link, url)
    body["messages"] = [message_json(m) for m in service.link_messages(session, link)]
    return body


@bp.post("/links/<int:link_id>/revoke")
@require_api()
def revoke_link(link_id: int) -> Response:
    session = db_session()
    link = _load(link_id, lock=True)
    try:
        service.revoke_link(session, link, g.actor, utcnow())
    except service.LinkEnded as exc:
        raise Conflict(f"The link cannot be revoked: {exc}.") from None
    session.commit()
    return jsonify(_link_body(link))


@bp.post("/links/<int:link_id>/resend")
@require_api()
def resend_link(link_id: int) -> tuple[Response, int]:
    data = json_body() if _has_body() else {}
    session = db_session()
    link = _load(link_id, lock=True)
    now = utcnow()
    service.refresh_status(link, now)
    if link.status != LinkStatus.active:
        # An ended link is a conflict whatever the body asks for.
        raise Conflict(f"The link cannot be resent: the link is {link.status}.")
    errors = Errors()
    for name in sorted(set(data) - {"channels"}):
        errors.add(name, "is not a known field")
    channels = _channels(data.get("channels"), link.account, errors)
    if (
        channels is None
        and "channels" not in errors.by_field
        and not service.available_channels(link.account)
    ):
        errors.add("channels", "the account has no phone or email that may be used")
    if errors:
        raise ValidationFailed(errors.by_field)
    try:
        messages = service.resend_link(
            session, link, channels=channels, actor=g.actor, now=now, env=message_env(),
            tokens=link_tokens(),
        )  # fmt: skip
    except service.LinkEnded as exc:
        raise Conflict(f"The link cannot be resent: {exc}.") from None
    session.commit()
    return jsonify({"id": link.id, "messages": [message_json(m) for m in messages]}), 202


def _has_body() -> bool:
    return bool(request.get_data(cache=True))
