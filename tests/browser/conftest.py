"""Browser tests: the app served on loopback by a real HTTP server in a thread, driven by
Playwright through Debian's Chromium (never a browser Playwright downloads).

Without /usr/bin/chromium the tests are skipped, unless ``CI`` is set: CI must run them,
so there the ``browser`` fixture fails instead. ``.ci/run`` installs Chromium when missing.

Each test leaves a full-page screenshot of where it ended, at a phone's size, in
``tests/artifacts/<test name>.png`` (gitignored); axe-core checks every customer page a
test visits.
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from axe_playwright_python.sync_playwright import Axe
from flask import Flask
from playwright.sync_api import Browser, Page, expect, sync_playwright
from werkzeug.serving import make_server

from app import audit
from app.clock import utcnow
from app.models import Account
from links import service
from links.web import link_tokens, message_env

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHONE = {"width": 390, "height": 844}
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
# Long enough for a slow CI machine, short enough that a missing element fails quickly.
TIMEOUT_MS = 10_000
AXE = Axe()  # the axe-core that axe-playwright-python bundles

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason=f"Chromium is not installed at {CHROMIUM} (apt-get install chromium; "
    "CI installs it and fails without it)",
)


# --- the server and the browser -------------------------------------------------------------


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    """The test app served by a threaded werkzeug server on a free loopback port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)
    server.server_close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One Chromium for the session; each test gets a context of its own."""
    if not CHROMIUM.exists():
        pytest.fail(f"CI is set but Chromium is missing at {CHROMIUM}: the browser tests must run")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


def screenshot_context(
    browser: Browser, request: pytest.FixtureRequest, **options: Any
) -> Iterator[Page]:
    """A page in a fresh browser context (its own cookies) made with ``options``, with
    axe-core loaded. Whatever happens, the page it ended on is saved as
    ``tests/artifacts/<test name>.png``."""
    context = browser.new_context(locale="en-US", **options)
    context.set_default_timeout(TIMEOUT_MS)
    # axe-core in every document from the start (CSP does not apply to init scripts), so a
    # check only runs it: Axe().run would evaluate the whole script again on every page.
    context.add_init_script(script=AXE.axe_script)
    tab = context.new_page()
    try:
        yield tab
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            tab.screenshot(path=ARTIFACTS / f"{request.node.name}.png", full_page=True)
        finally:
            context.close()


@pytest.fixture
def page(browser: Browser, live_server: str, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A phone-sized page on the live server (see ``screenshot_context``)."""
    yield from screenshot_context(
        browser, request, base_url=live_server, viewport=PHONE, is_mobile=True, has_touch=True
    )


# --- accessibility --------------------------------------------------------------------------


SERIOUS = ("serious", "critical")


@dataclass
class AxeFinding:
    path: str
    rule: str
    impact: str
    help: str
    targets: list[str]


@pytest.fixture
def accessible(request: pytest.FixtureRequest) -> Iterator[Callable[[Page], None]]:
    """``accessible(page)``: run axe-core on the page as it is and fail on any violation
    of impact serious or critical. Lesser findings are written next to the screenshot as
    ``<test name>.axe.json``."""
    findings: list[AxeFinding] = []

    def check(tab: Page) -> None:
        tab.wait_for_load_state("load")
        path = re.sub(r"^/([po])/[^/]+", r"/\1/<token>", urlsplit(tab.url).path)
        results = tab.evaluate("axe.run({resultTypes: ['violations']})")
        found = [
            AxeFinding(
                path=path,
                rule=v["id"],
                impact=v.get("impact") or "",
                help=v.get("help", ""),
                targets=[", ".join(map(str, n.get("target", []))) for n in v.get("nodes", [])],
            )
            for v in results["violations"]
        ]
        findings.extend(found)
        serious = [f for f in found if f.impact in SERIOUS]
        assert not serious, "axe-core found serious accessibility violations:\n" + "\n".join(
            f"  {f.rule} ({f.impact}) on {f.path}: {f.help} at {f.targets}" for f in serious
        )

    yield check
    report = ARTIFACTS / f"{request.node.name}.axe.json"
    if findings:
        ARTIFACTS.mkdir(exist_ok=True)
        report.write_text(json.dumps([f.__dict__ for f in findings], indent=2) + "\n")
    else:
        report.unlink(missing_ok=True)


# --- arranging accounts and links through the API -------------------------------------------


@dataclass
class Paylink:
    """Accounts, links and settings made the way an agent makes them: through /api/v1."""

    app: Flask
    headers: dict[str, str]

    def _call(self, method: str, path: str, body: dict[str, Any], status: int) -> Any:
        client = self.app.test_client()
        resp = client.open(f"/api/v1{path}", method=method, json=body, headers=self.headers)
        assert resp.status_code == status, resp.get_data(as_text=True)
        return resp.get_json()

    def settings(self, **values: Any) -> dict[str, Any]:
        return self._call("PATCH", "/settings", values, 200)

    def account(self, **values: Any) -> dict[str, Any]:
        body = {
            "external_id": f"BROWSER-{uuid.uuid4().hex[:12]}",
            "name": "Maria Lopez",
            "phone": "+12025550143",
            "email": "maria@example.com",
            "timezone": "America/New_York",
            "balance_cents": 15000,
            "ssn": "123-45-6789",
            "date_of_birth": "1980-04-12",
            "zip": "20001",
            **values,
        }
        return self._call("POST", "/accounts", body, 201)

    def link(self, account_id: int, **values: Any) -> str:
        """A new link's path, /p/<token>."""
        body = self._call("POST", "/links", {"account_id": account_id, **values}, 201)
        return urlsplit(body["url"]).path

    def expired_link(self, account_id: int) -> str:
        """A link made two hours ago with a lifetime of one hour (the API only makes links
        from now on, so this calls the same service with an earlier ``now``)."""
        db = self.app.extensions["paylink.db"]
        with self.app.app_context(), db.transaction() as session:
            account = session.get(Account, account_id)
            assert account is not None
            new = service.create_link(
                session, account, amount_cents=None, channels=None, expires_in_hours=1,
                actor=audit.Actor.system("test"), agent_id=None,
                now=utcnow() - timedelta(hours=2), env=message_env(), tokens=link_tokens(),
            )  # fmt: skip
            return urlsplit(new.url).path


@pytest.fixture
def paylink(app: Flask, make_agent) -> Paylink:
    return Paylink(app, make_agent("supervisor").headers)
