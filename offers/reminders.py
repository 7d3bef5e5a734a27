"""An offer's reminders and its expiry: when each reminder goes (quiet hours), sending the
due ones, expiring the offer with its notice, and making queued reminders moot when the
offer ends. Functions take the session, plain values and ``now``; they flush, never commit.

Exactly once: the caller holds the offer's row lock (taken before its reminders', the
order every writer of an offer follows), a reminder leaves ``pending`` in the transaction
that writes its messages, and each message has a dedupe key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import audit
from app.clock import isoformat
from app.messaging import compliance
from app.messaging.outbox import MessageEnv, advance, queue_message
from app.models import Account, Channel, Message, MessageStatus, OrgSettings
from links.service import available_channels
from links.tokens import UrlTokens
from offers import trail
from offers.models import OPEN_OFFER, Offer, OfferReminder, OfferStatus

SWEEPER = audit.Actor.system("sweep")
PENDING = "pending"
# A reminder moved out of quiet hours to the evening before goes this long before the
# window closes (20:45 with the default 21:00), leaving the sweep and the sender time.
EVENING_MARGIN = timedelta(minutes=14)
WAITING = (MessageStatus.queued.value, MessageStatus.deferred.value)


def reminder_key(offer_id: int, n: int) -> str:
    return f"reminder-{offer_id}-{n}"


def expired_key(offer_id: int) -> str:
    return f"offer-expired-{offer_id}"


# --- planning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """When one reminder goes (``at``), or None when it is skipped; ``decision`` says why
    it is not at its nominal time (None when it is)."""

    nominal: datetime
    at: datetime | None
    decision: str | None


def quiet_hours(settings: OrgSettings) -> compliance.QuietHours:
    return compliance.QuietHours(settings.quiet_hours_start_minute, settings.quiet_hours_end_minute)


def _local(instant: datetime, tz: ZoneInfo) -> str:
    return instant.astimezone(tz).strftime("%a %b %-d %H:%M")


def plan_reminders(
    nominal: Sequence[datetime],
    *,
    sent_at: datetime,
    expires_at: datetime,
    tz: ZoneInfo,
    hours: compliance.QuietHours,
) -> list[Plan]:
    """Place each reminder (earliest first) outside quiet hours: at its nominal time when
    allowed; else 15 minutes before the allowed window before it closes, if that is after
    the previous reminder (or the offer itself); else at the next allowed time, if that is
    before the expiry and after the previous one; else skipped."""
    plans: list[Plan] = []
    previous = sent_at
    for at in sorted(nominal):
        when = f"due {_local(at, tz)} local, in quiet hours"
        if hours.allows(at.astimezone(tz)):
            if at > previous:
                plans.append(Plan(at, at, None))
                previous = at
            else:
                plans.append(Plan(at, None, "skipped: not after the previous reminder"))
            continue
        # Not the window's last minute: a sweep a minute late would meet quiet hours.
        before = compliance.last_allowed_before(at, tz, hours) - EVENING_MARGIN
        after = compliance.next_allowed(at, tz, hours)
        if before > previous:
            note = f"{when}; moved earlier to {_local(before, tz)}, the last allowed time"
            plans.append(Plan(at, before, note))
            previous = before
        elif previous < after < expires_at:
            note = f"{when}; moved later to {_local(after, tz)}, the next allowed time"
            plans.append(Plan(at, after, note))
            previous = after
        else:
            note = f"{when}; skipped: no allowed time after the previous reminder and before expiry"
            plans.append(Plan(at, None, note))
    return plans


def schedule_reminders(
    session: Session,
    offer: Offer,
    nominal: Sequence[tuple[str, datetime]],
    *,
    settings: OrgSettings,
    now: datetime,
) -> list[OfferReminder]:
    """Write the offer's reminder rows, numbered from the earliest, each planned around
    quiet hours in the account's time zone; a skipped one is written ``skipped`` with its
    reason. Flushes."""
    tz = ZoneInfo(offer.account.timezone or settings.default_timezone)
    ordered = sorted(nominal, key=lambda item: item[1])
    plans = plan_reminders(
        [at for _, at in ordered],
        sent_at=now,
        expires_at=offer.expires_at,
        tz=tz,
        hours=quiet_hours(settings),
    )
    rows = []
    for n, ((offset, at), plan) in enumerate(zip(ordered, plans, strict=True), start=1):
        row = OfferReminder(
            offer_id=offer.id, n=n, offset=offset, due_at=plan.at or at,
            status=PENDING if plan.at else "skipped", decision=plan.decision,
            decided_at=now if plan.decision else None,
        )  # fmt: skip
        session.add(row)
        rows.append(row)
        if plan.at is None:
            trail.append(
                session, offer.id, "offer.reminder_skipped", now,
                data={"n": n, "due_at": isoformat(at), "reason": plan.decision},
            )  # fmt: skip
    session.flush()
    return rows


# --- sending ------------------------------------------------------------------------------


def offer_channels(session: Session, offers: Iterable[Offer]) -> dict[int, list[str]]:
    """The channels each offer was sent on (its ``offer`` messages), email first."""
    by_key = {f"offer-{o.id}-{c}": o.id for o in offers for c in (Channel.email, Channel.sms)}
    found: dict[int, list[str]] = {}
    if not by_key:
        return found
    rows = session.execute(
        select(Message.dedupe_key, Message.channel).where(Message.dedupe_key.in_(list(by_key)))
    )
    for key, channel in rows:
        found.setdefault(by_key[key], []).append(channel)
    return {k: sorted(v) for k, v in found.items()}


def _usable(account: Account, channels: Iterable[str]) -> list[str]:
    """Of ``channels``, those the account still has an address for and has not opted out of."""
    allowed = available_channels(account)
    return [channel for channel in channels if channel in allowed]


def send_due(
    session: Session,
    offer: Offer,
    due: Sequence[OfferReminder],
    **kw,
) -> list[Message]:
    """Send the latest of an offer's due reminders; earlier ones still pending (the sweep
    was behind, or the clock jumped) are moot and skipped, so the customer gets one. The
    caller holds the locks. Flushes."""
    pending = sorted((r for r in due if r.status == PENDING), key=lambda r: r.n)
    if not pending:
        return []
    latest = pending[-1]
    for reminder in pending[:-1]:
        if offer.status in OPEN_OFFER and offer.expires_at > kw["now"]:
            _close(reminder, "skipped", f"superseded by reminder {latest.n}", kw["now"])
            trail.append(
                session, offer.id, "offer.reminder_skipped", kw["now"],
                data={"n": reminder.n, "reason": reminder.decision},
            )  # fmt: skip
    return [m for r in (*pending[:-1], latest) for m in send_reminder(session, offer, r, **kw)]


def send_reminder(
    session: Session,
    offer: Offer,
    reminder: OfferReminder,
    *,
    channels: Sequence[str],
    settings: OrgSettings,
    env: MessageEnv,
    tokens: UrlTokens,
    context: dict,
    now: datetime,
) -> list[Message]:
    """Send one due reminder, or record why not: the offer must still be open and not
    past its expiry. Writes the ``reminder_<n>`` messages (not enqueued: the caller sends
    them in one job) with the expiry as their deadline. The caller holds the offer's and
    the reminder's row locks. Flushes."""
    if reminder.status != PENDING:
        return []
    if offer.status not in OPEN_OFFER or offer.expires_at <= now:
        status = offer.status if offer.status not in OPEN_OFFER else OfferStatus.expired.value
        _close(reminder, "cancelled", f"offer {status}", now)
        return []
    usable = _usable(offer.account, channels)
    if not usable:
        _close(reminder, "skipped", "no channel left: opted out or no address", now)
        trail.append(
            session, offer.id, "offer.reminder_skipped", now,
            data={"n": reminder.n, "reason": reminder.decision},
        )  # fmt: skip
        return []
    messages = queue_message(
        session, offer.account, f"reminder_{reminder.n}", usable, context, now=now, env=env,
        dedupe_key=reminder_key(offer.id, reminder.n), send_before=offer.expires_at,
        enqueue=False,
    )  # fmt: skip
    late = now - reminder.due_at
    note = reminder.decision
    if late.total_seconds() >= 3600:
        note = f"{note + '; ' if note else ''}sent {int(late.total_seconds() // 60)} min late"
    _close(reminder, "sent", note, now)
    trail.append(
        session, offer.id, "offer.reminder_sent", now,
        data={"n": reminder.n, "channels": usable, "due_at": isoformat(reminder.due_at)},
    )  # fmt: skip
    audit.record(
        session, SWEEPER, "offer.reminder_sent", "offer", offer.id, now,
        {"n": reminder.n, "channels": usable},
    )  # fmt: skip
    return messages


def _close(reminder: OfferReminder, status: str, decision: str | None, now: datetime) -> None:
    reminder.status = status
    reminder.decided_at = now
    reminder.decision = decision


# --- the offer ending ----------------------------------------------------------------------


def cancel_reminders(session: Session, offer: Offer, reason: str, now: datetime) -> list[Message]:
    """The offer ended (accepted, declined, revoked, expired): its pending reminders are
    cancelled, and reminder messages still waiting to go out are suppressed (one a send
    job has claimed gets the deadline now, so only one already at the provider goes).
    The caller holds the offer's row lock. Flushes."""
    for reminder in offer.reminders:
        if reminder.status == PENDING:
            _close(reminder, "cancelled", reason, now)
    keys = [
        f"{reminder_key(offer.id, n)}-{c}" for n in (1, 2, 3) for c in (Channel.email, Channel.sms)
    ]
    # A plain lock: a send job's claim holds these rows only for its short transaction.
    unsent = list(
        session.scalars(
            select(Message)
            .where(
                Message.dedupe_key.in_(keys),
                Message.status.in_([*WAITING, MessageStatus.sending.value]),
            )
            .order_by(Message.id)
            .with_for_update()
        )
    )
    waiting = [m for m in unsent if m.status in WAITING]
    for message in unsent:
        if message.status in WAITING:
            advance(session, message, MessageStatus.suppressed, now, reason=reason)
        else:
            # Claimed by a send job: one already at the provider goes; one the job hands
            # back unsent (its time budget ran out) now meets its deadline and is suppressed.
            message.send_before = now
    session.flush()
    return waiting


def expire_offer(
    session: Session,
    offer: Offer,
    *,
    channels: Sequence[str],
    settings: OrgSettings,
    env: MessageEnv,
    now: datetime,
) -> list[Message]:
    """An open offer past its expiry becomes expired: reminders cancelled, the trail and
    audit told, and the ``offer_expired`` notice written (not enqueued) on the channels it
    was sent on when the setting is on — once, by its dedupe key. The caller holds the
    offer's row lock. Flushes."""
    if offer.status not in OPEN_OFFER or offer.expires_at > now:
        return []
    offer.status = OfferStatus.expired.value
    offer.expired_at = offer.expires_at
    cancel_reminders(session, offer, "offer expired", now)
    trail.append(
        session, offer.id, "offer.expired", now, data={"expires_at": isoformat(offer.expires_at)}
    )
    audit.record(session, SWEEPER, "offer.expired", "offer", offer.id, now)
    usable = _usable(offer.account, channels)
    if not settings.expiry_notice or not usable:
        return []
    return queue_message(
        session, offer.account, "offer_expired", usable, {}, now=now, env=env,
        dedupe_key=expired_key(offer.id), enqueue=False,
    )  # fmt: skip
