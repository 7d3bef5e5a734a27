"""links.checkout without the web: amounts, offers, the steps that apply, the flow state,
schedules, verification facts, the agreement text, and the charge in two transactions."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from app import audit
from app.messaging.outbox import MessageEnv
from app.models import Account, Message
from app.payments import service as payments
from app.payments.gateway import APPROVED, DECLINED, PENDING, ChargeResult
from app.payments.models import PaymentMethod
from app.payments.sandbox import SandboxGateway
from app.settings import get_settings
from links import checkout, service
from links.checkout import (
    Flow,
    FlowState,
    InputError,
    Installment,
    ScheduleError,
    Settlement,
    Step,
)
from links.models import PaymentAgreement, PaymentLink
from tests.links.test_flow import make_account, make_link

NY = ZoneInfo("America/New_York")
NOW = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)  # Tuesday noon in New York
TODAY = date(2026, 11, 24)


def flow(**overrides: Any) -> Flow:
    values: dict[str, Any] = {
        "due_cents": 15000,
        "currency": "USD",
        "timezone": "America/New_York",
        "verify_methods": ("ssn_last4",),
        "offers": (Settlement(20, 12000, 15000),),
        "can_skip_offer": True,
        "schedule_enabled": True,
        "max_payments": 4,
        "horizon_days": 60,
    }
    values.update(overrides)
    return Flow(**values)


# --- amounts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "cents"),
    [("125.50", 12550), ("$1,200", 120000), ("7.5", 750), (".5", 50), ("10.", 1000),
     ("0", 0), (" $ 3.07 ", 307), ("1,234,567.89", 123456789)],
)  # fmt: skip
def test_parse_amount(typed, cents):
    assert checkout.parse_amount(typed) == cents


@pytest.mark.parametrize(
    "typed",
    ["", "  ", "-1", "-0.50", "1.005", "12.345", "abc", "1e3", "1,2", "12,34.00", "$", ".",
     "١٢", "12 000", "0x10", "NaN", "Infinity", "10000000000.01"],
)  # fmt: skip
def test_parse_amount_refuses(typed):
    with pytest.raises(InputError):
        checkout.parse_amount(typed)


def test_check_amount():
    f = flow()
    assert checkout.check_amount(1, f, None) == 1
    assert checkout.check_amount(15000, f, None) == 15000
    with pytest.raises(InputError, match=r"more than \$0\.00"):
        checkout.check_amount(0, f, None)
    with pytest.raises(InputError, match=r"The most you can pay on this link is \$150\.00"):
        checkout.check_amount(15001, f, None)
    offer = f.offers[0]
    assert checkout.check_amount(12000, f, offer) == 12000
    with pytest.raises(InputError, match=r"the amount is \$120\.00"):
        checkout.check_amount(11999, f, offer)


def test_settlement_offers_round_half_up_and_skip_what_saves_nothing():
    assert checkout.settlement_offers(15000, [20]) == (Settlement(20, 12000, 15000),)
    # 999 * 0.67 = 669.33 -> 669; 1001 * 0.5 = 500.5 -> 501
    assert checkout.settlement_offers(999, [33])[0].amount_cents == 669
    assert checkout.settlement_offers(1001, [50])[0].amount_cents == 501
    offers = checkout.settlement_offers(10000, [10, 30, 30, 0, 100])
    assert [o.percent for o in offers] == [30, 10]
    assert offers[0].discount_cents == 3000
    assert checkout.settlement_offers(1, [20]) == ()  # one cent cannot be discounted
    assert checkout.settlement_offers(15000, []) == ()


# --- which steps apply ------------------------------------------------------------------------


def test_verification_methods_follow_settings_and_facts(db):
    settings = get_settings(db)
    account = Account(ssn_last4="6789", date_of_birth=None, zip="20001")
    settings.verification_methods = ["zip", "date_of_birth", "ssn_last4"]
    assert checkout.verification_methods(settings, account) == ("zip", "ssn_last4")
    settings.contact_verification = False
    assert checkout.verification_methods(settings, account) == ()
    settings.contact_verification = True
    assert checkout.verification_methods(settings, Account(zip="  ")) == ()
    db.rollback()


def test_build_flow_from_the_link_account_and_settings(db):
    settings = get_settings(db)
    link = PaymentLink(amount_cents=20000)
    account = Account(balance_cents=15000, currency="USD", timezone=None, ssn_last4="1234")
    f = checkout.build_flow(link, account, settings)
    assert f.due_cents == 15000  # never more than is owed
    assert f.timezone == settings.default_timezone
    assert [o.percent for o in f.offers] == [20]
    settings.virtual_collection = False
    assert checkout.build_flow(link, account, settings).offers == ()
    db.rollback()


def test_steps():
    state = FlowState(1)
    assert flow().steps(state) == [
        Step.start, Step.verify, Step.offer, Step.amount, Step.method, Step.schedule, Step.review,
    ]  # fmt: skip
    assert flow(verify_methods=(), offers=(), schedule_enabled=False).steps(state) == [
        Step.start, Step.amount, Step.method, Step.review,
    ]  # fmt: skip
    state.offer = 20
    assert Step.schedule not in flow().steps(state)  # no scheduling with a settlement
    state.offer = 0
    assert Step.schedule in flow().steps(state)


def test_first_open_step_and_going_back():
    f, state = flow(), FlowState(1)
    assert checkout.first_open_step(f, state) == Step.start
    assert not checkout.may_enter(f, state, Step.amount)
    state.reviewed = state.verified = True
    state.offer, state.amount_cents = 0, 500
    assert checkout.first_open_step(f, state) == Step.method
    assert checkout.may_enter(f, state, Step.verify)  # back is fine
    assert checkout.may_enter(f, state, Step.method)
    assert not checkout.may_enter(f, state, Step.schedule)
    assert checkout.progress(f, state, Step.method) == (5, 7)


# --- the flow state ---------------------------------------------------------------------------


def test_state_belongs_to_one_link():
    state = FlowState(7, reviewed=True, amount_cents=500, schedule=[["2026-12-01", 500]])
    data = state.dump()
    assert FlowState.load(data, 7) == state
    assert FlowState.load(data, 8) == FlowState(8)
    assert FlowState.load(None, 7) == FlowState(7)
    assert FlowState.load("junk", 7) == FlowState(7)


@pytest.mark.parametrize(
    "bad",
    [{"amount_cents": "500"}, {"amount_cents": True}, {"reviewed": "yes"}, {"when": "soon"},
     {"schedule": [["2026-12-01"]]}, {"schedule": "2026-12-01"}, {"nonce": 5}],
)  # fmt: skip
def test_state_of_the_wrong_shape_starts_over(bad):
    data = {**FlowState(7, reviewed=True).dump(), **bad}
    assert FlowState.load(data, 7) == FlowState(7)


def test_choices_clear_what_depended_on_them():
    state = FlowState(1, offer=0, amount_cents=500, method_id=3, when="now", nonce="n")
    state.choose_amount(600)
    assert (state.amount_cents, state.when, state.nonce, state.method_id) == (600, None, None, 3)
    state.when, state.nonce = "now", "n"
    state.choose_offer(20)
    assert (state.amount_cents, state.when, state.nonce) == (None, None, None)
    state.nonce = "n"
    state.declined("Your card was declined.")
    assert (state.method_id, state.nonce, state.notice) == (None, None, "Your card was declined.")
    state.choose_method(9)
    assert (state.method_id, state.notice) == (9, None)


def test_reconcile_drops_what_no_longer_holds():
    state = FlowState(1, offer=30, amount_cents=10500, when=None, nonce="n")
    checkout.reconcile(flow(), state)  # 30% is no longer offered
    assert (state.offer, state.amount_cents, state.nonce) == (None, None, None)

    state = FlowState(1, offer=0, amount_cents=500, when="now", nonce="n")
    checkout.reconcile(flow(can_skip_offer=False), state)
    assert state.offer is None

    state = FlowState(1, offer=0, amount_cents=15000, when="later",
                      schedule=[["2026-12-01", 15000]], nonce="n")  # fmt: skip
    checkout.reconcile(flow(due_cents=10000), state)  # paid down meanwhile
    assert (state.amount_cents, state.when, state.schedule, state.nonce) == (None, None, [], None)

    state = FlowState(1, offer=0, amount_cents=500, when="now", nonce="n")
    checkout.reconcile(flow(schedule_enabled=False), state)
    assert (state.when, state.nonce) == (None, None)

    state = FlowState(1, offer=20, amount_cents=12000, nonce="n")
    checkout.reconcile(flow(), state)  # a settlement, no schedule step: all still holds
    assert state.nonce == "n"


# --- schedules ---------------------------------------------------------------------------------


def rows(*pairs: tuple[int | str, str]) -> list[tuple[str, str]]:
    return [
        ((TODAY + timedelta(days=d)).isoformat() if isinstance(d, int) else d, amount)
        for d, amount in pairs
    ]


def test_check_schedule_sorts_by_date():
    planned = checkout.check_schedule(rows((30, "50"), ("", ""), (1, "100.00")), 15000, flow(), NOW)
    assert planned == [(TODAY + timedelta(days=1), 10000), (TODAY + timedelta(days=30), 5000)]
    assert checkout.check_schedule(rows((60, "150")), 15000, flow(), NOW)  # the horizon itself
    us_style = f"{TODAY.month}/{TODAY.day + 2}/{TODAY.year}"
    assert checkout.check_schedule([(us_style, "150")], 15000, flow(), NOW)


@pytest.mark.parametrize(
    ("typed", "fields", "message"),
    [
        (rows((0, "150")), {"date_1"}, None),
        (rows((-3, "150")), {"date_1"}, None),
        (rows((61, "150")), {"date_1"}, None),
        (rows((2, "75"), (2, "75")), {"date_2"}, None),
        (rows((2, "75"), ("2026-02-30", "75")), {"date_2"}, None),
        (rows((2, "x")), {"amount_1"}, None),
        (rows((2, "0")), {"amount_1"}, None),
        (rows(("", "150")), {"date_1"}, None),
        (rows((2, "")), {"amount_1"}, None),
        (rows((2, "100"), (3, "49.99")), set(), "they must add up to $150.00"),
        ([], set(), "at least one payment"),
        (rows((1, "30"), (2, "30"), (3, "30"), (4, "30"), (5, "30")), set(), "up to 4 payments"),
    ],
)
def test_check_schedule_refuses(typed, fields, message):
    with pytest.raises(ScheduleError) as caught:
        checkout.check_schedule(typed, 15000, flow(), NOW)
    assert set(caught.value.fields) == fields
    if message:
        assert message in caught.value.message


def test_schedule_dates_are_in_the_customers_time_zone():
    # 03:00 UTC on the 25th is still the 24th in New York: the 25th is "tomorrow".
    late = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
    assert checkout.schedule_bounds(flow(), late) == (date(2026, 11, 25), date(2027, 1, 23))
    assert checkout.schedule_bounds(flow(timezone="Asia/Tokyo"), late)[0] == date(2026, 11, 26)


# --- verification facts and masks ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "typed", "normal"),
    [("ssn_last4", " 6789 ", "6789"), ("date_of_birth", "1980-04-12", "1980-04-12"),
     ("date_of_birth", "4/12/1980", "1980-04-12"), ("zip", "20001-1234", "20001"),
     ("zip", "200011234", "20001")],
)  # fmt: skip
def test_normalize_verification(method, typed, normal):
    assert checkout.normalize_verification(method, typed) == normal


@pytest.mark.parametrize(
    ("method", "typed"),
    [("ssn_last4", "678"), ("ssn_last4", "67890"), ("ssn_last4", "٦٧٨٩"),
     ("date_of_birth", "1980-02-30"), ("date_of_birth", "yesterday"), ("zip", "2000"),
     ("zip", "ABCDE"), ("favorite_color", "blue")],
)  # fmt: skip
def test_normalize_verification_refuses(method, typed):
    with pytest.raises(InputError):
        checkout.normalize_verification(method, typed)


def test_masks():
    assert checkout.mask_phone("+12025550143") == "***-***-0143"
    assert checkout.mask_phone(None) is None
    assert checkout.mask_email("maria@example.com") == "m***@example.com"
    assert checkout.mask_email("no-at-sign") is None
    assert checkout.mask_email(None) is None


def test_verify_contact_counts_and_locks(app, db):
    account = make_account(db)
    _token, link = make_link(app, db, account)
    link = db.get(PaymentLink, link.id)
    assert checkout.verify_contact(db, link, "ssn_last4", "6789", NOW) is True
    with pytest.raises(InputError):
        checkout.verify_contact(db, link, "ssn_last4", "67", NOW)
    assert link.failed_verifications == 0
    for _ in range(4):
        assert checkout.verify_contact(db, link, "zip", "99999", NOW) is False
    with pytest.raises(service.LinkLocked) as locked:
        checkout.verify_contact(db, link, "date_of_birth", "1999-01-01", NOW)
    assert locked.value.until == NOW + timedelta(minutes=15)
    with pytest.raises(service.LinkLocked):
        checkout.verify_contact(db, link, "ssn_last4", "6789", NOW + timedelta(minutes=14))
    assert checkout.verify_contact(db, link, "ssn_last4", "6789", NOW + timedelta(minutes=15))
    db.rollback()


# --- the agreement ------------------------------------------------------------------------------


def card_method(**overrides: Any) -> PaymentMethod:
    values = {"kind": "card", "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2030}
    values.update(overrides)
    return PaymentMethod(**values)


def agreement(db, plan, method=None, settlement=None) -> str:
    return checkout.agreement_text(
        customer_name="Maria Lopez", account_ref="ending 0001", settings=get_settings(db),
        method=method or card_method(), plan=plan, settlement=settlement, currency="USD",
        today=TODAY,
    )  # fmt: skip


def test_agreement_text_is_deterministic_and_complete(db):
    plan = [Installment(1, 12550, None)]
    text = agreement(db, plan)
    assert text == agreement(db, plan)
    assert text.startswith("PAYMENT AUTHORIZATION (version 2026-11)\n")
    assert "I, Maria Lopez, authorize Paylink Demo Creditor" in text
    assert "Visa ending 4242 for account ending 0001" in text
    assert "$125.50 today, Nov 24, 2026" in text
    assert "charge to this card" in text
    assert "(800)" not in text
    assert "+18005550100" in text
    assert checkout.text_sha256(text) != checkout.text_sha256(
        agreement(db, [Installment(1, 12551, None)])
    )

    scheduled = agreement(
        db, [Installment(1, 10000, date(2026, 12, 1)), Installment(2, 5000, date(2027, 1, 1))],
        method=card_method(kind="bank", brand=None, account_type="checking", last4="6789"),
    )  # fmt: skip
    assert "payments below from my Checking account ending 6789" in scheduled
    assert "1. $100.00 on Dec 1, 2026" in scheduled
    assert "2. $50.00 on Jan 1, 2027" in scheduled
    assert "Total: $150.00" in scheduled
    assert "electronic debit (ACH)" in scheduled
    assert "To change or cancel a scheduled payment" in scheduled

    settled = agreement(db, [Installment(1, 12000, None)], settlement=Settlement(20, 12000, 15000))
    assert "accepts $120.00 (20% off) in full settlement of the $150.00 due" in settled
    db.rollback()


def test_plan_for(db):
    f = flow()
    state = FlowState(1, offer=0, amount_cents=15000, when="now")
    assert checkout.plan_for(f, state, NOW) == [Installment(1, 15000, None)]
    state.when = "later"
    state.schedule = [["2026-12-01", 5000], ["2026-11-25", 10000]]
    assert checkout.plan_for(f, state, NOW) == [
        Installment(1, 10000, date(2026, 11, 25)), Installment(2, 5000, date(2026, 12, 1)),
    ]  # fmt: skip
    # The next day, the first date is today: no longer a valid schedule.
    with pytest.raises(InputError):
        checkout.plan_for(f, state, NOW + timedelta(days=1))


# --- charging ----------------------------------------------------------------------------------


@pytest.fixture
def env(app) -> MessageEnv:
    return MessageEnv.from_config(app.extensions["paylink.config"])


@pytest.fixture
def ready(app, db):
    """An account, its link and a saved card, in the test's session."""
    account = make_account(db)
    _token, link = make_link(app, db, account)
    link = db.get(PaymentLink, link.id)
    card = payments.CardInput("Maria Lopez", "4242424242424242", "12/30", "123", "20001")
    method = payments.add_card(db, link.account, SandboxGateway(), card, TODAY, NOW)
    db.commit()
    return link, method


def start(db, link, method, plan, nonce="nonce-1"):
    return checkout.start_payment(
        db, link, method, plan, nonce=nonce, text="the text", ip="203.0.113.5",
        user_agent="UA " * 300, now=NOW, timezone="America/New_York",
    )  # fmt: skip


def test_start_payment_is_idempotent_by_nonce(db, ready):
    link, method = ready
    first = start(db, link, method, [Installment(1, 5000, None)])
    db.commit()
    assert first.created
    (payment,) = first.payments
    assert payment.status == "processing"
    assert payment.idempotency_key == f"link-{link.id}-nonce-1-1"
    again = start(db, link, method, [Installment(1, 5000, None)])
    assert not again.created
    assert [p.id for p in again.payments] == [payment.id]
    (stored,) = db.scalars(select(PaymentAgreement)).all()
    assert stored.text_sha256 == checkout.text_sha256("the text")
    assert stored.ip == "203.0.113.5"
    assert len(stored.user_agent) == 400
    assert payment.agreement_id == stored.id
    assert link.status == "active"  # not used until the charge goes through
    other = start(db, link, method, [Installment(1, 5000, None)], nonce="nonce-2")
    assert other.created  # another attempt, another payment
    db.rollback()


def test_scheduled_payments_use_the_link_at_once(db, ready):
    link, method = ready
    plan = [Installment(1, 10000, date(2026, 12, 1)), Installment(2, 5000, date(2027, 1, 2))]
    attempt = start(db, link, method, plan)
    first, second = attempt.payments
    assert first.status == second.status == "scheduled"
    assert first.scheduled_for == datetime(2026, 12, 1, 9, 0, tzinfo=NY)
    assert second.scheduled_for == datetime(2027, 1, 2, 9, 0, tzinfo=NY)
    assert first.receipt_number
    assert second.receipt_number
    assert link.status == "used"
    assert link.used_at == NOW
    assert checkout.outcome(attempt.payments) == "done"
    with pytest.raises(checkout.LinkUsed):
        start(db, link, method, plan, nonce="nonce-2")
    db.rollback()


def test_start_payment_refuses_a_revoked_link(db, ready):
    link, method = ready
    service.revoke_link(db, link, audit.Actor.system("test"), NOW)
    with pytest.raises(service.LinkGone):
        start(db, link, method, [Installment(1, 5000, None)])
    assert not db.scalars(select(PaymentAgreement)).all()
    db.rollback()


def test_finish_payment(db, ready, env):
    link, method = ready
    (payment,) = start(db, link, method, [Installment(1, 5000, None)]).payments
    db.commit()
    result = ChargeResult(APPROVED, "ch_1")
    checkout.finish_payment(db, link, payment, result, settlement=None, env=env, now=NOW)
    db.commit()
    assert payment.status == "paid"
    assert link.status == "used"
    assert db.get(Account, link.account_id).balance_cents == 10000
    receipts = db.scalars(select(Message).where(Message.kind == "receipt")).all()
    assert len(receipts) == 1
    # Recording the answer again changes nothing.
    checkout.finish_payment(
        db, link, payment, ChargeResult(DECLINED, "ch_1"), settlement=None, env=env, now=NOW
    )
    assert payment.status == "paid"
    assert db.get(Account, link.account_id).balance_cents == 10000
    db.rollback()


def test_finish_payment_declined_keeps_the_link(db, ready, env):
    link, method = ready
    (payment,) = start(db, link, method, [Installment(1, 5000, None)]).payments
    declined = ChargeResult(DECLINED, "ch_1", "card_declined", "Your card was declined.")
    checkout.finish_payment(db, link, payment, declined, settlement=None, env=env, now=NOW)
    assert payment.status == "declined"
    assert link.status == "active"
    assert checkout.outcome([payment]) == "declined"
    assert not db.scalars(select(Message).where(Message.kind == "receipt")).all()
    db.rollback()


def test_a_settlement_writes_off_its_discount(db, ready, env):
    link, method = ready
    offer = Settlement(20, 12000, 15000)
    (payment,) = start(db, link, method, [Installment(1, 12000, None)]).payments
    pending = ChargeResult(PENDING, "ch_1", settles_at=NOW + timedelta(days=2))
    checkout.finish_payment(db, link, payment, pending, settlement=offer, env=env, now=NOW)
    assert payment.status == "pending"
    assert db.get(Account, link.account_id).balance_cents == 0
    db.rollback()


def test_needs_charge():
    payment = checkout.Payment(status="processing", updated_at=NOW)
    assert checkout.needs_charge(payment, NOW, created=True)
    assert not checkout.needs_charge(payment, NOW + timedelta(seconds=59), created=False)
    assert checkout.needs_charge(payment, NOW + timedelta(minutes=1), created=False)
    payment.status = "paid"
    assert not checkout.needs_charge(payment, NOW, created=True)
    assert checkout.outcome([]) == "processing"


def test_receipt_payments_and_copies(db, ready, env):
    link, method = ready
    (declined,) = start(db, link, method, [Installment(1, 5000, None)], nonce="a").payments
    checkout.finish_payment(
        db, link, declined, ChargeResult(DECLINED, "ch_a"), settlement=None, env=env, now=NOW
    )
    (paid,) = start(db, link, method, [Installment(1, 5000, None)], nonce="b").payments
    checkout.finish_payment(
        db, link, paid, ChargeResult(APPROVED, "ch_b"), settlement=None, env=env, now=NOW
    )
    assert checkout.receipt_payments(db, link) == [paid]
    assert checkout.emailable_payment([declined, paid]) is paid
    for _ in range(checkout.MAX_RECEIPT_COPIES):
        assert checkout.email_receipt_again(db, paid, env, NOW)
    assert checkout.email_receipt_again(db, paid, env, NOW) == []
    keys = db.scalars(select(Message.dedupe_key).where(Message.kind == "receipt")).all()
    assert len(keys) == 1 + checkout.MAX_RECEIPT_COPIES
    db.rollback()


def test_idempotency_keys_fit_the_column():
    key = checkout.idempotency_key(2**62, checkout.new_nonce(), 12)
    assert len(key) <= 100


def test_card_and_bank_problems_name_every_field():
    assert checkout.card_problems("4242424242424242", "12/30", "123", TODAY) == {}
    assert set(checkout.card_problems("4242424242424241", "13/30", "1", TODAY)) == {
        "number", "expiry", "security_code",
    }  # fmt: skip
    amex = "378282246310005"
    assert checkout.card_problems(amex, "12/30", "1234", TODAY) == {}
    assert set(checkout.card_problems(amex, "12/30", "123", TODAY)) == {"security_code"}
    # With the number wrong, a 3- or 4-digit code is not blamed for the brand it may fit.
    assert set(checkout.card_problems("1234", "12/30", "1234", TODAY)) == {"number"}
    problem = checkout.card_problems("4242424242424241", "12/30", "123", TODAY)["number"]
    assert problem == "This card number is not valid; check the digits."
    assert "4241" not in problem
    assert checkout.bank_problems("110000000", "000123456789") == {}
    assert set(checkout.bank_problems("123456789", "12")) == {"routing_number", "account_number"}
