"""The payment link flow at /p/<token> in a real browser on a phone-sized screen: an
approved card with its printable receipt, a declined card then another, a bank account,
payments scheduled on two dates, the verification lockout and an expired link.

Elements are found the way people find them: by role and accessible name (the contract's
button names and field labels). axe-core checks every page on the way; each test leaves a
screenshot in tests/artifacts/. Every other case of the flow is tested over HTTP in
tests/links/test_flow.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from playwright.sync_api import Page, expect

from tests.browser.conftest import Paylink, needs_chromium

pytestmark = needs_chromium

APPROVED = "4242 4242 4242 4242"
DECLINED = "4000 0000 0000 0002"
ROUTING = "110000000"
RECEIPT_NUMBER = re.compile(r"R-\d{8}-[0-9A-F]{8}")
NY = ZoneInfo("America/New_York")

Check = Callable[[Page], None]


# --- one step each, as a customer takes it --------------------------------------------------


def arrive(page: Page, accessible: Check, heading: str) -> None:
    """The page whose heading is ``heading`` is shown, and axe finds nothing serious on it."""
    expect(page.get_by_role("heading", level=1)).to_have_text(heading)
    accessible(page)


def click_next(page: Page) -> None:
    page.get_by_role("button", name="Next", exact=True).click()


def open_link(page: Page, accessible: Check, path: str) -> None:
    response = page.goto(path)
    assert response is not None
    assert response.status == 200
    arrive(page, accessible, "Hi Maria,")
    expect(page.get_by_text("Paylink Demo Creditor sent you this secure link")).to_be_visible()
    expect(page.get_by_text("$150.00")).to_be_visible()
    click_next(page)


def verify(page: Page, accessible: Check, answer: str = "6789") -> None:
    arrive(page, accessible, "Confirm it's you")
    page.get_by_label("Last 4 of SSN").fill(answer)
    click_next(page)


def skip_offer(page: Page, accessible: Check) -> None:
    arrive(page, accessible, "Save when you pay today")
    expect(page.get_by_role("radio", name="Pay $120.00 today (20% off)")).to_be_visible()
    page.get_by_role("button", name="Skip").click()


def choose_amount(page: Page, accessible: Check, dollars: str) -> None:
    arrive(page, accessible, "How much would you like to pay?")
    field = page.get_by_label("Amount", exact=True)
    expect(field).to_have_value("150.00")
    field.fill(dollars)
    click_next(page)


def up_to_the_method(page: Page, accessible: Check, path: str, dollars: str) -> None:
    open_link(page, accessible, path)
    verify(page, accessible)
    skip_offer(page, accessible)
    choose_amount(page, accessible, dollars)


def enter_card(page: Page, accessible: Check, number: str) -> None:
    arrive(page, accessible, "How would you like to pay?")
    page.get_by_label("Name on card").fill("Maria Lopez")
    page.get_by_label("Card number").fill(number)
    page.get_by_label("Expiration (MM/YY)").fill(f"12/{(date.today().year + 3) % 100:02d}")
    page.get_by_label("Security code").fill("123")
    page.get_by_label("ZIP", exact=True).fill("20001")
    click_next(page)


def pay_now(page: Page, accessible: Check) -> None:
    arrive(page, accessible, "When would you like to pay?")
    expect(page.get_by_role("radio", name="Pay now")).to_be_checked()
    click_next(page)


def confirm(page: Page, accessible: Check, *amounts: str) -> None:
    arrive(page, accessible, "Review and confirm")
    plan = page.get_by_role("table", name=re.compile(r"^Your payments?$"))
    for amount in amounts:
        expect(plan).to_contain_text(amount)
    expect(page.get_by_role("region", name="Payment authorization")).to_contain_text(
        "PAYMENT AUTHORIZATION"
    )
    page.get_by_label(re.compile(r"^I agree")).check()
    page.get_by_role("button", name="Confirm").click()


def day_text(day: date) -> str:
    """A date as the pages write it: Nov 24, 2026."""
    return f"{day:%b} {day.day}, {day.year}"


def receipt_rows(page: Page) -> list[list[str]]:
    """The receipt table's body rows, as the cells' texts."""
    table = page.get_by_role("table", name=re.compile(r"^Payments?$"))
    rows = table.locator("tbody").get_by_role("row")
    return [row.get_by_role("cell").all_inner_texts() for row in rows.all()]


# --- the six journeys -----------------------------------------------------------------------


def test_approved_card_shows_a_receipt_and_prints_it(
    page: Page, accessible: Check, paylink: Paylink
):
    path = paylink.link(paylink.account()["id"])
    up_to_the_method(page, accessible, path, "125.50")
    enter_card(page, accessible, APPROVED)
    pay_now(page, accessible)
    confirm(page, accessible, "$125.50")

    arrive(page, accessible, "Thank you for your payment")
    ((number, amount, _when, status),) = receipt_rows(page)
    assert RECEIPT_NUMBER.fullmatch(number), number
    assert (amount, status) == ("$125.50", "Paid")
    expect(page.get_by_text("Visa ending 4242")).to_be_visible()
    expect(page.get_by_role("button", name="Email receipt")).to_be_visible()

    page.get_by_role("button", name="Print receipt").click()
    arrive(page, accessible, "Receipt")
    assert receipt_rows(page) == [[number, "$125.50", _when, "Paid"]]
    back = page.get_by_role("link", name="Back to your receipt")
    expect(back).to_be_visible()
    # The print stylesheet leaves the receipt and drops the page's controls.
    page.emulate_media(media="print")
    expect(back).to_be_hidden()
    expect(page.get_by_text(number)).to_be_visible()


def test_declined_card_then_another_card(page: Page, accessible: Check, paylink: Paylink):
    path = paylink.link(paylink.account()["id"])
    up_to_the_method(page, accessible, path, "125.50")
    enter_card(page, accessible, DECLINED)
    pay_now(page, accessible)
    confirm(page, accessible, "$125.50")

    # Back on the method page with the reason, to try again.
    expect(page.get_by_role("alert")).to_have_text(
        "Your card was declined. Please try another card or a bank account."
    )
    enter_card(page, accessible, APPROVED)
    # "Pay now" still stands: straight back to the review.
    confirm(page, accessible, "$125.50")

    arrive(page, accessible, "Thank you for your payment")
    ((number, amount, _when, status),) = receipt_rows(page)
    assert RECEIPT_NUMBER.fullmatch(number), number
    assert (amount, status) == ("$125.50", "Paid")
    expect(page.get_by_text("Visa ending 4242")).to_be_visible()


def test_bank_account_is_pending(page: Page, accessible: Check, paylink: Paylink):
    path = paylink.link(paylink.account()["id"])
    up_to_the_method(page, accessible, path, "125.50")
    arrive(page, accessible, "How would you like to pay?")
    tabs = page.get_by_role("navigation", name="Payment method")
    tabs.get_by_role("link", name="Bank account").click()
    expect(page.get_by_role("heading", name="Bank account", level=2)).to_be_visible()
    arrive(page, accessible, "How would you like to pay?")
    page.get_by_label("Name on account").fill("Maria Lopez")
    page.get_by_label("Routing number").fill(ROUTING)
    page.get_by_label("Account number", exact=True).fill("000123456789")
    expect(page.get_by_role("radio", name="Checking")).to_be_checked()
    page.get_by_role("radio", name="Savings").check()
    click_next(page)
    pay_now(page, accessible)
    confirm(page, accessible, "$125.50")

    arrive(page, accessible, "Thank you for your payment")
    ((number, amount, _when, status),) = receipt_rows(page)
    assert RECEIPT_NUMBER.fullmatch(number), number
    assert (amount, status) == ("$125.50", "Pending")
    expect(page.get_by_text("Savings account ending 6789")).to_be_visible()
    expect(page.get_by_text("a bank payment takes a few business days")).to_be_visible()


def test_payments_scheduled_on_two_dates(page: Page, accessible: Check, paylink: Paylink):
    # Two days ahead, not one: a run across midnight in New York still schedules ahead.
    today = datetime.now(NY).date()
    first, second = today + timedelta(days=2), today + timedelta(days=30)
    path = paylink.link(paylink.account()["id"])
    up_to_the_method(page, accessible, path, "150.00")
    enter_card(page, accessible, APPROVED)

    arrive(page, accessible, "When would you like to pay?")
    page.get_by_role("radio", name="Schedule for later").check()
    page.get_by_label("Date of payment 1").fill(first.isoformat())
    page.get_by_label("Amount of payment 1").fill("100.00")
    page.get_by_label("Date of payment 2").fill(second.isoformat())
    page.get_by_label("Amount of payment 2").fill("50")
    click_next(page)
    confirm(page, accessible, "$100.00", "$50.00", "$150.00", day_text(first), day_text(second))

    arrive(page, accessible, "Your payments are scheduled")
    rows = receipt_rows(page)
    assert [(amount, when, status) for _n, amount, when, status in rows] == [
        ("$100.00", day_text(first), "Scheduled"),
        ("$50.00", day_text(second), "Scheduled"),
    ]
    assert all(RECEIPT_NUMBER.fullmatch(n) for n, *_ in rows), rows
    # Nothing is paid yet, so there is nothing to email; the schedule prints.
    expect(page.get_by_role("button", name="Email receipt")).to_have_count(0)
    expect(page.get_by_role("button", name="Print receipt")).to_be_visible()


def test_five_wrong_answers_lock_the_link(page: Page, accessible: Check, paylink: Paylink):
    path = paylink.link(paylink.account()["id"])
    open_link(page, accessible, path)
    arrive(page, accessible, "Confirm it's you")
    field = page.get_by_label("Last 4 of SSN")
    for left in ("4 more times", "3 more times", "2 more times", "1 more time."):
        field.fill("1111")
        click_next(page)
        # The error sits next to the field and is its description; the guess is not kept.
        expect(field).to_have_accessible_description(re.compile(f"You can try {left}"))
        expect(field).to_have_value("")
        if left.startswith("4"):
            accessible(page)  # the page with an error (the same page each time after)

    field.fill("1111")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        click_next(page)
    assert answer.value.status == 429
    arrive(page, accessible, "Please try again later")
    expect(page.get_by_role("alert")).to_have_text(
        "For your security, this link is paused after 5 tries that did not match our records."
    )
    expect(page.get_by_text("You can try again after")).to_be_visible()
    # Coming back to the link does not get round the lock.
    reopened = page.goto(path + "/verify")
    assert reopened is not None
    assert reopened.status == 429
    arrive(page, accessible, "Please try again later")


def test_expired_link_names_the_creditor(page: Page, accessible: Check, paylink: Paylink):
    paylink.settings(
        creditor_name="Riverside Dental Billing",
        creditor_phone="+12025550199",
        creditor_email="billing@riverside-dental.example.com",
        creditor_hours="Mon-Fri 8am-6pm",
    )
    path = paylink.expired_link(paylink.account()["id"])

    response = page.goto(path)
    assert response is not None
    assert response.status == 410
    arrive(page, accessible, "This payment link has expired")
    expect(page).to_have_title(re.compile("Riverside Dental Billing"))
    expect(page.get_by_role("link", name="(202) 555-0199").first).to_have_attribute(
        "href", "tel:+12025550199"
    )
    expect(
        page.get_by_role("link", name="billing@riverside-dental.example.com").first
    ).to_have_attribute("href", "mailto:billing@riverside-dental.example.com")
    expect(page.get_by_text("Mon-Fri 8am-6pm").first).to_be_visible()
    expect(page.get_by_role("link", name="Find your account")).to_have_attribute("href", "/pay")
