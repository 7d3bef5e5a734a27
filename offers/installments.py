"""Charging a plan's installments: the decisions, framework-free.

One charge attempt of an installment is one Payment, with the idempotency key
``installment-<id>-<attempt>``: a job run twice, a retry after a crash or a gateway
error, asks the gateway again under the same key and gets the first answer. An
installment is ``scheduled`` while it waits for its due time (or a retry), ``pending``
from the moment its attempt is committed until the gateway has answered (and, for a bank
debit, until it settles), then ``paid``; after the last failed retry it is ``declined``
and the plan is defaulted or cancelled per the settings (``failed_plan_action``).

Retries (``retry_after_days``, e.g. [3, 7]) count days from the first failed attempt:
the first retry 3 days after it, the second 7 days after it. Each retry is scheduled
from the attempt that failed (3, then 7 - 3 = 4 days later) at the account's local
charge hour, so a late attempt (a sweep after an outage) never makes its retries moot.

Functions take the session, rows locked by the caller (the plan first, then the
installment, then the payment: the order ``cancel_plan`` uses), plain values and
``now``; they flush, never commit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import audit
from app.clock import isoformat
from app.messaging.outbox import MessageEnv, queue_message
from app.messaging.render import money
from app.models import Account, Channel, OrgSettings
from app.payments import service as payments
from app.payments.models import Payment, PaymentMethod, PaymentStatus
from app.settings import get_settings
from links import receipts
from offers import plans, trail
from offers.models import Installment, InstallmentStatus, PaymentPlan, PlanStatus

SYSTEM = audit.Actor.system("installments")
_KEY = re.compile(r"installment-(\d+)-(\d+)")


def idempotency_key(installment_id: int, attempt: int) -> str:
    return f"installment-{installment_id}-{attempt}"


def installment_id_of(key: str | None) -> int | None:
    """The installment a payment (by its idempotency key) was an attempt at; None for
    other payments."""
    match = _KEY.fullmatch(key or "")
    return int(match.group(1)) if match else None


# --- when -----------------------------------------------------------------------------------


def account_zone(account: Account, settings: OrgSettings) -> ZoneInfo:
    return ZoneInfo(account.timezone or settings.default_timezone)


def charge_time(day: date, zone: ZoneInfo, settings: OrgSettings) -> datetime:
    """``day`` at the account's local charge hour, in UTC."""
    return datetime.combine(day, time(settings.charge_hour), zone).astimezone(UTC)


def next_charge_time(now: datetime, zone: ZoneInfo, settings: OrgSettings) -> datetime:
    """The next local charge hour after ``now`` (today's if it is still to come)."""
    today = now.astimezone(zone).date()
    at = charge_time(today, zone, settings)
    return at if at > now else charge_time(today + timedelta(days=1), zone, settings)


def retry_at(
    item: Installment, failed_at: datetime, zone: ZoneInfo, settings: OrgSettings
) -> datetime | None:
    """When to try ``item`` again after its attempt number ``item.attempts`` failed at
    ``failed_at``; None when that was the last attempt the policy allows."""
    days = list(settings.retry_after_days or [])
    retries_done = item.attempts - 1
    if retries_done >= len(days):
        return None
    gap = days[retries_done] - (days[retries_done - 1] if retries_done > 0 else 0)
    local_day = failed_at.astimezone(zone).date()
    return charge_time(local_day + timedelta(days=max(1, gap)), zone, settings)


def date_text(instant: datetime, zone: ZoneInfo) -> str:
    """``Dec 4, 2026``: a retry's day as the customer reads it."""
    return plans.due_date_text(instant.astimezone(zone).date())


# --- one attempt ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """What the charge job does next: call the gateway for ``payment`` (new or left
    processing by a crash), or nothing, for the reason in ``outcome``."""

    outcome: str
    payment: Payment | None = None


def start_attempt(
    session: Session, plan: PaymentPlan, item: Installment, now: datetime, *, env: MessageEnv
) -> Attempt:
    """Under the plan's and the installment's row locks: re-check that the installment is
    due on an active plan, then open its next attempt (installment ``pending``, a
    ``processing`` payment under the attempt's key) for the caller to commit before the
    gateway call. An attempt left processing (a crash) is handed back to finish.

    Never takes more than is still owed: with the balance paid off some other way the
    installment is cancelled (the plan completes when nothing else is open), with less
    owed than the installment only that is charged. Flushes."""
    if item.status == InstallmentStatus.pending:
        payment = session.get(Payment, item.last_payment_id) if item.last_payment_id else None
        if payment is not None and payment.status == PaymentStatus.processing:
            return Attempt("resume", payment)
        return Attempt(payment.status if payment is not None else "pending")
    if item.status != InstallmentStatus.scheduled:
        return Attempt(item.status)  # paid, declined or cancelled already
    if plan.status != PlanStatus.active:
        return Attempt(f"plan_{plan.status}")
    if item.next_attempt_at > now:
        return Attempt("not_due")
    account = session.get(Account, plan.account_id)
    method = session.get(PaymentMethod, plan.method_id)
    assert account is not None  # a plan always has its account and method
    assert method is not None
    if account.balance_cents <= 0:
        item.status = InstallmentStatus.cancelled.value
        audit.record(
            session, SYSTEM, "installment.cancelled", "payment_plan", plan.id, now,
            {"n": item.n, "reason": "nothing_owed"},
        )  # fmt: skip
        session.flush()
        complete_if_done(session, plan, now, env=env)
        return Attempt("nothing_owed")
    amount = min(item.amount_cents, account.balance_cents)
    if amount < item.amount_cents:
        audit.record(
            session, SYSTEM, "installment.reduced", "payment_plan", plan.id, now,
            {"n": item.n, "from_cents": item.amount_cents, "to_cents": amount},
        )  # fmt: skip
    item.attempts += 1
    payment, _created = payments.begin_charge(
        session, account=account, method=method, amount_cents=amount,
        idempotency_key=idempotency_key(item.id, item.attempts), now=now,
    )  # fmt: skip
    item.status = InstallmentStatus.pending.value
    item.last_payment_id = payment.id
    audit.record(
        session, SYSTEM, "installment.charging", "payment_plan", plan.id, now,
        {"n": item.n, "attempt": item.attempts, "payment_id": payment.id,
         "amount_cents": amount, "method": method.label},
    )  # fmt: skip
    session.flush()
    return Attempt("charge", payment)


def record_answer(
    session: Session,
    plan: PaymentPlan,
    item: Installment,
    payment: Payment,
    now: datetime,
    *,
    env: MessageEnv,
    update_url: str,
) -> str:
    """After ``finish_charge`` recorded the gateway's answer on ``payment`` (locked, as are
    the plan and the installment): the installment follows, with the customer's notice —
    the receipt (paid, or a bank debit taken), or the decline handling. Flushes."""
    status = PaymentStatus(payment.status)
    audit.record(
        session, SYSTEM, f"payment.{status}", "payment", payment.id, now,
        {"installment_n": item.n, "plan_id": plan.id, "amount_cents": payment.amount_cents,
         "decline_code": payment.decline_code},
    )  # fmt: skip
    if status in (PaymentStatus.paid, PaymentStatus.pending):
        receipts.queue_receipt(session, payment, env, now)
        if status == PaymentStatus.paid:
            mark_paid(session, plan, item, payment, now, env=env)
        else:
            audit.record(
                session, SYSTEM, "installment.pending", "payment_plan", plan.id, now,
                {"n": item.n, "attempt": item.attempts, "payment_id": payment.id,
                 "settles_at": isoformat(payment.settles_at)},
            )  # fmt: skip
    elif status == PaymentStatus.declined:
        handle_decline(session, plan, item, payment, now, env=env, update_url=update_url)
    session.flush()
    return item.status


def record_settlement(
    session: Session,
    plan: PaymentPlan,
    item: Installment,
    payment: Payment,
    now: datetime,
    *,
    env: MessageEnv,
    update_url: str,
) -> None:
    """A pending bank debit of ``item`` settled (``payment`` paid) or came back
    (declined: handled as a decline). Only the installment's current attempt counts."""
    if item.last_payment_id != payment.id or item.status != InstallmentStatus.pending:
        return
    if payment.status == PaymentStatus.paid:
        mark_paid(session, plan, item, payment, now, env=env)
    elif payment.status == PaymentStatus.declined:
        handle_decline(session, plan, item, payment, now, env=env, update_url=update_url)
    session.flush()


def mark_paid(
    session: Session,
    plan: PaymentPlan,
    item: Installment,
    payment: Payment,
    now: datetime,
    *,
    env: MessageEnv,
) -> None:
    """The installment is paid; the plan completes when it was the last one open."""
    item.status = InstallmentStatus.paid.value
    item.paid_at = payment.paid_at or now
    audit.record(
        session, SYSTEM, "installment.paid", "payment_plan", plan.id, now,
        {"n": item.n, "attempt": item.attempts, "payment_id": payment.id,
         "amount_cents": payment.amount_cents, "receipt_number": payment.receipt_number},
    )  # fmt: skip
    session.flush()
    complete_if_done(session, plan, now, env=env)


def complete_if_done(
    session: Session, plan: PaymentPlan, now: datetime, *, env: MessageEnv
) -> bool:
    """An active plan with every installment paid (or cancelled: nothing was owed any
    more) becomes completed, and the customer gets the ``plan_completed`` email once. The
    caller holds the plan's row lock, so two last installments finishing at once complete
    it once. (Only cancel_plan and default_plan cancel installments of a plan they end.)"""
    if plan.status != PlanStatus.active:
        return False
    rows = session.execute(
        select(Installment.status, Installment.last_payment_id).where(
            Installment.plan_id == plan.id
        )
    ).all()
    done = (InstallmentStatus.paid, InstallmentStatus.cancelled)
    if not rows or any(r.status not in done for r in rows):
        return False
    paid_ids = [r.last_payment_id for r in rows if r.status == InstallmentStatus.paid]
    paid_cents = int(
        session.scalar(
            select(func.coalesce(func.sum(Payment.amount_cents), 0)).where(Payment.id.in_(paid_ids))
        )
        or 0
    )
    statuses = [r.status for r in rows]
    plan.status = PlanStatus.completed.value
    plan.completed_at = now
    audit.record(
        session, SYSTEM, "plan.completed", "payment_plan", plan.id, now,
        {"paid_cents": paid_cents, "installments": len(statuses)},
    )  # fmt: skip
    trail.append(session, plan.offer_id, "plan.completed", now, data={"plan_id": plan.id})
    account = session.get(Account, plan.account_id)
    assert account is not None
    if plans.email_allowed(account):
        queue_message(
            session, account, "plan_completed", [Channel.email.value],
            {"total_cents": paid_cents}, now=now, env=env,
            dedupe_key=plans.completed_key(plan.id),
        )  # fmt: skip
    session.flush()
    return True


def handle_decline(
    session: Session,
    plan: PaymentPlan,
    item: Installment,
    payment: Payment,
    now: datetime,
    *,
    env: MessageEnv,
    update_url: str,
) -> None:
    """A declined attempt: with a retry left, the installment is scheduled again and the
    customer gets the ``payment_failed`` notice (the retry date, a link to change the
    payment method); after the last one, the installment is declined and the plan
    defaulted or cancelled per the settings, with that notice instead."""
    settings = get_settings(session)
    account = session.get(Account, plan.account_id)
    assert account is not None
    zone = account_zone(account, settings)
    retry = retry_at(item, now, zone, settings) if plan.status == PlanStatus.active else None
    audit.record(
        session, SYSTEM, "installment.declined", "payment_plan", plan.id, now,
        {"n": item.n, "attempt": item.attempts, "payment_id": payment.id,
         "decline_code": payment.decline_code, "retry_at": isoformat(retry)},
    )  # fmt: skip
    if retry is not None:
        item.status = InstallmentStatus.scheduled.value
        item.next_attempt_at = retry
        receipts.queue_payment_failed(
            session, payment, env, now, url=update_url, retry_date_text=date_text(retry, zone)
        )
        session.flush()
        return
    item.status = InstallmentStatus.declined.value
    session.flush()
    if plan.status != PlanStatus.active:
        return  # a debit returned after the plan ended: recorded, nothing more to decide
    reason = f"installment {item.n} declined {item.attempts} times"
    reason_text = (
        f"we could not collect your payment of {money(item.amount_cents, account.currency)}"
    )
    if settings.failed_plan_action == PlanStatus.cancelled:
        plans.cancel_plan(
            session, plan, reason, SYSTEM, now, env=env, reason_text=reason_text,
            refuse_in_flight=False,
        )  # fmt: skip
    else:
        default_plan(session, plan, item, reason, now, env=env)


def default_plan(
    session: Session,
    plan: PaymentPlan,
    item: Installment,
    reason: str,
    now: datetime,
    *,
    env: MessageEnv,
) -> None:
    """The plan is defaulted: every installment still scheduled is cancelled (never
    charged), the trail and audit log told, and the ``plan_defaulted`` notice queued by
    email and SMS where allowed. The caller holds the plan's lock. Flushes."""
    remaining = list(
        session.scalars(
            select(Installment)
            .where(Installment.plan_id == plan.id)
            .order_by(Installment.n)
            .with_for_update()
        )
    )
    cancelled = plans.end_plan(plan, remaining, PlanStatus.defaulted, reason, now)
    data = {"plan_id": plan.id, "n": item.n, "installments_cancelled": cancelled}
    trail.append(session, plan.offer_id, "plan.defaulted", now, data=data)
    audit.record(
        session, SYSTEM, "plan.defaulted", "payment_plan", plan.id, now,
        {"reason": reason, "n": item.n, "installments_cancelled": cancelled},
    )  # fmt: skip
    account = session.get(Account, plan.account_id)
    assert account is not None
    channels = [Channel.email.value] if plans.email_allowed(account) else []
    if plans.sms_allowed(account):
        channels.append(Channel.sms.value)
    if channels:
        queue_message(
            session, account, "plan_defaulted", channels,
            {"amount_cents": item.amount_cents, "balance_cents": account.balance_cents},
            now=now, env=env, dedupe_key=plans.defaulted_key(plan.id),
        )  # fmt: skip
    session.flush()


# --- a new payment method ---------------------------------------------------------------------


def change_method(
    session: Session,
    plan: PaymentPlan,
    method: PaymentMethod,
    actor: audit.Actor,
    now: datetime,
    *,
    ip: str | None = None,
    user_agent: str | None = None,
) -> list[int]:
    """The customer's new payment method for an active plan (locked by the caller): every
    later attempt uses it, and an installment waiting for a retry after a decline is tried
    again at the next local charge hour. Returns the installment numbers moved. Flushes."""
    old = plan.method_id
    plan.method_id = method.id
    settings = get_settings(session)
    account = session.get(Account, plan.account_id)
    assert account is not None
    soon = next_charge_time(now, account_zone(account, settings), settings)
    moved = []
    items = session.scalars(
        select(Installment)
        .where(Installment.plan_id == plan.id)
        .order_by(Installment.n)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    for item in items:
        if item.status == InstallmentStatus.scheduled and item.attempts > 0:
            if item.next_attempt_at > soon:
                item.next_attempt_at = soon
            moved.append(item.n)
    data = {"method_id": method.id, "previous_method_id": old, "method": method.label,
            "retry_at": isoformat(soon) if moved else None, "installments": moved}  # fmt: skip
    trail.append(
        session, plan.offer_id, "payment_method.changed", now, ip=ip, user_agent=user_agent,
        data={"plan_id": plan.id, **data},
    )  # fmt: skip
    audit.record(session, actor, "plan.method_changed", "payment_plan", plan.id, now, data)
    session.flush()
    return moved


def failed_installment(session: Session, plan: PaymentPlan) -> Installment | None:
    """The installment waiting for a retry after a decline, if any (the earliest)."""
    return session.scalar(
        select(Installment)
        .where(
            Installment.plan_id == plan.id,
            Installment.status == InstallmentStatus.scheduled,
            Installment.attempts > 0,
        )
        .order_by(Installment.n)
        .limit(1)
    )
