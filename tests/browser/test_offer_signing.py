"""Signing a payment-plan offer at /o/<token> in a real browser on a phone-sized screen:
with a typed Full name, then the signed PDF from the development outbox, byte for byte the
document the agreements API serves and hashes; with a signature drawn by mouse strokes on
the pad; and the Sign button without the consent box ticked.

Elements are found by role and accessible name (the contract's button names and field
labels). axe-core checks every offer page on the way; each test leaves a screenshot in
tests/artifacts/, and the drawn signature one of the pad with its strokes. Every other case
of the flow is tested over HTTP in tests/offers/test_offer_flow.py.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import time_machine
from flask import Flask
from PIL import Image
from playwright.sync_api import Page, expect
from sqlalchemy import select

from app.clock import utcnow
from signing.models import Agreement
from tests.browser.conftest import ARTIFACTS, Paylink, needs_chromium
from tests.helpers import drain

pytestmark = needs_chromium

APPROVED = "4242 4242 4242 4242"
NY = ZoneInfo("America/New_York")  # the accounts' timezone
CREDITOR = "Paylink Demo Creditor"
TOTAL_CENTS = 25_000
# $250.00 in three monthly payments: the odd cent goes to the first.
AMOUNTS = ("$83.34", "$83.33", "$83.33")
ATTACHMENT = "payment-plan-agreement.pdf"

Check = Callable[[Page], None]


# --- arranging offers and reading agreements through /api/v1 ----------------------------------


@dataclass
class AgentApi:
    """What an agent does with an API key of its own: make offers, read plans and
    agreements."""

    app: Flask
    headers: dict[str, str]

    def _open(self, method: str, path: str, body: dict[str, Any] | None, status: int):
        client = self.app.test_client()
        resp = client.open(f"/api/v1{path}", method=method, json=body, headers=self.headers)
        assert resp.status_code == status, resp.get_data(as_text=True)
        return resp

    def get(self, path: str) -> Any:
        return self._open("GET", path, None, 200).get_json()

    def get_bytes(self, path: str) -> bytes:
        return self._open("GET", path, None, 200).data

    def offer(self, account_id: int) -> dict[str, Any]:
        first_due = datetime.now(NY).date() + timedelta(days=7)
        body = {
            "account_id": account_id,
            "kind": "plan",
            "total_cents": TOTAL_CENTS,
            "installment_count": 3,
            "frequency": "monthly",
            "first_due_date": first_due.isoformat(),
        }
        return self._open("POST", "/offers", body, 201).get_json()

    def agreement_of(self, offer_id: int) -> dict[str, Any]:
        offer = self.get(f"/offers/{offer_id}")
        assert offer["status"] == "accepted", offer["status"]
        plan = self.get(f"/plans/{offer['plan_id']}")
        return self.get(f"/agreements/{plan['agreement_id']}")


@pytest.fixture
def api(app: Flask, agent) -> AgentApi:
    return AgentApi(app, agent.headers)


@dataclass
class SentOffer:
    id: int
    path: str  # /o/<token>
    schedule: list[tuple[str, str]]  # (date as the pages write it, amount)


@pytest.fixture
def offer(api: AgentApi, paylink: Paylink) -> SentOffer:
    """A new three-payment offer for Maria Lopez (SSN ending 6789), made by an agent."""
    account = paylink.account(balance_cents=30_000)
    body = api.offer(account["id"])
    schedule = [
        (day_text(date.fromisoformat(row["due_date"])), money(row["amount_cents"]))
        for row in body["schedule"]
    ]
    assert [amount for _day, amount in schedule] == list(AMOUNTS)
    return SentOffer(body["id"], urlsplit(body["url"]).path, schedule)


def day_text(day: date) -> str:
    """A date as the pages write it: Nov 24, 2026."""
    return f"{day:%b} {day.day}, {day.year}"


def money(cents: int) -> str:
    return f"${cents // 100:,}.{cents % 100:02d}"


def daytime_from(instant: datetime, tz: ZoneInfo) -> datetime:
    """``instant`` if it is between 09:00 and 20:00 in ``tz`` (well inside the default
    sending window, 08:00 to 21:00), else the next 09:30 there: when a worker may send at
    once, whenever the test runs."""
    local = instant.astimezone(tz)
    if time(9) <= local.time() < time(20):
        return instant
    day = local.date() if local.time() < time(9) else local.date() + timedelta(days=1)
    return datetime.combine(day, time(9, 30), tz).astimezone(UTC)


# --- one step each, as a customer takes it -----------------------------------------------------


def arrive(page: Page, accessible: Check, heading: str) -> None:
    """The page whose heading is ``heading`` is shown, and axe finds nothing serious on it."""
    expect(page.get_by_role("heading", level=1)).to_have_text(heading)
    accessible(page)


def click_next(page: Page) -> None:
    page.get_by_role("button", name="Next", exact=True).click()


def schedule_table(page: Page, caption: str):
    return page.get_by_role("table", name=caption)


def expect_schedule(page: Page, caption: str, offer: SentOffer, status: str | None = None) -> None:
    """The table lists the offer's payments in order, and their total."""
    table = schedule_table(page, caption)
    rows = table.locator("tbody").get_by_role("row")
    expect(rows).to_have_count(len(offer.schedule))
    for n, (row, (day, amount)) in enumerate(zip(rows.all(), offer.schedule, strict=True), 1):
        cells = [str(n), day, amount, *([status] if status else [])]
        expect(row.get_by_role("cell")).to_have_text(cells)
    expect(table.locator("tfoot")).to_contain_text(money(TOTAL_CENTS))


def open_offer(page: Page, accessible: Check, offer: SentOffer) -> None:
    response = page.goto(offer.path)
    assert response is not None
    assert response.status == 200
    arrive(page, accessible, "Hi Maria,")
    expect(page.get_by_text(f"{CREDITOR} is offering you a payment plan")).to_be_visible()
    expect(page.get_by_text("3 payments, every month")).to_be_visible()
    page.get_by_role("button", name="Complete Payment Agreement").click()


def verify(page: Page, accessible: Check) -> None:
    arrive(page, accessible, "Confirm it's you")
    page.get_by_label("Last 4 of SSN").fill("6789")
    click_next(page)


def get_started(page: Page, accessible: Check, offer: SentOffer) -> None:
    arrive(page, accessible, "Your plan details")
    expect_schedule(page, "Payment schedule", offer)
    page.get_by_role("button", name="Get Started").click()


def enter_card(page: Page, accessible: Check) -> None:
    arrive(page, accessible, "How would you like to pay?")
    page.get_by_label("Name on card").fill("Maria Lopez")
    page.get_by_label("Card number").fill(APPROVED)
    page.get_by_label("Expiration (MM/YY)").fill(f"12/{(date.today().year + 3) % 100:02d}")
    page.get_by_label("Security code").fill("123")
    page.get_by_label("ZIP", exact=True).fill("20001")
    click_next(page)


def consent(page: Page, accessible: Check) -> None:
    arrive(page, accessible, "Electronic records and signature")
    expect(page.get_by_role("region", name="E-SIGN disclosure")).to_contain_text(
        "CONSENT TO ELECTRONIC RECORDS AND SIGNATURES"
    )
    page.get_by_label(re.compile(r"^I agree")).check()
    click_next(page)


def accept_terms(page: Page, accessible: Check) -> None:
    arrive(page, accessible, "Terms and payment authorization")
    terms = page.get_by_role("region", name="Agreement terms, schedule and payment authorization")
    expect(terms).to_contain_text("RECURRING PAYMENT AUTHORIZATION")
    expect(terms).to_contain_text("Visa ending 4242")
    page.get_by_label(re.compile(r"^I agree")).check()
    click_next(page)


def up_to_signing(page: Page, accessible: Check, offer: SentOffer) -> None:
    open_offer(page, accessible, offer)
    verify(page, accessible)  # contact verification is on by default
    get_started(page, accessible, offer)
    enter_card(page, accessible)
    consent(page, accessible)
    accept_terms(page, accessible)
    arrive(page, accessible, "Sign your agreement")
    expect(page.get_by_text("Visa ending 4242")).to_be_visible()


def sign_button(page: Page):
    return page.get_by_role("button", name="Sign", exact=True)


def consent_box(page: Page):
    return page.get_by_role("checkbox", name=re.compile(r"^I agree"))


def confirmed(page: Page, accessible: Check, offer: SentOffer) -> None:
    arrive(page, accessible, "Your payment plan is set up")
    expect(page.get_by_text(f"You signed your agreement with {CREDITOR}")).to_be_visible()
    expect_schedule(page, "Your payment schedule", offer, status="Scheduled")
    expect(page.get_by_text("will arrive by email at m***@example.com")).to_be_visible()


# --- the three journeys ------------------------------------------------------------------------


def test_typed_signature_and_the_signed_pdf_in_the_outbox(
    app: Flask,
    page: Page,
    accessible: Check,
    api: AgentApi,
    offer: SentOffer,
    request: pytest.FixtureRequest,
):
    up_to_signing(page, accessible, offer)
    expect(page.get_by_role("radio", name="Type my name")).to_be_checked()
    page.get_by_label("Full name").fill("Maria Lopez")
    consent_box(page).check()
    sign_button(page).click()
    confirmed(page, accessible, offer)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{request.node.name}.confirmation.png", full_page=True)

    agreement = api.agreement_of(offer.id)
    assert (agreement["signer_name"], agreement["signature_method"]) == ("Maria Lopez", "typed")
    assert agreement["sha256"] is None  # the capture job has not run yet

    # The capture job renders the PDF and the plan_confirmed email goes out. The worker
    # runs at a daytime instant in New York, so quiet hours never hold the email back.
    with time_machine.travel(daytime_from(utcnow(), NY), tick=False):
        drain(app)

    response = page.goto("/dev/outbox")
    assert response is not None
    assert response.status == 200
    email = page.get_by_role("listitem").filter(has_text="plan_confirmed")
    expect(email).to_have_count(1)
    expect(email).to_contain_text("delivered")
    expect(email).to_contain_text("maria@example.com")
    link = email.get_by_role("link", name=ATTACHMENT)
    with page.expect_download() as download_info:
        link.click()
    download = download_info.value
    assert download.suggested_filename == ATTACHMENT
    pdf = Path(download.path()).read_bytes()

    assert pdf.startswith(b"%PDF-")
    agreement = api.agreement_of(offer.id)
    assert hashlib.sha256(pdf).hexdigest() == agreement["sha256"]
    assert pdf == api.get_bytes(f"/agreements/{agreement['id']}/document")


def test_drawn_signature(
    app: Flask,
    page: Page,
    accessible: Check,
    api: AgentApi,
    offer: SentOffer,
    request: pytest.FixtureRequest,
):
    up_to_signing(page, accessible, offer)
    pad = page.get_by_role("img", name="Your signature")
    expect(pad).to_be_hidden()  # typing is the default
    page.get_by_role("radio", name="Draw my signature").check()
    expect(pad).to_be_visible()
    expect(page.get_by_role("button", name="Clear")).to_be_visible()
    accessible(page)  # the page with the pad shown

    # A scribble first, cleared, then the signature: a capital M, a loop and an underline.
    scribble = [[(0.1, 0.1), (0.9, 0.9)]]
    strokes = [
        [(0.08, 0.75), (0.12, 0.25), (0.2, 0.6), (0.28, 0.25), (0.32, 0.75)],
        [(0.4, 0.5), (0.5, 0.3), (0.6, 0.5), (0.5, 0.7), (0.42, 0.55), (0.7, 0.45)],
        [(0.1, 0.88), (0.5, 0.84), (0.9, 0.86)],
    ]

    def draw(lines: list[list[tuple[float, float]]]) -> None:
        # Where the pad is now: clicking Clear may have scrolled the page.
        pad.scroll_into_view_if_needed()
        box = pad.bounding_box()
        assert box is not None
        assert box["width"] > 200, box

        def at(x: float, y: float) -> tuple[float, float]:
            return box["x"] + x * box["width"], box["y"] + y * box["height"]

        for line in lines:
            page.mouse.move(*at(*line[0]))
            page.mouse.down()
            for point in line[1:]:
                page.mouse.move(*at(*point), steps=8)
            page.mouse.up()

    draw(scribble)
    page.get_by_role("button", name="Clear").click()
    draw(strokes)
    ARTIFACTS.mkdir(exist_ok=True)
    pad.screenshot(path=ARTIFACTS / f"{request.node.name}.pad.png")

    page.get_by_label("Full name").fill("Maria Lopez")
    consent_box(page).check()
    sign_button(page).click()
    confirmed(page, accessible, offer)

    agreement = api.agreement_of(offer.id)
    assert (agreement["signer_name"], agreement["signature_method"]) == ("Maria Lopez", "drawn")
    with app.extensions["paylink.db"].transaction() as session:
        signature = session.scalar(
            select(Agreement.signature_png).where(Agreement.id == agreement["id"])
        )
    assert signature is not None
    picture = Image.open(io.BytesIO(signature))
    assert picture.format == "PNG"
    alpha = picture.convert("RGBA").getchannel("A")
    width, height = picture.size
    inked = width * height - alpha.histogram()[0]  # pixels not fully transparent
    # Three strokes, not a dot and not the cleared scribble: plenty of ink, spread across
    # most of the pad, and the scribble's corners (top left, bottom right) left blank.
    assert inked > 0.01 * width * height, (inked, picture.size)
    left, top, right, bottom = alpha.getbbox() or (0, 0, 0, 0)
    assert right - left > 0.7 * width, alpha.getbbox()
    assert bottom - top > 0.5 * height, alpha.getbbox()
    assert not alpha.crop((0, 0, width // 20, height // 10)).getbbox()
    assert not alpha.crop((width * 19 // 20, height * 9 // 10, width, height)).getbbox()


def test_sign_without_the_consent_box_shows_the_error_by_it(
    page: Page, accessible: Check, api: AgentApi, offer: SentOffer
):
    up_to_signing(page, accessible, offer)
    page.get_by_label("Full name").fill("Maria Lopez")
    expect(consent_box(page)).not_to_be_checked()
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        sign_button(page).click()
    assert answer.value.status == 200

    # The same page again, nothing signed: the error is the box's description and sits by it.
    arrive(page, accessible, "Sign your agreement")
    expect(page.get_by_role("alert")).to_have_text("Please fix the highlighted field below.")
    box = consent_box(page)
    message = "Check the box to sign the agreement."
    expect(box).to_have_accessible_description(message)
    expect(box).to_have_attribute("aria-invalid", "true")
    expect(box.locator("xpath=..")).to_contain_text(message)
    expect(page.get_by_label("Full name")).to_have_value("Maria Lopez")
    state = api.get(f"/offers/{offer.id}")
    assert (state["status"], state["plan_id"]) == ("viewed", None)

    # Ticked, the same signature goes through.
    box.check()
    sign_button(page).click()
    confirmed(page, accessible, offer)
    assert api.agreement_of(offer.id)["signature_method"] == "typed"
