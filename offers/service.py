"""Offers: validate and create (with reminders and the offer message), view, decline,
revoke, and their JSON. Functions take the session, plain values and ``now``; they flush,
never commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import audit
from app.clock import isoformat
from app.messaging.outbox import MessageEnv, queue_message
from app.models import Account, Message, OrgSettings, Role
from app.settings import get_settings
from app.validation import Errors
from links.service import available_channels, local_text
from links.tokens import UrlTokens
from offers import plan_math, reminders, trail
from offers.models import OPEN_OFFER, Offer, OfferStatus, PaymentPlan

FREQUENCY_TEXT = {
    "weekly": "every week",
    "biweekly": "every two weeks",
    "monthly": "every month",
    "semimonthly": "on the 1st and 15th",
}


class OfferEnded(Exception):
    """Acting on an offer that can no longer change (API: 409)."""


class OfferGone(Exception):
    """Expired, revoked or declined: the customer's page answers 410."""

    def __init__(self, offer: Offer):
        super().__init__(offer.status)
        self.offer = offer


@dataclass(frozen=True)
class OfferRequest:
    """An offer as an agent asks for it, already parsed into Python values."""

    account: Account
    kind: str
    total_cents: int
    installment_count: int
    frequency: str
    first_due_date: date
    expires_at: datetime
    channels: list[str]
    reminder_offsets: list[str]


def validate_offer(
    session: Session, req: OfferRequest, role: Role, now: datetime
) -> tuple[Errors, int | None]:
    """The rules an offer must meet; returns the errors and, for a settlement, its
    discount in whole percent."""
    settings = get_settings(session)
    errors = Errors()
    account = req.account
    tz = account.timezone or settings.default_timezone
    today = plan_math.local_today(now, tz)
    if not 1 <= req.installment_count <= settings.max_installments:
        errors.add("installment_count", f"must be between 1 and {settings.max_installments}")
    if req.total_cents > account.balance_cents:
        errors.add("total_cents", "must not be more than the balance")
    elif req.total_cents < req.installment_count:
        errors.add("total_cents", "must be at least one cent per installment")
    percent_off = None
    if req.kind == "settlement" and "total_cents" not in errors.by_field:
        if req.total_cents >= account.balance_cents:
            errors.add("total_cents", "a settlement must be less than the balance")
        else:
            discount = (account.balance_cents - req.total_cents) * 100 / account.balance_cents
            percent_off = max(1, round(discount))
            if discount > settings.settlement_max_percent_off:
                errors.add(
                    "total_cents",
                    f"a settlement may take at most {settings.settlement_max_percent_off}% off",
                )
            elif discount > settings.settlement_supervisor_percent_off and not (
                Role(role).rank >= Role.supervisor.rank
            ):
                errors.add(
                    "total_cents",
                    f"more than {settings.settlement_supervisor_percent_off}% off needs a "
                    "supervisor",
                )
    horizon = today + timedelta(days=settings.first_due_horizon_days)
    if req.first_due_date < today:
        errors.add("first_due_date", "must not be in the past")
    elif req.first_due_date > horizon:
        errors.add("first_due_date", f"must be within {settings.first_due_horizon_days} days")
    if req.frequency == "semimonthly" and req.first_due_date.day not in plan_math.SEMIMONTHLY_DAYS:
        errors.add("first_due_date", "a semimonthly plan starts on a 1st or a 15th")
    if req.expires_at <= now:
        errors.add("expires_at", "must be in the future")
    try:
        times = plan_math.reminder_times(req.expires_at, req.reminder_offsets)
    except ValueError as exc:
        errors.add("reminder_offsets", str(exc))
    else:
        if any(t <= now for t in times):
            errors.add("reminder_offsets", "every reminder must still be ahead (before expiry)")
    usable = available_channels(account)
    if not req.channels:
        errors.add("channels", "the account has no phone or email that may be used")
    for channel in req.channels:
        if channel not in usable:
            errors.add("channels", f"{channel}: opted out or no address on file")
    return errors, percent_off


def offer_schedule(offer: Offer) -> list[plan_math.Installment]:
    return plan_math.schedule(
        offer.total_cents, offer.installment_count, offer.frequency, offer.first_due_date
    )


def offer_url(env: MessageEnv, tokens: UrlTokens, offer: Offer) -> str:
    return f"{env.base_url}/o/{tokens.token_for(offer.token_id)}"


def offer_message_context(offer: Offer, settings: OrgSettings, url: str) -> dict[str, Any]:
    tz = offer.account.timezone or settings.default_timezone
    expires = offer.expires_at
    return {
        "url": url,
        "total_cents": offer.total_cents,
        "installment_count": offer.installment_count,
        "frequency_text": FREQUENCY_TEXT[offer.frequency],
        "expires_at_text": local_text(expires, tz),
        "expires_short": expires.astimezone(_zone(tz)).strftime("%b %-d %-I:%M%p"),
    }


def _zone(name: str):
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def create_offer(
    session: Session,
    req: OfferRequest,
    *,
    percent_off: int | None,
    actor: audit.Actor,
    agent_id: int | None,
    now: datetime,
    env: MessageEnv,
    tokens: UrlTokens,
) -> tuple[Offer, str, list[Message]]:
    """Create a checked offer (see validate_offer), its reminder rows, its first trail
    event, and queue its message — all in the caller's transaction. Flushes."""
    settings = get_settings(session)
    token, token_id = tokens.mint()
    offer = Offer(
        token_id=token_id, account_id=req.account.id, kind=req.kind, total_cents=req.total_cents,
        balance_cents=req.account.balance_cents, percent_off=percent_off,
        installment_count=req.installment_count, frequency=req.frequency,
        first_due_date=req.first_due_date, status=OfferStatus.sent.value,
        expires_at=req.expires_at, created_at=now, created_by_agent_id=agent_id,
    )  # fmt: skip
    offer.account = req.account
    session.add(offer)
    session.flush()
    url = f"{env.base_url}/o/{token}"
    messages = queue_message(
        session, req.account, "offer", req.channels, offer_message_context(offer, settings, url),
        now=now, env=env, dedupe_key=f"offer-{offer.id}",
    )  # fmt: skip
    schedule = [i.as_json() for i in offer_schedule(offer)]
    trail.append(
        session, offer.id, "offer.sent", now,
        data={"kind": offer.kind, "total_cents": offer.total_cents, "schedule": schedule,
              "channels": req.channels, "expires_at": isoformat(offer.expires_at)},
    )  # fmt: skip
    nominal = [(o, req.expires_at - plan_math.parse_offset(o)) for o in req.reminder_offsets]
    reminders.schedule_reminders(session, offer, nominal, settings=settings, now=now)
    audit.record(
        session, actor, "offer.created", "offer", offer.id, now,
        {"account_id": req.account.id, "kind": req.kind, "total_cents": req.total_cents},
    )  # fmt: skip
    session.flush()
    return offer, url, messages


def refresh_status(offer: Offer, now: datetime) -> None:
    """An open offer past its expiry reads as expired (the sweep writes it too)."""
    if offer.status in OPEN_OFFER and offer.expires_at <= now:
        offer.status = OfferStatus.expired.value
        offer.expired_at = offer.expired_at or offer.expires_at


def mark_viewed(
    session: Session, offer: Offer, now: datetime, *, ip: str | None, user_agent: str | None
) -> None:
    """The customer opened the offer: sent → viewed, once. Raises OfferGone when it is no
    longer open (an accepted offer is not gone: its page shows the confirmation)."""
    refresh_status(offer, now)
    if offer.status in (OfferStatus.expired, OfferStatus.revoked, OfferStatus.declined):
        raise OfferGone(offer)
    if offer.status == OfferStatus.sent:
        offer.status = OfferStatus.viewed.value
        offer.viewed_at = now
        trail.append(session, offer.id, "offer.viewed", now, ip=ip, user_agent=user_agent)


def revoke_offer(session: Session, offer: Offer, actor: audit.Actor, now: datetime) -> None:
    """Revoke an open offer; revoking a revoked one changes nothing; OfferEnded otherwise.
    Takes the offer's row lock first, as the reminder and expiry sweeps do."""
    session.refresh(offer, with_for_update=True)
    refresh_status(offer, now)
    if offer.status == OfferStatus.revoked:
        return
    if offer.status not in OPEN_OFFER:
        raise OfferEnded(f"the offer is {offer.status}")
    offer.status = OfferStatus.revoked.value
    offer.revoked_at = now
    reminders.cancel_reminders(session, offer, "offer revoked", now)
    trail.append(session, offer.id, "offer.revoked", now, data={"by": actor.type})
    audit.record(session, actor, "offer.revoked", "offer", offer.id, now)
    session.flush()


def decline_offer(
    session: Session, offer: Offer, now: datetime, *, ip: str | None, user_agent: str | None
) -> None:
    """The customer declined. OfferGone / OfferEnded when it is not open."""
    session.refresh(offer, with_for_update=True)
    refresh_status(offer, now)
    if offer.status not in OPEN_OFFER:
        raise OfferEnded(f"the offer is {offer.status}")
    offer.status = OfferStatus.declined.value
    offer.declined_at = now
    reminders.cancel_reminders(session, offer, "offer declined", now)
    trail.append(session, offer.id, "offer.declined", now, ip=ip, user_agent=user_agent)
    audit.record(
        session,
        audit.Actor("customer", str(offer.account_id), ip=ip),
        "offer.declined",
        "offer",
        offer.id,
        now,
    )
    session.flush()


def offer_messages(session: Session, offer: Offer) -> list[Message]:
    # Exact keys: a pattern like "offer-1%" would also match offer 10's messages.
    prefixes = [
        f"offer-{offer.id}",
        *(reminders.reminder_key(offer.id, n) for n in (1, 2, 3)),
        reminders.expired_key(offer.id),
    ]
    keys = [f"{prefix}-{channel}" for prefix in prefixes for channel in ("sms", "email")]
    return list(
        session.scalars(select(Message).where(Message.dedupe_key.in_(keys)).order_by(Message.id))
    )


def offer_json(session: Session, offer: Offer, url: str | None = None) -> dict[str, Any]:
    plan_id = session.scalar(select(PaymentPlan.id).where(PaymentPlan.offer_id == offer.id))
    body: dict[str, Any] = {
        "id": offer.id,
        "account_id": offer.account_id,
        "kind": offer.kind,
        "status": offer.status,
        "total_cents": offer.total_cents,
        "installment_count": offer.installment_count,
        "frequency": offer.frequency,
        "first_due_date": offer.first_due_date.isoformat(),
        "percent_off": offer.percent_off,
        "expires_at": isoformat(offer.expires_at),
        "created_at": isoformat(offer.created_at),
        "viewed_at": isoformat(offer.viewed_at),
        "accepted_at": isoformat(offer.accepted_at),
        "plan_id": plan_id,
        "schedule": [i.as_json() for i in offer_schedule(offer)],
        "reminders": [
            {
                "n": r.n,
                "offset": r.offset,
                "due_at": isoformat(r.due_at),
                "status": r.status,
                "decision": r.decision,
            }
            for r in offer.reminders
        ],
        "messages": [
            {"id": m.id, "channel": m.channel, "kind": m.kind, "status": m.status}
            for m in offer_messages(session, offer)
        ],
        "events": trail.events_json(session, offer.id),
    }
    if url is not None:
        body["url"] = url
    return body
