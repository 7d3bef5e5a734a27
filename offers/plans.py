"""Payment plans: their JSON, cancellation, and the customer notices about them (the
confirmation with the signed agreement, the cancellation notice). Functions take the
session, plain values and ``now``; they flush, never commit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import and_, column, or_, select, table
from sqlalchemy.orm import Session

from app import audit
from app.clock import isoformat
from app.messaging.outbox import MessageEnv, queue_message
from app.messaging.render import money
from app.models import Account, AuditEvent, Channel, Message, OrgSettings
from app.payments.models import Payment, PaymentMethod
from offers import trail
from offers.models import Installment, InstallmentStatus, PaymentPlan, PlanStatus

CHANNELS = (Channel.email.value, Channel.sms.value)
MAX_REASON = 500

# The agreement row lives in signing, which builds on offers; a plan names its agreement
# by the offer both belong to, read through the table alone so offers imports nothing
# from signing.
_AGREEMENT = table("agreement", column("id"), column("offer_id"))


class PlanEnded(Exception):
    """The plan is completed or defaulted: it can no longer be cancelled (API: 409)."""


class ChargeInFlight(PlanEnded):
    """An installment's charge is at the gateway right now (its payment ``processing``):
    cancelling now could not promise that nothing more is taken, so the cancellation waits
    until the answer is recorded, within a minute or, after a crash, the stuck-charge
    sweep's few minutes (API: 409, try again)."""


def agreement_id(session: Session, plan: PaymentPlan) -> int | None:
    return session.scalar(select(_AGREEMENT.c.id).where(_AGREEMENT.c.offer_id == plan.offer_id))


def confirmed_key(plan_id: int) -> str:
    return f"plan-confirmed-{plan_id}"


def cancelled_key(plan_id: int) -> str:
    return f"plan-cancelled-{plan_id}"


def completed_key(plan_id: int) -> str:
    return f"plan-completed-{plan_id}"


def defaulted_key(plan_id: int) -> str:
    return f"plan-defaulted-{plan_id}"


def plan_messages(session: Session, plan: PaymentPlan) -> list[Message]:
    """The plan's own notices (confirmed, cancelled, completed, defaulted), oldest first."""
    keys = [
        f"{prefix}-{channel}"
        for key in (confirmed_key, cancelled_key, completed_key, defaulted_key)
        for prefix in (key(plan.id),)
        for channel in CHANNELS
    ]
    return list(
        session.scalars(select(Message).where(Message.dedupe_key.in_(keys)).order_by(Message.id))
    )


def installment_json(item: Installment) -> dict[str, Any]:
    return {
        "n": item.n,
        "due_date": item.due_date.isoformat(),
        "amount_cents": item.amount_cents,
        "status": item.status,
        "paid_at": isoformat(item.paid_at),
    }


def plan_json(session: Session, plan: PaymentPlan) -> dict[str, Any]:
    """The plan as ``GET /plans/{id}`` shows it."""
    method = session.get(PaymentMethod, plan.method_id)
    return {
        "id": plan.id,
        "offer_id": plan.offer_id,
        "account_id": plan.account_id,
        "status": plan.status,
        "total_cents": plan.total_cents,
        "installments": [installment_json(i) for i in plan.installments],
        "agreement_id": agreement_id(session, plan),
        "method": method.as_json() if method is not None else None,
        "created_at": isoformat(plan.created_at),
        "completed_at": isoformat(plan.completed_at),
        "cancelled_at": isoformat(plan.cancelled_at),
        "cancel_reason": plan.cancel_reason,
        "messages": [
            {"id": m.id, "channel": m.channel, "kind": m.kind, "status": m.status}
            for m in plan_messages(session, plan)
        ],
        "events": plan_events(session, plan),
    }


def plan_events(session: Session, plan: PaymentPlan) -> list[dict[str, Any]]:
    """The plan's timeline, oldest first: its acceptance, then every lifecycle step the
    audit log holds for it (charge attempts, payments, declines and retries, method
    changes, completion, default, cancellation)."""
    rows = session.scalars(
        select(AuditEvent)
        .where(
            or_(
                and_(
                    AuditEvent.object_type == "payment_plan",
                    AuditEvent.object_id == str(plan.id),
                ),
                and_(
                    AuditEvent.object_type == "offer",
                    AuditEvent.object_id == str(plan.offer_id),
                    AuditEvent.action == "offer.accepted",
                ),
            )
        )
        .order_by(AuditEvent.at, AuditEvent.id)
    )
    return [
        {
            "type": row.action,
            "at": isoformat(row.at),
            "actor": {"type": row.actor_type, "id": row.actor_id},
            "data": row.data or {},
        }
        for row in rows
    ]


# --- what the customer is told ------------------------------------------------------------


def due_date_text(value: date) -> str:
    """``Dec 1, 2026``."""
    return value.strftime("%b %-d, %Y")


def schedule_context(installments: Sequence[Installment]) -> list[dict[str, Any]]:
    return [
        {"n": i.n, "due_date_text": due_date_text(i.due_date), "amount_cents": i.amount_cents}
        for i in installments
    ]


def authorization_text(
    settings: OrgSettings, method_text: str, installments: Sequence[Installment], currency: str
) -> str:
    """The recurring payment authorization, as the agreement PDF and the confirmation
    email state it."""
    total = sum(i.amount_cents for i in installments)
    count = len(installments)
    payments = "the payment" if count == 1 else f"the {count} payments"
    return (
        f"You authorize {settings.creditor_name} to charge your {method_text} for {payments} "
        f"in the schedule above ({money(total, currency)} in total), each on or after its "
        "due date; a declined payment may be tried again under the plan's terms. You may "
        f"revoke this authorization by contacting {settings.creditor_name} at "
        f"{settings.creditor_phone} at least three business days before a payment date."
    )


def email_allowed(account: Account) -> bool:
    return bool(account.email) and account.email_opted_out_at is None


def sms_allowed(account: Account) -> bool:
    return bool(account.phone) and account.sms_opted_out_at is None


def queue_plan_confirmed(
    session: Session,
    plan: PaymentPlan,
    account: Account,
    *,
    authorization: str,
    attachments: list[dict[str, str]],
    env: MessageEnv,
    now: datetime,
) -> list[Message]:
    """The ``plan_confirmed`` email (schedule, authorization, the files attached), once
    per plan; nothing when the account has no email or has opted out of it. Flushes."""
    if not email_allowed(account):
        return []
    context = {
        "schedule": schedule_context(plan.installments),
        "total_cents": plan.total_cents,
        "authorization_text": authorization,
    }
    return queue_message(
        session, account, "plan_confirmed", [Channel.email.value], context, now=now, env=env,
        dedupe_key=confirmed_key(plan.id), attachments=attachments,
    )  # fmt: skip


def queue_plan_cancelled(
    session: Session,
    plan: PaymentPlan,
    account: Account,
    *,
    env: MessageEnv,
    now: datetime,
    reason_text: str | None = None,
) -> list[Message]:
    """The ``plan_cancelled`` notice by email and SMS where each is allowed, once per
    plan. ``reason_text`` is shown to the customer; leave it out for internal reasons."""
    channels = [Channel.email.value] if email_allowed(account) else []
    if sms_allowed(account):
        channels.append(Channel.sms.value)
    if not channels:
        return []
    return queue_message(
        session, account, "plan_cancelled", channels, {"reason_text": reason_text}, now=now,
        env=env, dedupe_key=cancelled_key(plan.id),
    )  # fmt: skip


# --- cancellation ------------------------------------------------------------------------


def end_plan(
    plan: PaymentPlan,
    installments: list[Installment],
    status: PlanStatus,
    reason: str,
    now: datetime,
) -> list[int]:
    """End ``plan`` with ``status`` (cancelled or defaulted): each of its ``installments``
    still scheduled is cancelled, never to be charged. Returns their numbers. The caller
    holds the plan's and the installments' locks."""
    cancelled = []
    for item in installments:
        if item.status == InstallmentStatus.scheduled:
            item.status = InstallmentStatus.cancelled.value
            cancelled.append(item.n)
    plan.status = status.value
    plan.cancelled_at = now
    plan.cancel_reason = reason
    return cancelled


def cancel_plan(
    session: Session,
    plan: PaymentPlan,
    reason: str,
    actor: audit.Actor,
    now: datetime,
    *,
    env: MessageEnv,
    reason_text: str | None = None,
    refuse_in_flight: bool = True,
) -> bool:
    """Cancel an active plan: every scheduled installment cancelled, the trail and the
    audit log told, the customer's notice queued — all in the caller's transaction.

    Locks the plan and its installments first, so a charge job that takes an installment's
    lock sees it cancelled. Returns False (and changes nothing) for a plan already
    cancelled; raises PlanEnded for a completed or defaulted one, and ChargeInFlight while
    an installment's charge is at the gateway (``refuse_in_flight``; the failed-payment
    policy cancels anyway and lets that charge finish). A bank debit the gateway already
    accepted (pending) is left to settle. Flushes.
    """
    session.refresh(plan, with_for_update=True)
    if plan.status == PlanStatus.cancelled:
        return False
    if plan.status != PlanStatus.active:
        raise PlanEnded(f"the plan is {plan.status}")
    installments = list(
        session.scalars(
            select(Installment)
            .where(Installment.plan_id == plan.id)
            .order_by(Installment.n)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )
    if refuse_in_flight:
        attempts = [i.last_payment_id for i in installments if i.status == "pending"]
        if attempts and session.scalar(
            select(Payment.id).where(Payment.id.in_(attempts), Payment.status == "processing")
        ):
            raise ChargeInFlight(
                "a payment of the plan is being processed right now; try again in a few minutes"
            )
    cancelled = end_plan(plan, installments, PlanStatus.cancelled, reason, now)
    trail.append(
        session, plan.offer_id, "plan.cancelled", now,
        data={"plan_id": plan.id, "by": actor.type, "installments_cancelled": cancelled},
    )  # fmt: skip
    audit.record(
        session, actor, "plan.cancelled", "payment_plan", plan.id, now,
        {"reason": reason, "installments_cancelled": cancelled},
    )  # fmt: skip
    account = session.get(Account, plan.account_id)
    assert account is not None  # a plan always has its account
    queue_plan_cancelled(session, plan, account, env=env, now=now, reason_text=reason_text)
    session.flush()
    return True
