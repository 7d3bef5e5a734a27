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

    def verify(self, value: str = "6789", method: str = "ssn_last4"):
        return self.post(f"/verify?method={method}", {"method": method, method: value})

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
        assert csrf and sha
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
def account(db) -> Account:
    return make_account(db)


@pytest.fixture
def link(app, db, account) -> tuple[str, PaymentLink]:
    return make_link(app, db, account)


@pytest.fixture
def customer(client, link) -> Customer:
    return Customer(client, link[0])


def payments_of(db, link: PaymentLink) -> list[Payment]:
    db.rollback()
    return list(db.scalars(select(Payment).where(Payment.link_id == link.id).order_by(Payment.id)))


def reload(db, obj):
    db.rollback()
    db.refresh(obj)
    return obj


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
    assert "style=" not in html and "<script" not in html  # the CSP allows neither


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
    assert "***-***-0143" in page and "m***@example.com" in page
    assert "2025550143" not in page and "maria@example.com" not in page
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
    assert "$125.50" in review_page and "Visa ending 4242" in review_page
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
    assert payment.receipt_number and payment.receipt_number in page
    assert "Paid" in page and "Visa ending 4242" in page and "$125.50" in page
    assert ">Email receipt</button>" in page and ">Print receipt</button>" in page

    assert reload(db, row).status == "used"
    assert row.used_at is not None
    assert reload(db, account).balance_cents == 15000 - 12550

    agreement = db.get(PaymentAgreement, payment.agreement_id)
    assert agreement.link_id == row.id
    assert agreement.version == "2026-11"
    assert agreement.text_sha256 == hashlib.sha256(agreement.text.encode()).hexdigest()
    assert "$125.50" in agreement.text and "Visa ending 4242" in agreement.text
    assert "Maria Lopez" in agreement.text
    assert agreement.ip == "127.0.0.1"
    assert agreement.user_agent == "PaylinkTest/1.0 (phone)"
    assert agreement.accepted_at is not None
    # The text stored is the text shown (HTML-escaped on the page).
    assert agreement.text.strip().splitlines()[0] in review_page

    receipts = db.scalars(select(Message).where(Message.kind == "receipt")).all()
    assert [m.channel for m in receipts] == ["email"]
    assert payment.receipt_number in receipts[0].body


def test_the_receipt_email_is_sent_by_a_worker(app, db, client, account, time_machine):
    # 10:00 in New York: inside the sending hours.
    time_machine.move_to(datetime(2026, 11, 24, 15, 0, tzinfo=UTC), tick=False)
    customer = Customer(client, make_link(app, db, account)[0])
    customer.to_review()
    assert customer.confirm().status_code == 302
    drain(app)
    db.rollback()
    (receipt,) = db.scalars(select(Message).where(Message.kind == "receipt")).all()
    assert receipt.status in ("sent", "delivered")
    assert receipt.recipient == "maria@example.com"
