"""The console's account page (contact, balance, opt-outs, hold, panels, one timeline),
holds (set by any agent, released by a supervisor, each an audit event), the navigation
and the console's assets."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from app.models import Account, AuditEvent, Message
from tests.app.test_console import CSRF, login


def make_account(app, **values) -> int:
    row = {
        "external_id": "ACC-7001", "name": "Maria Lopez", "phone": "+12025550143",
        "email": "maria@example.com", "timezone": "America/New_York", "balance_cents": 15_000,
        **values,
    }  # fmt: skip
    with app.extensions["paylink.db"].transaction() as s:
        account = Account(**row)
        s.add(account)
        s.flush()
        return account.id


def token_on(client, path: str) -> str:
    match = CSRF.search(client.get(path).get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def audit_actions(db, object_type: str, object_id: int) -> list[str]:
    db.rollback()
    rows = db.scalars(
        select(AuditEvent.action)
        .where(AuditEvent.object_type == object_type, AuditEvent.object_id == str(object_id))
        .order_by(AuditEvent.id)
    )
    found = list(rows)
    db.rollback()  # SQLite: an open transaction would hold the write lock
    return found


@pytest.fixture
def account_id(app) -> int:
    return make_account(app)


@pytest.fixture
def as_agent(client, agent):
    assert login(client, agent.email, agent.password).status_code == 302
    return client


@pytest.fixture
def as_supervisor(client, supervisor):
    assert login(client, supervisor.email, supervisor.password).status_code == 302
    return client


def test_account_page_shows_contact_balance_and_opt_outs(app, as_agent):
    account_id = make_account(
        app, external_id="ACC-1", sms_opted_out_at=datetime(2026, 11, 1, 15, tzinfo=UTC)
    )

    resp = as_agent.get(f"/console/accounts/{account_id}")

    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    assert "Maria Lopez" in page
    assert "ACC-1" in page
    assert "$150.00" in page
    assert "+12025550143" in page
    assert "maria@example.com" in page
    assert re.search(r"<dt>SMS</dt><dd>.*opted out.*since Nov 1, 2026 10:00 AM EST", page)
    assert re.search(r"<dt>Email</dt><dd>allowed</dd>", page)
    assert "Create payment link" in page
    assert "Create plan offer" in page


def test_account_search_results_link_to_the_account_page(as_agent, account_id):
    page = as_agent.get("/console/?q=maria").get_data(as_text=True)

    assert f'href="/console/accounts/{account_id}"' in page


def test_unknown_account_is_a_friendly_404(as_agent):
    for path in ("/console/accounts/999999", f"/console/accounts/{2**70}"):
        resp = as_agent.get(path)
        assert resp.status_code == 404
        assert resp.mimetype == "text/html"
        assert "No account has this id." in resp.get_data(as_text=True)


def test_signed_out_account_page_goes_to_login(client, account_id):
    resp = client.get(f"/console/accounts/{account_id}")

    assert resp.status_code == 302
    assert "/console/login" in resp.headers["Location"]


def test_timeline_shows_messages_with_their_delivery_status(app, as_agent, account_id):
    now = datetime(2026, 11, 20, 15, tzinfo=UTC)
    with app.extensions["paylink.db"].transaction() as s:
        s.add(Message(account_id=account_id, kind="link", channel="sms", recipient="+12025550143",
                      body="Maria, pay here", status="delivered", scheduled_for=now,
                      created_at=now, updated_at=now))  # fmt: skip
        s.add(Message(account_id=account_id, kind="receipt", channel="email",
                      recipient="maria@example.com", subject="Your receipt", body="x",
                      status="bounced", status_reason="mailbox full", scheduled_for=now,
                      created_at=now, updated_at=now))  # fmt: skip

    page = as_agent.get(f"/console/accounts/{account_id}").get_data(as_text=True)

    assert "SMS: Payment link to +12025550143" in page
    assert "badge-delivered" in page
    assert "Email: Receipt to maria@example.com" in page
    assert "mailbox full" in page
    assert "badge-bounced" in page


def test_put_on_hold_is_audited_and_shown(app, db, as_agent, account_id):
    token = token_on(as_agent, f"/console/accounts/{account_id}")

    resp = as_agent.post(
        f"/console/accounts/{account_id}/hold",
        data={"csrf_token": token, "hold": "cease_communication", "note": "letter of 11/20"},
    )

    assert resp.status_code == 303
    db.rollback()
    assert db.get(Account, account_id).hold == "cease_communication"
    assert audit_actions(db, "account", account_id) == ["account.hold_set"]
    event = db.scalar(select(AuditEvent).where(AuditEvent.action == "account.hold_set"))
    assert event.actor_type == "agent"
    assert event.data["note"] == "letter of 11/20"
    db.rollback()
    page = as_agent.get(resp.headers["Location"]).get_data(as_text=True)
    assert "On hold: Cease contact." in page
    assert "Only a supervisor can release a hold." in page
    assert "Put on hold" in page  # in the timeline
    assert "letter of 11/20" in page


def test_a_hold_needs_a_known_reason(db, as_agent, account_id):
    token = token_on(as_agent, f"/console/accounts/{account_id}")

    for value in ("", "vacation"):
        resp = as_agent.post(
            f"/console/accounts/{account_id}/hold",
            data={"csrf_token": token, "hold": value, "note": "kept text"},
        )
        assert resp.status_code == 400
        page = resp.get_data(as_text=True)
        assert 'aria-invalid="true"' not in page or "hold" in page
        assert "Choose why the account is on hold." in page or "Not a valid choice" in page
        assert "kept text" in page  # what was typed stays
    db.rollback()
    assert db.get(Account, account_id).hold is None
    assert audit_actions(db, "account", account_id) == []


def test_a_hold_post_without_csrf_is_refused(db, as_agent, account_id):
    resp = as_agent.post(f"/console/accounts/{account_id}/hold", data={"hold": "dispute"})

    assert resp.status_code == 400
    db.rollback()
    assert db.get(Account, account_id).hold is None


def test_an_agent_cannot_release_a_hold(app, db, as_agent):
    account_id = make_account(app, hold="dispute")
    token = token_on(as_agent, f"/console/accounts/{account_id}")

    resp = as_agent.post(
        f"/console/accounts/{account_id}/hold/release",
        data={"csrf_token": token, "note": "resolved", "confirm": "y"},
    )

    assert resp.status_code == 403
    db.rollback()
    assert db.get(Account, account_id).hold == "dispute"


def test_a_supervisor_releases_a_hold_after_confirming(app, db, as_supervisor):
    account_id = make_account(app, hold="dispute")
    path = f"/console/accounts/{account_id}"
    token = token_on(as_supervisor, path)

    unconfirmed = as_supervisor.post(
        f"{path}/hold/release", data={"csrf_token": token, "note": "dispute resolved"}
    )
    assert unconfirmed.status_code == 400
    assert "Tick the box to confirm." in unconfirmed.get_data(as_text=True)
    assert "dispute resolved" in unconfirmed.get_data(as_text=True)
    db.rollback()
    assert db.get(Account, account_id).hold == "dispute"
    db.rollback()

    resp = as_supervisor.post(
        f"{path}/hold/release",
        data={"csrf_token": token, "note": "dispute resolved", "confirm": "y"},
    )
    assert resp.status_code == 303
    db.rollback()
    assert db.get(Account, account_id).hold is None
    assert audit_actions(db, "account", account_id) == ["account.hold_released"]


def test_navigation_follows_the_role(client, make_agent):
    def nav(role: str) -> str:
        who = make_agent(role)
        login(client, who.email, who.password)
        page = client.get("/console/").get_data(as_text=True)
        client.post("/console/logout", data={"csrf_token": CSRF.search(page).group(1)})
        return page[page.index('aria-label="Console"') : page.index("</nav>")]

    agent_nav, supervisor_nav, admin_nav = nav("agent"), nav("supervisor"), nav("admin")
    assert 'href="/console/" aria-current="page">Accounts' in agent_nav
    for label in ("Settings", "Agents &amp; keys", "Operations"):
        assert label not in agent_nav
    assert "Settings" in supervisor_nav
    assert "Agents &amp; keys" not in supervisor_nav
    assert "Agents &amp; keys" in admin_nav
    assert "Operations" in admin_nav


def test_navigation_lists_only_registered_pages(app, client, admin):
    # The other console pages are someone else's blueprints: without them, no entry.
    for endpoint in ("console_admin.ops", "dashboard.index"):
        app.view_functions.pop(endpoint, None)
    login(client, admin.email, admin.password)

    page = client.get("/console/").get_data(as_text=True)

    assert ">Operations<" not in page
    assert ">Dashboard<" not in page
    assert ">Accounts<" in page


def test_sign_out_is_audited(db, client, agent):
    login(client, agent.email, agent.password)
    token = token_on(client, "/console/")

    resp = client.post("/console/logout", data={"csrf_token": token})

    assert resp.status_code == 302
    assert audit_actions(db, "agent", agent.id)[-2:] == ["agent.logged_in", "agent.logged_out"]


def test_console_assets_are_served_for_the_csp(client):
    css = client.get("/console/assets/console.css")
    js = client.get("/console/assets/console.js")

    assert css.status_code == 200
    assert css.mimetype == "text/css"
    assert js.status_code == 200
    assert js.mimetype == "text/javascript"
    assert "offer-preview" in js.get_data(as_text=True)
    assert client.get("/console/assets/other.js").status_code == 404
