"""Installment jobs and the sweep duty that finds due installments.

The duty reads only due rows (``ix_installment_due``: scheduled, by ``next_attempt_at``)
in batches and enqueues one job per installment and attempt, with a deterministic id, so
concurrent sweeps and the scheduler enqueue each once and an emptied Redis is refilled
from the database by the next sweep. The job re-checks under the plan's and the
installment's row locks before the gateway call; the attempt's idempotency key makes
any repeat one charge (offers.installments).
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from app.payments import service as payments
from app.payments.models import Payment, PaymentStatus
from app.queue import PAYMENTS, JobSpec, job_id
from links.web import gateway, message_env
from offers import installments
from offers.models import Installment, Offer, PaymentPlan
from signing.method_views import method_url
from workers.runtime import job_db, job_now, job_queue, paylink_job, status_is

log = logging.getLogger(__name__)

BATCH = 500  # rows per transaction
MAX_ROWS = 50_000  # per duty run: a larger backlog is left for the next run
CHARGE_JOB = "workers.plans.charge_installment"
CHARGE_TIMEOUT = 120  # one gateway call, with room for a slow gateway


def charge_job(installment_id: int, attempt: int, as_of: datetime | None = None) -> JobSpec:
    """The job for one attempt at one installment: enqueued once per attempt, acting as of
    the sweep's instant ``as_of`` when that is ahead of the clock (``sweep --at``)."""
    args = (installment_id, as_of.isoformat()) if as_of else (installment_id,)
    return JobSpec(
        CHARGE_JOB, args, job_id=job_id("charge-installment", installment_id, attempt),
        queue=PAYMENTS, timeout=CHARGE_TIMEOUT, unique=True,
    )  # fmt: skip


def charge_due_installments(now: datetime) -> dict[str, int]:
    """Sweep duty: one ``charge_installment`` job per scheduled installment that is due,
    oldest first. Changes no row; the job id (installment and attempt) makes a second
    sweep's enqueue a no-op, and a later attempt (a retry) a new job."""
    due = enqueued = 0
    after: tuple[datetime, int] | None = None
    while due < MAX_ROWS:
        with job_db().transaction() as session:
            stmt = (
                select(Installment.id, Installment.next_attempt_at, Installment.attempts)
                .where(
                    status_is(Installment.status, "scheduled"),
                    Installment.next_attempt_at <= now,
                )
                .order_by(Installment.next_attempt_at, Installment.id)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
            if after is not None:
                stmt = stmt.where(tuple_(Installment.next_attempt_at, Installment.id) > after)
            rows = session.execute(stmt).all()
        # Committed: a sweep that skipped a locked row finds its job there when it reads
        # it next, and the id refuses a second.
        specs = [charge_job(r.id, r.attempts + 1, now) for r in rows]
        enqueued += job_queue().enqueue_many(specs)
        due += len(rows)
        if len(rows) < BATCH:
            break
        after = (rows[-1].next_attempt_at, rows[-1].id)
    return {"due": due, "enqueued": enqueued}


def _lock(session: Session, installment_id: int) -> tuple[PaymentPlan, Installment] | None:
    """The installment's plan, then the installment, under row locks (cancel_plan's
    order), re-read from the database."""
    plan_id = session.scalar(select(Installment.plan_id).where(Installment.id == installment_id))
    if plan_id is None:
        return None
    plan = session.get(PaymentPlan, plan_id, with_for_update=True, populate_existing=True)
    item = session.get(Installment, installment_id, with_for_update=True, populate_existing=True)
    assert plan is not None
    assert item is not None
    return plan, item


def update_url(session: Session, plan: PaymentPlan) -> str:
    """The customer's page for a new payment method of ``plan``."""
    offer = session.get(Offer, plan.offer_id)
    assert offer is not None
    return method_url(message_env(), offer.token_id)


@paylink_job
def charge_installment(installment_id: int, as_of: str | None = None) -> dict[str, str]:
    """Charge one due installment and record the answer, with its notice.

    Re-checks under the plan's and the installment's row locks (plan active? installment
    still scheduled and due?) and commits the attempt (installment pending, payment
    processing) before the gateway call; a run that finds an attempt left processing
    (a crash, a gateway error) asks again under the same key. Only the run that records
    the answer, under the locks, changes anything after the call."""
    now = job_now(as_of)
    with job_db().transaction() as session:
        locked = _lock(session, installment_id)
        if locked is None:
            return {"outcome": "missing"}
        plan, item = locked
        attempt = installments.start_attempt(session, plan, item, now, env=message_env())
        if attempt.payment is None:
            return {"outcome": attempt.outcome}
        payment_id = attempt.payment.id
        method = attempt.payment.method
    # Committed: a crash from here on leaves a processing payment that a retry of this
    # job, or the stuck-charge sweep, charges again under the same key.
    result = payments.call_gateway(gateway(), attempt.payment, method, now)
    with job_db().transaction() as session:
        locked = _lock(session, installment_id)
        assert locked is not None
        plan, item = locked
        payment = session.get(Payment, payment_id, with_for_update=True, populate_existing=True)
        assert payment is not None
        if payment.status != PaymentStatus.processing:
            return {"outcome": payment.status}  # another run recorded it first
        payments.finish_charge(session, payment, result, now)
        if item.last_payment_id != payment.id:
            return {"outcome": payment.status}  # not the installment's attempt (cannot be)
        installments.record_answer(
            session, plan, item, payment, now, env=message_env(),
            update_url=update_url(session, plan),
        )  # fmt: skip
        return {"outcome": payment.status, "installment": item.status, "plan": plan.status}


def reconcile_job(payment_id: int, idempotency_key: str, slot: int) -> JobSpec | None:
    """For the stuck-charge sweep: the job that finishes an installment's attempt left
    processing (one per sweep slot); None for a payment that is no installment's."""
    installment_id = installments.installment_id_of(idempotency_key)
    if installment_id is None:
        return None
    return JobSpec(
        CHARGE_JOB, (installment_id,), queue=PAYMENTS, timeout=CHARGE_TIMEOUT, unique=True,
        job_id=job_id("reconcile-installment", installment_id, payment_id, slot),
    )  # fmt: skip


def lock_plan_of(session: Session, payment: Payment) -> None:
    """For the settlement sweep: take an installment debit's plan and installment locks
    before the payment's outcome touches the account (nothing for other payments)."""
    installment_id = installments.installment_id_of(payment.idempotency_key)
    if installment_id is not None:
        _lock(session, installment_id)


def settled(session: Session, payment: Payment, now: datetime) -> bool:
    """Hook of the bank settlement sweep, in its transaction (``payment`` locked and
    settled): an installment's debit moves its installment to paid, or handles the
    return as a decline. False for a payment that is no installment's."""
    installment_id = installments.installment_id_of(payment.idempotency_key)
    if installment_id is None:
        return False
    locked = _lock(session, installment_id)
    if locked is None:
        return True
    plan, item = locked
    installments.record_settlement(
        session, plan, item, payment, now, env=message_env(),
        update_url=update_url(session, plan),
    )  # fmt: skip
    return True
