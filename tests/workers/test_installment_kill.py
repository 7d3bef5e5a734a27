"""A `flask worker` killed with SIGKILL in the middle of an installment's charge: the
work is redone once (by the stuck-charge sweep), never twice.

Deterministic on PostgreSQL: the test holds the account's row lock (FOR NO KEY UPDATE),
which the job needs only to record the gateway's answer (the balance follows the
payment). So the job commits its attempt (installment pending, payment processing),
calls the gateway, then waits on the lock; the test sees that wait in pg_stat_activity
and kills the worker and its work horse there. SQLite serializes
whole transactions, so there is no such point to hold it at: PostgreSQL only.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app.models import Account, AuditEvent, Message
from app.payments.models import Payment
from offers.models import Installment, PaymentPlan
from tests.helpers import drain
from tests.signing.plan_factory import make_signed_plan
from tests.workers.test_processes import wait_for, waiting_on_a_lock, worker_to_kill
from workers import links as link_jobs
from workers import plans as plan_jobs

pytestmark = pytest.mark.slow


def test_a_worker_killed_mid_charge_is_redone_once(app, app_config, tmp_path):
    db = app.extensions["paylink.db"]
    if db.engine.dialect.name != "postgresql":
        pytest.skip("needs PostgreSQL's row locks to stop the job at a known point")
    signed = make_signed_plan(app)
    now = datetime.now(UTC)  # the worker process runs on the real clock
    with db.transaction() as session:
        first = session.scalar(
            select(Installment).where(Installment.plan_id == signed.plan_id, Installment.n == 1)
        )
        first.next_attempt_at = now - timedelta(minutes=1)
        installment_id = first.id
    key = f"installment-{installment_id}-1"

    holder = db.engine.connect()
    holder.begin()
    # FOR NO KEY UPDATE: the attempt's payment row (a foreign key to the account) may
    # still be written; the balance update (FOR UPDATE) must wait.
    holder.execute(
        select(Account.id).where(Account.id == signed.account_id).with_for_update(key_share=True)
    ).all()

    def status() -> str | None:
        with db.transaction() as session:
            return session.scalar(select(Payment.status).where(Payment.idempotency_key == key))

    def waiting() -> bool:
        return waiting_on_a_lock(db.engine, "FROM account")

    try:
        with worker_to_kill(app_config, tmp_path / "worker.log") as kill:
            with app.app_context():
                app.extensions["paylink.queue"].enqueue(plan_jobs.charge_job(installment_id, 1))
            wait_for(lambda: status() == "processing", what="the attempt committed")
            wait_for(waiting, what="the job waiting to record the answer")
            kill()
    finally:
        holder.rollback()
        holder.close()

    # The killed run's transaction never committed: the attempt is left processing.
    wait_for(lambda: not waiting(), what="the killed job's session to end")
    assert status() == "processing"
    with db.transaction() as session:
        assert session.get(Installment, installment_id).status == "pending"
        assert session.get(Account, signed.account_id).balance_cents == 100_000

    with app.app_context():
        later = datetime.now(UTC) + link_jobs.STUCK_AFTER + timedelta(minutes=1)
        assert link_jobs.reconcile_stuck_charges(later) == {"stuck": 1, "enqueued": 1}
    drain(app)
    with app.app_context():
        assert link_jobs.reconcile_stuck_charges(later) == {"stuck": 0, "enqueued": 0}
        assert plan_jobs.charge_due_installments(later)["due"] == 0
    drain(app)

    with db.transaction() as session:
        payments = session.scalars(
            select(Payment).where(Payment.account_id == signed.account_id)
        ).all()
        assert [(p.idempotency_key, p.status) for p in payments] == [(key, "paid")]
        assert payments[0].gateway_reference.startswith("ch_sbx_")
        item = session.get(Installment, installment_id)
        assert (item.status, item.attempts, item.last_payment_id) == ("paid", 1, payments[0].id)
        assert session.get(Account, signed.account_id).balance_cents == 100_000 - 33_334
        receipts = session.scalar(
            select(func.count()).select_from(Message).where(Message.kind == "receipt")
        )
        assert receipts == 1
        paid_events = session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "installment.paid")
        )
        assert paid_events == 1
        assert session.get(PaymentPlan, signed.plan_id).status == "active"
