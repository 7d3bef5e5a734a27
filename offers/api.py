"""The offers API: /api/v1/offers."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from flask import Blueprint, Response, g, jsonify

from app.api import json_body
from app.auth import require_api
from app.clock import parse_instant, utcnow
from app.db import db_session, get_by_id
from app.errors import Conflict, NotFound, ValidationFailed
from app.models import Account, Role
from app.settings import get_settings
from app.validation import Errors
from links.service import available_channels
from links.web import message_env
from offers import plan_math, service
from offers.models import Offer
from offers.web import offer_tokens

bp = Blueprint("offers_api", __name__, url_prefix="/api/v1")
FIELDS = {
    "account_id", "kind", "total_cents", "installment_count", "frequency", "first_due_date",
    "expires_at", "expires_in_hours", "channels", "reminder_offsets",
}  # fmt: skip


def _int(data: dict[str, Any], name: str, errors: Errors, required: bool = True) -> int | None:
    value = data.get(name)
    if value is None:
        if required:
            errors.add(name, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        errors.add(name, "must be a whole number")
        return None
    if not -(2**62) < value < 2**62:
        errors.add(name, "is out of range")
        return None
    return value


def parse_request(data: dict[str, Any], now) -> tuple[service.OfferRequest | None, Errors]:
    """Turn the JSON body into an OfferRequest, collecting every format error."""
    session = db_session()
    errors = Errors()
    for name in sorted(set(data) - FIELDS):
        errors.add(name, "is not a known field")
    account_id = _int(data, "account_id", errors)
    account = None
    if account_id is not None:
        account = session.get(Account, account_id) if account_id > 0 else None
        if account is None:
            errors.add("account_id", "no account has this id")
    kind = data.get("kind", "plan")
    if kind not in ("plan", "settlement"):
        errors.add("kind", 'must be "plan" or "settlement"')
    total = _int(data, "total_cents", errors)
    if total is not None and total <= 0:
        errors.add("total_cents", "must be more than zero")
    count = _int(data, "installment_count", errors, required=kind == "plan")
    if count is None and kind == "settlement" and "installment_count" not in errors.by_field:
        count = 1
    frequency = data.get("frequency", "monthly")
    if frequency not in plan_math.FREQUENCIES:
        errors.add("frequency", f"must be one of {', '.join(plan_math.FREQUENCIES)}")
    first_due = None
    raw_first = data.get("first_due_date")
    if not isinstance(raw_first, str):
        errors.add("first_due_date", "is required, as YYYY-MM-DD")
    else:
        try:
            first_due = date.fromisoformat(raw_first)
            if len(raw_first) != 10:
                raise ValueError
        except ValueError:
            errors.add("first_due_date", "is not a real date as YYYY-MM-DD")
    expires_at = None
    if "expires_at" in data and "expires_in_hours" in data:
        errors.add("expires_at", "give expires_at or expires_in_hours, not both")
    elif isinstance(data.get("expires_at"), str):
        try:
            raw = data["expires_at"]
            expires_at = parse_instant(raw)
            if "T" not in raw:
                raise ValueError
        except ValueError:
            errors.add("expires_at", "must be an ISO 8601 instant with an offset")
    elif "expires_at" in data:
        errors.add("expires_at", "must be an ISO 8601 instant with an offset")
    elif "expires_in_hours" in data:
        hours = _int(data, "expires_in_hours", errors)
        if hours is not None and not 1 <= hours <= 24 * 90:
            errors.add("expires_in_hours", "must be between 1 and 2160")
        elif hours is not None:
            expires_at = now + timedelta(hours=hours)
    else:
        expires_at = now + timedelta(hours=get_settings(session).offer_lifetime_hours)
    channels = data.get("channels")
    if channels is None:
        channels = available_channels(account) if account else []
    elif (
        not isinstance(channels, list)
        or not channels
        or any(c not in ("sms", "email") for c in channels)
    ):
        errors.add("channels", 'must be a non-empty list of "sms" and "email"')
        channels = []
    offsets = data.get("reminder_offsets")
    if offsets is None:
        offsets = list(get_settings(session).reminder_offsets)
    elif not isinstance(offsets, list) or any(not isinstance(o, str) for o in offsets):
        errors.add("reminder_offsets", 'must be a list such as ["72h", "24h", "2h"]')
        offsets = []
    if (
        errors
        or account is None
        or total is None
        or count is None
        or first_due is None
        or expires_at is None
    ):
        return None, errors
    return (
        service.OfferRequest(
            account=account,
            kind=kind,
            total_cents=total,
            installment_count=count,
            frequency=frequency,
            first_due_date=first_due,
            expires_at=expires_at,
            channels=list(dict.fromkeys(channels)),
            reminder_offsets=offsets,
        ),
        errors,
    )


def _load(offer_id: int) -> Offer:
    offer = get_by_id(db_session(), Offer, offer_id)
    if offer is None:
        raise NotFound("No offer with that id.")
    return offer


@bp.post("/offers")
@require_api()
def create_offer() -> tuple[Response, int]:
    data = json_body()
    now = utcnow()
    req, errors = parse_request(data, now)
    if req is None:
        raise ValidationFailed(errors.by_field)
    session = db_session()
    errors, percent_off = service.validate_offer(session, req, Role(g.agent.role), now)
    if errors:
        raise ValidationFailed(errors.by_field)
    offer, url, _messages = service.create_offer(
        session, req, percent_off=percent_off, actor=g.actor, agent_id=g.agent.id, now=now,
        env=message_env(), tokens=offer_tokens(),
    )  # fmt: skip
    session.commit()
    response = jsonify(service.offer_json(session, offer, url))
    response.headers["Location"] = f"/api/v1/offers/{offer.id}"
    return response, 201


@bp.get("/offers/<int:offer_id>")
@require_api()
def get_offer(offer_id: int) -> Response:
    session = db_session()
    offer = _load(offer_id)
    service.refresh_status(offer, utcnow())
    url = service.offer_url(message_env(), offer_tokens(), offer)
    return jsonify(service.offer_json(session, offer, url))


@bp.post("/offers/<int:offer_id>/revoke")
@require_api()
def revoke_offer(offer_id: int) -> Response:
    session = db_session()
    offer = _load(offer_id)
    try:
        service.revoke_offer(session, offer, g.actor, utcnow())
    except service.OfferEnded as exc:
        raise Conflict(f"The offer cannot be revoked: {exc}.") from None
    session.commit()
    return jsonify(service.offer_json(session, offer))
