"""Browser tests of the console's campaign, dashboard, settings, agents and operations
pages: Playwright driving Debian's Chromium at a desktop size, elements found by role and
label, axe-core on every page, a screenshot per test in tests/artifacts/."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest
import time_machine
from flask import Flask
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import func, select

from app.clock import utcnow
from app.models import AuditEvent, OrgSettings
from links.models import PaymentLink
from tests.browser.conftest import ARTIFACTS, Paylink, needs_chromium, screenshot_context
from tests.helpers import drain

pytestmark = needs_chromium

DESKTOP = {"width": 1280, "height": 900}
Check = Callable[[Page], None]


def fails_until_file(path: str) -> str:
    """A job for the operations page: fails until ``path`` exists."""
    if not Path(path).exists():
        raise RuntimeError("not yet")
    return "ran"


@pytest.fixture
def desk(browser: Browser, live_server: str, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A desktop-sized page on the live server (see ``screenshot_context``)."""
    yield from screenshot_context(browser, request, base_url=live_server, viewport=DESKTOP)


def sign_in(page: Page, person) -> None:
    page.goto("/console/login")
    page.get_by_label("Email").fill(person.email)
    page.get_by_label("Password").fill(person.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def daytime() -> datetime:
    """Now, or later today or tomorrow at 16:00 UTC (11:00 in New York): a time at which
    the worker may send to the accounts below at once."""
    now = utcnow()
    target = datetime.combine(now.date(), time(16), UTC)
    return target if now < target else target + timedelta(days=1)


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / name, full_page=True)


CSV = (
    "external_id,name,phone,email,timezone,balance_cents\n"
    "CMP-1,Maria Lopez,(202) 555-0143,maria@example.com,America/New_York,15000\n"
    "CMP-2,Ken Ito,(202) 555-0144,,America/New_York,8000\n"
    "CMP-3,Ana Silva,not a phone,,America/New_York,2000\n"
    "CMP-4,Lee Park,,lee@example.com,America/New_York,12000\n"
)


def test_import_a_csv_and_run_a_campaign(app: Flask, desk: Page, accessible: Check, agent):
    sign_in(desk, agent)
    desk.get_by_role("link", name=re.compile("campaigns", re.I)).first.click()
    expect(desk.get_by_role("heading", level=1)).to_have_text(
        "Import accounts and send link campaigns"
    )
    accessible(desk)

    desk.get_by_label("CSV file", exact=True).set_input_files(
        files=[{"name": "accounts.csv", "mimeType": "text/csv", "buffer": CSV.encode()}]
    )
    desk.get_by_role("button", name="Import accounts").click()

    expect(desk.get_by_role("status").filter(has_text="created")).to_contain_text(
        "3 created, 0 updated, 1 row left out."
    )
    bad_rows = desk.get_by_role("table", name="Rows left out, with the reason")
    expect(bad_rows.get_by_role("row")).to_have_count(2)
    expect(bad_rows).to_contain_text("is not a phone number")
    expect(desk.get_by_label("Account numbers, one per line")).to_have_value("CMP-1\nCMP-2\nCMP-4")
    accessible(desk)

    desk.get_by_label("Campaign name").fill("November balances")
    desk.get_by_role("button", name="Start campaign").click()

    expect(desk.get_by_role("heading", level=1)).to_have_text("Campaign: November balances")
    expect(desk.get_by_text("0 of 3 accounts done")).to_be_visible()
    accessible(desk)

    with time_machine.travel(daytime(), tick=False):
        drain(app)
    desk.get_by_role("link", name="Refresh progress").click()

    expect(desk.get_by_text("3 of 3 accounts done")).to_be_visible()
    expect(desk.get_by_text("Status: completed")).to_be_visible()
    expect(desk.locator("#progress")).to_have_attribute("value", "3")
    expect(desk.get_by_role("row", name=re.compile(r"^Link sent 3"))).to_be_visible()
    accessible(desk)
    shot(desk, "console-campaign.png")
    with app.extensions["paylink.db"].Session() as s:
        assert s.scalar(select(func.count()).select_from(PaymentLink)) == 3


def test_dashboard(app: Flask, desk: Page, accessible: Check, paylink: Paylink, supervisor):
    paths = []
    for name, email in (
        ("Maria Lopez", "maria@example.com"),
        ("Ken Ito", None),
        ("Ana Silva", None),
    ):
        account = paylink.account(name=name, email=email, phone="+12025550143")
        paths.append(paylink.link(account["id"], channels=["sms"] + (["email"] if email else [])))
    with time_machine.travel(daytime(), tick=False):
        drain(app)
    desk.goto(paths[0])  # a customer opens one link
    sign_in(desk, supervisor)

    desk.get_by_role("link", name="Dashboard").click()

    expect(desk.get_by_role("heading", level=1)).to_have_text("Dashboard")
    funnel = desk.locator("#funnel")
    expect(funnel.get_by_role("row", name=re.compile(r"^Sent 3 0 3 100%"))).to_be_visible()
    expect(funnel.get_by_role("row", name=re.compile(r"^Opened 1 0 1 33%"))).to_be_visible()
    expect(
        desk.locator("#delivery").get_by_role("row", name=re.compile(r"^SMS 3 "))
    ).to_be_visible()
    accessible(desk)
    shot(desk, "console-dashboard.png")

    desk.get_by_label("Recent days").select_option("7")
    desk.get_by_role("button", name="Show").click()
    expect(desk.get_by_label("Recent days")).to_have_value("7")
    accessible(desk)

    response = desk.goto("/console/dashboard?start=2026-11-10&end=2026-11-01")
    assert response is not None
    assert response.status == 400
    expect(desk.locator("#end-error")).to_have_text("The end must not be before the start.")
    expect(desk.get_by_label("To (date)")).to_have_attribute("aria-invalid", "true")
    accessible(desk)


def test_settings(app: Flask, desk: Page, accessible: Check, supervisor):
    sign_in(desk, supervisor)
    desk.get_by_role("link", name="Settings").click()
    expect(desk.get_by_role("heading", level=1)).to_have_text("Settings")
    accessible(desk)

    lifetime = desk.get_by_label("Payment link lifetime (hours)")
    lifetime.fill("two days")
    desk.get_by_label("Show Skip next to settlement offers").uncheck()
    desk.get_by_role("button", name="Save settings").click()

    expect(desk.locator("#link_lifetime_hours-error")).to_have_text("must be a whole number")
    expect(lifetime).to_have_value("two days")
    expect(lifetime).to_have_attribute("aria-invalid", "true")
    expect(desk.get_by_label("Show Skip next to settlement offers")).not_to_be_checked()
    accessible(desk)

    lifetime.fill("48")
    desk.get_by_label("Offer reminders before expiry").fill("48h, 4h")
    desk.get_by_role("button", name="Save settings").click()

    expect(desk.get_by_role("status").filter(has_text="Settings saved.")).to_be_visible()
    expect(desk.get_by_label("Payment link lifetime (hours)")).to_have_value("48")
    expect(desk.get_by_label("Offer reminders before expiry")).to_have_value("48h, 4h")
    accessible(desk)
    shot(desk, "console-admin-settings.png")
    with app.extensions["paylink.db"].Session() as s:
        row = s.get(OrgSettings, 1)
        assert (row.link_lifetime_hours, row.allow_skip_offer) == (48, False)
        assert row.reminder_offsets == ["48h", "4h"]
        actions = s.scalars(select(AuditEvent.action).where(AuditEvent.object_type == "settings"))
        assert list(actions) == ["settings.updated"]


def test_agents_and_api_keys(app: Flask, desk: Page, accessible: Check, admin):
    sign_in(desk, admin)
    desk.get_by_role("link", name="Agents & keys").click()
    expect(desk.get_by_role("heading", level=1)).to_have_text("Agents and API keys")
    accessible(desk)

    desk.get_by_label("Email", exact=True).fill("sam@paylink.test")
    desk.get_by_label("Name", exact=True).fill("Sam Reed")
    desk.get_by_label("Role", exact=True).select_option("supervisor")
    desk.get_by_label("Password").fill("short")
    desk.get_by_role("button", name="Add agent").click()
    expect(desk.locator("#password-error")).to_have_text("A password needs at least 10 characters.")
    expect(desk.get_by_label("Email", exact=True)).to_have_value("sam@paylink.test")
    accessible(desk)
    desk.get_by_label("Password").fill("a long enough password")
    desk.get_by_role("button", name="Add agent").click()
    expect(desk.get_by_text("Agent sam@paylink.test added as supervisor.")).to_be_visible()

    desk.get_by_label("Name of a new key for sam@paylink.test").fill("CRM sync")
    desk.get_by_role("button", name="Create API key for sam@paylink.test").click()
    expect(desk.get_by_role("heading", level=1)).to_have_text("New API key")
    key = desk.get_by_label("API key").input_value()
    assert key.startswith("pl_")
    accessible(desk)
    shot(desk, "console-admin-new-key.png")
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/v1/settings", headers=headers).status_code == 200

    desk.get_by_role("link", name="Back to agents and API keys").click()
    expect(desk.get_by_text(key)).to_have_count(0)
    desk.get_by_role("button", name=re.compile(r"^Revoke key .* of sam@paylink\.test$")).click()
    expect(desk.get_by_text(re.compile(r"Key .* is revoked\."))).to_be_visible()
    assert client.get("/api/v1/settings", headers=headers).status_code == 401
    desk.get_by_label("Role of sam@paylink.test", exact=True).select_option("admin")
    desk.get_by_role("button", name="Change role of sam@paylink.test").click()
    expect(desk.get_by_text("sam@paylink.test is now admin.")).to_be_visible()
    expect(desk.get_by_label("Role of sam@paylink.test", exact=True)).to_have_value("admin")
    desk.get_by_role("button", name="Deactivate sam@paylink.test").click()
    expect(desk.get_by_role("button", name="Activate sam@paylink.test")).to_be_visible()
    expect(desk.get_by_role("button", name=f"Deactivate {admin.email}")).to_have_count(0)
    accessible(desk)
    shot(desk, "console-admin-agents.png")


def test_operations(app: Flask, desk: Page, accessible: Check, admin, tmp_path: Path):
    from workers.worker import build_worker

    job_queue = app.extensions["paylink.queue"]
    marker = tmp_path / "go"
    job_queue.queue("default").enqueue(fails_until_file, args=(str(marker),), job_id="ops-demo")
    build_worker(app).work(burst=True, with_scheduler=False)
    sign_in(desk, admin)

    desk.get_by_role("link", name="Operations").click()

    expect(desk.get_by_role("heading", level=1)).to_have_text("Operations")
    expect(desk.get_by_role("row", name=re.compile(r"^default 0 0 0 0 1$"))).to_be_visible()
    expect(desk.get_by_role("row", name=re.compile("ops-demo"))).to_contain_text(
        "RuntimeError: not yet"
    )
    accessible(desk)
    shot(desk, "console-admin-ops.png")

    marker.write_text("now")
    desk.get_by_role("button", name="Retry job ops-demo").click()

    expect(desk.get_by_text("Job ops-demo is queued again.")).to_be_visible()
    expect(desk.get_by_text("No failed jobs.")).to_be_visible()
    expect(desk.get_by_role("row", name=re.compile(r"^default 1 0 0 0 0$"))).to_be_visible()
    accessible(desk)
    drain(app)
