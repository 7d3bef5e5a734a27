"""The customer's payment flow at /p/<token>, through the Flask test client with CSRF on:
every step of journey 1, each bad input of the Payment links issue, declines, bank
debits, scheduled payments, verification lockout, settlement offers, receipts, and a
Confirm posted twice at once against a real server."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import String, Text, func, select
from werkzeug.serving import make_server

from app.db import Base
from app.models import Account, Message
from app.payments.models import Payment, PaymentMethod
from app.payments.sandbox import SandboxGateway
from app.settings import get_settings
from links.models import PaymentAgreement, PaymentLink
from links.tokens import PAYMENT_LINK, UrlTokens
from tests.helpers import drain

APPROVED = "4242 4242 4242 4242"
DECLINED = "4000 0000 0000 0002"
NO_FUNDS = "4000 0000 0000 9995"
ROUTING = "110000000"
BANK_DECLINED = "000111111116"
NY = ZoneInfo("America/New_York")

CSRF = re.compile(r'name="(?:[\w-]+-)?csrf_token"[^>]*?value="([^"]+)"')
AGREEMENT_SHA = re.compile(r'name="agreement_sha256"[^>]*?value="([0-9a-f]{64})"')


# --- arranging -----------------------------------------------------------------------------


def make_account(db, **overrides: Any) -> Account:
    values: dict[str, Any] = {
        "external_id": f"ACCT-{10000 + db.scalar(select(func.count()).select_from(Account))}",
        "name": "Maria Lopez",
        "phone": "+12025550143",
        "email": "maria@example.com",
        "timezone": "America/New_York",
        "balance_cents": 15000,
        "ssn_last4": "6789",
        "date_of_birth": date(1980, 4, 12),
        "zip": "20001",
    }
    values.update(overrides)
    account = Account(**values)
    db.add(account)
    db.commit()
    return account


def make_link(
    app: Flask,
    db,
    account: Account,
    *,
    amount_cents: int | None = None,
    expires_in: timedelta = timedelta(days=7),
    keys: tuple[str, ...] | None = None,
) -> tuple[str, PaymentLink]:
    tokens = UrlTokens(keys or app.extensions["paylink.config"].secret_keys, PAYMENT_LINK)
    token, token_id = tokens.mint()
    now = datetime.now(UTC)
    link = PaymentLink(
        token_id=token_id, account_id=account.id,
        amount_cents=amount_cents or account.balance_cents, status="active",
        expires_at=now + expires_in, created_at=now, failed_verifications=0,
    )  # fmt: skip
    db.add(link)
    db.commit()
    return token, link


def configure(db, **values: Any) -> None:
    settings = get_settings(db)
    for name, value in values.items():
        setattr(settings, name, value)
    db.commit()


def path_of(resp) -> str:
    return urlsplit(resp.headers["Location"]).path


class Customer:
    """One person with one browser (one cookie jar) working through one link."""

    def __init__(self, client: FlaskClient, token: str, ip: str = "127.0.0.1"):
        self.client = client
        self.token = token
        self.environ = {"REMOTE_ADDR": ip, "HTTP_USER_AGENT": "PaylinkTest/1.0 (phone)"}

    def url(self, path: str = "") -> str:
        return f"/p/{self.token}{path}"

    def get(self, path: str = "", **kwargs: Any):
        return self.client.get(self.url(path), environ_base=self.environ, **kwargs)

    def post(self, path: str, data: dict[str, str], *, page: str | None = None, csrf=True):
        """POST ``data`` with the CSRF token read from the page it is posted from."""
        form = dict(data)
        if csrf:
            html = self.get(path if page is None else page).get_data(as_text=True)
            match = CSRF.search(html)
            assert match, f"no CSRF token on {path if page is None else page}"
            form.setdefault("csrf_token", match.group(1))
        action = path.split("?", 1)[0]
        return self.client.post(self.url(action), data=form, environ_base=self.environ)

    # Each step, as a customer does it.
    def start(self):
        return self.post("", {})

    def verify(self, value: str = "6789", method: str = "ssn_last4", *, page: str | None = None):
        return self.post(f"/verify?method={method}", {"method": method, method: value}, page=page)

    def skip(self):
        html = self.get("/offer").get_data(as_text=True)
        token = CSRF.search(html)
        assert token
        return self.client.post(
            self.url("/offer/skip"), data={"skip-csrf_token": token.group(1)},
            environ_base=self.environ,
        )  # fmt: skip

    def choose_offer(self, percent: int):
        return self.post("/offer", {"offer": str(percent)})

    def amount(self, text: str):
        return self.post("/amount", {"amount": text})

    def card(self, number: str = APPROVED, *, expiry: str | None = None, code: str = "123",
             name: str = "Maria Lopez", zip_code: str = "20001"):  # fmt: skip
        expiry = expiry or f"12/{(date.today().year + 3) % 100:02d}"
        return self.post(
            "/method?kind=card",
            {"kind": "card", "name": name, "number": number, "expiry": expiry,
             "security_code": code, "zip": zip_code},
        )  # fmt: skip

    def bank(self, account_number: str = "000123456789", *, routing: str = ROUTING,
             account_type: str = "checking", name: str = "Maria Lopez"):  # fmt: skip
        return self.post(
            "/method?kind=bank",
            {"kind": "bank", "holder_name": name, "routing_number": routing,
             "account_number": account_number, "account_type": account_type},
        )  # fmt: skip

    def pay_now(self):
        return self.post("/schedule", {"when": "now"})

    def review_form(self) -> dict[str, str]:
        page = self.get("/review")
        assert page.status_code == 200, page.status_code
        html = page.get_data(as_text=True)
        csrf, sha = CSRF.search(html), AGREEMENT_SHA.search(html)
        assert csrf
        assert sha
        return {"csrf_token": csrf.group(1), "agreement_sha256": sha.group(1), "agree": "y"}

    def confirm(self, form: dict[str, str] | None = None):
        form = form or self.review_form()
        return self.client.post(self.url("/review"), data=form, environ_base=self.environ)

    def to_amount(self) -> None:
        assert path_of(self.start()) == self.url("/verify")
        assert path_of(self.verify()) == self.url("/offer")
        assert path_of(self.skip()) == self.url("/amount")

    def to_review(self, amount: str = "125.50", method=None) -> None:
        self.to_amount()
        assert path_of(self.amount(amount)) == self.url("/method")
        resp = (method or (lambda c: c.card()))(self)
        assert resp.status_code == 302, resp.get_data(as_text=True)
        assert path_of(resp) == self.url("/schedule")
        assert path_of(self.pay_now()) == self.url("/review")


@pytest.fixture
def link(app, db, account) -> tuple[str, PaymentLink]:
    return make_link(app, db, account)


@pytest.fixture
def customer(client, link) -> Customer:
    return Customer(client, link[0])


def read(db, stmt) -> list[Any]:
    """Rows as they are now, detached, with the read transaction ended: on SQLite an open
    transaction holds the write lock the app needs for the next request."""
    db.rollback()
    rows = list(db.scalars(stmt.execution_options(populate_existing=True)))
    for row in rows:
        if hasattr(row, "_sa_instance_state") and row in db:
            db.expunge(row)
    db.rollback()
    return rows


def payments_of(db, link: PaymentLink) -> list[Payment]:
    return read(db, select(Payment).where(Payment.link_id == link.id).order_by(Payment.id))


def reload(db, obj):
    model = type(obj)
    (row,) = read(db, select(model).where(model.id == obj.id))
    return row


def text(resp) -> str:
    return resp.get_data(as_text=True)


# --- an accessibility check of every page ---------------------------------------------------


class PageCheck(HTMLParser):
    """Labels for every input, unique ids, aria-describedby pointing at real elements."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.label_for: set[str] = set()
        self.inputs: list[dict[str, str | None]] = []
        self.described: list[str] = []
        self.h1 = 0
        self.lang = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(a["id"] or "")
        if tag == "html":
            self.lang = a.get("lang")
        if tag == "h1":
            self.h1 += 1
        if tag == "label" and a.get("for"):
            self.label_for.add(a["for"] or "")
        if tag in ("input", "select", "textarea") and a.get("type") != "hidden":
            self.inputs.append(a)
        if a.get("aria-describedby"):
            self.described += (a["aria-describedby"] or "").split()


def input_tag(html: str, field_id: str) -> str:
    match = re.search(rf'<input[^>]*\bid="{field_id}"[^>]*>', html)
    assert match, f"no input {field_id}"
    return match.group(0)


def check_page(html: str) -> None:
    page = PageCheck()
    page.feed(html)
    assert page.lang == "en"
    assert page.h1 == 1
    assert len(page.ids) == len(set(page.ids)), "duplicate ids"
    for field in page.inputs:
        assert field.get("id") in page.label_for, f"input without a label: {field}"
    for ref in page.described:
        assert ref in page.ids, f"aria-describedby points at nothing: {ref}"
    assert "style=" not in html
    assert "<script" not in html


# --- the happy paths ------------------------------------------------------------------------


def test_approved_card_pays_and_shows_the_receipt(app, db, client, account, link):
    token, row = link
    c = Customer(client, token)

    first = c.get()
    assert first.status_code == 200
    page = text(first)
    check_page(page)
    assert "Hi Maria," in page
    assert "Paylink Demo Creditor" in page
    assert "$150.00" in page
    assert "***-***-0143" in page
    assert "m***@example.com" in page
    assert "2025550143" not in page
    assert "maria@example.com" not in page
    assert ">Next</button>" in page

    assert path_of(c.start()) == c.url("/verify")
    verify_page = text(c.get("/verify"))
    check_page(verify_page)
    assert ">Last 4 of SSN</label>" in verify_page
    assert path_of(c.verify("6789")) == c.url("/offer")

    offer_page = text(c.get("/offer"))
    check_page(offer_page)
    assert "Pay $120.00 today (20% off)" in offer_page
    assert ">Skip</button>" in offer_page
    assert path_of(c.skip()) == c.url("/amount")

    amount_page = text(c.get("/amount"))
    check_page(amount_page)
    assert ">Amount</label>" in amount_page
    assert 'value="150.00"' in amount_page
    assert path_of(c.amount("125.50")) == c.url("/method")

    method_page = text(c.get("/method"))
    check_page(method_page)
    for label in ("Name on card", "Card number", "Expiration (MM/YY)", "Security code", "ZIP"):
        assert f">{label}</label>" in method_page
    assert path_of(c.card()) == c.url("/schedule")

    schedule_page = text(c.get("/schedule"))
    check_page(schedule_page)
    assert path_of(c.pay_now()) == c.url("/review")

    review = c.get("/review")
    review_page = text(review)
    check_page(review_page)
    assert "$125.50" in review_page
    assert "Visa ending 4242" in review_page
    assert "PAYMENT AUTHORIZATION (version 2026-11)" in review_page
    assert ">I agree to the payment authorization" in review_page
    assert ">Confirm</button>" in review_page

    done = c.confirm()
    assert done.status_code == 302
    assert path_of(done) == c.url()

    receipt = c.get()
    assert receipt.status_code == 200
    page = text(receipt)
    check_page(page)
    assert "Thank you for your payment" in page
    (payment,) = payments_of(db, row)
    assert payment.status == "paid"
    assert payment.amount_cents == 12550
    assert payment.receipt_number
    assert payment.receipt_number in page
    assert "Paid" in page
    assert "Visa ending 4242" in page
    assert "$125.50" in page
    assert ">Email receipt</button>" in page
    assert ">Print receipt</button>" in page

    assert reload(db, row).status == "used"
    assert row.used_at is not None
    assert reload(db, account).balance_cents == 15000 - 12550

    (agreement,) = read(
        db, select(PaymentAgreement).where(PaymentAgreement.id == payment.agreement_id)
    )
    assert agreement.link_id == row.id
    assert agreement.version == "2026-11"
    assert agreement.text_sha256 == hashlib.sha256(agreement.text.encode()).hexdigest()
    assert "$125.50" in agreement.text
    assert "Visa ending 4242" in agreement.text
    assert "Maria Lopez" in agreement.text
    assert agreement.ip == "127.0.0.1"
    assert agreement.user_agent == "PaylinkTest/1.0 (phone)"
    assert agreement.accepted_at is not None
    # The text stored is the text shown (HTML-escaped on the page).
    assert agreement.text.strip().splitlines()[0] in review_page

    receipts = read(db, select(Message).where(Message.kind == "receipt"))
    assert [m.channel for m in receipts] == ["email"]
    assert payment.receipt_number in receipts[0].body


def test_the_receipt_email_is_sent_by_a_worker(app, db, client, account, time_machine):
    # 10:00 in New York: inside the sending hours.
    time_machine.move_to(datetime(2026, 11, 24, 15, 0, tzinfo=UTC), tick=False)
    customer = Customer(client, make_link(app, db, account)[0])
    customer.to_review()
    assert customer.confirm().status_code == 302
    drain(app)
    (receipt,) = read(db, select(Message).where(Message.kind == "receipt"))
    assert receipt.status in ("sent", "delivered")
    assert receipt.recipient == "maria@example.com"


# --- declines and bank debits ---------------------------------------------------------------


def test_declined_card_lets_the_customer_try_another_method(db, customer, link, account):
    customer.to_review(method=lambda c: c.card(DECLINED))
    first_form = customer.review_form()
    declined = customer.confirm(first_form)
    assert path_of(declined) == customer.url("/method")
    page = text(customer.get("/method"))
    check_page(page)
    assert "Your card was declined." in page
    assert 'role="alert"' in page
    assert reload(db, link[1]).status == "active"
    assert reload(db, account).balance_cents == 15000

    # Back to review without a method: the flow asks for one first.
    assert path_of(customer.get("/review")) == customer.url("/method")
    # "Pay now" still stands: straight back to review.
    assert path_of(customer.card(APPROVED)) == customer.url("/review")
    second_form = customer.review_form()
    assert path_of(customer.confirm(second_form)) == customer.url()

    first, second = payments_of(db, link[1])
    assert (first.status, first.decline_code) == ("declined", "card_declined")
    assert second.status == "paid"
    assert first.idempotency_key != second.idempotency_key  # a new nonce for a new attempt
    assert first.agreement_id != second.agreement_id
    assert reload(db, account).balance_cents == 15000 - 12550
    # The receipt shows the payment that went through, not the declined try.
    receipt = text(customer.get())
    assert second.receipt_number in receipt
    assert "Declined" not in receipt


def test_insufficient_funds_is_declined_with_its_reason(db, customer, link):
    customer.to_review(method=lambda c: c.card(NO_FUNDS))
    assert path_of(customer.confirm()) == customer.url("/method")
    assert "Your card has insufficient funds." in text(customer.get("/method"))
    (payment,) = payments_of(db, link[1])
    assert (payment.status, payment.decline_code) == ("declined", "insufficient_funds")
    assert reload(db, link[1]).status == "active"


def test_bank_account_is_pending_with_a_receipt_number(db, customer, link, account):
    page = text(customer.get("/method?kind=bank"))
    assert page  # reachable only once earlier steps are done: redirected here
    customer.to_review(method=lambda c: c.bank("000123456789", account_type="savings"))
    assert path_of(customer.confirm()) == customer.url()
    (payment,) = payments_of(db, link[1])
    assert payment.status == "pending"
    assert payment.receipt_number
    assert payment.settles_at is not None
    (method,) = read(db, select(PaymentMethod).where(PaymentMethod.id == payment.method_id))
    assert (method.kind, method.routing_number, method.last4, method.account_type) == (
        "bank", ROUTING, "6789", "savings",
    )  # fmt: skip
    receipt = text(customer.get())
    check_page(receipt)
    assert "Pending" in receipt
    assert payment.receipt_number in receipt
    assert "Savings account ending 6789" in receipt
    assert reload(db, link[1]).status == "used"
    assert reload(db, account).balance_cents == 15000 - 12550
    assert read(db, select(Message).where(Message.kind == "receipt"))


def test_declined_bank_account(db, customer, link):
    customer.to_review(method=lambda c: c.bank(BANK_DECLINED))
    assert path_of(customer.confirm()) == customer.url("/method")
    page = text(customer.get("/method"))
    assert "The bank account was declined." in page
    (payment,) = payments_of(db, link[1])
    assert payment.status == "declined"
    assert reload(db, link[1]).status == "active"


# --- scheduling ---------------------------------------------------------------------------


def ny_today() -> date:
    return datetime.now(NY).date()


def test_scheduled_payments(db, customer, link, account):
    customer.to_amount()
    customer.amount("150.00")
    customer.card()
    first_day, second_day = ny_today() + timedelta(days=1), ny_today() + timedelta(days=60)
    resp = customer.post(
        "/schedule",
        {"when": "later", "date_1": second_day.isoformat(), "amount_1": "50.00",
         "date_2": first_day.isoformat(), "amount_2": "100"},
    )  # fmt: skip
    assert path_of(resp) == customer.url("/review")
    review = text(customer.get("/review"))
    assert f"{first_day:%b} {first_day.day}, {first_day.year}" in review
    assert "To change or cancel a scheduled payment" in review

    assert path_of(customer.confirm()) == customer.url()
    first, second = payments_of(db, link[1])
    assert [(p.status, p.amount_cents) for p in (first, second)] == [
        ("scheduled", 10000), ("scheduled", 5000),
    ]  # fmt: skip
    assert first.scheduled_for == datetime.combine(first_day, datetime.min.time(), NY).replace(
        hour=9
    )
    assert second.scheduled_for.astimezone(NY).date() == second_day
    assert first.receipt_number
    assert second.receipt_number
    assert first.agreement_id == second.agreement_id
    assert reload(db, link[1]).status == "used"
    assert reload(db, account).balance_cents == 15000  # nothing charged yet
    assert not read(db, select(Message).where(Message.kind == "receipt"))
    receipt = text(customer.get())
    check_page(receipt)
    assert "Your payments are scheduled" in receipt
    assert receipt.count("Scheduled") >= 2
    assert ">Email receipt</button>" not in receipt  # nothing paid yet
    assert ">Print receipt</button>" in receipt


@pytest.mark.parametrize(
    ("rows", "field", "message"),
    [
        ({"date_1": -1, "amount_1": "150"}, "date_1", "Choose a date from tomorrow on."),
        ({"date_1": 0, "amount_1": "150"}, "date_1", "Choose a date from tomorrow on."),
        ({"date_1": 61, "amount_1": "150"}, "date_1", "Choose a date no later than"),
        ({"date_1": 5, "amount_1": "75", "date_2": 5, "amount_2": "75"}, "date_2",
         "Each payment needs a different date."),
        ({"date_1": 5, "amount_1": "75", "date_2": 9, "amount_2": "70"}, None,
         "they must add up to $150.00"),
        ({"date_1": 5, "amount_1": "0"}, "amount_1", "more than $0.00"),
        ({"date_1": "31/31/2030", "amount_1": "150"}, "date_1", "MM/DD/YYYY"),
        ({}, None, "at least one payment"),
    ],
)  # fmt: skip
def test_schedule_rejects_bad_dates_and_sums(db, customer, link, rows, field, message):
    customer.to_amount()
    customer.amount("150.00")
    customer.card()
    form = {"when": "later"}
    for name, value in rows.items():
        is_offset = name.startswith("date") and isinstance(value, int)
        form[name] = (ny_today() + timedelta(days=value)).isoformat() if is_offset else value
    resp = customer.post("/schedule", form)
    assert resp.status_code == 200
    page = text(resp)
    check_page(page)
    assert message in page
    if field:
        assert f'id="{field}-error"' in page
        assert re.search(rf'aria-describedby="{field}-error"[^>]*id="{field}"', page)
    assert not payments_of(db, link[1])
    assert path_of(customer.get("/review")) == customer.url("/schedule")


def test_schedule_limited_to_max_payments(db, customer):
    configure(db, max_scheduled_payments=2)
    customer.to_amount()
    customer.amount("150.00")
    customer.card()
    page = text(customer.get("/schedule"))
    assert 'name="date_2"' in page
    assert 'name="date_3"' not in page
    day = ny_today() + timedelta(days=3)
    resp = customer.post(
        "/schedule",
        {"when": "later", "date_1": day.isoformat(), "amount_1": "50",
         "date_3": (day + timedelta(days=1)).isoformat(), "amount_3": "100"},
    )  # fmt: skip
    assert "they must add up to $150.00" in text(resp)  # a third row is not read


def test_no_schedule_step_when_scheduling_is_off(db, customer):
    configure(db, schedule_payment=False)
    customer.to_amount()
    customer.amount("20")
    assert path_of(customer.card()) == customer.url("/review")
    assert path_of(customer.get("/schedule")) == customer.url("/review")


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("0", "more than $0.00"),
        ("0.00", "more than $0.00"),
        ("-1", "more than $0.00"),
        ("1.005", "whole cents"),
        ("abc", "dollars and cents"),
        ("", "Enter an amount"),
        ("150.01", "The most you can pay on this link is $150.00."),
        ("1e3", "dollars and cents"),
        ("99999999999999", "too large"),
    ],
)
def test_bad_amounts_are_refused_next_to_the_field(db, customer, link, typed, message):
    customer.to_amount()
    resp = customer.amount(typed)
    assert resp.status_code == 200
    page = text(resp)
    check_page(page)
    assert message in page
    assert 'id="amount-error"' in page
    assert f'value="{typed}"' in page or typed == ""  # what was typed stays
    assert path_of(customer.get("/method")) == customer.url("/amount")


@pytest.mark.parametrize("typed", ["150", "$150.00", "150.0", "1,50.00", "0.01", " 12.5 "])
def test_amounts_as_people_type_them(customer, typed):
    customer.to_amount()
    resp = customer.amount(typed)
    if typed == "1,50.00":
        assert resp.status_code == 200  # a misplaced comma is not a number
    else:
        assert path_of(resp) == customer.url("/method")


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"number": "4242 4242 4242 4241"}, "number", "This card number is not valid"),
        ({"number": "4242-4242"}, "number", "Enter the whole card number"),
        ({"number": "9999 9999 9999 9995"}, "number", "We accept Visa"),
        ({"number": "4242 4242 abcd 4242"}, "number", "Use digits only"),
        ({"expiry": "last-month"}, "expiry", "This card has expired"),
        ({"expiry": "13/30"}, "expiry", "The month must be 01 to 12"),
        ({"expiry": "1230"}, "expiry", "Enter the expiration date as MM/YY"),
        ({"security_code": "12"}, "security_code", "Enter the 3-digit security code"),
        ({"zip": "2000"}, "zip", "Enter a 5-digit ZIP code."),
        ({"name": ""}, "name", "Enter the name on the card."),
    ],
)
def test_card_errors_keep_what_was_typed_but_never_the_number(db, customer, fields, field, message):
    customer.to_amount()
    customer.amount("20")
    if fields.get("expiry") == "last-month":
        last_month = ny_today().replace(day=1) - timedelta(days=1)
        fields = {"expiry": f"{last_month:%m/%y}"}
    values = {"name": "Maria Lopez", "number": APPROVED, "code": "123", "zip_code": "20001"}
    values.update({"code" if k == "security_code" else "zip_code" if k == "zip" else k: v
                   for k, v in fields.items()})  # fmt: skip
    resp = customer.card(values.pop("number"), **values)
    assert resp.status_code == 200
    page = text(resp)
    check_page(page)
    assert message in page
    assert f'id="{field}-error"' in page
    assert 'aria-invalid="true"' in page
    # The number and security code never come back; other fields keep what was typed.
    number = fields.get("number", APPROVED)
    assert number not in page
    assert number.replace(" ", "") not in page
    for secret in ("number", "security_code"):
        tag = input_tag(page, secret)
        assert 'value="' not in tag or 'value=""' in tag
    if field != "name":
        assert 'value="Maria Lopez"' in input_tag(page, "name")
    if field != "zip":
        assert 'value="20001"' in input_tag(page, "zip")
    digits = re.sub(r"\D", "", number)
    if len(digits) >= 4:
        assert f"You entered a card ending {digits[-4:]}" in page
    assert not read(db, select(PaymentMethod))


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        ("123456789", "This routing number is not valid"),
        ("11000000", "A routing number has 9 digits"),
        ("11000000a", "Use digits only"),
    ],
)
def test_bad_routing_numbers(db, customer, routing, message):
    customer.to_amount()
    customer.amount("20")
    resp = customer.bank(routing=routing)
    assert resp.status_code == 200
    page = text(resp)
    check_page(page)
    assert message in page
    assert 'id="routing_number-error"' in page
    assert f'value="{routing}"' in page  # not a secret: kept as typed
    assert "000123456789" not in page  # the account number is not echoed
    assert "You entered an account ending 6789" in page
    assert not read(db, select(PaymentMethod))


def test_forms_without_csrf_are_refused(db, customer, link):
    no_token = customer.post("", {}, csrf=False)
    assert no_token.status_code == 400
    page = text(no_token)
    check_page(page)
    assert "Please try again" in page
    assert no_token.headers["Cache-Control"] == "no-store"
    customer.to_amount()
    forged = customer.post("/amount", {"amount": "20", "csrf_token": "forged"}, csrf=False)
    assert forged.status_code == 400
    assert path_of(customer.get("/method")) == customer.url("/amount")
    assert customer.post("/review", {"agree": "y"}, csrf=False).status_code == 400
    assert not payments_of(db, link[1])


def test_confirm_needs_the_box_ticked(db, customer, link):
    customer.to_review()
    form = customer.review_form()
    del form["agree"]
    resp = customer.confirm(form)
    assert resp.status_code == 200
    page = text(resp)
    check_page(page)
    assert "Check the box to accept the payment authorization." in page
    assert 'id="agree-error"' in page
    assert not payments_of(db, link[1])
    assert not read(db, select(PaymentAgreement))


def test_confirm_with_changed_terms_shows_them_again(db, customer, link):
    customer.to_review()
    form = customer.review_form()
    configure(db, creditor_name="Renamed Creditor")
    resp = customer.confirm(form)
    assert resp.status_code == 200
    assert "Some details changed" in text(resp)
    assert not payments_of(db, link[1])
    assert path_of(customer.confirm()) == customer.url()  # read again, then confirmed
    (agreement,) = read(db, select(PaymentAgreement))
    assert "Renamed Creditor" in agreement.text


# --- settlement offers ("virtual collection") --------------------------------------------


def test_settlement_with_skip_allowed(db, customer, link, account):
    configure(db, settlement_percent_off=[30, 10])
    customer.start()
    customer.verify()
    page = text(customer.get("/offer"))
    assert "Pay $105.00 today (30% off)" in page
    assert "Pay $135.00 today (10% off)" in page
    assert page.index("30% off") < page.index("10% off")
    assert ">Skip</button>" in page
    assert path_of(customer.choose_offer(30)) == customer.url("/amount")
    amount_page = text(customer.get("/amount"))
    assert 'value="105.00"' in amount_page
    assert "readonly" in amount_page
    wrong = customer.amount("150.00")
    assert "With the offer you chose, the amount is $105.00." in text(wrong)
    assert path_of(customer.amount("105.00")) == customer.url("/method")
    # No scheduling with a settlement: straight to review.
    assert path_of(customer.card()) == customer.url("/review")
    assert path_of(customer.get("/schedule")) == customer.url("/review")
    review = text(customer.get("/review"))
    assert "30% off" in review
    assert "in full settlement" in review
    assert path_of(customer.confirm()) == customer.url()
    (payment,) = payments_of(db, link[1])
    assert (payment.status, payment.amount_cents) == ("paid", 10500)
    # The discount is written off: the link's amount is settled.
    assert reload(db, account).balance_cents == 0


def test_settlement_skipped_pays_any_amount(db, customer, link):
    customer.start()
    customer.verify()
    assert path_of(customer.skip()) == customer.url("/amount")
    assert path_of(customer.amount("10")) == customer.url("/method")


def test_settlement_without_skip_must_choose_an_offer(db, customer, link):
    configure(db, allow_skip_offer=False)
    customer.start()
    customer.verify()
    page = text(customer.get("/offer"))
    check_page(page)
    assert "Pay $120.00 today (20% off)" in page
    assert ">Skip</button>" not in page
    # Skipping anyway does nothing: the offer page again.
    assert path_of(customer.skip()) == customer.url("/offer")
    assert path_of(customer.get("/amount")) == customer.url("/offer")
    none_chosen = customer.post("/offer", {})
    assert none_chosen.status_code == 200
    assert "Choose one of the offers." in text(none_chosen)
    made_up = customer.post("/offer", {"offer": "90"})
    assert made_up.status_code == 200
    assert path_of(customer.choose_offer(20)) == customer.url("/amount")


def test_no_offers_when_virtual_collection_is_off(db, customer):
    configure(db, virtual_collection=False)
    customer.start()
    assert path_of(customer.verify()) == customer.url("/amount")
    assert path_of(customer.get("/offer")) == customer.url("/amount")


# --- verification ----------------------------------------------------------------------------


def test_verification_lockout_and_its_end(db, customer, link, time_machine):
    start = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)
    time_machine.move_to(start, tick=False)
    customer.start()
    for left in (4, 3, 2, 1):
        wrong = customer.verify("1111")
        assert wrong.status_code == 200
        assert f"You can try {left} more time" in text(wrong)
        assert 'value="1111"' not in text(wrong)
    locked = customer.verify("1111")
    assert locked.status_code == 429
    page = text(locked)
    check_page(page)
    assert "Please try again later" in page
    assert "Nov 24, 2026 12:15 PM EST" in page
    assert abs(int(locked.headers["Retry-After"]) - 15 * 60) <= 1
    assert reload(db, link[1]).locked_until == start + timedelta(minutes=15)

    # Even the right answer waits, and the page says so.
    assert customer.verify("6789", page="").status_code == 429
    assert customer.get("/verify").status_code == 429
    assert path_of(customer.get("/amount")) == customer.url("/verify")

    time_machine.move_to(start + timedelta(minutes=14, seconds=59), tick=False)
    assert customer.get("/verify").status_code == 429
    time_machine.move_to(start + timedelta(minutes=15), tick=False)
    assert customer.get("/verify").status_code == 200
    assert path_of(customer.verify("6789")) == customer.url("/offer")
    assert reload(db, link[1]).failed_verifications == 0


def test_verification_by_date_of_birth_or_zip(db, client, app, account):
    for method, wrong, right in (
        ("date_of_birth", "1980-04-13", "04/12/1980"),
        ("zip", "20002", "20001-1234"),
    ):
        c = Customer(client, make_link(app, db, account)[0])
        c.start()
        page = text(c.get(f"/verify?method={method}"))
        check_page(page)
        label = "Date of birth" if method == "date_of_birth" else "ZIP"
        assert f">{label}</label>" in page
        assert "That does not match" in text(c.verify(wrong, method))
        assert path_of(c.verify(right, method)) == c.url("/offer")


def test_badly_typed_facts_do_not_count_as_tries(db, customer, link):
    customer.start()
    for value, method in (("12", "ssn_last4"), ("abcd", "ssn_last4"), ("soon", "date_of_birth"),
                          ("ABCDE", "zip")):  # fmt: skip
        resp = customer.verify(value, method)
        assert resp.status_code == 200
        assert "does not match" not in text(resp)
    assert reload(db, link[1]).failed_verifications == 0


def test_only_methods_the_settings_allow_and_the_account_has(db, app, client):
    configure(db, verification_methods=["zip", "ssn_last4"])
    account = make_account(db, zip=None)
    c = Customer(client, make_link(app, db, account)[0])
    c.start()
    page = text(c.get("/verify?method=date_of_birth"))
    assert ">Last 4 of SSN</label>" in page
    assert "Date of birth" not in page
    assert ">ZIP<" not in page
    # A method the settings do not allow cannot be used.
    resp = c.verify("1980-04-12", "date_of_birth")
    assert resp.status_code == 200
    assert path_of(c.verify("6789")) == c.url("/offer")


def test_no_verification_without_facts_or_when_off(db, app, client):
    bare = make_account(db, ssn_last4=None, date_of_birth=None, zip=None)
    c = Customer(client, make_link(app, db, bare)[0])
    assert path_of(c.start()) == c.url("/offer")
    assert path_of(c.get("/verify")) == c.url("/offer")

    configure(db, contact_verification=False)
    c = Customer(client, make_link(app, db, make_account(db))[0])
    assert path_of(c.start()) == c.url("/offer")


def test_verification_posts_are_limited_per_address(db, app, client, account):
    c = Customer(client, make_link(app, db, account)[0], ip="203.0.113.9")
    c.start()
    html = text(c.get("/verify"))
    csrf = CSRF.search(html).group(1)
    for _ in range(20):
        resp = client.post(c.url("/verify"), data={"csrf_token": csrf, "method": "ssn_last4",
                           "ssn_last4": "x"}, environ_base=c.environ)  # fmt: skip
        assert resp.status_code == 200
    limited = client.post(c.url("/verify"), data={"csrf_token": csrf, "method": "ssn_last4",
                          "ssn_last4": "6789"}, environ_base=c.environ)  # fmt: skip
    assert limited.status_code == 429
    check_page(text(limited))
    assert "Please wait a few minutes" in text(limited)
    assert limited.headers["Cache-Control"] == "no-store"
    # Another address is not held up.
    other = Customer(client, c.token, ip="198.51.100.7")
    assert path_of(other.verify("6789")) == other.url("/offer")


# --- receipts ----------------------------------------------------------------------------------


def test_email_and_print_receipt(db, customer, link):
    customer.to_review()
    customer.confirm()
    (payment,) = payments_of(db, link[1])
    for n in range(1, 6):
        resp = customer.post("/receipt/email", {}, page="")
        assert path_of(resp) == customer.url()
        page = text(customer.get())
        assert "We are emailing a copy of your receipt to m***@example.com." in page
        keys = read(db, select(Message.dedupe_key).where(Message.kind == "receipt"))
        assert len(keys) == n + 1
    assert f"receipt-{payment.id}-again5-email" in keys
    # Rate limited per link.
    assert customer.post("/receipt/email", {}, page="").status_code == 429
    assert customer.post("/receipt/email", {}, page="", csrf=False).status_code in (400, 429)

    printable = customer.get("/print")
    assert printable.status_code == 200
    page = text(printable)
    check_page(page)
    assert payment.receipt_number in page
    assert "$125.50" in page
    assert "Visa ending 4242" in page
    assert "/static/pay.css" in page
    css = (Path(__file__).resolve().parents[2] / "app/static/pay.css").read_text()
    assert "@media print" in css


def test_print_before_paying_goes_to_the_start(customer):
    assert path_of(customer.get("/print")) == customer.url()


def test_no_email_receipt_without_an_email(db, app, client):
    account = make_account(db, email=None)
    c = Customer(client, make_link(app, db, account)[0])
    c.to_review()
    c.confirm()
    page = text(c.get())
    assert ">Email receipt</button>" not in page
    assert ">Print receipt</button>" in page


# --- charging once: double taps and concurrent Confirms -----------------------------------


class CountingGateway:
    """The sandbox gateway, counting charges; with ``gate``, each charge waits for it."""

    name = "sandbox"

    def __init__(self, gate: threading.Event | None = None):
        self.inner = SandboxGateway()
        self.gate = gate
        self.charges = 0
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def charge(self, *args: Any) -> Any:
        with self._lock:
            self.charges += 1
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(20), "the test never let the charge finish"
        return self.inner.charge(*args)


@pytest.fixture
def counting(app) -> CountingGateway:
    gateway = CountingGateway()
    app.extensions["paylink.gateway"] = gateway
    return gateway


@pytest.fixture
def live_server(app) -> Iterator[str]:
    """The app served by a real threaded HTTP server on loopback."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)
    server.server_close()


def post_live(base: str, customer: Customer, form: dict[str, str], cookie: str):
    with requests.Session() as http:
        http.trust_env = False  # straight to loopback, whatever proxy the machine has
        return http.post(
            f"{base}{customer.url('/review')}", data=form, allow_redirects=False, timeout=30,
            cookies={"paylink_session": cookie}, headers={"User-Agent": "PaylinkTest/1.0"},
        )  # fmt: skip


def session_cookie(customer: Customer) -> str:
    cookie = customer.client.get_cookie("paylink_session")
    assert cookie is not None
    return cookie.value


def test_the_same_confirm_posted_twice_at_once_charges_once(
    db, customer, link, account, counting, live_server
):
    customer.to_review()
    form, cookie = customer.review_form(), session_cookie(customer)
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def tap() -> None:
        barrier.wait(timeout=10)
        statuses.append(post_live(live_server, customer, form, cookie).status_code)

    threads = [threading.Thread(target=tap) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(statuses) in ([202, 302], [302, 302])
    assert counting.charges == 1
    (payment,) = payments_of(db, link[1])
    assert payment.status == "paid"
    assert len(read(db, select(PaymentAgreement))) == 1
    assert reload(db, account).balance_cents == 15000 - 12550
    assert len(read(db, select(Message).where(Message.kind == "receipt"))) == 1


def test_a_second_confirm_while_the_first_is_charging(db, app, customer, link, live_server):
    release = threading.Event()
    gateway = CountingGateway(gate=release)
    app.extensions["paylink.gateway"] = gateway
    customer.to_review()
    form, cookie = customer.review_form(), session_cookie(customer)
    first: dict[str, Any] = {}
    thread = threading.Thread(
        target=lambda: first.update(resp=post_live(live_server, customer, form, cookie))
    )
    thread.start()
    try:
        assert gateway.entered.wait(20)
        # The first Confirm is inside the gateway call; the payment row is committed.
        second = post_live(live_server, customer, form, cookie)
        assert second.status_code == 202
        assert "We are processing your payment" in second.text
        assert second.headers["Cache-Control"] == "no-store"
    finally:
        release.set()
        thread.join(30)
    assert first["resp"].status_code == 302
    assert gateway.charges == 1
    (payment,) = payments_of(db, link[1])
    assert payment.status == "paid"
    # A third tap, after it all: the receipt.
    assert path_of(customer.confirm(form)) == customer.url()
    assert gateway.charges == 1


def test_double_tapped_confirm_charges_once(db, customer, link, counting):
    customer.to_review()
    form = customer.review_form()
    assert path_of(customer.confirm(form)) == customer.url()
    assert path_of(customer.confirm(form)) == customer.url()
    assert counting.charges == 1
    assert len(payments_of(db, link[1])) == 1


def test_a_replayed_confirm_after_a_decline_charges_nothing_more(db, customer, link, counting):
    customer.to_review(method=lambda c: c.card(DECLINED))
    form, cookie = customer.review_form(), session_cookie(customer)
    assert path_of(customer.confirm(form)) == customer.url("/method")
    # The browser sends the older cookie (with the old nonce) and the same form again.
    customer.client.set_cookie("paylink_session", cookie)
    assert path_of(customer.confirm(form)) == customer.url("/method")
    assert counting.charges == 1
    assert len(payments_of(db, link[1])) == 1


def test_a_charge_left_processing_is_finished_by_the_next_confirm(
    db, customer, link, counting, time_machine
):
    """A web process that died inside the gateway call leaves a ``processing`` row: after a
    minute, the next Confirm with the same nonce re-asks the gateway (same key) and records
    the answer."""
    from app.payments.service import begin_charge

    start = datetime.now(UTC)
    time_machine.move_to(start, tick=False)
    customer.to_review()
    form = customer.review_form()
    # The row a crashed request leaves: same nonce (from the session), never finished.
    with customer.client.session_transaction() as flask_session:
        nonce = flask_session["pay"][link[1].token_id]["nonce"]
    (method,) = read(db, select(PaymentMethod))
    db_account = db.get(Account, link[1].account_id)
    _payment, created = begin_charge(
        db, account=db_account, method=method, amount_cents=12550,
        idempotency_key=f"link-{link[1].id}-{nonce}-1", now=start, link_id=link[1].id,
    )  # fmt: skip
    assert created
    db.commit()
    early = customer.confirm(form)
    assert early.status_code == 202  # still within the minute: someone may be charging
    assert counting.charges == 0
    time_machine.move_to(start + timedelta(minutes=2), tick=False)
    assert path_of(customer.confirm(form)) == customer.url()
    assert counting.charges == 1
    (paid,) = payments_of(db, link[1])
    assert paid.status == "paid"
    assert reload(db, link[1]).status == "used"


# --- secrets stay secret ----------------------------------------------------------------------


def every_stored_value(db) -> Iterator[tuple[str, str, str]]:
    """(table, column, text) for every non-empty value of every row of every table."""
    db.rollback()
    for table in Base.metadata.sorted_tables:
        for row in db.execute(table.select()).mappings():
            for column, value in row.items():
                if value is not None:
                    yield table.name, column, str(value)
    db.rollback()


def test_card_numbers_are_never_stored_or_logged(app, db, client, account, caplog):
    caplog.set_level(logging.DEBUG)
    c = Customer(client, make_link(app, db, account)[0])
    c.to_amount()
    c.amount("20")
    assert c.card(APPROVED, code="987", expiry="13/30").status_code == 200  # error: shown again
    assert c.card(DECLINED, code="987").status_code == 302
    c.pay_now()
    assert path_of(c.confirm()) == c.url("/method")
    assert path_of(c.card(APPROVED, code="987")) == c.url("/review")
    assert path_of(c.confirm()) == c.url()
    assert "Thank you for your payment" in text(c.get())

    secrets = [n.replace(" ", "") for n in (APPROVED, DECLINED)] + [APPROVED, DECLINED]
    text_types = (String, Text)
    checked = 0
    for table, column, value in every_stored_value(db):
        checked += 1
        for secret in secrets:
            assert secret not in value, f"{table}.{column} holds a card number"
        if column == "gateway_token":
            assert "4242" not in value
    assert checked > 100
    assert any(isinstance(col.type, text_types) for col in PaymentMethod.__table__.columns)
    logged = "\n".join(f"{r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records)
    assert "payment_id" in logged  # the payments were logged...
    for secret in secrets:
        assert secret not in logged  # ...without what was typed
    assert "security_code=987" not in logged
    assert "'987'" not in logged


def test_every_card_problem_is_shown_at_once(db, customer):
    customer.to_amount()
    customer.amount("20")
    page = text(customer.card("4242 4242 4242 4241", expiry="01/20", code="12", zip_code="1"))
    check_page(page)
    for field in ("number", "expiry", "security_code"):
        assert f'id="{field}-error"' in page
    # The ZIP is checked with the form's own rules first.
    page = text(customer.card("4242 4242 4242 4241", zip_code="1"))
    assert 'id="zip-error"' in page
