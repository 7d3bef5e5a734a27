"""Payment links: mint, send, open, verify the customer, revoke, resend.

Functions take the session, plain values and ``now``; they flush, never commit.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from app import audit
from app.clock import isoformat
from app.messaging.outbox import MessageEnv, queue_message
from app.models import Account, Channel, Message, OrgSettings
from app.payments.models import Payment
from app.settings import get_settings
from links.models import LinkStatus, PaymentLink
from links.tokens import UrlTokens

MAX_FAILED_VERIFICATIONS = 5
LOCKOUT = timedelta(minutes=15)
# Resends closer together than this are one resend (a double click).
RESEND_WINDOW = timedelta(seconds=1)


class LinkNotFound(Exception):
    """No link for this token: answer 404, revealing nothing."""


class LinkGone(Exception):
    """Expired or revoked: answer 410 with the creditor's contact."""

    def __init__(self, link: PaymentLink, status: str):
        super().__init__(status)
        self.link = link
        self.status = status


class LinkLocked(Exception):
    def __init__(self, until: datetime):
        super().__init__("locked")
        self.until = until


class LinkEnded(Exception):
    """Acting on a link that can no longer change (API: 409)."""


def available_channels(account: Account) -> list[str]:
    """The channels the account has an address for and has not opted out of."""
    channels = []
    if account.phone and account.sms_opted_out_at is None:
        channels.append(Channel.sms.value)
    if account.email and account.email_opted_out_at is None:
        channels.append(Channel.email.value)
    return channels


def local_text(instant: datetime, tz_name: str) -> str:
    """``Nov 24, 2026 5:00 PM EST`` in the customer's time zone."""
    local = instant.astimezone(ZoneInfo(tz_name))
    return local.strftime("%b %-d, %Y %-I:%M %p %Z")


def link_url(env: MessageEnv, tokens: UrlTokens, link: PaymentLink) -> str:
    return f"{env.base_url}/p/{tokens.token_for(link.token_id)}"


def message_context(
    link: PaymentLink, account: Account, settings: OrgSettings, url: str
) -> dict[str, Any]:
    tz = account.timezone or settings.default_timezone
    return {
        "url": url,
        "amount_cents": link.amount_cents,
        "expires_at_text": local_text(link.expires_at, tz),
    }


@dataclass(frozen=True)
class NewLink:
    link: PaymentLink
    url: str
    messages: list[Message]


def create_link(
    session: Session,
    account: Account,
    *,
    amount_cents: int | None,
    channels: Iterable[str] | None,
    expires_in_hours: int | None,
    actor: audit.Actor,
    agent_id: int | None,
    now: datetime,
    env: MessageEnv,
    tokens: UrlTokens,
    enqueue: bool = True,
) -> NewLink:
    """Mint a link for ``account`` and queue its messages (sent after commit; with
    ``enqueue=False`` the caller sends them, e.g. one job for a whole batch). Flushes.

    Amount defaults to the balance, channels to every usable channel, lifetime to the
    settings'. Raises ValueError with a field name for what cannot be done.
    """
    settings = get_settings(session)
    amount = account.balance_cents if amount_cents is None else amount_cents
    if amount <= 0:
        raise ValueError("amount_cents", "the account has no balance to pay")
    if amount > account.balance_cents:
        raise ValueError("amount_cents", "must not be more than the balance")
    chosen = available_channels(account) if channels is None else list(dict.fromkeys(channels))
    hours = expires_in_hours or settings.link_lifetime_hours
    token, token_id = tokens.mint()
    link = PaymentLink(
        token_id=token_id, account_id=account.id, amount_cents=amount,
        status=LinkStatus.active.value, expires_at=now + timedelta(hours=hours), created_at=now,
        created_by_agent_id=agent_id, failed_verifications=0,
    )  # fmt: skip
    session.add(link)
    session.flush()
    url = f"{env.base_url}/p/{token}"
    messages = queue_message(
        session, account, "link", chosen, message_context(link, account, settings, url),
        now=now, env=env, dedupe_key=f"link-{link.id}-0", enqueue=enqueue,
    )  # fmt: skip
    audit.record(
        session, actor, "link.created", "link", link.id, now,
        {"account_id": account.id, "amount_cents": amount, "channels": chosen},
    )  # fmt: skip
    return NewLink(link, url, messages)


def resend_link(
    session: Session,
    link: PaymentLink,
    *,
    channels: Iterable[str] | None,
    actor: audit.Actor,
    now: datetime,
    env: MessageEnv,
    tokens: UrlTokens,
) -> list[Message]:
    """Send the same link again. Raises LinkEnded unless the link is active."""
    refresh_status(link, now)
    if link.status != LinkStatus.active:
        raise LinkEnded(f"the link is {link.status}")
    account = link.account
    settings = get_settings(session)
    chosen = available_channels(account) if channels is None else list(dict.fromkeys(channels))
    url = link_url(env, tokens, link)
    messages = queue_message(
        session, account, "link", chosen, message_context(link, account, settings, url),
        now=now, env=env, dedupe_key=_resend_key(session, link, now),
    )  # fmt: skip
    audit.record(session, actor, "link.resent", "link", link.id, now, {"channels": chosen})
    return messages


def _resend_key(session: Session, link: PaymentLink, now: datetime) -> str:
    """The dedupe key of this resend: a resend less than RESEND_WINDOW after the last one
    (a double-clicked Resend, even across a second boundary) reuses that one's key, so it
    sends nothing new. Callers hold the link's row lock, so two clicks cannot both miss."""
    last = session.execute(
        select(Message.dedupe_key, Message.created_at)
        .where(
            Message.account_id == link.account_id,
            Message.kind == "link",
            Message.dedupe_key.like(f"link-{link.id}-r%"),
        )
        .order_by(Message.id.desc())
        .limit(1)
    ).first()
    if last is not None and last.dedupe_key and now - last.created_at < RESEND_WINDOW:
        return last.dedupe_key.rpartition("-")[0]  # without the channel suffix
    return f"link-{link.id}-r{int(now.timestamp() * 1000)}"


def revoke_link(session: Session, link: PaymentLink, actor: audit.Actor, now: datetime) -> None:
    """Revoke an active link; revoking a revoked link changes nothing. LinkEnded otherwise."""
    refresh_status(link, now)
    if link.status == LinkStatus.revoked:
        return
    if link.status != LinkStatus.active:
        raise LinkEnded(f"the link is {link.status}")
    link.status = LinkStatus.revoked.value
    link.revoked_at = now
    session.flush()
    audit.record(session, actor, "link.revoked", "link", link.id, now)


def refresh_status(link: PaymentLink, now: datetime) -> None:
    """An active link past its expiry is expired (the sweep writes it too)."""
    if link.status == LinkStatus.active and link.expires_at <= now:
        link.status = LinkStatus.expired.value


def find_link(
    session: Session, tokens: UrlTokens, token: str, *, lock: bool = False
) -> PaymentLink:
    """The link of a token; LinkNotFound for a token that does not verify or has no row."""
    from app.tokens import TokenInvalid

    try:
        token_id = tokens.verify(token)
    except TokenInvalid:
        raise LinkNotFound from None
    # The account comes in the same query: every page of the flow needs it.
    stmt = (
        select(PaymentLink)
        .where(PaymentLink.token_id == token_id)
        .options(joinedload(PaymentLink.account, innerjoin=True))
    )
    if lock:
        stmt = stmt.with_for_update(of=PaymentLink)
    link = session.scalar(stmt)
    if link is None:
        raise LinkNotFound
    return link


def open_link(session: Session, link: PaymentLink, now: datetime) -> None:
    """Record the first open (the only thing a GET writes). Raises LinkGone for an expired
    or revoked link."""
    refresh_status(link, now)
    if link.status in (LinkStatus.expired, LinkStatus.revoked):
        raise LinkGone(link, link.status)
    if link.opened_at is None:
        link.opened_at = now
        audit.record(
            session,
            audit.Actor("customer", str(link.account_id)),
            "link.opened",
            "link",
            link.id,
            now,
        )


def check_verification(
    session: Session,
    link: PaymentLink,
    method: str,
    value: str,
    *,
    ssn_last4_ok: bool,
    now: datetime,
) -> bool:
    """Check one verification fact; five failures lock the link for 15 minutes. Flushes.

    ``ssn_last4_ok`` is the caller's comparison for the SSN (it holds only last 4 anyway).
    """
    if link.locked_until is not None and link.locked_until > now:
        raise LinkLocked(link.locked_until)
    account = link.account
    expected: str | None
    if method == "ssn_last4":
        ok = ssn_last4_ok
    else:
        if method == "date_of_birth":
            expected = account.date_of_birth.isoformat() if account.date_of_birth else None
        elif method == "zip":
            expected = (account.zip or "")[:5] or None
        else:
            expected = None
        given = value.strip()[:10]
        ok = expected is not None and hmac.compare_digest(given.encode(), expected.encode())
    if ok:
        link.failed_verifications = 0
        link.locked_until = None
    else:
        link.failed_verifications += 1
        if link.failed_verifications >= MAX_FAILED_VERIFICATIONS:
            link.locked_until = now + LOCKOUT
            link.failed_verifications = 0
            audit.record(
                session,
                audit.Actor("customer", str(account.id)),
                "link.locked",
                "link",
                link.id,
                now,
            )
    session.flush()
    if link.locked_until is not None and link.locked_until > now:
        raise LinkLocked(link.locked_until)
    return ok


def link_messages(session: Session, link: PaymentLink) -> list[Message]:
    """Every message sent for this link (first send and resends), oldest first."""
    stmt = select(Message).where(Message.dedupe_key.like(f"link-{link.id}-%")).order_by(Message.id)
    return list(session.scalars(stmt))


def link_json(session: Session, link: PaymentLink, url: str | None = None) -> dict[str, Any]:
    payments = session.scalars(
        select(Payment).where(Payment.link_id == link.id).order_by(Payment.id)
    )
    body: dict[str, Any] = {
        "id": link.id,
        "account_id": link.account_id,
        "amount_cents": link.amount_cents,
        "status": link.status,
        "expires_at": isoformat(link.expires_at),
        "created_at": isoformat(link.created_at),
        "opened_at": isoformat(link.opened_at),
        "used_at": isoformat(link.used_at),
        "revoked_at": isoformat(link.revoked_at),
        "payments": [
            {
                "id": p.id,
                "amount_cents": p.amount_cents,
                "status": _api_payment_status(p.status),
                "method": p.method.as_json(),
                "created_at": isoformat(p.created_at),
                "scheduled_for": isoformat(p.scheduled_for),
                "receipt_number": p.receipt_number,
            }
            for p in payments
        ],
    }
    if url is not None:
        body["url"] = url
    return body


def _api_payment_status(status: str) -> str:
    # The contract's four, plus cancelled (a scheduled payment that will never be charged,
    # which "pending" would misreport); pending covers scheduled and processing too.
    return status if status in ("paid", "declined", "refunded", "cancelled") else "pending"


def verification_date(value: str) -> date | None:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        return None
