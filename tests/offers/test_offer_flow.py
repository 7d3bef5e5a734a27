"""The customer's offer flow at /o/<token>, through the Flask test client with CSRF on:
every step of journey 2 (Complete Payment Agreement, verification, plan details, Get
Started, card or bank, E-SIGN consent, terms and authorization, typed or drawn signature,
Sign, confirmation), declining, the 404/410 pages, and the bad inputs of the Offers issue:
a double-submitted Sign (twice in a row and twice at once against a real server), an offer
that expires or is revoked mid-flow, another offer's form, a signature without consent,
empty, unreadable, too large and 5 MB drawn signatures."""

from __future__ import annotations

import base64
import logging
import random
import re
import struct
import threading
import zlib
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.serving import make_server

from app.db import Base
from app.models import Account, AuditEvent
from app.settings import get_settings
from links.tokens import OFFER, UrlTokens
from offers import trail
from offers.models import Installment, Offer, OfferEvent, OfferReminder, PaymentPlan
from offers.service import offer_schedule
from signing.models import Agreement

APPROVED = "4242 4242 4242 4242"
ROUTING = "110000000"
UA = "PaylinkTest/1.0 (phone)"
CAPTURE_JOB = "workers.signing.capture_agreement"

CSRF = re.compile(r'name="(?:[\w-]+-)?csrf_token"[^>]*?value="([^"]+)"')
TEXT_SHA = re.compile(r'name="text_sha256"[^>]*?value="([0-9a-f]{64})"')
OFFER_REF = re.compile(r'name="offer_ref"[^>]*?value="([^"]*)"')


# --- arranging -------------------------------------------------------------------------------


def make_account(db, **overrides: Any) -> Account:
    values: dict[str, Any] = {
        "external_id": f"ACCT-{20000 + db.scalar(select(func.count()).select_from(Account))}",
        "name": "Maria Lopez",
        "phone": "+12025550143",
        "email": "maria@example.com",
        "timezone": "America/New_York",
        "balance_cents": 30000,
        "ssn_last4": "6789",
        "date_of_birth": date(1980, 4, 12),
        "zip": "20001",
    }
    values.update(overrides)
    account = Account(**values)
    db.add(account)
    db.commit()
    return account


def make_offer(
    app: Flask,
    db,
    account: Account,
    *,
    total_cents: int = 30000,
    installment_count: int = 3,
    frequency: str = "monthly",
    first_due_date: date | None = None,
    expires_in: timedelta = timedelta(days=3),
    reminders: tuple[str, ...] = ("24h", "2h"),
    kind: str = "plan",
    status: str = "sent",
) -> tuple[str, Offer]:
    """An offer as ``offers.service.create_offer`` leaves it (with pending reminders)."""
    tokens = UrlTokens(app.extensions["paylink.config"].secret_keys, OFFER)
    token, token_id = tokens.mint()
    now = datetime.now(UTC)
    offer = Offer(
        token_id=token_id, account_id=account.id, kind=kind, total_cents=total_cents,
        balance_cents=account.balance_cents, installment_count=installment_count,
        frequency=frequency, first_due_date=first_due_date or date.today() + timedelta(days=10),
        status=status, expires_at=now + expires_in, created_at=now,
    )  # fmt: skip
    db.add(offer)
    db.flush()
    for n, hours in enumerate(reminders, start=1):
        db.add(
            OfferReminder(
                offer_id=offer.id,
                n=n,
                offset=hours,
                status="pending",
                due_at=offer.expires_at - timedelta(hours=int(hours[:-1])),
            )
        )
    db.commit()
    return token, offer


def configure(db, **values: Any) -> None:
    settings = get_settings(db)
    for name, value in values.items():
        setattr(settings, name, value)
    db.commit()


def read(db, stmt) -> list[Any]:
    """Rows as they are now, detached, with the read transaction ended (on SQLite an open
    transaction holds the write lock the app needs for the next request)."""
    db.rollback()
    rows = list(db.scalars(stmt))
    for row in rows:
        if hasattr(row, "_sa_instance_state") and row in db:
            db.expunge(row)
    db.rollback()
    return rows


def reload(db, offer: Offer) -> Offer:
    (row,) = read(
        db, select(Offer).where(Offer.id == offer.id).execution_options(populate_existing=True)
    )
    return row


def plans_of(db, offer: Offer) -> list[PaymentPlan]:
    return read(db, select(PaymentPlan).where(PaymentPlan.offer_id == offer.id))


def event_types(db, offer: Offer) -> list[str]:
    return [e.type for e in read(db, select(OfferEvent).where(OfferEvent.offer_id == offer.id))]


def path_of(resp) -> str:
    return urlsplit(resp.headers["Location"]).path


def text(resp) -> str:
    return resp.get_data(as_text=True)


def job_ids(app: Flask) -> list[str]:
    return list(app.extensions["paylink.queue"].queue("default").job_ids)


# --- drawn signatures ------------------------------------------------------------------------


def _filter_line(kind: int, line: bytes, above: bytes, bpp: int) -> bytes:
    out = bytearray(len(line))
    for i, x in enumerate(line):
        a = line[i - bpp] if i >= bpp else 0
        b = above[i]
        c = above[i - bpp] if i >= bpp else 0
        if kind == 0:
            guess = 0
        elif kind == 1:
            guess = a
        elif kind == 2:
            guess = b
        elif kind == 3:
            guess = (a + b) >> 1
        else:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            guess = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
        out[i] = (x - guess) & 255
    return bytes(out)


def png(
    width: int = 300,
    height: int = 100,
    ink: Any = (),
    *,
    filters: tuple[int, ...] = (0, 1, 2, 3, 4),
    color_type: int = 6,
    depth: int = 8,
    interlace: int = 0,
    noise: bytes | None = None,
) -> bytes:
    """A PNG as a canvas exports it: 8-bit RGBA, every row filtered with one of ``filters``
    in turn; ``ink`` pixels are opaque dark, the rest transparent (or ``noise``)."""
    bpp = {6: 4, 4: 2, 2: 3, 0: 1}[color_type]
    stride = width * bpp
    pixels = bytearray(noise[: stride * height]) if noise else bytearray(stride * height)
    for x, y in ink:
        start = y * stride + x * bpp
        pixels[start : start + bpp] = bytes([27, 31, 36, 255][-bpp:] if bpp != 2 else [27, 255])
    raw = bytearray()
    above = bytes(stride)
    for y in range(height):
        line = bytes(pixels[y * stride : (y + 1) * stride])
        kind = filters[y % len(filters)]
        raw += bytes([kind]) + _filter_line(kind, line, above, bpp)
        above = line

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, interlace)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(raw), 9))
        + chunk(b"IEND", b"")
    )


def stroke(width: int = 300, height: int = 100) -> list[tuple[int, int]]:
    """A line across the pad, three pixels thick."""
    return [(x, y) for x in range(20, width - 20) for y in range(height // 2 - 1, height // 2 + 2)]


def data_url(picture: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(picture).decode()


# --- an accessibility check of every page ----------------------------------------------------


class PageCheck(HTMLParser):
    """Labels for every input, unique ids, aria-describedby pointing at real elements."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.label_for: set[str] = set()
        self.inputs: list[dict[str, str | None]] = []
        self.described: list[str] = []
        self.labelled: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
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
        if tag == "script":
            self.scripts.append(a)
        for name, into in (
            ("aria-describedby", self.described),
            ("aria-labelledby", self.labelled),
        ):
            if a.get(name):
                into.extend((a[name] or "").split())


def check_page(html: str) -> None:
    page = PageCheck()
    page.feed(html)
    assert page.lang == "en"
    assert page.h1 == 1
    assert len(page.ids) == len(set(page.ids)), "duplicate ids"
    for field in page.inputs:
        assert field.get("id") in page.label_for, f"input without a label: {field}"
    for ref in page.described + page.labelled:
        assert ref in page.ids, f"aria reference to nothing: {ref}"
    # The CSP allows no inline script or style: only script files.
    assert "style=" not in html
    assert all(s.get("src") for s in page.scripts)
    assert len(re.findall(r"<script[^>]*>\s*</script>", html)) == len(page.scripts)


# --- one customer ----------------------------------------------------------------------------


class Customer:
    """One person with one browser (one cookie jar) working through one offer."""

    def __init__(self, client: FlaskClient, token: str, ip: str = "127.0.0.1"):
        self.client = client
        self.token = token
        self.environ = {"REMOTE_ADDR": ip, "HTTP_USER_AGENT": UA}

    def url(self, path: str = "") -> str:
        return f"/o/{self.token}{path}"

    def get(self, path: str = "", **kwargs: Any):
        return self.client.get(self.url(path), environ_base=self.environ, **kwargs)

    def post(self, path: str, data: dict[str, str], *, page: str | None = None):
        """POST ``data`` with the CSRF token read from the page it is posted from."""
        form = dict(data)
        html = text(self.get(path if page is None else page))
        match = CSRF.search(html)
        assert match, f"no CSRF token on {path if page is None else page}"
        form.setdefault("csrf_token", match.group(1))
        action = path.split("?", 1)[0]
        return self.client.post(self.url(action), data=form, environ_base=self.environ)

    def raw_post(self, path: str, data: dict[str, str]):
        return self.client.post(self.url(path), data=data, environ_base=self.environ)

    # Each step, as a customer does it.
    def start(self):
        return self.post("", {})

    def verify(self, value: str = "6789", method: str = "ssn_last4"):
        return self.post(f"/verify?method={method}", {"method": method, method: value})

    def get_started(self):
        return self.post("/plan", {})

    def card(self, number: str = APPROVED, *, code: str = "123", name: str = "Maria Lopez"):
        expiry = f"12/{(date.today().year + 3) % 100:02d}"
        return self.post(
            "/method?kind=card",
            {"kind": "card", "name": name, "number": number, "expiry": expiry,
             "security_code": code, "zip": "20001"},
        )  # fmt: skip

    def bank(self, account_number: str = "000123456789", *, routing: str = ROUTING):
        return self.post(
            "/method?kind=bank",
            {"kind": "bank", "holder_name": "Maria Lopez", "routing_number": routing,
             "account_number": account_number, "account_type": "checking"},
        )  # fmt: skip

    def consent(self, agree: bool = True):
        return self.post("/consent", {"agree": "y"} if agree else {})

    def terms_form(self) -> dict[str, str]:
        page = self.get("/terms")
        assert page.status_code == 200, page.status_code
        html = text(page)
        csrf, sha = CSRF.search(html), TEXT_SHA.search(html)
        assert csrf
        assert sha
        return {"csrf_token": csrf.group(1), "text_sha256": sha.group(1), "agree": "y"}

    def accept_terms(self, form: dict[str, str] | None = None):
        return self.raw_post("/terms", form or self.terms_form())

    def sign_form(self, **fields: str) -> dict[str, str]:
        page = self.get("/sign")
        assert page.status_code == 200, page.status_code
        html = text(page)
        csrf, ref = CSRF.search(html), OFFER_REF.search(html)
        assert csrf
        assert ref
        form = {"csrf_token": csrf.group(1), "offer_ref": ref.group(1),
                "signature_method": "typed", "full_name": "Maria Lopez", "agree": "y"}  # fmt: skip
        form.update(fields)
        return {k: v for k, v in form.items() if v is not None}

    def sign(self, form: dict[str, str] | None = None, **fields: str):
        return self.raw_post("/sign", form or self.sign_form(**fields))

    def to_sign(self, method=None, *, verify: bool = True) -> None:
        assert path_of(self.start()) == self.url("/verify" if verify else "/plan")
        if verify:
            assert path_of(self.verify()) == self.url("/plan")
        assert path_of(self.get_started()) == self.url("/method")
        resp = (method or (lambda c: c.card()))(self)
        assert resp.status_code == 302, text(resp)
        assert path_of(resp) == self.url("/consent")
        assert path_of(self.consent()) == self.url("/terms")
        assert path_of(self.accept_terms()) == self.url("/sign")


@pytest.fixture
def account(db) -> Account:
    return make_account(db)


@pytest.fixture
def offer(app, db, account) -> tuple[str, Offer]:
    return make_offer(app, db, account)


@pytest.fixture
def customer(client, offer) -> Customer:
    return Customer(client, offer[0])


# --- the happy paths -------------------------------------------------------------------------


def test_typed_signature_with_a_card(app, db, client, account, offer):
    token, row = offer
    c = Customer(client, token)

    first = c.get()
    assert first.status_code == 200
    assert first.headers["Cache-Control"] == "no-store"
    assert first.headers["Referrer-Policy"] == "no-referrer"
    page = text(first)
    check_page(page)
    assert "Hi Maria," in page
    assert "Paylink Demo Creditor" in page
    assert "$300.00" in page
    assert "3 payments, every month" in page
    assert ">Complete Payment Agreement</button>" in page
    assert "***-***-0143" in page
    assert "maria@example.com" not in page
    assert reload(db, row).status == "viewed"
    assert c.get().status_code == 200
    assert event_types(db, row) == ["offer.viewed"]  # the first GET only

    assert path_of(c.start()) == c.url("/verify")
    verify_page = text(c.get("/verify"))
    check_page(verify_page)
    assert "Last 4 of SSN" in verify_page
    assert path_of(c.verify()) == c.url("/plan")

    plan_page = text(c.get("/plan"))
    check_page(plan_page)
    assert ">Get Started</button>" in plan_page
    for item in offer_schedule(row):
        day = item.due_date
        assert f"<td>{item.n}</td><td>{day:%b} {day.day}, {day.year}</td><td>$100.00</td>" in (
            plan_page
        )
    assert "every month" in plan_page
    assert "Total" in plan_page
    assert path_of(c.get_started()) == c.url("/method")

    method_page = text(c.get("/method"))
    check_page(method_page)
    for label in ("Card number", "Expiration (MM/YY)", "Security code", "Name on card", "ZIP"):
        assert f">{label}</label>" in method_page
    assert path_of(c.card()) == c.url("/consent")

    consent_page = text(c.get("/consent"))
    check_page(consent_page)
    assert ">I agree" in consent_page
    for words in (
        "paper copy",
        "free of charge",
        "withdraw your consent",
        "PDF",
        "contact details",
    ):
        assert words in consent_page
    assert path_of(c.consent()) == c.url("/terms")

    terms_page = text(c.get("/terms"))
    check_page(terms_page)
    assert "RECURRING PAYMENT AUTHORIZATION" in terms_page
    assert "Visa ending 4242" in terms_page
    assert "at least 3 business days before" in terms_page
    assert path_of(c.accept_terms()) == c.url("/sign")

    sign_page = text(c.get("/sign"))
    check_page(sign_page)
    assert '<label for="full_name">Full name</label>' in sign_page
    assert ">Sign</button>" in sign_page
    assert 'src="/static/signature.js"' in sign_page
    resp = c.sign(full_name="  maria   LOPEZ ")
    assert resp.status_code == 302, text(resp)
    assert path_of(resp) == c.url()

    done = c.get()
    assert done.status_code == 200
    html = text(done)
    check_page(html)
    assert "Your payment plan is set up" in html
    assert "Visa ending 4242" in html
    assert "by email at m***@example.com" in html
    assert html.count("<td>$100.00</td>") == 3

    offer_row = reload(db, row)
    assert offer_row.status == "accepted"
    assert offer_row.accepted_at is not None
    (plan,) = plans_of(db, row)
    assert plan.total_cents == 30000
    assert plan.status == "active"
    installments = read(
        db, select(Installment).where(Installment.plan_id == plan.id).order_by(Installment.n)
    )
    assert [i.amount_cents for i in installments] == [10000, 10000, 10000]
    assert installments[0].due_date == row.first_due_date
    assert all(i.status == "scheduled" for i in installments)
    (agreement,) = read(db, select(Agreement).where(Agreement.offer_id == row.id))
    assert agreement.signer_name == "maria LOPEZ"
    assert agreement.signature_method == "typed"
    assert agreement.signature_png is None
    assert agreement.verified_by == "ssn_last4"
    assert agreement.ip == "127.0.0.1"
    assert agreement.user_agent == UA
    assert "I, Maria Lopez, authorize Paylink Demo Creditor" in agreement.text
    assert "E-SIGN" in agreement.text
    reminders = read(db, select(OfferReminder).where(OfferReminder.offer_id == row.id))
    assert {r.status for r in reminders} == {"cancelled"}
    assert event_types(db, row) == [
        "offer.viewed", "verification.passed", "payment_method.chosen", "esign.consented",
        "terms.viewed", "terms.accepted", "signature.captured", "offer.accepted",
    ]  # fmt: skip
    captured = read(
        db,
        select(OfferEvent).where(
            OfferEvent.offer_id == row.id, OfferEvent.type == "signature.captured"
        ),
    )[0]
    assert captured.data["text_sha256"] == agreement.text_sha256
    assert captured.data["signer_name"] == "maria LOPEZ"
    assert captured.ip == "127.0.0.1"
    assert captured.user_agent == UA
    consented = read(
        db,
        select(OfferEvent).where(
            OfferEvent.offer_id == row.id, OfferEvent.type == "esign.consented"
        ),
    )[0]
    assert consented.ip == "127.0.0.1"
    assert consented.user_agent == UA
    db.rollback()
    assert trail.verify(db, row.id).ok
    db.rollback()
    assert read(db, select(AuditEvent).where(AuditEvent.action == "offer.accepted"))
    assert job_ids(app) == [f"agreement-{agreement.id}"]
    # Every later step goes back to the confirmation.
    for path in ("/verify", "/plan", "/method", "/consent", "/terms", "/sign", "/decline"):
        assert path_of(c.get(path)) == c.url()


def test_drawn_signature_with_a_bank_account(app, db, customer, offer):
    customer.to_sign(lambda c: c.bank())
    picture = png(ink=stroke())
    resp = customer.sign(signature_method="drawn", signature_png=data_url(picture))
    assert path_of(resp) == customer.url(), text(resp)
    html = text(customer.get())
    assert "Checking account ending 6789" in html
    (agreement,) = read(db, select(Agreement))
    assert agreement.signature_method == "drawn"
    assert agreement.signature_png == picture
    assert agreement.signer_name == "Maria Lopez"
    assert "electronic funds transfer (ACH)" in agreement.text
    assert "routing number 110000000" in agreement.text


def test_without_verification_how_verified_is_none(db, customer, offer):
    configure(db, contact_verification=False)
    customer.to_sign(verify=False)
    assert "Step 6 of 6" in text(customer.get("/sign"))
    # Without JavaScript the choice of typed or drawn is never shown, so never posted.
    assert path_of(customer.sign(signature_method=None)) == customer.url()
    (agreement,) = read(db, select(Agreement))
    assert agreement.verified_by == "none"


def test_verification_by_zip_is_recorded(db, customer):
    assert path_of(customer.start()) == customer.url("/verify")
    assert path_of(customer.verify("20001-1234", "zip")) == customer.url("/plan")
    assert path_of(customer.get_started()) == customer.url("/method")
    customer.card()
    customer.consent()
    customer.accept_terms()
    customer.sign()
    (agreement,) = read(db, select(Agreement))
    assert agreement.verified_by == "zip"


def test_steps_cannot_be_skipped(db, customer, offer):
    assert path_of(customer.get("/sign")) == customer.url()
    assert path_of(customer.get("/plan")) == customer.url()
    customer.start()
    assert path_of(customer.get("/terms")) == customer.url("/verify")
    customer.verify()
    assert path_of(customer.get("/consent")) == customer.url("/plan")
    # A Sign POST from a session that never got there signs nothing.
    csrf = CSRF.search(text(customer.get("/plan")))
    assert csrf
    resp = customer.raw_post(
        "/sign", {"csrf_token": csrf.group(1), "full_name": "Maria Lopez", "agree": "y",
                  "offer_ref": offer[1].token_id},
    )  # fmt: skip
    assert path_of(resp) == customer.url("/plan")
    assert plans_of(db, offer[1]) == []


# --- the pages that end the flow -------------------------------------------------------------


def test_a_token_that_does_not_verify_is_404(app, db, client, offer):
    token = offer[0]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    link_token = UrlTokens(app.extensions["paylink.config"].secret_keys, "payment-link").token_for(
        offer[1].token_id
    )
    for bad in (tampered, "nope", link_token, token + "x"):
        resp = client.get(f"/o/{bad}")
        assert resp.status_code == 404
        assert "find this offer" in text(resp)
        assert resp.headers["Cache-Control"] == "no-store"
    draft_token, _ = make_offer(app, db, offer[1].account, status="draft")
    assert client.get(f"/o/{draft_token}").status_code == 404


@pytest.mark.parametrize(
    ("status", "words"),
    [
        ("expired", "This offer has expired"),
        ("revoked", "This offer is no longer available"),
        ("declined", "You declined this offer"),
    ],
)
def test_ended_offers_are_410_with_the_creditors_contact(db, client, offer, status, words):
    token, row = offer
    db.execute(Offer.__table__.update().where(Offer.id == row.id).values(status=status))
    db.commit()
    for path in ("", "/plan", "/sign"):
        resp = client.get(f"/o/{token}{path}")
        assert resp.status_code == 410
        html = text(resp)
        assert words in html
        assert "(800) 555-0100" in html
        assert "billing@example.com" in html
    assert event_types(db, row) == []  # a GET of an ended offer writes nothing


def test_an_offer_past_its_expiry_is_410_before_the_sweep(db, client, app, account, time_machine):
    time_machine.move_to(datetime(2026, 11, 24, 15, 0, tzinfo=UTC), tick=False)
    token, _row = make_offer(app, db, account, expires_in=timedelta(hours=1))
    assert client.get(f"/o/{token}").status_code == 200
    time_machine.move_to(datetime(2026, 11, 24, 16, 0, tzinfo=UTC), tick=False)
    resp = client.get(f"/o/{token}")
    assert resp.status_code == 410
    assert "This offer has expired" in text(resp)


# --- declining -------------------------------------------------------------------------------


def test_decline(db, customer, offer):
    _token, row = offer
    customer.start()
    assert path_of(customer.get("/decline")) == customer.url("/verify")  # verify first
    customer.verify()
    assert "Decline this offer" in text(customer.get("/plan"))
    page = customer.get("/decline")
    check_page(text(page))
    assert ">Decline</button>" in text(page)
    html = text(customer.get("/decline"))
    csrf = CSRF.search(html)
    assert csrf
    resp = customer.raw_post("/decline", {"decline-csrf_token": csrf.group(1)})
    assert path_of(resp) == customer.url()
    gone = customer.get()
    assert gone.status_code == 410
    assert "You declined this offer" in text(gone)
    row = reload(db, row)
    assert row.status == "declined"
    assert row.declined_at is not None
    reminders = read(db, select(OfferReminder).where(OfferReminder.offer_id == row.id))
    assert {r.status for r in reminders} == {"cancelled"}
    assert event_types(db, row)[-1] == "offer.declined"
    assert plans_of(db, row) == []


# --- Sign, twice -----------------------------------------------------------------------------


def test_a_double_submitted_sign_creates_one_plan(app, db, customer, offer):
    customer.to_sign()
    form = customer.sign_form()
    first, second = customer.sign(form), customer.sign(form)
    assert path_of(first) == customer.url()
    assert path_of(second) == customer.url()
    assert len(plans_of(db, offer[1])) == 1
    assert len(read(db, select(Agreement))) == 1
    assert len(job_ids(app)) == 1
    assert event_types(db, offer[1]).count("signature.captured") == 1


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


def test_the_same_sign_posted_twice_at_once_creates_one_plan(app, db, customer, offer, live_server):
    customer.to_sign()
    form = customer.sign_form()
    cookie = customer.client.get_cookie("paylink_session")
    assert cookie is not None
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def tap() -> None:
        barrier.wait(timeout=10)
        with requests.Session() as http:
            http.trust_env = False  # straight to loopback, whatever proxy the machine has
            resp = http.post(
                f"{live_server}{customer.url('/sign')}", data=form, allow_redirects=False,
                timeout=30, cookies={"paylink_session": cookie.value},
                headers={"User-Agent": UA},
            )  # fmt: skip
            statuses.append(resp.status_code)
            resp.close()

    threads = [threading.Thread(target=tap) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert statuses == [302, 302]
    (plan,) = plans_of(db, offer[1])
    assert len(read(db, select(Installment).where(Installment.plan_id == plan.id))) == 3
    assert len(read(db, select(Agreement))) == 1
    assert len(job_ids(app)) == 1
    assert reload(db, offer[1]).status == "accepted"


# --- the offer changes under the customer ----------------------------------------------------


def test_an_offer_that_expires_between_steps_is_410_at_sign(app, db, client, account, time_machine):
    start = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    time_machine.move_to(start, tick=False)
    token, row = make_offer(app, db, account, expires_in=timedelta(hours=1))
    c = Customer(client, token)
    c.to_sign()
    form = c.sign_form()
    time_machine.move_to(start + timedelta(hours=1), tick=False)  # the moment it expires
    resp = c.sign(form)
    assert resp.status_code == 410
    assert "This offer has expired" in text(resp)
    assert plans_of(db, row) == []
    assert read(db, select(Agreement)) == []
    assert job_ids(app) == []


def test_an_offer_revoked_mid_flow_is_410(app, db, customer, offer, agent):
    customer.to_sign()
    form = customer.sign_form()
    resp = customer.client.post(f"/api/v1/offers/{offer[1].id}/revoke", headers=agent.headers)
    assert resp.status_code == 200, resp.json
    signed = customer.sign(form)
    assert signed.status_code == 410
    assert "This offer is no longer available" in text(signed)
    assert plans_of(db, offer[1]) == []
    assert customer.get("/terms").status_code == 410


def test_terms_changed_since_they_were_read_are_shown_again(db, customer, offer):
    customer.to_sign()
    form = customer.sign_form()
    configure(db, charge_hour=10)  # in the terms, not in the E-SIGN disclosure
    resp = customer.sign(form)
    assert path_of(resp) == customer.url("/terms")
    html = text(customer.get("/terms"))
    assert "Please read them again" in html
    assert "from 10:00 AM in your time zone" in html
    assert plans_of(db, offer[1]) == []
    assert path_of(customer.accept_terms()) == customer.url("/sign")
    assert path_of(customer.sign()) == customer.url()
    (agreement,) = read(db, select(Agreement))
    assert "from 10:00 AM in your time zone" in agreement.text


def test_a_changed_disclosure_needs_consent_again(app, db, customer, offer, account):
    customer.to_sign()
    form = customer.sign_form()
    configure(db, creditor_phone="+18005550199")  # the disclosure names it
    resp = customer.sign(form)
    assert path_of(resp) == customer.url("/consent")
    html = text(customer.get("/consent"))
    assert "Please read them again" in html
    assert "(800) 555-0199" in html
    assert path_of(customer.get("/terms")) == customer.url("/consent")
    assert plans_of(db, offer[1]) == []
    assert path_of(customer.consent()) == customer.url("/terms")
    assert path_of(customer.accept_terms()) == customer.url("/sign")
    assert path_of(customer.sign()) == customer.url()
    (agreement,) = read(db, select(Agreement))
    assert "(800) 555-0100" not in agreement.text
    assert "(800) 555-0199" in agreement.text
    # The same change before the terms are accepted also sends the customer back.
    token, _ = make_offer(app, db, account)
    other = Customer(customer.client, token)
    assert path_of(other.start()) == other.url("/verify")
    other.verify()
    other.get_started()
    other.card()
    other.consent()
    configure(db, creditor_phone="+18005550100")
    assert path_of(other.get("/terms")) == other.url("/consent")


def test_a_new_method_after_the_terms_needs_the_terms_again(db, customer):
    customer.to_sign()
    assert path_of(customer.bank()) == customer.url("/terms")
    assert "Checking account ending 6789" in text(customer.get("/terms"))
    customer.accept_terms()
    customer.sign()
    (agreement,) = read(db, select(Agreement))
    assert "Checking account ending 6789" in agreement.text
    assert "Visa" not in agreement.text


def test_a_sign_for_another_offer_is_refused(app, db, client, account, offer):
    token_a, row_a = offer
    token_b, row_b = make_offer(app, db, account)
    a = Customer(client, token_a)
    a.to_sign()
    form = a.sign_form()
    # A's form posted with B's offer reference: refused, nothing signed.
    resp = a.sign({**form, "offer_ref": row_b.token_id})
    assert resp.status_code == 400
    assert "belongs to a different offer" in text(resp)
    # A's form posted to B's address, in A's session: B's flow has not begun.
    b = Customer(client, token_b)
    resp = b.raw_post("/sign", form)
    assert resp.status_code == 302
    assert path_of(resp) == b.url()
    resp = b.raw_post("/sign", {**form, "offer_ref": row_b.token_id})
    assert path_of(resp) == b.url()
    assert plans_of(db, row_a) == []
    assert plans_of(db, row_b) == []
    assert reload(db, row_b).status == "sent"
    # A still signs its own.
    assert path_of(a.sign(form)) == a.url()
    assert len(plans_of(db, row_a)) == 1
    assert plans_of(db, row_b) == []


# --- bad input at the signature --------------------------------------------------------------


def test_sign_without_consent_is_refused_next_to_the_box(db, customer, offer):
    customer.to_sign()
    resp = customer.sign(agree=None)
    assert resp.status_code == 200
    html = text(resp)
    check_page(html)
    assert re.search(
        r'<p class="field-error" id="agree-error">Check the box to sign the agreement.</p>\s*'
        r'<input aria-describedby="agree-error" aria-invalid="true" id="agree"',
        html,
    )
    assert 'value="Maria Lopez"' in html  # what was typed stays
    assert plans_of(db, offer[1]) == []


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("", "Type your full name."),
        ("M", "Type your full name."),
        ("42", "Type your full name."),
        ("Maria", "does not match the name on the account"),
        ("Maria Garcia", "does not match the name on the account"),
        ("Lopez Maria", "does not match the name on the account"),
    ],
)
def test_names_that_do_not_match_are_refused(db, customer, offer, typed, message):
    customer.to_sign()
    resp = customer.sign(full_name=typed)
    assert resp.status_code == 200
    assert message in text(resp)
    assert 'id="full_name-error"' in text(resp)
    assert plans_of(db, offer[1]) == []


def test_no_consent_no_esign_page_passes(customer):
    customer.start()
    customer.verify()
    customer.get_started()
    customer.card()
    resp = customer.consent(agree=False)
    assert resp.status_code == 200
    assert "Check the box to agree to electronic records" in text(resp)
    assert path_of(customer.get("/sign")) == customer.url("/consent")


@pytest.mark.parametrize(
    ("picture", "message"),
    [
        ("", "Draw your signature in the box"),
        (data_url(png()), "The signature box is empty"),
        (data_url(png(ink=[(5, 5)])), "The signature box is empty"),
        ("data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ==", "could not read the drawn signature"),
        ("data:image/png;base64,not base64!", "could not read the drawn signature"),
        (data_url(b"GIF89a" + bytes(100)), "could not read the drawn signature"),
        (data_url(png(ink=stroke(), color_type=2)), "could not read the drawn signature"),
        (data_url(png(ink=stroke())[:-20]), "could not read the drawn signature"),
    ],
    ids=["none", "blank", "a-dot", "jpeg", "bad-base64", "gif", "rgb", "truncated"],
)
def test_bad_drawn_signatures_are_refused_with_a_clear_error(db, customer, offer, picture, message):
    customer.to_sign()
    resp = customer.sign(signature_method="drawn", signature_png=picture)
    assert resp.status_code == 200
    html = text(resp)
    check_page(html)
    assert '<p class="field-error" id="signature_png-error">' in html
    assert message in html
    assert 'name="signature_png" type="hidden" value=""' in html  # not echoed back
    assert plans_of(db, offer[1]) == []


def test_a_drawn_signature_over_200_kb_is_refused(db, customer, offer):
    noise = random.Random(5).randbytes(256 * 256 * 4)
    big = png(256, 256, noise=noise, filters=(0,))
    assert 200 * 1024 < len(big) < 360 * 1024
    customer.to_sign()
    resp = customer.sign(signature_method="drawn", signature_png=data_url(big))
    assert resp.status_code == 200
    assert "too large (over 200 KB)" in text(resp)
    assert plans_of(db, offer[1]) == []


def test_a_5_mb_drawn_signature_is_413_not_500(db, customer, offer):
    customer.to_sign()
    huge = "data:image/png;base64," + base64.b64encode(bytes(5 * 1024 * 1024)).decode()
    resp = customer.sign(signature_method="drawn", signature_png=huge)
    assert resp.status_code == 413
    html = text(resp)
    assert "Your signature could not be sent" in html
    assert customer.url("/sign") in html
    assert plans_of(db, offer[1]) == []
    # The customer can still sign.
    assert path_of(customer.sign()) == customer.url()


def test_forms_without_csrf_are_refused(db, customer, offer):
    customer.to_sign()
    form = customer.sign_form()
    del form["csrf_token"]
    resp = customer.sign(form)
    assert resp.status_code == 400
    assert "Please try again" in text(resp)
    assert customer.raw_post("", {}).status_code == 400
    assert plans_of(db, offer[1]) == []


# --- verification ----------------------------------------------------------------------------


def test_verification_lockout_survives_a_new_browser(app, db, client, account, time_machine):
    start = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    time_machine.move_to(start, tick=False)
    token, row = make_offer(app, db, account)
    c = Customer(client, token)
    c.start()
    for left in (4, 3, 2, 1):
        resp = c.verify("1111")
        assert resp.status_code == 200
        assert f"You can try {left} more time" in text(resp)
    assert c.verify("1111").status_code == 429
    other = Customer(app.test_client(), token)  # cookies do not hold the count
    other.start()
    locked = other.get("/verify")
    assert locked.status_code == 429
    assert "paused after 5 tries" in text(locked)
    assert "Nov 24, 2026 10:15 AM EST" in text(locked)
    csrf = CSRF.search(text(other.get()))
    assert csrf
    tried = other.raw_post(
        "/verify", {"csrf_token": csrf.group(1), "method": "ssn_last4", "ssn_last4": "6789"}
    )
    assert tried.status_code == 429
    time_machine.move_to(start + timedelta(minutes=15), tick=False)
    assert path_of(other.verify()) == other.url("/plan")
    types = event_types(db, row)
    assert types.count("verification.failed") == 5
    assert types.count("verification.locked") == 1


def test_badly_typed_facts_do_not_count(db, customer, offer):
    customer.start()
    resp = customer.verify("12")
    assert "Enter the last 4 digits" in text(resp)
    assert "verification.failed" not in event_types(db, offer[1])


# --- secrets stay secret ---------------------------------------------------------------------


def every_stored_value(db) -> Iterator[tuple[str, str, str]]:
    db.rollback()
    for table in Base.metadata.sorted_tables:
        for row in db.execute(table.select()).mappings():
            for column, value in row.items():
                if value is not None:
                    yield table.name, column, str(value)
    db.rollback()


def test_card_numbers_are_never_stored_or_logged(db, customer, caplog):
    caplog.set_level(logging.DEBUG)
    customer.start()
    customer.verify()
    customer.get_started()
    resp = customer.card(APPROVED, code="987", name="")
    assert resp.status_code == 200
    html = text(resp)
    assert "4242424242424242" not in html
    assert APPROVED not in html
    assert "You entered a card ending 4242" in html
    assert path_of(customer.card(APPROVED, code="987")) == customer.url("/consent")
    customer.consent()
    customer.accept_terms()
    customer.sign()
    secrets = [APPROVED, APPROVED.replace(" ", "")]
    for table, column, value in every_stored_value(db):
        for secret in secrets:
            assert secret not in value, f"{table}.{column} holds a card number"
    logged = "\n".join(f"{r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records)
    for secret in secrets:
        assert secret not in logged
    assert "'987'" not in logged
