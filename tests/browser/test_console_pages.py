"""The agents' console in a real browser (Debian's Chromium through Playwright): sign in,
search, the account page, a payment link created and revoked, a plan offer whose preview
follows what is typed (and works by its button without JavaScript), a hold, a plan
cancelled and its agreement. Elements are found by role and label; axe-core checks every
console page (no serious or critical violation); each test leaves a screenshot in
tests/artifacts/; PAYLINK_UPDATE_SCREENSHOTS=1 refreshes the desktop ones in
docs/screenshots/.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import ARTIFACTS, TIMEOUT_MS, Paylink, needs_chromium
from tests.signing.plan_factory import make_signed_plan
from tests.signing.test_agreements_api import capture

pytestmark = needs_chromium

DESKTOP = {"width": 1280, "height": 900}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
Check = Callable[[Page], None]


def sign_in(page: Page, who, check: Check) -> None:
    page.goto("/console/login")
    check(page)
    page.get_by_label("Email").fill(who.email)
    page.get_by_label("Password").fill(who.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Accounts")).to_be_visible()


def desktop_shot(page: Page, name: str) -> None:
    """A desktop-width screenshot in tests/artifacts/; with PAYLINK_UPDATE_SCREENSHOTS=1
    also in docs/screenshots/ (so an ordinary run leaves the tree as it was)."""
    page.set_viewport_size(DESKTOP)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / name, full_page=True)
    if os.environ.get("PAYLINK_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / name, full_page=True)


@pytest.fixture
def account(paylink: Paylink) -> dict:
    return paylink.account(name="Maria Lopez", balance_cents=15_000)


def test_search_and_the_account_page(page: Page, accessible: Check, agent, account, paylink):
    paylink.link(account["id"])
    sign_in(page, agent, accessible)
    accessible(page)

    page.get_by_label("Search by name, account number, phone or email").fill("maria")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("1 account matching")).to_be_visible()
    page.get_by_role("link", name=account["external_id"]).click()

    expect(page.get_by_role("heading", name="Maria Lopez")).to_be_visible()
    expect(page.get_by_role("heading", name="Timeline")).to_be_visible()
    expect(page.get_by_text("SMS: Payment link to +12025550143")).to_be_visible()
    accessible(page)
    desktop_shot(page, "console-account.png")
    accessible(page)


def test_create_then_revoke_a_link(page: Page, accessible: Check, agent, account):
    sign_in(page, agent, accessible)
    page.goto(f"/console/accounts/{account['id']}")
    page.get_by_role("link", name="Create payment link").click()
    accessible(page)

    page.get_by_label("Amount to pay ($)").fill("abc")
    page.get_by_role("button", name="Create and send link").click()
    expect(page.get_by_text("Enter an amount such as 125.00")).to_be_visible()
    expect(page.get_by_label("Amount to pay ($)")).to_have_value("abc")
    accessible(page)
    page.get_by_label("Amount to pay ($)").fill("40.00")
    page.get_by_role("button", name="Create and send link").click()
    expect(page.get_by_text("Payment link created for $40.00")).to_be_visible()

    page.get_by_role("link", name=re.compile(r"^Revoke link \d+$")).click()
    accessible(page)
    page.get_by_role("button", name="Revoke link").click()  # the box is required
    expect(page.get_by_label("Yes, revoke this payment link")).to_be_visible()
    page.get_by_label("Yes, revoke this payment link").check()
    page.get_by_role("button", name="Revoke link").click()
    expect(page.get_by_text(re.compile(r"Link \d+ is revoked"))).to_be_visible()


def test_offer_preview_follows_the_form_and_creates_the_offer(
    page: Page, accessible: Check, agent, account
):
    sign_in(page, agent, accessible)
    page.goto(f"/console/accounts/{account['id']}/offers/new")
    preview = page.locator("#offer-preview")
    expect(preview.get_by_text(re.compile(r"characters · 1 segment"))).to_be_visible()
    accessible(page)

    page.get_by_label("Total to pay ($)").fill("100.00")
    page.get_by_label("Number of payments").fill("4")
    expect(preview.locator("tbody tr")).to_have_count(4)
    expect(preview.get_by_role("cell", name="$25.00").first).to_be_visible()
    page.get_by_label("Number of payments").fill("0")
    expect(preview.get_by_text("Must be between 1 and 24.")).to_be_visible()
    page.get_by_label("Number of payments").fill("3")
    expect(preview.get_by_role("cell", name="$33.34")).to_be_visible()
    email = page.frame_locator("iframe[title='Email preview']")
    expect(email.get_by_text("Complete Payment Agreement")).to_be_visible()
    accessible(page)
    desktop_shot(page, "console-new-offer.png")

    page.get_by_role("button", name="Create and send offer").click()
    expect(
        page.get_by_text(re.compile(r"Offer \d+ created and sent by SMS and email"))
    ).to_be_visible()
    expect(page.get_by_role("link", name=re.compile(r"^Revoke offer \d+$"))).to_be_visible()
    accessible(page)


def test_offer_preview_without_javascript(browser: Browser, live_server: str, agent, account):
    context = browser.new_context(base_url=live_server, java_script_enabled=False)
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    try:
        tab.goto("/console/login")
        tab.get_by_label("Email").fill(agent.email)
        tab.get_by_label("Password").fill(agent.password)
        tab.get_by_role("button", name="Sign in").click()
        tab.goto(f"/console/accounts/{account['id']}/offers/new")
        tab.get_by_label("Number of payments").fill("2")
        tab.get_by_role("button", name="Preview").click()
        expect(tab.locator("#offer-preview tbody tr")).to_have_count(2)
        expect(tab.get_by_role("cell", name="$75.00").first).to_be_visible()
        tab.get_by_label("Number of payments").fill("2")
        tab.get_by_role("button", name="Create and send offer").click()
        expect(tab.get_by_text(re.compile(r"Offer \d+ created"))).to_be_visible()
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        tab.screenshot(path=ARTIFACTS / "test_offer_preview_without_javascript.png")
        context.close()


def test_hold_then_release_by_a_supervisor(page: Page, accessible: Check, supervisor, account):
    sign_in(page, supervisor, accessible)
    page.goto(f"/console/accounts/{account['id']}")

    page.get_by_label("Dispute: the customer disputes the debt").check()
    page.get_by_label("Note (optional)").fill("called 11/21")
    page.get_by_role("button", name="Put on hold").click()
    expect(page.get_by_text("On hold: Dispute.")).to_be_visible()
    accessible(page)

    page.get_by_label("Why the hold ends").fill("dispute resolved")
    page.get_by_role("button", name="Release hold").click()
    expect(page.get_by_text("Tick the box to confirm.")).to_be_visible()
    page.get_by_label("Yes, contact with this customer may resume").check()
    page.get_by_role("button", name="Release hold").click()
    expect(page.get_by_text("The hold is released.")).to_be_visible()
    accessible(page)


def test_plan_cancel_and_agreement_downloads(page: Page, accessible: Check, app, agent):
    signed = make_signed_plan(app)
    capture(app, signed.agreement_id)
    sign_in(page, agent, accessible)
    page.goto(f"/console/plans/{signed.plan_id}")
    accessible(page)

    page.get_by_role("link", name="Signed agreement").click()
    expect(page.get_by_text("hash chain intact")).to_be_visible()
    accessible(page)
    desktop_shot(page, "console-agreement.png")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download signed agreement (PDF)").click()
    assert download.value.suggested_filename.endswith(".pdf")

    page.goto(f"/console/plans/{signed.plan_id}/cancel")
    accessible(page)
    page.get_by_label("Reason for cancelling").fill("customer asked to stop")
    page.get_by_label("Yes, cancel this plan").check()
    page.get_by_role("button", name="Cancel plan").click()
    expect(page.get_by_text(re.compile(r"Plan \d+ is cancelled"))).to_be_visible()
    accessible(page)
