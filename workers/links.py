"""Payment-link and payment jobs, and the sweep duties that find their due work.

Duties (``(now) -> counts``, listed in workers/schedule.py) read only due rows through the
partial indexes, in batches, and are safe to run concurrently: rows they change are taken
with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite serializes writers), and jobs get
deterministic ids. Jobs re-check state under a row lock before acting.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from app import audit
from app.clock import utcnow
from app.models import Account
from app.payments import service as payments
from app.payments.gateway import PENDING, ChargeResult
from app.payments.models import Payment, PaymentStatus
from app.queue import PAYMENTS, JobSpec, job_id
from links import checkout, lookup, receipts
from links.models import LinkStatus, PaymentLink
from links.service import link_url
from links.web import gateway, link_tokens, message_env
from workers import plans as plan_jobs
from workers.runtime import job_db, job_now, job_queue, paylink_job, status_is

log = logging.getLogger(__name__)

BATCH = 500  # rows per transaction
MAX_ROWS = 50_000  # per duty run: a backlog larger than this is left for the next run
CHARGE_JOB = "workers.links.charge_payment"
CHARGE_TIMEOUT = 120  # one gateway call, with room for a slow gateway
SWEEPER = audit.Actor.system("sweep")


# --- expiry -------------------------------------------------------------------------------


def expire_links(now: datetime) -> dict[str, int]:
    """Sweep duty: active links past their expiry become expired, an audit event each.

    Idempotent: only active rows are taken, under SKIP LOCKED, and each batch commits."""
    expired = 0
    while expired < MAX_ROWS:
        with job_db().transaction() as session:
            links = session.scalars(
                select(PaymentLink)
                .where(status_is(PaymentLink.status, "active"), PaymentLink.expires_at <= now)
                .order_by(PaymentLink.expires_at, PaymentLink.id)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            ).all()
            for link in links:
                link.status = LinkStatus.expired.value
                audit.record(
                    session, SWEEPER, "link.expired", "link", link.id, now,
                    {"expires_at": link.expires_at.isoformat()},
                )  # fmt: skip
        expired += len(links)
        if len(links) < BATCH:
            break
    return {"expired": expired}


# --- scheduled payments -------------------------------------------------------------------


def charge_job(payment_id: int, as_of: datetime | None = None) -> JobSpec:
    """The one job that charges a payment: the id is the payment's, so it is enqueued once;
    it acts as of the sweep's instant ``as_of`` when that is ahead of the clock."""
    args = (payment_id, as_of.isoformat()) if as_of else (payment_id,)
    return JobSpec(
        CHARGE_JOB, args, job_id=job_id("charge-payment", payment_id), queue=PAYMENTS,
        timeout=CHARGE_TIMEOUT, unique=True,
    )  # fmt: skip


def charge_scheduled_payments(now: datetime) -> dict[str, int]:
    """Sweep duty: one ``charge_payment`` job per scheduled payment that is due.

    Changes no row; the deterministic job id makes a second sweep's enqueue a no-op."""
    due = enqueued = 0
    after: tuple[datetime, int] | None = None
    while due < MAX_ROWS:
        with job_db().transaction() as session:
            stmt = (
                select(Payment.id, Payment.scheduled_for)
                .where(status_is(Payment.status, "scheduled"), Payment.scheduled_for <= now)
                .order_by(Payment.scheduled_for, Payment.id)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
            if after is not None:
                stmt = stmt.where(tuple_(Payment.scheduled_for, Payment.id) > after)
            rows = session.execute(stmt).all()
        # Committed: a concurrent sweep skipped these rows while they were locked, and one
        # that reads them now finds their jobs already there (the id refuses a second).
        enqueued += job_queue().enqueue_many([charge_job(row.id, now) for row in rows])
        due += len(rows)
        if len(rows) < BATCH:
            break
        after = (rows[-1].scheduled_for, rows[-1].id)
    return {"due": due, "enqueued": enqueued}


@paylink_job
def charge_payment(payment_id: int, as_of: str | None = None) -> dict[str, str]:
    """Charge one due scheduled payment and record the answer, with its receipt or notice.

    Re-checks under the row lock (still scheduled? link not revoked?) and moves the payment
    to processing in its own commit before the gateway call; the payment's idempotency key
    makes a repeated call (a job run twice, a retry after a crash) one charge, and only the
    run that records the answer sends the customer anything."""
    now = job_now(as_of)
    with job_db().transaction() as session:
        payment = session.get(Payment, payment_id, with_for_update=True)
        if payment is None:
            return {"outcome": "missing"}
        if payment.status == PaymentStatus.scheduled:
            if payment.scheduled_for is not None and payment.scheduled_for > now:
                return {"outcome": "not_due"}
            reason = _reason_not_to_charge(session, payment)
            if reason is not None:
                payments.transition(payment, PaymentStatus.cancelled, now)
                audit.record(
                    session, SWEEPER, "payment.cancelled", "payment", payment.id, now,
                    {"reason": reason, "link_id": payment.link_id},
                )  # fmt: skip
                return {"outcome": "cancelled", "reason": reason}
            _cap_to_balance(session, payment, now)
            payments.transition(payment, PaymentStatus.processing, now)
        elif payment.status != PaymentStatus.processing:
            return {"outcome": payment.status}  # charged (or cancelled) already
        method = payment.method
    # Committed: a crash from here on leaves a processing payment its retry charges again
    # under the same key, which the gateway answers with the first result.
    result = payments.call_gateway(gateway(), payment, method, now)
    with job_db().transaction() as session:
        payment = session.get(Payment, payment_id, with_for_update=True)
        assert payment is not None
        if payment.status != PaymentStatus.processing:
            return {"outcome": payment.status}  # another run recorded it first
        payments.finish_charge(session, payment, result, now)
        if payment.link_id is not None and payment.status in (
            PaymentStatus.paid,
            PaymentStatus.pending,
        ):
            link = session.get(PaymentLink, payment.link_id, with_for_update=True)
            if link is not None:
                checkout.mark_used(session, link, now)
        audit.record(
            session, SWEEPER, f"payment.{payment.status}", "payment", payment.id, now,
            {"link_id": payment.link_id, "amount_cents": payment.amount_cents,
             "decline_code": payment.decline_code},
        )  # fmt: skip
        _notify(session, payment, now)
        return {"outcome": payment.status}


STUCK_AFTER = timedelta(minutes=5)


def reconcile_stuck_charges(now: datetime) -> dict[str, int]:
    """Sweep duty: payments left ``processing`` (the worker or web process died between
    the gateway call and recording its answer) are charged again under their own
    idempotency key — the gateway answers with the first result — and recorded."""
    with job_db().transaction() as session:
        rows = session.execute(
            select(Payment.id, Payment.idempotency_key)
            .where(
                status_is(Payment.status, "processing"),
                Payment.updated_at <= now - STUCK_AFTER,
            )
            .order_by(Payment.updated_at)
            .limit(MAX_ROWS)
        ).all()
    enqueued = 0
    slot = int(now.timestamp()) // 60
    for row in rows:
        # An installment's attempt is finished by the installment's own job, which records
        # the answer on the installment and its plan too.
        spec = plan_jobs.reconcile_job(row.id, row.idempotency_key, slot) or JobSpec(
            CHARGE_JOB, (row.id,), queue=PAYMENTS, timeout=CHARGE_TIMEOUT, unique=True,
            job_id=job_id("reconcile-payment", row.id, slot),
        )  # fmt: skip
        if job_queue().enqueue(spec) is not None:
            enqueued += 1
    return {"stuck": len(rows), "enqueued": enqueued}


def _reason_not_to_charge(session: Session, payment: Payment) -> str | None:
    """Why a due scheduled payment must not be charged, if it must not."""
    if payment.link_id is not None:
        link = session.get(PaymentLink, payment.link_id)
        if link is not None and link.status == LinkStatus.revoked:
            return "link_revoked"
    account = session.get(Account, payment.account_id)
    if account is not None and account.balance_cents <= 0:
        return "nothing_owed"  # paid off some other way since it was scheduled
    return None


def _cap_to_balance(session: Session, payment: Payment, now: datetime) -> None:
    """Never take more than is owed: a balance paid down since the payment was scheduled
    lowers it (before any gateway call, so the idempotency key still means one charge)."""
    account = session.get(Account, payment.account_id)
    if account is not None and 0 < account.balance_cents < payment.amount_cents:
        audit.record(
            session, SWEEPER, "payment.reduced", "payment", payment.id, now,
            {"from_cents": payment.amount_cents, "to_cents": account.balance_cents},
        )  # fmt: skip
        payment.amount_cents = account.balance_cents


def _notify(session: Session, payment: Payment, now: datetime) -> None:
    """The receipt for a paid or pending payment, the payment-failed notice for a declined
    one; each at most once per payment (the outbox's dedupe keys)."""
    env = message_env()
    if payment.status in (PaymentStatus.paid, PaymentStatus.pending):
        receipts.queue_receipt(session, payment, env, now)
    elif payment.status == PaymentStatus.declined:
        url = _update_url(session, payment, now)
        receipts.queue_payment_failed(session, payment, env, now, url=url)


def _update_url(session: Session, payment: Payment, now: datetime) -> str:
    """Where a customer can pay another way: the link while it still works, else the
    find-my-account page, which sends a fresh one."""
    env = message_env()
    link = session.get(PaymentLink, payment.link_id) if payment.link_id is not None else None
    if link is not None and link.status == LinkStatus.active and link.expires_at > now:
        return link_url(env, link_tokens(), link)
    return f"{env.base_url}/pay"


# --- bank settlement ----------------------------------------------------------------------


def settle_bank_payments(now: datetime) -> dict[str, int]:
    """Sweep duty: pending bank debits whose settlement time has passed are asked about at
    the gateway and become paid, or declined (balance restored, payment-failed notice).

    The gateway is asked outside any transaction; each answer is recorded under the row
    lock only if the payment is still pending, so concurrent sweeps settle each once."""
    counts = {"settled": 0, "returned": 0, "still_pending": 0}
    seen = 0
    after: tuple[datetime, int] | None = None
    gw = gateway()
    while seen < MAX_ROWS:
        with job_db().transaction() as session:
            stmt = (
                select(Payment.id, Payment.settles_at, Payment.gateway_reference)
                .where(status_is(Payment.status, "pending"), Payment.settles_at <= now)
                .order_by(Payment.settles_at, Payment.id)
                .limit(BATCH)
            )
            if after is not None:
                stmt = stmt.where(tuple_(Payment.settles_at, Payment.id) > after)
            rows = session.execute(stmt).all()
        answers = {
            r.id: gw.settlement(r.gateway_reference, now) for r in rows if r.gateway_reference
        }
        if not answers:
            break
        for payment_id, answer in answers.items():
            if answer.status == PENDING:
                counts["still_pending"] += 1
                continue
            outcome = _settle_one(payment_id, answer, now)
            if outcome is not None:
                counts[outcome] += 1
        seen += len(rows)
        if len(rows) < BATCH:
            break
        after = (rows[-1].settles_at, rows[-1].id)
    return counts


def _settle_one(payment_id: int, answer: ChargeResult, now: datetime) -> str | None:
    """Record one settlement answer in a transaction of its own, under the payment's lock
        and, for an installment's debit, its plan's and installment's, taken before the
        account's (the order the installment charge job takes them), so the sweep and a charge
        job never wait on each other in a cycle. Returns the count it adds to (None: the payment
    was settled meanwhile, or another sweep holds it)."""
    with job_db().transaction() as session:
        payment = session.scalar(
            select(Payment)
            .where(Payment.id == payment_id, status_is(Payment.status, "pending"))
            .with_for_update(skip_locked=True)
        )
        if payment is None:
            return None
        plan_jobs.lock_plan_of(session, payment)
        payments.settle(session, payment, answer, now)
        audit.record(
            session, SWEEPER, f"payment.{payment.status}", "payment", payment.id, now,
            {"settled": True, "decline_code": payment.decline_code},
        )  # fmt: skip
        # An installment's debit: its installment and plan follow, with their own notices
        # (a return is a decline under the plan's retry policy).
        for_plan = plan_jobs.settled(session, payment, now)
        if payment.status != PaymentStatus.declined:
            return "settled"
        if not for_plan:
            _notify(session, payment, now)
        return "returned"


# --- find my account ----------------------------------------------------------------------


@paylink_job
def send_lookup_link(account_id: int | None) -> dict[str, str]:
    """Send a fresh link for find-my-account: at most one per account in LOOKUP_INTERVAL,
    checked under the account's row lock. ``None`` (nothing matched) does nothing."""
    if account_id is None:
        return {"outcome": "no_account"}
    now = utcnow()
    with job_db().transaction() as session:
        outcome = lookup.send_fresh_link(
            session, account_id, now=now, env=message_env(), tokens=link_tokens()
        )
    return {"outcome": outcome}
