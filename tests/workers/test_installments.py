"""Installment charging through ``flask sweep --at`` and real workers: paid with a
receipt, declined with the payment-failed notice and retries, defaulted or cancelled after
the last failure, completed after the last payment, bank debits settled or returned, a
plan cancelled while its job waits, a clock jumping months, concurrent sweeps, an emptied
Redis, gateway errors, and the timeline in ``GET /plans/{id}``."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from app.audit import Actor
from app.models import Account, AuditEvent, Message, OrgSettings
from app.payments import build_gateway
from app.payments import service as payments
from app.payments.models import Payment, PaymentMethod
from app.payments.sandbox import SandboxGateway
from links.web import message_env
from offers import plans as plan_module
from offers.models import Installment, Offer, PaymentPlan
from signing.method_views import method_tokens
from tests.app.test_console import login
from tests.helpers import drain, index_plans
from tests.links.test_link_duties import ReturningBank, run_together, sweep
from tests.signing.plan_factory import make_signed_plan
from workers import links as link_jobs
from workers import plans as plan_jobs

# make_signed_plan: signed 2026-11-23; installments on Dec 1, Jan 1, Feb 1 at 09:00
# in Chicago (15:00 UTC), 33 334 + 33 333 + 33 333 cents.
FIRST = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
SECOND = datetime(2027, 1, 1, 15, 0, tzinfo=UTC)
THIRD = datetime(2027, 2, 1, 15, 0, tzinfo=UTC)
DECLINED_CARD = "4000 0000 0000 0002"


@pytest.fixture(autouse=True)
def _before_the_first(time_machine):
    time_machine.move_to(FIRST - timedelta(days=1), tick=False)


# --- arranging and reading ----------------------------------------------------------------


def _db(app: Flask):
    return app.extensions["paylink.db"]


def use_method(app: Flask, plan_id: int, *, card: str | None = None, bank: str | None = None):
    """Give the plan another method, saved as the flows save one."""
    now = datetime.now(UTC)
    with _db(app).transaction() as session:
        plan = session.get(PaymentPlan, plan_id)
        account = session.get(Account, plan.account_id)
        if bank:
            method = payments.add_bank_account(
                session, account, SandboxGateway(),
                payments.BankInput("Ola Nguyen", "110000000", bank, "checking"), now,
            )  # fmt: skip
        else:
            method = payments.add_card(
                session, account, SandboxGateway(),
                payments.CardInput("Ola Nguyen", card, "12/30", "123", "60601"), now.date(), now,
            )  # fmt: skip
        plan.method_id = method.id


def set_settings(app: Flask, **values: Any) -> None:
    with _db(app).transaction() as session:
        from app.settings import get_settings

        settings = get_settings(session)
        for name, value in values.items():
            setattr(settings, name, value)


def at(time_machine, instant: datetime) -> datetime:
    time_machine.move_to(instant, tick=False)
    return instant


def run_sweep(app: Flask, time_machine, instant: datetime) -> dict[str, int]:
    """A sweep as of ``instant`` (the clock there too), then a real worker's drain."""
    counts = sweep(app, at(time_machine, instant))
    drain(app)
    return counts["installments"]


def items(app: Flask, plan_id: int) -> list[Installment]:
    with _db(app).transaction() as session:
        return list(
            session.scalars(
                select(Installment).where(Installment.plan_id == plan_id).order_by(Installment.n)
            )
        )


def plan_row(app: Flask, plan_id: int) -> PaymentPlan:
    with _db(app).transaction() as session:
        return session.get(PaymentPlan, plan_id)


def plan_payments(app: Flask, account_id: int) -> list[Payment]:
    with _db(app).transaction() as session:
        return list(
            session.scalars(
                select(Payment).where(Payment.account_id == account_id).order_by(Payment.id)
            )
        )


def messages(app: Flask, kind: str) -> list[Message]:
    with _db(app).transaction() as session:
        return list(
            session.scalars(select(Message).where(Message.kind == kind).order_by(Message.id))
        )


def actions(app: Flask, action: str) -> list[AuditEvent]:
    with _db(app).transaction() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)
            )
        )


def balance(app: Flask, account_id: int) -> int:
    with _db(app).transaction() as session:
        return session.get(Account, account_id).balance_cents


def update_url(app: Flask, plan_id: int) -> str:
    with _db(app).transaction() as session, app.app_context():
        offer = session.get(Offer, session.get(PaymentPlan, plan_id).offer_id)
        return f"https://pay.example.test/m/{method_tokens().token_for(offer.token_id)}"


class CountingGateway:
    """The sandbox, counting charges by idempotency key; ``fail`` raises that many
    times first, as a gateway that times out or answers 5xx does."""

    def __init__(self, inner: Any, fail: int = 0):
        self.inner = inner
        self.name = inner.name
        self.charges: list[str] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def charge(self, token: str, amount_cents: int, idempotency_key: str, now: datetime):
        with self.lock:
            self.charges.append(idempotency_key)
            if self.fail > 0:
                self.fail -= 1
                raise ConnectionError("gateway timed out")
        return self.inner.charge(token, amount_cents, idempotency_key, now)


@pytest.fixture
def counting_gateway(app: Flask) -> CountingGateway:
    gateway = CountingGateway(build_gateway(app.extensions["paylink.config"]))
    app.extensions["paylink.gateway"] = gateway
    return gateway


# --- paid, completed ----------------------------------------------------------------------


def test_a_due_installment_is_charged_at_the_charge_hour_with_a_receipt(app, time_machine):
    signed = make_signed_plan(app)

    early = run_sweep(app, time_machine, FIRST - timedelta(seconds=1))
    due = run_sweep(app, time_machine, FIRST)
    again = run_sweep(app, time_machine, FIRST + timedelta(minutes=1))

    assert early == {"due": 0, "enqueued": 0}
    assert due == {"due": 1, "enqueued": 1}
    assert again == {"due": 0, "enqueued": 0}
    first, second, third = items(app, signed.plan_id)
    assert (first.status, first.paid_at, first.attempts) == ("paid", FIRST, 1)
    assert (second.status, third.status) == ("scheduled", "scheduled")
    [paid] = plan_payments(app, signed.account_id)
    assert first.last_payment_id == paid.id
    assert (paid.status, paid.amount_cents) == ("paid", 33_334)
    assert paid.idempotency_key == f"installment-{first.id}-1"
    assert paid.gateway_reference.startswith("ch_sbx_")
    assert balance(app, signed.account_id) == 100_000 - 33_334
    [receipt] = messages(app, "receipt")
    assert (receipt.channel, receipt.status) == ("email", "delivered")
    assert paid.receipt_number in receipt.body
    assert plan_row(app, signed.plan_id).status == "active"


def test_the_last_installment_completes_the_plan_and_tells_the_customer_once(
    app, client, agent, time_machine
):
    signed = make_signed_plan(app)

    for instant in (FIRST, SECOND, THIRD, THIRD + timedelta(days=1)):
        run_sweep(app, time_machine, instant)

    assert [i.status for i in items(app, signed.plan_id)] == ["paid"] * 3
    plan = plan_row(app, signed.plan_id)
    assert (plan.status, plan.completed_at) == ("completed", THIRD)
    assert balance(app, signed.account_id) == 0
    assert len(messages(app, "receipt")) == 3
    [done] = messages(app, "plan_completed")
    assert (done.channel, done.status) == ("email", "delivered")
    assert "$1,000.00" in done.body
    assert len(actions(app, "plan.completed")) == 1
    # The plan API: the contract's fields, the notice, and the timeline oldest first.
    body = client.get(f"/api/v1/plans/{signed.plan_id}", headers=agent.headers).json
    assert body["status"] == "completed"
    assert [i["paid_at"] for i in body["installments"]] == [
        "2026-12-01T15:00:00Z",
        "2027-01-01T15:00:00Z",
        "2027-02-01T15:00:00Z",
    ]
    assert ("email", "plan_completed") in {(m["channel"], m["kind"]) for m in body["messages"]}
    # (The factory's plan has no offer.accepted audit event; the signing flow's has.)
    types = [e["type"] for e in body["events"]]
    assert types == [*["installment.charging", "installment.paid"] * 3, "plan.completed"]
    assert [e["data"].get("n") for e in body["events"][:6]] == [1, 1, 2, 2, 3, 3]
    assert body["events"][-1]["at"] == "2027-02-01T15:00:00Z"
    assert body["events"][-1]["actor"] == {"type": "system", "id": "installments"}
    # The account page's timeline says so in words.
    console = app.test_client()
    assert login(console, agent.email, agent.password).status_code == 302
    page = console.get(f"/console/accounts/{signed.account_id}").get_data(as_text=True)
    assert f"Plan offer {signed.offer_id} plan paid in full" in page
    assert "plan.completed" not in page


# --- declines and retries -----------------------------------------------------------------


def test_a_decline_notifies_with_the_update_link_and_retries_per_policy(app, time_machine):
    signed = make_signed_plan(app)
    use_method(app, signed.plan_id, card=DECLINED_CARD)

    run_sweep(app, time_machine, FIRST)

    first = items(app, signed.plan_id)[0]
    assert (first.status, first.attempts) == ("scheduled", 1)
    retry = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)  # 3 days on, 09:00 in Chicago
    assert first.next_attempt_at == retry
    notices = messages(app, "payment_failed")
    assert sorted(m.channel for m in notices) == ["email", "sms"]
    assert {m.status for m in notices} == {"delivered"}
    url = update_url(app, signed.plan_id)
    assert all(url in m.body for m in notices)
    email = next(m for m in notices if m.channel == "email")
    assert "We will try again on Dec 4, 2026" in email.body
    assert balance(app, signed.account_id) == 100_000
    # Not again before the retry; on the retry day, a second attempt under a new key.
    assert run_sweep(app, time_machine, retry - timedelta(minutes=1))["due"] == 0
    assert run_sweep(app, time_machine, retry) == {"due": 1, "enqueued": 1}
    first = items(app, signed.plan_id)[0]
    assert (first.status, first.attempts) == ("scheduled", 2)
    assert first.next_attempt_at == datetime(2026, 12, 8, 15, 0, tzinfo=UTC)  # day 7
    keys = [p.idempotency_key for p in plan_payments(app, signed.account_id)]
    assert keys == [f"installment-{first.id}-1", f"installment-{first.id}-2"]
    assert len(messages(app, "payment_failed")) == 4  # two channels, two declines


def test_after_the_last_failure_the_plan_is_defaulted_with_its_notice(
    app, client, agent, time_machine
):
    signed = make_signed_plan(app)
    use_method(app, signed.plan_id, card=DECLINED_CARD)

    for day in (1, 4, 8, 9):
        run_sweep(app, time_machine, datetime(2026, 12, day, 15, 0, tzinfo=UTC))
    run_sweep(app, time_machine, SECOND)  # nothing more is ever charged

    assert [(i.status, i.attempts) for i in items(app, signed.plan_id)] == [
        ("declined", 3),
        ("cancelled", 0),
        ("cancelled", 0),
    ]
    plan = plan_row(app, signed.plan_id)
    assert plan.status == "defaulted"
    assert len(plan_payments(app, signed.account_id)) == 3
    assert len(messages(app, "payment_failed")) == 4  # not after the last: that is the end
    notices = messages(app, "plan_defaulted")
    assert sorted(m.channel for m in notices) == ["email", "sms"]
    assert "$333.34" in notices[0].body
    [event] = actions(app, "plan.defaulted")
    assert event.data["installments_cancelled"] == [2, 3]
    body = client.get(f"/api/v1/plans/{signed.plan_id}", headers=agent.headers).json
    assert body["status"] == "defaulted"
    assert [e["type"] for e in body["events"]][-2:] == ["installment.declined", "plan.defaulted"]
    assert [
        e["data"]["retry_at"] for e in body["events"] if e["type"] == "installment.declined"
    ] == [
        "2026-12-04T15:00:00Z",
        "2026-12-08T15:00:00Z",
        None,
    ]
    # A defaulted plan cannot be cancelled (the API's 409), and its method page is gone.
    assert (
        client.post(
            f"/api/v1/plans/{signed.plan_id}/cancel", json={"reason": "x"}, headers=agent.headers
        ).status_code
        == 409
    )
    assert (
        client.get(
            update_url(app, signed.plan_id).removeprefix("https://pay.example.test")
        ).status_code
        == 410
    )


def test_with_the_cancel_policy_the_last_failure_cancels_the_plan(app, time_machine):
    signed = make_signed_plan(app)
    set_settings(app, failed_plan_action="cancelled", retry_after_days=[2])
    use_method(app, signed.plan_id, card=DECLINED_CARD)

    run_sweep(app, time_machine, FIRST)
    run_sweep(app, time_machine, FIRST + timedelta(days=2))

    assert [i.status for i in items(app, signed.plan_id)] == ["declined", "cancelled", "cancelled"]
    plan = plan_row(app, signed.plan_id)
    assert (plan.status, plan.cancel_reason) == ("cancelled", "installment 1 declined 2 times")
    notices = messages(app, "plan_cancelled")
    assert sorted(m.channel for m in notices) == ["email", "sms"]
    email = next(m for m in notices if m.channel == "email")
    assert "we could not collect your payment of $333.34" in email.body
    [event] = actions(app, "plan.cancelled")
    assert (event.actor_type, event.actor_id) == ("system", "installments")


# --- bank debits --------------------------------------------------------------------------


def test_a_bank_debit_stays_pending_until_it_settles(app, time_machine):
    signed = make_signed_plan(app)
    use_method(app, signed.plan_id, bank="123456789")

    run_sweep(app, time_machine, FIRST)

    first = items(app, signed.plan_id)[0]
    assert first.status == "pending"
    [debit] = plan_payments(app, signed.account_id)
    assert debit.status == "pending"
    assert len(messages(app, "receipt")) == 1  # taken: the receipt goes now, as for links
    sweep(app, at(time_machine, FIRST + timedelta(minutes=4)))
    assert items(app, signed.plan_id)[0].status == "pending"

    counts = sweep(app, at(time_machine, FIRST + timedelta(minutes=5)))

    assert counts["settle-payments"] == {"settled": 1, "returned": 0, "still_pending": 0}
    first = items(app, signed.plan_id)[0]
    assert (first.status, first.paid_at) == ("paid", FIRST + timedelta(minutes=5))
    assert len(messages(app, "receipt")) == 1
    assert [e.data["n"] for e in actions(app, "installment.paid")] == [1]


def test_a_returned_bank_debit_is_a_decline_with_a_retry(app, time_machine):
    signed = make_signed_plan(app)
    use_method(app, signed.plan_id, bank="123456789")
    run_sweep(app, time_machine, FIRST)
    assert balance(app, signed.account_id) == 100_000 - 33_334
    app.extensions["paylink.gateway"] = ReturningBank(
        build_gateway(app.extensions["paylink.config"])
    )

    counts = sweep(app, at(time_machine, FIRST + timedelta(hours=1)))
    drain(app)

    assert counts["settle-payments"] == {"settled": 0, "returned": 1, "still_pending": 0}
    first = items(app, signed.plan_id)[0]
    assert (first.status, first.attempts) == ("scheduled", 1)
    assert first.next_attempt_at == datetime(2026, 12, 4, 15, 0, tzinfo=UTC)
    assert balance(app, signed.account_id) == 100_000
    notices = messages(app, "payment_failed")
    assert sorted(m.channel for m in notices) == ["email", "sms"]
    url = update_url(app, signed.plan_id)
    assert all(url in m.body for m in notices)  # the plan's page, not find-my-account


# --- cancellation and moot work -----------------------------------------------------------


def test_a_plan_cancelled_while_its_job_waits_is_not_charged(
    app, client, agent, time_machine, counting_gateway
):
    signed = make_signed_plan(app)
    counts = sweep(app, at(time_machine, FIRST))
    assert counts["installments"] == {"due": 1, "enqueued": 1}
    assert (
        client.post(
            f"/api/v1/plans/{signed.plan_id}/cancel",
            json={"reason": "Customer asked to stop"},
            headers=agent.headers,
        ).status_code
        == 200
    )

    drain(app)

    assert counting_gateway.charges == []
    assert plan_payments(app, signed.account_id) == []
    assert [i.status for i in items(app, signed.plan_id)] == ["cancelled"] * 3
    assert messages(app, "receipt") == []
    assert sorted(m.channel for m in messages(app, "plan_cancelled")) == ["email", "sms"]
    assert run_sweep(app, time_machine, THIRD) == {"due": 0, "enqueued": 0}


def test_the_job_re_checks_under_the_lock(app, time_machine):
    signed = make_signed_plan(app)
    [first, *_] = items(app, signed.plan_id)
    with app.app_context():
        assert plan_jobs.charge_installment(first.id) == {"outcome": "not_due"}
        assert plan_jobs.charge_installment(10**9) == {"outcome": "missing"}
    at(time_machine, FIRST)
    with app.app_context():
        assert plan_jobs.charge_installment(first.id)["outcome"] == "paid"
        assert plan_jobs.charge_installment(first.id) == {"outcome": "paid"}
    assert len(plan_payments(app, signed.account_id)) == 1


def test_a_clock_jumping_months_charges_everything_due_once_in_order(app, time_machine):
    signed = make_signed_plan(app)

    counts = run_sweep(app, time_machine, THIRD + timedelta(days=7))
    again = run_sweep(app, time_machine, THIRD + timedelta(days=7, minutes=1))

    assert counts == {"due": 3, "enqueued": 3}
    assert again == {"due": 0, "enqueued": 0}
    installments = items(app, signed.plan_id)
    assert [i.status for i in installments] == ["paid"] * 3
    # One payment each, made in the installments' order, each under its first key.
    made = plan_payments(app, signed.account_id)
    assert [p.id for p in made] == [i.last_payment_id for i in installments]
    assert [p.idempotency_key for p in made] == [f"installment-{i.id}-1" for i in installments]
    assert len({p.gateway_reference for p in made}) == 3
    assert plan_row(app, signed.plan_id).status == "completed"
    assert len(messages(app, "receipt")) == 3
    assert len(messages(app, "plan_completed")) == 1


def test_a_late_first_attempt_keeps_its_retries_apart(app, time_machine):
    signed = make_signed_plan(app)
    use_method(app, signed.plan_id, card=DECLINED_CARD)

    run_sweep(app, time_machine, FIRST + timedelta(days=10))  # the sweep was down 10 days

    first = items(app, signed.plan_id)[0]
    assert (first.status, first.attempts) == ("scheduled", 1)
    assert first.next_attempt_at == datetime(2026, 12, 14, 15, 0, tzinfo=UTC)
    assert len(plan_payments(app, signed.account_id)) == 1


# --- exactly once -------------------------------------------------------------------------


def test_two_sweeps_at_once_charge_and_notify_each_installment_once(
    app, time_machine, monkeypatch, counting_gateway
):
    monkeypatch.setattr(plan_jobs, "BATCH", 2)
    plans = [make_signed_plan(app, n=n) for n in range(1, 5)]
    now = at(time_machine, FIRST)

    results = run_together(app, lambda: plan_jobs.charge_due_installments(now), threads=2)

    assert sum(r["enqueued"] for r in results) == 4
    job_ids = app.extensions["paylink.queue"].queue("payments").job_ids
    firsts = [items(app, p.plan_id)[0].id for p in plans]
    assert sorted(job_ids) == sorted(f"charge-installment-{i}-1" for i in firsts)
    with app.app_context():  # the jobs, each run twice here: quicker than a worker
        for installment_id in firsts * 2:
            plan_jobs.charge_installment(installment_id)
    assert len(counting_gateway.charges) == 4
    assert len(set(counting_gateway.charges)) == 4
    assert [items(app, p.plan_id)[0].status for p in plans] == ["paid"] * 4
    assert len(messages(app, "receipt")) == 4
    assert len(actions(app, "installment.paid")) == 4


def test_charge_jobs_running_at_once_charge_once(app, time_machine, counting_gateway):
    signed = make_signed_plan(app)
    first = items(app, signed.plan_id)[0]
    at(time_machine, FIRST)

    results = run_together(app, lambda: plan_jobs.charge_installment(first.id), threads=3)

    assert {r["outcome"] for r in results} <= {"paid", "resume", "pending"}
    assert set(counting_gateway.charges) == {f"installment-{first.id}-1"}
    [paid] = plan_payments(app, signed.account_id)
    assert paid.status == "paid"
    assert balance(app, signed.account_id) == 100_000 - 33_334
    assert len(messages(app, "receipt")) == 1
    assert len(actions(app, "installment.paid")) == 1


def test_an_emptied_redis_is_refilled_from_the_database(app, time_machine):
    signed = make_signed_plan(app)
    sweep(app, at(time_machine, FIRST))
    queue = app.extensions["paylink.queue"]
    assert len(queue.queue("payments").job_ids) == 1
    queue.connection.flushall()

    counts = sweep(app, at(time_machine, FIRST + timedelta(minutes=1)))
    drain(app)
    queue.connection.flushall()
    after = sweep(app, at(time_machine, FIRST + timedelta(minutes=2)))

    assert counts["installments"] == {"due": 1, "enqueued": 1}
    assert after["installments"] == {"due": 0, "enqueued": 0}
    assert len(plan_payments(app, signed.account_id)) == 1
    assert items(app, signed.plan_id)[0].status == "paid"
    assert len(messages(app, "receipt")) == 1


def test_gateway_errors_are_retried_and_charge_once(app, time_machine, counting_gateway):
    signed = make_signed_plan(app)
    first = items(app, signed.plan_id)[0]
    counting_gateway.fail = 2
    at(time_machine, FIRST)

    for _ in range(2):  # RQ's retries of the job, run here
        with app.app_context(), pytest.raises(ConnectionError):
            plan_jobs.charge_installment(first.id)
        assert items(app, signed.plan_id)[0].status == "pending"
    with app.app_context():
        assert plan_jobs.charge_installment(first.id)["outcome"] == "paid"

    assert counting_gateway.charges == [f"installment-{first.id}-1"] * 3
    [paid] = plan_payments(app, signed.account_id)
    assert paid.status == "paid"
    assert len(messages(app, "receipt")) == 1


def test_an_attempt_stuck_in_processing_is_finished_on_its_installment(
    app, time_machine, counting_gateway
):
    signed = make_signed_plan(app)
    first = items(app, signed.plan_id)[0]
    counting_gateway.fail = 1
    at(time_machine, FIRST)
    with app.app_context(), pytest.raises(ConnectionError):
        plan_jobs.charge_installment(first.id)  # and no retry came: the job is gone

    with app.app_context():
        assert link_jobs.reconcile_stuck_charges(FIRST + timedelta(minutes=6)) == {
            "stuck": 1,
            "enqueued": 1,
        }
    assert (
        app.extensions["paylink.queue"]
        .queue("payments")
        .job_ids[0]
        .startswith(f"reconcile-installment-{first.id}-")
    )
    at(time_machine, FIRST + timedelta(minutes=6))
    drain(app)

    first = items(app, signed.plan_id)[0]
    assert first.status == "paid"
    assert len(set(counting_gateway.charges)) == 1
    assert len(messages(app, "receipt")) == 1
    assert len(actions(app, "installment.paid")) == 1


def test_a_plan_cannot_be_cancelled_while_a_charge_is_at_the_gateway(
    app, client, agent, time_machine, counting_gateway
):
    signed = make_signed_plan(app)
    first = items(app, signed.plan_id)[0]
    counting_gateway.fail = 1  # the gateway call dies: the attempt is left processing
    at(time_machine, FIRST)
    with app.app_context(), pytest.raises(ConnectionError):
        plan_jobs.charge_installment(first.id)
    cancel = f"/api/v1/plans/{signed.plan_id}/cancel"

    refused = client.post(cancel, json={"reason": "Customer asked"}, headers=agent.headers)

    assert refused.status_code == 409
    assert "being processed" in refused.json["detail"]
    assert plan_row(app, signed.plan_id).status == "active"
    assert messages(app, "plan_cancelled") == []
    # The attempt finishes (its retry, or the stuck-charge sweep); then the plan cancels,
    # and nothing after that is charged.
    with app.app_context():
        assert plan_jobs.charge_installment(first.id)["outcome"] == "paid"
    done = client.post(cancel, json={"reason": "Customer asked"}, headers=agent.headers)
    assert done.status_code == 200
    assert [i.status for i in items(app, signed.plan_id)] == ["paid", "cancelled", "cancelled"]
    assert len(set(counting_gateway.charges)) == 1
    assert run_sweep(app, time_machine, THIRD) == {"due": 0, "enqueued": 0}


def test_the_duty_reads_due_rows_through_the_partial_index(app, time_machine):
    make_signed_plan(app)
    now = at(time_machine, FIRST)
    plans = index_plans(
        app,
        lambda: plan_jobs.charge_due_installments(now),
        {"installment.next_attempt_at <=": "ix_installment_due"},
    )
    assert "ix_installment_due" in plans["ix_installment_due"], plans


def test_settings_decide_the_charge_hour_of_a_retry(app, time_machine):
    signed = make_signed_plan(app)
    set_settings(app, charge_hour=13, retry_after_days=[1, 2])
    use_method(app, signed.plan_id, card=DECLINED_CARD)

    run_sweep(app, time_machine, FIRST)

    # 13:00 in Chicago the next day.
    assert items(app, signed.plan_id)[0].next_attempt_at == datetime(2026, 12, 2, 19, 0, tzinfo=UTC)
    method_id = plan_row(app, signed.plan_id).method_id
    with _db(app).transaction() as session:
        assert session.get(OrgSettings, 1).retry_after_days == [1, 2]
        assert session.get(PaymentMethod, method_id).last4 == "0002"


def test_a_job_waiting_on_a_cancel_in_progress_does_not_charge(app, time_machine, counting_gateway):
    """The cancel holds the plan's and installments' row locks (SQLite: the write lock);
    the job that comes meanwhile waits, then re-checks and finds the plan cancelled."""
    signed = make_signed_plan(app)
    first = items(app, signed.plan_id)[0]
    at(time_machine, FIRST)
    results: list[dict[str, str]] = []

    def job() -> None:
        with app.app_context():
            results.append(plan_jobs.charge_installment(first.id))

    session = _db(app).Session()
    try:
        with app.app_context():
            cancelled = plan_module.cancel_plan(
                session, session.get(PaymentPlan, signed.plan_id), "Customer asked",
                Actor.system("test"), FIRST, env=message_env(),
            )  # fmt: skip
        assert cancelled
        worker = threading.Thread(target=job)
        worker.start()
        worker.join(timeout=1.5)
        assert worker.is_alive()  # waiting for the locks the cancel holds
        session.commit()
    finally:
        session.close()
    worker.join(timeout=30)

    assert results == [{"outcome": "cancelled"}]
    assert counting_gateway.charges == []
    assert plan_payments(app, signed.account_id) == []
    assert [i.status for i in items(app, signed.plan_id)] == ["cancelled"] * 3


def test_never_more_than_is_still_owed(app, time_machine):
    signed = make_signed_plan(app)
    with _db(app).transaction() as session:  # most of the balance was paid another way
        session.get(Account, signed.account_id).balance_cents = 40_000

    for instant in (FIRST, SECOND, THIRD):
        run_sweep(app, time_machine, instant)

    assert [p.amount_cents for p in plan_payments(app, signed.account_id)] == [33_334, 6_666]
    assert [i.status for i in items(app, signed.plan_id)] == ["paid", "paid", "cancelled"]
    assert balance(app, signed.account_id) == 0
    [reduced] = actions(app, "installment.reduced")
    assert reduced.data == {"n": 2, "from_cents": 33_333, "to_cents": 6_666}
    [skipped] = actions(app, "installment.cancelled")
    assert skipped.data == {"n": 3, "reason": "nothing_owed"}
    assert plan_row(app, signed.plan_id).status == "completed"
    [done] = messages(app, "plan_completed")
    assert "you paid $400.00 in all" in done.body
