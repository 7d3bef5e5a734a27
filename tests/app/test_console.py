"""The agents' console: sign in and out, sessions, CSRF, the login rate limit, accounts."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode, urlsplit

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select

from app.models import Account, Agent, ConsoleSession
from workers.console import drop_old_sessions

LOGIN = "/console/login"
CSRF = re.compile(r'name="csrf_token"[^>]*?value="([^"]+)"')


def csrf_token(client: FlaskClient, path: str = LOGIN) -> str:
    page = client.get(path)
    match = CSRF.search(page.get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login(
    client: FlaskClient, email: str, password: str, *, query: str = "", ip: str = "127.0.0.1"
):
    token = csrf_token(client)
    return client.post(
        LOGIN + query,
        data={"email": email, "password": password, "csrf_token": token},
        environ_base={"REMOTE_ADDR": ip},
    )


def session_cookie(resp) -> str:
    cookies = [c for c in resp.headers.getlist("Set-Cookie") if c.startswith("paylink_session=")]
    assert len(cookies) == 1, resp.headers.getlist("Set-Cookie")
    return cookies[0]


def signed_in(client: FlaskClient) -> bool:
    resp = client.get("/console/")
    if resp.status_code == 200:
        return True
    assert resp.status_code == 302
    assert urlsplit(resp.headers["Location"]).path == LOGIN
    return False


def test_console_redirects_to_login_when_signed_out(client):
    resp = client.get("/console/?q=Ann")

    assert resp.status_code == 302
    location = urlsplit(resp.headers["Location"])
    assert location.path == LOGIN
    assert "next=" in location.query


def test_start_page_leads_to_the_console(client):
    resp = client.get("/")

    assert resp.status_code == 302
    assert urlsplit(resp.headers["Location"]).path == "/console/"


def test_login_page_has_labelled_fields_and_a_csrf_token(client):
    page = client.get(LOGIN).get_data(as_text=True)

    assert '<label for="email">Email</label>' in page
    assert '<label for="password">Password</label>' in page
    assert CSRF.search(page)


def test_login_sets_a_secure_httponly_lax_session_cookie(client, agent):
    resp = login(client, agent.email, agent.password)

    assert resp.status_code == 302
    assert urlsplit(resp.headers["Location"]).path == "/console/"
    cookie = session_cookie(resp)
    attributes = [part.strip().lower() for part in cookie.split(";")[1:]]
    assert "secure" in attributes
    assert "httponly" in attributes
    assert "samesite=lax" in attributes
    assert signed_in(client)


def test_login_email_is_case_insensitive(client, agent):
    resp = login(client, f"  {agent.email.upper()} ", agent.password)

    assert resp.status_code == 302
    assert signed_in(client)


def test_login_follows_a_local_next(client, agent):
    resp = login(client, agent.email, agent.password, query="?next=/console/%3Fq%3DAnn")

    assert resp.headers["Location"] == "/console/?q=Ann"


@pytest.mark.parametrize("password", ["wrong password", "correct horse batter", ""])
def test_wrong_password_is_400_with_a_message_and_no_session(client, agent, password):
    resp = login(client, agent.email, password)

    assert resp.status_code == 400
    assert resp.mimetype == "text/html"
    page = resp.get_data(as_text=True)
    assert "do not match" in page or "This field is required" in page
    with client.session_transaction() as sess:
        assert "agent_id" not in sess
    assert not signed_in(client)


def test_an_email_with_a_nul_is_just_a_wrong_login(client, agent):
    resp = login(client, agent.email + "\x00", agent.password)

    assert resp.status_code == 400
    assert not signed_in(client)


def test_unknown_email_gets_the_same_answer_as_a_wrong_password(client, agent):
    wrong_password = login(client, agent.email, "wrong password")
    unknown_email = login(client, "nobody@paylink.test", "wrong password")

    assert unknown_email.status_code == wrong_password.status_code == 400
    assert "do not match" in unknown_email.get_data(as_text=True)


def test_login_without_csrf_token_is_400(client, agent):
    client.get(LOGIN)  # a session exists, only the token is missing

    resp = client.post(LOGIN, data={"email": agent.email, "password": agent.password})

    assert resp.status_code == 400
    assert resp.mimetype == "text/html"
    assert "CSRF" in resp.get_data(as_text=True)
    assert not signed_in(client)


def test_login_with_a_forged_csrf_token_is_400(client, agent):
    client.get(LOGIN)

    resp = client.post(
        LOGIN, data={"email": agent.email, "password": agent.password, "csrf_token": "forged"}
    )

    assert resp.status_code == 400
    assert not signed_in(client)


def test_login_records_last_login(client, agent):
    login(client, agent.email, agent.password)

    with client.application.extensions["paylink.db"].Session() as s:
        assert s.get(Agent, agent.id).last_login_at is not None


def test_a_deactivated_agent_cannot_sign_in(client, agent, admin):
    client.post(f"/api/v1/agents/{agent.id}/deactivate", headers=admin.headers)

    resp = login(client, agent.email, agent.password)

    assert resp.status_code == 400
    assert not signed_in(client)


def test_deactivating_an_agent_ends_their_session(client, agent, admin, app):
    login(client, agent.email, agent.password)
    assert signed_in(client)

    app.test_client().post(f"/api/v1/agents/{agent.id}/deactivate", headers=admin.headers)

    assert not signed_in(client)


def test_a_session_ends_after_eight_hours(client, agent, time_machine):
    start = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    time_machine.move_to(start, tick=False)
    login(client, agent.email, agent.password)

    time_machine.move_to(start + timedelta(hours=7, minutes=59), tick=False)
    assert signed_in(client)
    # Each request re-signs the cookie, so the eight hours count from the last one.
    time_machine.move_to(start + timedelta(hours=15, minutes=50), tick=False)
    assert signed_in(client)
    time_machine.move_to(start + timedelta(hours=24), tick=False)
    assert not signed_in(client)


def test_logout_needs_a_post_with_csrf_and_ends_the_session(client, agent):
    login(client, agent.email, agent.password)

    assert client.get("/console/logout").status_code == 405
    assert client.post("/console/logout").status_code == 400
    assert signed_in(client)

    token = csrf_token(client, "/console/")
    resp = client.post("/console/logout", data={"csrf_token": token})

    assert resp.status_code == 302
    assert urlsplit(resp.headers["Location"]).path == LOGIN
    assert not signed_in(client)
    with client.session_transaction() as sess:
        assert "agent_id" not in sess


def test_a_copy_of_the_cookie_is_dead_once_its_session_signs_out(app, client, agent):
    login(client, agent.email, agent.password)
    stolen = app.test_client()
    stolen.set_cookie("paylink_session", client.get_cookie("paylink_session").value)
    assert signed_in(stolen)

    client.post("/console/logout", data={"csrf_token": csrf_token(client, "/console/")})

    assert not signed_in(client)
    assert not signed_in(stolen)  # the cookie still verifies; its session is over


def test_sessions_long_over_are_deleted(app, db, client, agent, time_machine):
    start = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    time_machine.move_to(start, tick=False)
    login(client, agent.email, agent.password)
    client.post("/console/logout", data={"csrf_token": csrf_token(client, "/console/")})
    login(app.test_client(), agent.email, agent.password)  # left to expire
    with app.app_context():
        assert drop_old_sessions(start + timedelta(days=20)) == {"dropped": 0}
        assert drop_old_sessions(start + timedelta(days=31)) == {"dropped": 2}
    assert db.scalar(select(func.count()).select_from(ConsoleSession)) == 0


def test_each_sign_in_is_a_session_of_its_own(app, client, agent):
    login(client, agent.email, agent.password)
    laptop = app.test_client()
    login(laptop, agent.email, agent.password)

    client.post("/console/logout", data={"csrf_token": csrf_token(client, "/console/")})

    assert not signed_in(client)
    assert signed_in(laptop)


@pytest.mark.parametrize(
    "target",
    [
        "//evil.example",
        "//evil.example/console/",
        "https://evil.example/",
        "/\\evil.example",
        "\\\\evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        " //evil.example",
        "javascript:alert(1)",
    ],
)
def test_open_redirect_via_next_is_refused(client, agent, target):
    resp = login(client, agent.email, agent.password, query="?" + _query(next=target))

    assert resp.status_code == 302
    _assert_local(resp.headers["Location"])
    # Signed in already: GET /console/login?next=... must not be an open redirect either.
    again = client.get(LOGIN + "?" + _query(next=target))
    assert again.status_code == 302
    _assert_local(again.headers["Location"])


def _query(**params: str) -> str:
    return urlencode(params)


def _assert_local(location: str) -> None:
    # Browsers drop tabs and newlines and read a backslash as a slash before resolving.
    seen_by_browser = re.sub(r"[\t\n\r]", "", location).replace("\\", "/").strip()
    assert not seen_by_browser.startswith("//"), location
    parts = urlsplit(seen_by_browser)
    assert parts.scheme == "", location
    assert parts.netloc == "", location
    assert seen_by_browser.startswith("/"), location


# --- the login rate limit -----------------------------------------------------------------


def test_login_rate_limit_answers_429_after_ten_posts_from_one_ip(client, agent, time_machine):
    start = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    time_machine.move_to(start, tick=False)

    # Ten tries, each with another email so that only the per-IP limit counts.
    for n in range(10):
        assert login(client, f"guess{n}@paylink.test", "wrong password").status_code == 400

    blocked = login(client, agent.email, agent.password)
    assert blocked.status_code == 429
    assert "Retry-After" in blocked.headers
    assert not signed_in(client)
    # Another address is not held back by this one's tries.
    elsewhere = client.application.test_client()
    assert login(elsewhere, agent.email, agent.password, ip="10.0.0.2").status_code == 302

    # The limiter keeps its window by this process's clock, so moving time resets it.
    time_machine.move_to(start + timedelta(seconds=59), tick=False)
    assert login(client, agent.email, agent.password).status_code == 429
    time_machine.move_to(start + timedelta(seconds=61), tick=False)
    assert login(client, agent.email, agent.password).status_code == 302


def test_login_rate_limit_also_counts_per_email(client, agent, time_machine):
    time_machine.move_to(datetime.now(UTC) + timedelta(days=1), tick=False)

    for n in range(10):
        resp = login(client, agent.email, "wrong password", ip=f"10.0.1.{n}")
        assert resp.status_code == 400

    assert login(client, agent.email, agent.password, ip="10.0.2.1").status_code == 429
    assert login(client, "other@paylink.test", "wrong password", ip="10.0.2.1").status_code == 400


def test_the_login_page_itself_is_not_limited(client):
    for _ in range(12):
        assert client.get(LOGIN).status_code == 200


# --- the accounts page --------------------------------------------------------------------


def add_accounts(app, *rows: tuple[str, str, str | None]) -> None:
    with app.extensions["paylink.db"].transaction() as s:
        for external_id, name, email in rows:
            s.add(Account(external_id=external_id, name=name, email=email, balance_cents=12_345))


@pytest.fixture
def signed_in_client(client, agent, app):
    add_accounts(
        app,
        ("ACC-1001", "Ann Lee", "ann@example.com"),
        ("ACC-1002", "Bob Stone", None),
        ("ACC-2001", "Anna_Maria Diaz", None),
    )
    assert login(client, agent.email, agent.password).status_code == 302
    return client


def names_on(resp) -> list[str]:
    page = resp.get_data(as_text=True)
    return [n for n in ("Ann Lee", "Bob Stone", "Anna_Maria Diaz") if n in page]


def test_accounts_page_lists_accounts(signed_in_client, agent):
    resp = signed_in_client.get("/console/")

    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    assert names_on(resp) == ["Ann Lee", "Bob Stone", "Anna_Maria Diaz"]
    assert "ACC-1001" in page
    assert "$123.45" in page
    assert "3 accounts" in page
    assert agent.email in page  # who is signed in
    assert CSRF.search(page)  # the sign-out form carries a token


def test_accounts_page_searches_by_name(signed_in_client):
    assert names_on(signed_in_client.get("/console/?q=ann")) == ["Ann Lee", "Anna_Maria Diaz"]
    assert names_on(signed_in_client.get("/console/?q=STONE")) == ["Bob Stone"]


def test_accounts_page_searches_by_external_id_and_email(signed_in_client):
    assert names_on(signed_in_client.get("/console/?q=ACC-1002")) == ["Bob Stone"]
    assert names_on(signed_in_client.get("/console/?q=ANN@example.com")) == ["Ann Lee"]


def test_accounts_page_searches_by_phone_as_typed_or_stored(signed_in_client, app):
    with app.extensions["paylink.db"].transaction() as s:
        bob = s.scalar(select(Account).where(Account.external_id == "ACC-1002"))
        bob.phone = "+12025550143"
    for typed in ("+12025550143", "(202) 555-0143", "202-555-0143", "0143"):
        assert names_on(signed_in_client.get("/console/", query_string={"q": typed})) == [
            "Bob Stone"
        ], typed
    assert names_on(signed_in_client.get("/console/?q=555-9999")) == []


def test_accounts_search_treats_wildcards_as_text(signed_in_client):
    assert names_on(signed_in_client.get("/console/?q=_")) == ["Anna_Maria Diaz"]
    assert names_on(signed_in_client.get("/console/?q=%25")) == []


def test_accounts_search_ignores_control_characters(signed_in_client):
    resp = signed_in_client.get("/console/?q=Bob%00")

    assert resp.status_code == 200
    assert names_on(resp) == ["Bob Stone"]


def test_accounts_search_without_match_says_so(signed_in_client):
    resp = signed_in_client.get("/console/?q=Zed")

    assert names_on(resp) == []
    assert "0 accounts" in resp.get_data(as_text=True)


def test_accounts_page_escapes_what_it_shows(client, agent, app):
    add_accounts(app, ("X-1", "<script>alert(1)</script>", None))
    login(client, agent.email, agent.password)

    page = client.get("/console/").get_data(as_text=True)

    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page


def test_accounts_page_pages(client, agent, app):
    add_accounts(app, *[(f"P-{n:03d}", f"Person {n:03d}", None) for n in range(30)])
    login(client, agent.email, agent.password)

    first = client.get("/console/").get_data(as_text=True)
    second = client.get("/console/?page=2").get_data(as_text=True)

    assert "Person 000" in first
    assert "Person 024" in first
    assert "Person 025" not in first
    assert "Person 025" in second
    assert "Page 2 of 2" in second


@pytest.mark.parametrize("page", ["0", "-3", "abc", "3", str(10**30)])
def test_accounts_page_survives_any_page_number(client, agent, app, page):
    add_accounts(app, ("X-1", "Ann Lee", None))
    login(client, agent.email, agent.password)

    resp = client.get(f"/console/?page={page}")

    assert resp.status_code == 200
