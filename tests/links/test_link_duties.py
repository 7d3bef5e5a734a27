"""The link and payment sweep duties (expire links, charge scheduled payments, settle bank
debits) through ``flask sweep --at`` and real workers, with time moved by time-machine."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from app import audit, create_app
from app.messaging.outbox import MessageEnv
from app.models import Account, AuditEvent, Message
from app.payments import build_gateway
from app.payments import service as payments
from app.payments.gateway import DECLINED, ChargeResult
from app.payments.models import Payment
from links import service
from links.models import PaymentLink
from links.tokens import PAYMENT_LINK, UrlTokens
from tests.conftest import TEST_SECRET_KEYS
from tests.helpers import drain, index_plans
from workers import links as link_jobs
from workers.runtime import set_job_app
from workers.schedule import DUTIES

# 15:00 UTC is 10:00 in New York: inside the default 08:00-21:00 sending window.
NOON_NY = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
DUE = NOON_NY + timedelta(days=2)
APPROVED_CARD = "4242 4242 4242 4242"
DECLINED_CARD = "4000 0000 0000 0002"
TOKENS = UrlTokens(TEST_SECRET_KEYS, PAYMENT_LINK)


@pytest.fixture(autouse=True)
def _at_noon(time_machine):
    time_machine.move_to(NOON_NY, tick=False)


# --- arranging ----------------------------------------------------------------------------

_external_ids = iter(range(1, 1_000_000))


def make_account(app, **values: Any) -> int:
    now = datetime.now(UTC)
    defaults: dict[str, Any] = {
        "external_id": f"D-{next(_external_ids)}", "name": "Dee Moss",
        "phone": "+12025550143", "email": "dee.moss@example.com",
        "timezone": "America/New_York", "balance_cents": 50_000,
    }  # fmt: skip
    with app.extensions["paylink.db"].transaction() as session:
        account = Account(**{**defaults, **values}, created_at=now, updated_at=now)
        session.add(account)
        session.flush()
        return account.id


def make_link(app, account_id: int | None = None, *, hours: int = 168) -> int:
    """A link made as the API makes one, with no messages (so counts stay about payments)."""
    account_id = account_id or make_account(app)
    env = MessageEnv.from_config(app.extensions["paylink.config"])
    with app.extensions["paylink.db"].transaction() as session:
        new = service.create_link(
            session, session.get(Account, account_id), amount_cents=None, channels=[],
            expires_in_hours=hours, actor=audit.Actor.system("test"), agent_id=None,
            now=datetime.now(UTC), env=env, tokens=TOKENS,
        )  # fmt: skip
        return new.link.id


def schedule_payment(
    app,
    link_id: int,
    *,
    card: str | None = APPROVED_CARD,
    bank_account: str | None = None,
    amount_cents: int = 10_000,
    when: datetime = DUE,
) -> int:
    """A payment scheduled from a link, made with the payment service as the flow does."""
    gateway = build_gateway(app.extensions["paylink.config"])
    now = datetime.now(UTC)
    with app.extensions["paylink.db"].transaction() as session:
        link = session.get(PaymentLink, link_id)
        if bank_account:
            method = payments.add_bank_account(
                session, link.account, gateway,
                payments.BankInput("Dee Moss", "110000000", bank_account, "checking"), now,
            )  # fmt: skip
        else:
            method = payments.add_card(
                session, link.account, gateway,
                payments.CardInput("Dee Moss", card, "12/30", "123", "20001"), now.date(), now,
            )  # fmt: skip
        payment, created = payments.begin_charge(
            session, account=link.account, method=method, amount_cents=amount_cents,
            idempotency_key=f"link-{link.id}-{next(_external_ids)}", now=now, link_id=link.id,
            scheduled_for=when,
        )  # fmt: skip
        assert created
        return payment.id


def sweep(app, at: datetime) -> dict[str, dict[str, int]]:
    """``flask sweep --at`` as of ``at``; the counts each duty printed."""
    result = app.test_cli_runner().invoke(args=["sweep", "--at", at.isoformat()])
    assert result.exit_code == 0, result.output
    counts: dict[str, dict[str, int]] = {}
    for line in result.output.splitlines()[1:]:
        name, _, rest = line.partition(": ")
        counts[name] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", rest)}
    return counts


def at(time_machine, instant: datetime) -> datetime:
    time_machine.move_to(instant, tick=False)
    return instant


def payment(app, payment_id: int) -> Payment:
    with app.extensions["paylink.db"].transaction() as session:
        found = session.get(Payment, payment_id)
        assert found is not None
        return found


def balance(app, payment_id: int) -> int:
    with app.extensions["paylink.db"].transaction() as session:
        return session.get(Account, session.get(Payment, payment_id).account_id).balance_cents


def messages(app, kind: str) -> list[Message]:
    with app.extensions["paylink.db"].transaction() as session:
        return list(session.scalars(select(Message).where(Message.kind == kind)))


def actions(app, action: str) -> list[AuditEvent]:
    with app.extensions["paylink.db"].transaction() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


# --- the table ----------------------------------------------------------------------------


def test_the_duties_are_in_the_table():
    by_name = {duty.name: duty for duty in DUTIES}

    assert by_name["expire-links"].func == "workers.links.expire_links"
    assert by_name["charge-payments"].func == "workers.links.charge_scheduled_payments"
    assert by_name["settle-payments"].func == "workers.links.settle_bank_payments"
    assert by_name["charge-payments"].queue == by_name["settle-payments"].queue == "payments"


# --- expiry -------------------------------------------------------------------------------


def test_links_past_their_expiry_become_expired_once(app, time_machine):
    soon, later = make_link(app, hours=1), make_link(app, hours=3)
    revoked = make_link(app, hours=1)
    with app.extensions["paylink.db"].transaction() as session:
        service.revoke_link(
            session, session.get(PaymentLink, revoked), audit.Actor.system("test"), NOON_NY
        )

    before = sweep(app, at(time_machine, NOON_NY + timedelta(minutes=59)))
    first = sweep(app, at(time_machine, NOON_NY + timedelta(hours=1)))
    again = sweep(app, at(time_machine, NOON_NY + timedelta(hours=2)))

    assert before["expire-links"] == {"expired": 0}
    assert first["expire-links"] == {"expired": 1}
    assert again["expire-links"] == {"expired": 0}
    with app.extensions["paylink.db"].transaction() as session:
        statuses = {i: session.get(PaymentLink, i).status for i in (soon, later, revoked)}
    assert statuses == {soon: "expired", later: "active", revoked: "revoked"}
    [event] = actions(app, "link.expired")
    assert (event.object_id, event.actor_type, event.actor_id) == (str(soon), "system", "sweep")
    assert event.at == NOON_NY + timedelta(hours=1)
    with app.extensions["paylink.db"].transaction() as session:
        token = TOKENS.token_for(session.get(PaymentLink, soon).token_id)
    assert app.test_client().get(f"/p/{token}").status_code == 410  # the customer's page


def test_expiry_works_through_a_backlog_in_batches(app, time_machine, monkeypatch):
    monkeypatch.setattr(link_jobs, "BATCH", 3)
    ids = [make_link(app, hours=1) for _ in range(8)]

    counts = sweep(app, at(time_machine, NOON_NY + timedelta(days=1)))

    assert counts["expire-links"] == {"expired": 8}
    assert sorted(int(e.object_id) for e in actions(app, "link.expired")) == ids


def test_concurrent_expiry_sweeps_expire_each_link_once(app, time_machine, monkeypatch):
    monkeypatch.setattr(link_jobs, "BATCH", 5)
    for _ in range(30):
        make_link(app, hours=1)
    now = at(time_machine, NOON_NY + timedelta(hours=2))

    results = run_together(app, lambda: link_jobs.expire_links(now), threads=3)

    assert sum(r["expired"] for r in results) == 30
    assert len(actions(app, "link.expired")) == 30


# --- scheduled payments -------------------------------------------------------------------


def test_a_due_card_payment_is_charged_with_a_receipt(app, time_machine):
    link_id = make_link(app)
    payment_id = schedule_payment(app, link_id, amount_cents=12_550)

    early = sweep(app, at(time_machine, DUE - timedelta(seconds=1)))
    assert early["charge-payments"] == {"due": 0, "enqueued": 0}
    due = sweep(app, at(time_machine, DUE))
    drain(app)

    assert due["charge-payments"] == {"due": 1, "enqueued": 1}
    paid = payment(app, payment_id)
    assert paid.status == "paid"
    assert paid.paid_at == DUE
    assert paid.gateway_reference.startswith("ch_sbx_")
    assert paid.receipt_number.startswith("R-20261125-")
    assert balance(app, payment_id) == 50_000 - 12_550
    [receipt] = messages(app, "receipt")
    assert (receipt.channel, receipt.status) == ("email", "delivered")
    assert paid.receipt_number in receipt.body
    assert [e.object_id for e in actions(app, "payment.paid")] == [str(payment_id)]
    # The next sweep finds nothing left to do.
    assert sweep(app, at(time_machine, DUE + timedelta(minutes=1)))["charge-payments"]["due"] == 0


def test_a_declined_scheduled_payment_sends_the_payment_failed_notice(app, time_machine):
    link_id = make_link(app)
    payment_id = schedule_payment(app, link_id, card=DECLINED_CARD)

    sweep(app, at(time_machine, DUE))
    drain(app)

    declined = payment(app, payment_id)
    assert declined.status == "declined"
    assert declined.decline_code == "card_declined"
    assert declined.receipt_number is None
    assert balance(app, payment_id) == 50_000
    notices = messages(app, "payment_failed")
    assert sorted(m.channel for m in notices) == ["email", "sms"]
    assert {m.status for m in notices} == {"delivered"}
    # The link still works, so the notice points at it.
    with app.extensions["paylink.db"].transaction() as session:
        url = service.link_url(
            MessageEnv.from_config(app.extensions["paylink.config"]),
            TOKENS,
            session.get(PaymentLink, link_id),
        )
    assert all(url in m.body for m in notices)
    assert messages(app, "receipt") == []


def test_a_failed_payment_on_an_ended_link_points_at_find_my_account(app, time_machine):
    link_id = make_link(app, hours=1)
    payment_id = schedule_payment(app, link_id, card=DECLINED_CARD)

    sweep(app, at(time_machine, DUE))  # the link expired two days ago
    drain(app)

    assert payment(app, payment_id).status == "declined"
    notices = messages(app, "payment_failed")
    assert notices
    assert all("https://pay.example.test/pay" in m.body for m in notices)


def test_a_revoked_links_scheduled_payments_are_cancelled_not_charged(app, time_machine):
    link_id = make_link(app)
    first = schedule_payment(app, link_id, amount_cents=5_000)
    second = schedule_payment(app, link_id, amount_cents=5_000, when=DUE + timedelta(days=7))
    with app.extensions["paylink.db"].transaction() as session:
        service.revoke_link(
            session, session.get(PaymentLink, link_id), audit.Actor.system("test"), NOON_NY
        )

    sweep(app, at(time_machine, DUE))
    drain(app)
    sweep(app, at(time_machine, DUE + timedelta(days=7)))
    drain(app)

    for payment_id in (first, second):
        cancelled = payment(app, payment_id)
        assert cancelled.status == "cancelled"
        assert cancelled.gateway_reference is None
    assert balance(app, first) == 50_000
    events = actions(app, "payment.cancelled")
    assert [(e.object_id, e.data["reason"]) for e in events] == [
        (str(first), "link_revoked"),
        (str(second), "link_revoked"),
    ]
    assert messages(app, "receipt") == []
    assert messages(app, "payment_failed") == []


def test_a_payment_is_not_charged_when_nothing_is_owed_any_more(app, time_machine):
    link_id = make_link(app)
    payment_id = schedule_payment(app, link_id)
    with app.extensions["paylink.db"].transaction() as session:
        session.get(Account, session.get(PaymentLink, link_id).account_id).balance_cents = 0

    sweep(app, at(time_machine, DUE))
    drain(app)

    assert payment(app, payment_id).status == "cancelled"
    assert [e.data["reason"] for e in actions(app, "payment.cancelled")] == ["nothing_owed"]


def test_a_payment_larger_than_what_is_still_owed_takes_only_that(app, time_machine):
    link_id = make_link(app)
    payment_id = schedule_payment(app, link_id, amount_cents=10_000)
    with app.extensions["paylink.db"].transaction() as session:
        session.get(Account, session.get(PaymentLink, link_id).account_id).balance_cents = 2_500

    sweep(app, at(time_machine, DUE))
    drain(app)

    paid = payment(app, payment_id)
    assert (paid.status, paid.amount_cents) == ("paid", 2_500)
    assert balance(app, payment_id) == 0
    [event] = actions(app, "payment.reduced")
    assert event.data == {"from_cents": 10_000, "to_cents": 2_500}


def test_the_charge_job_leaves_a_payment_that_is_not_due_alone(app):
    payment_id = schedule_payment(app, make_link(app))

    assert link_jobs.charge_payment(payment_id) == {"outcome": "not_due"}
    assert link_jobs.charge_payment(10**9) == {"outcome": "missing"}
    assert payment(app, payment_id).status == "scheduled"


class CountingGateway:
    """The sandbox, counting the charges asked of it by idempotency key."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.name = inner.name
        self.charges: list[str] = []
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def charge(self, token: str, amount_cents: int, idempotency_key: str, now: datetime):
        with self.lock:
            self.charges.append(idempotency_key)
        return self.inner.charge(token, amount_cents, idempotency_key, now)


@pytest.fixture
def counting_gateway(app: Flask) -> CountingGateway:
    gateway = CountingGateway(build_gateway(app.extensions["paylink.config"]))
    app.extensions["paylink.gateway"] = gateway
    return gateway


def test_a_charge_job_run_twice_charges_once(app, time_machine, counting_gateway):
    payment_id = schedule_payment(app, make_link(app))
    at(time_machine, DUE)

    first = link_jobs.charge_payment(payment_id)
    second = link_jobs.charge_payment(payment_id)

    assert (first, second) == ({"outcome": "paid"}, {"outcome": "paid"})
    assert len(counting_gateway.charges) == 1
    paid = payment(app, payment_id)
    assert paid.status == "paid"
    assert balance(app, payment_id) == 40_000
    assert len(messages(app, "receipt")) == 1
    assert len(actions(app, "payment.paid")) == 1


def test_charge_jobs_running_at_once_charge_once(app, time_machine, counting_gateway):
    payment_id = schedule_payment(app, make_link(app))
    at(time_machine, DUE)

    results = run_together(app, lambda: link_jobs.charge_payment(payment_id), threads=4)

    assert {r["outcome"] for r in results} == {"paid"}
    # Any run that found it under way asked again with the payment's own key: one charge.
    assert set(counting_gateway.charges) == {payment(app, payment_id).idempotency_key}
    with app.extensions["paylink.db"].transaction() as session:
        rows = session.execute(
            select(Payment.status, Payment.gateway_reference).where(Payment.id == payment_id)
        ).all()
    assert len(rows) == 1
    assert rows[0].status == "paid"
    assert balance(app, payment_id) == 40_000
    assert len(messages(app, "receipt")) == 1
    assert len(actions(app, "payment.paid")) == 1


def test_a_charge_interrupted_after_processing_is_finished_by_its_retry(
    app, time_machine, counting_gateway
):
    payment_id = schedule_payment(app, make_link(app))
    at(time_machine, DUE)
    with app.extensions["paylink.db"].transaction() as session:
        from app.payments.models import PaymentStatus

        payments.transition(session.get(Payment, payment_id), PaymentStatus.processing, DUE)

    assert link_jobs.charge_payment(payment_id) == {"outcome": "paid"}
    assert len(counting_gateway.charges) == 1
    assert len(messages(app, "receipt")) == 1


def test_the_job_is_enqueued_once_per_payment_however_often_the_sweep_runs(app, time_machine):
    payment_id = schedule_payment(app, make_link(app))

    counts = [sweep(app, at(time_machine, DUE + timedelta(seconds=s))) for s in (0, 30, 90)]

    assert [c["charge-payments"] for c in counts] == [
        {"due": 1, "enqueued": 1},
        {"due": 1, "enqueued": 0},
        {"due": 1, "enqueued": 0},
    ]
    assert app.extensions["paylink.queue"].queue("payments").job_ids == [
        f"charge-payment-{payment_id}"
    ]
    drain(app)
    assert payment(app, payment_id).status == "paid"


def test_two_sweeps_at_once_enqueue_each_payment_once(app, time_machine, monkeypatch):
    monkeypatch.setattr(link_jobs, "BATCH", 3)
    link_id = make_link(app)
    ids = [schedule_payment(app, link_id, amount_cents=100) for _ in range(10)]
    now = at(time_machine, DUE)

    results = run_together(app, lambda: link_jobs.charge_scheduled_payments(now), threads=2)

    assert sum(r["enqueued"] for r in results) == 10
    job_ids = app.extensions["paylink.queue"].queue("payments").job_ids
    assert sorted(job_ids) == sorted(f"charge-payment-{i}" for i in ids)
    for payment_id in ids:  # the jobs, run here: quicker than a worker for each
        assert link_jobs.charge_payment(payment_id) == {"outcome": "paid"}
    with app.extensions["paylink.db"].transaction() as session:
        statuses = session.scalars(select(Payment.status).where(Payment.id.in_(ids))).all()
    assert statuses == ["paid"] * 10
    assert balance(app, ids[0]) == 50_000 - 10 * 100
    assert len(messages(app, "receipt")) == 10


# --- bank debits --------------------------------------------------------------------------


@pytest.fixture
def slow_bank_app(app_config: dict[str, Any], app: Flask) -> Iterator[Flask]:
    """The app with bank debits that settle after two hours (the same database and Redis)."""
    application = create_app({**app_config, "ach_settle_seconds": 7200})
    set_job_app(application)
    yield application
    set_job_app(app)
    application.extensions["paylink.queue"].close()
    application.extensions["paylink.db"].dispose()


def test_a_bank_debit_is_pending_then_settles_after_the_configured_delay(
    slow_bank_app, time_machine
):
    app = slow_bank_app
    payment_id = schedule_payment(app, make_link(app), card=None, bank_account="123456789")

    sweep(app, at(time_machine, DUE))
    drain(app)

    pending = payment(app, payment_id)
    assert pending.status == "pending"
    assert pending.settles_at == DUE + timedelta(seconds=7200)
    assert pending.receipt_number
    assert balance(app, payment_id) == 40_000  # counted while it settles
    [receipt] = messages(app, "receipt")  # sent now; none comes again at settlement
    assert receipt.status == "delivered"
    assert "Date: Nov 25, 2026 10:00 AM EST" in receipt.body  # taken today, not scheduled

    not_yet = sweep(app, at(time_machine, DUE + timedelta(seconds=7199)))
    assert not_yet["settle-payments"] == {"settled": 0, "returned": 0, "still_pending": 0}
    assert payment(app, payment_id).status == "pending"

    settled = sweep(app, at(time_machine, DUE + timedelta(seconds=7200)))
    again = sweep(app, at(time_machine, DUE + timedelta(seconds=7260)))

    assert settled["settle-payments"] == {"settled": 1, "returned": 0, "still_pending": 0}
    assert again["settle-payments"] == {"settled": 0, "returned": 0, "still_pending": 0}
    paid = payment(app, payment_id)
    assert paid.status == "paid"
    assert paid.paid_at == DUE + timedelta(seconds=7200)
    assert balance(app, payment_id) == 40_000
    drain(app)
    assert len(messages(app, "receipt")) == 1
    assert [e.object_id for e in actions(app, "payment.pending")] == [str(payment_id)]
    assert [e.object_id for e in actions(app, "payment.paid")] == [str(payment_id)]


class ReturningBank:
    """The sandbox, except that every bank debit comes back returned at settlement."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def settlement(self, reference: str, now: datetime) -> ChargeResult:
        answer = self.inner.settlement(reference, now)
        if answer.status == "approved":
            return ChargeResult(DECLINED, reference, "insufficient_funds", "Returned (R01).")
        return answer


def test_a_returned_bank_debit_restores_the_balance_and_tells_the_customer(
    app, time_machine, caplog
):
    caplog.set_level(logging.INFO, logger="app.payments.service")
    payment_id = schedule_payment(app, make_link(app), card=None, bank_account="123456789")
    sweep(app, at(time_machine, DUE))
    drain(app)
    assert balance(app, payment_id) == 40_000
    app.extensions["paylink.gateway"] = ReturningBank(
        build_gateway(app.extensions["paylink.config"])
    )

    counts = sweep(app, at(time_machine, DUE + timedelta(hours=1)))
    drain(app)

    assert counts["settle-payments"] == {"settled": 0, "returned": 1, "still_pending": 0}
    returned = payment(app, payment_id)
    assert returned.status == "declined"
    assert returned.decline_code == "insufficient_funds"
    assert balance(app, payment_id) == 50_000
    notices = messages(app, "payment_failed")
    assert sorted(m.channel for m in notices) == ["email", "sms"]
    assert {m.status for m in notices} == {"delivered"}
    outcomes = [
        (r.payment_id, r.event, r.status, r.decline_code)
        for r in caplog.records
        if getattr(r, "payment_id", None) == payment_id
    ]
    # (The charge itself ran in the worker's process.)
    assert outcomes == [(payment_id, "settlement", "declined", "insufficient_funds")]
    assert "123456789" not in caplog.text  # the account number is never logged


def test_a_debit_the_gateway_still_holds_stays_pending(app, time_machine):
    payment_id = schedule_payment(app, make_link(app), card=None, bank_account="123456789")
    at(time_machine, DUE)
    assert link_jobs.charge_payment(payment_id) == {"outcome": "pending"}
    # Our row says it is due; the bank has not settled it yet.
    with app.extensions["paylink.db"].transaction() as session:
        session.get(Payment, payment_id).settles_at = DUE

    counts = sweep(app, at(time_machine, DUE + timedelta(seconds=1)))

    assert counts["settle-payments"] == {"settled": 0, "returned": 0, "still_pending": 1}
    assert payment(app, payment_id).status == "pending"


def test_concurrent_settlement_sweeps_settle_each_debit_once(app, time_machine, monkeypatch):
    monkeypatch.setattr(link_jobs, "BATCH", 4)
    link_id = make_link(app)
    ids = [
        schedule_payment(app, link_id, card=None, bank_account="123456789", amount_cents=100)
        for _ in range(12)
    ]
    at(time_machine, DUE)
    for payment_id in ids:  # the charge jobs, run here: quicker than a worker for each
        assert link_jobs.charge_payment(payment_id) == {"outcome": "pending"}
    now = at(time_machine, DUE + timedelta(hours=1))

    results = run_together(app, lambda: link_jobs.settle_bank_payments(now), threads=3)

    assert sum(r["settled"] for r in results) == 12
    assert sorted(int(e.object_id) for e in actions(app, "payment.paid")) == ids


# --- reading due rows by index ------------------------------------------------------------


def test_the_duties_read_due_rows_through_the_partial_indexes(app, time_machine):
    link_id = make_link(app, hours=1)
    schedule_payment(app, link_id)
    schedule_payment(app, link_id, card=None, bank_account="123456789", when=NOON_NY)
    sweep(app, at(time_machine, NOON_NY))
    drain(app)  # the bank debit is pending now
    now = at(time_machine, DUE)

    def work() -> None:
        link_jobs.expire_links(now)
        link_jobs.charge_scheduled_payments(now)
        link_jobs.settle_bank_payments(now)

    # Each duty's read of due rows, and the index it must go through.
    expected = {
        "payment_link.expires_at <=": "ix_payment_link_active_expiry",
        "payment.scheduled_for <=": "ix_payment_due",
        "payment.settles_at <=": "ix_payment_settling",
    }
    plans = index_plans(app, work, expected)
    assert set(plans) == set(expected.values())
    for index, plan in plans.items():
        assert index in plan, plan


# --- helpers ------------------------------------------------------------------------------


def run_together(app: Flask, work, *, threads: int) -> list[Any]:
    """Run ``work`` in ``threads`` threads released at once, each in an app context."""
    barrier = threading.Barrier(threads)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        with app.app_context():
            barrier.wait()
            try:
                results.append(work())
            except BaseException as exc:
                errors.append(exc)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not errors, errors
    return results


def test_a_charge_stuck_in_processing_is_reconciled_by_the_sweep(app, time_machine):
    from app.payments.models import PaymentStatus

    link_id = make_link(app)
    payment_id = schedule_payment(app, link_id)
    at(time_machine, DUE)
    with app.extensions["paylink.db"].transaction() as session:
        # The worker died after the gateway call: the row says processing, nothing else.
        payments.transition(session.get(Payment, payment_id), PaymentStatus.processing, DUE)
    with app.app_context():
        assert link_jobs.reconcile_stuck_charges(DUE + timedelta(minutes=1)) == {
            "stuck": 0,
            "enqueued": 0,
        }
        assert link_jobs.reconcile_stuck_charges(DUE + timedelta(minutes=6)) == {
            "stuck": 1,
            "enqueued": 1,
        }
    at(time_machine, DUE + timedelta(minutes=6))
    drain(app)  # a forked worker: the charge is seen in the rows it wrote
    assert payment(app, payment_id).status == "paid"
    assert payment(app, payment_id).gateway_reference is not None
    assert len(actions(app, "payment.paid")) == 1
    assert len(messages(app, "receipt")) == 1
