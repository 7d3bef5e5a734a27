"""What a payment link's URL answers in each state: tokens that do not verify (404, the
same page whatever the reason), rotated keys, expired and revoked links (410 with the
creditor's contact), used links (the receipt), the first open, GETs that change nothing,
headers, and the flow state bound to its link."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from app import audit, create_app
from app.db import Base
from app.models import Account, AuditEvent
from links import service
from links.models import PaymentLink
from links.tokens import OFFER, PAYMENT_LINK, UrlTokens
from tests.links.test_flow import (
    APPROVED,
    CSRF,
    Customer,
    check_page,
    configure,
    make_account,
    make_link,
    path_of,
    payments_of,
    read,
    reload,
    text,
)
from workers.runtime import set_job_app

NEW_KEY = "rotation-new-key-0123456789abcdef0123"
OLD_KEY = "rotation-old-key-0123456789abcdef0123"
RETIRED_KEY = "rotation-retired-key-0123456789abcdef"


def revoke(db, link: PaymentLink) -> None:
    row = db.get(PaymentLink, link.id)
    service.revoke_link(db, row, audit.Actor.system("test"), datetime.now(UTC))
    db.commit()


def assert_private(resp) -> None:
    headers = resp.headers
    assert headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"
    csp = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "script-src 'self'" in csp


# --- tokens that do not verify --------------------------------------------------------------


def test_tokens_that_do_not_verify_get_the_same_404(app, db, client, account):
    token, _link = make_link(app, db, account)
    ident, mac = token.split(".")
    unknown, _ = UrlTokens(app.extensions["paylink.config"].secret_keys, PAYMENT_LINK).mint()
    other_purpose = UrlTokens(app.extensions["paylink.config"].secret_keys, OFFER).token_for(ident)
    flipped = "A" if mac[-1] != "A" else "B"
    bad = {
        "tampered mac": f"{ident}.{mac[:-1]}{flipped}",
        "tampered id": f"{'A' if ident[0] != 'A' else 'B'}{ident[1:]}.{mac}",
        "truncated": token[:-1],
        "truncated to the id": ident,
        "extended": token + "A",
        "unknown id, genuine signature": unknown,
        "signed for offers": other_purpose,
        "garbage": "not-a-token",
        "very long": "A" * 5000,
        "non-ascii": "%C3%A9" * 10,
    }
    pages = set()
    for reason, value in bad.items():
        resp = client.get(f"/p/{value}")
        assert resp.status_code == 404, reason
        assert_private(resp)
        page = text(resp)
        check_page(page)
        assert "We can't find this payment link" in page
        assert "Maria" not in page
        pages.add(page)
        later = client.get(f"/p/{value}/review")
        assert later.status_code == 404, reason
    # Whatever the reason, the same page: nothing tells an account exists.
    assert len(pages) == 1
    # The genuine token works.
    assert client.get(f"/p/{token}").status_code == 200


def test_post_to_a_bad_token_is_404_with_a_valid_form(app, db, client, account):
    token, _link = make_link(app, db, account)
    good = Customer(client, token)
    csrf = CSRF.search(text(good.get())).group(1)
    resp = client.post(f"/p/{token[:-1]}X", data={"csrf_token": csrf})
    assert resp.status_code == 404


@pytest.fixture
def rotated(app_config: dict[str, Any]) -> Iterator[Flask]:
    """The app after a key rotation: PAYLINK_SECRET_KEYS="new,old"."""
    application = create_app({**app_config, "secret_keys": (NEW_KEY, OLD_KEY)})
    set_job_app(application)
    yield application
    set_job_app(None)
    application.extensions["paylink.queue"].close()
    application.extensions["paylink.db"].dispose()


def test_tokens_survive_key_rotation_until_the_key_is_retired(rotated):
    session = rotated.extensions["paylink.db"].Session()
    try:
        account = make_account(session)
        minted_new, _ = make_link(rotated, session, account, keys=(NEW_KEY,))
        minted_old, _ = make_link(rotated, session, account, keys=(OLD_KEY,))
        minted_retired, _ = make_link(rotated, session, account, keys=(RETIRED_KEY,))
    finally:
        session.close()
    client = rotated.test_client()
    assert client.get(f"/p/{minted_new}").status_code == 200
    old = client.get(f"/p/{minted_old}")
    assert old.status_code == 200
    assert "Hi Maria," in text(old)
    # The whole flow works on a link minted under the older key.
    c = Customer(client, minted_old)
    c.to_review()
    assert path_of(c.confirm()) == c.url()
    assert client.get(f"/p/{minted_retired}").status_code == 404


# --- expired, revoked, used ------------------------------------------------------------------


def test_expired_link_is_410_with_the_creditors_contact(app, db, client, account):
    configure(db, creditor_name="Acme Recovery", creditor_hours="Mon-Fri 8am-6pm ET")
    token, link = make_link(app, db, account, expires_in=timedelta(seconds=-1))
    resp = client.get(f"/p/{token}")
    assert resp.status_code == 410
    assert_private(resp)
    page = text(resp)
    check_page(page)
    assert "This payment link has expired" in page
    assert "Acme Recovery" in page
    assert "(800) 555-0100" in page
    assert 'href="tel:+18005550100"' in page
    assert "billing@example.com" in page
    assert "Mon-Fri 8am-6pm ET" in page
    assert "Maria" not in page
    assert "$150.00" not in page
    assert client.get(f"/p/{token}/amount").status_code == 410
    # A GET changes nothing: not even the first open.
    row = reload(db, link)
    assert row.opened_at is None


def test_revoked_link_is_410(app, db, client, account):
    token, link = make_link(app, db, account)
    revoke(db, link)
    resp = client.get(f"/p/{token}")
    assert resp.status_code == 410
    page = text(resp)
    check_page(page)
    assert "This payment link is no longer active" in page
    assert "Paylink Demo Creditor" in page


def test_used_link_shows_its_receipt(app, db, client, account):
    token, link = make_link(app, db, account)
    c = Customer(client, token)
    c.to_review()
    c.confirm()
    (payment,) = payments_of(db, link)
    # Bookmarked and opened later, in another browser.
    other = Customer(app.test_client(), token)
    receipt = other.get()
    assert receipt.status_code == 200
    assert_private(receipt)
    assert payment.receipt_number in text(receipt)
    for step in ("/verify", "/offer", "/amount", "/method", "/schedule", "/review"):
        assert path_of(other.get(step)) == other.url(), step
    assert path_of(other.post("/amount", {"amount": "5"}, page="")) == other.url()
    assert len(payments_of(db, link)) == 1


def test_revoked_mid_flow_is_410_on_the_next_step(app, db, client, account):
    token, link = make_link(app, db, account)
    c = Customer(client, token)
    c.to_review()
    form = c.review_form()
    revoke(db, link)
    assert c.get("/review").status_code == 410
    confirm = c.confirm(form)
    assert confirm.status_code == 410
    assert "no longer active" in text(confirm)
    assert not payments_of(db, link)


def test_expired_mid_flow_is_410_on_the_next_step(app, db, client, account, time_machine):
    start = datetime.now(UTC)
    time_machine.move_to(start, tick=False)
    token, _link = make_link(app, db, account, expires_in=timedelta(minutes=30))
    c = Customer(client, token)
    c.to_amount()
    csrf = CSRF.search(text(c.get("/amount"))).group(1)
    time_machine.move_to(start + timedelta(minutes=31), tick=False)
    resp = c.post("/amount", {"amount": "10", "csrf_token": csrf}, csrf=False)
    assert resp.status_code == 410
    assert "has expired" in text(resp)


# --- first open, and GETs that change nothing ----------------------------------------------


def test_first_open_is_recorded_once(app, db, client, account, time_machine):
    first = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    time_machine.move_to(first, tick=False)
    token, link = make_link(app, db, account)
    assert client.get(f"/p/{token}").status_code == 200
    assert reload(db, link).opened_at == first
    time_machine.move_to(first + timedelta(hours=2), tick=False)
    assert client.get(f"/p/{token}").status_code == 200
    assert app.test_client().get(f"/p/{token}").status_code == 200
    assert reload(db, link).opened_at == first
    opened = read(db, select(AuditEvent).where(AuditEvent.action == "link.opened"))
    assert len(opened) == 1


def snapshot(db) -> dict[str, list[tuple[Any, ...]]]:
    db.rollback()
    tables = {
        table.name: sorted(map(tuple, db.execute(table.select()).all()), key=repr)
        for table in Base.metadata.sorted_tables
    }
    db.rollback()
    return tables


def test_gets_change_nothing(app, db, client, account):
    token, _link = make_link(app, db, account)
    c = Customer(client, token)
    c.to_review()
    before = snapshot(db)
    for path in ("", "/verify", "/offer", "/amount", "/method", "/method?kind=bank",
                 "/schedule", "/review", "/review", "/print"):  # fmt: skip
        assert c.get(path).status_code in (200, 302), path
    assert snapshot(db) == before


# --- headers and the session -----------------------------------------------------------------


def test_every_page_sends_the_private_headers(app, db, client, account):
    token, _link = make_link(app, db, account)
    c = Customer(client, token)
    responses = [c.get(), c.start(), c.get("/verify"), c.get("/amount"), c.post("", {}, csrf=False)]
    for _ in range(5):
        responses.append(c.verify("0000"))
    responses.append(c.get("/verify"))  # locked: 429
    responses.append(client.get("/p/nope"))
    assert {r.status_code for r in responses} >= {200, 302, 400, 404, 429}
    gone_token, gone = make_link(app, db, account)
    revoke(db, gone)
    responses.append(client.get(f"/p/{gone_token}"))
    assert responses[-1].status_code == 410
    for resp in responses:
        assert_private(resp)


def test_flow_state_is_bound_to_its_link(app, db, client, account):
    token_a, link_a = make_link(app, db, account)
    token_b, link_b = make_link(app, db, account)
    a, b = Customer(client, token_a), Customer(client, token_b)
    a.to_review()
    form_a = a.review_form()
    # Same browser, same session cookie: link B starts from its beginning.
    assert path_of(b.post("/amount", {"amount": "10"}, page="")) == b.url()
    assert path_of(b.get("/review")) == b.url()
    assert path_of(b.get("/method")) == b.url()
    assert path_of(b.confirm(form_a)) == b.url()
    assert not payments_of(db, link_b)
    # A's progress is untouched by B.
    assert path_of(a.confirm(form_a)) == a.url()
    assert len(payments_of(db, link_a)) == 1


def test_the_session_holds_no_card_details(app, db, client, account):
    token, link = make_link(app, db, account)
    c = Customer(client, token)
    c.to_review()
    with client.session_transaction() as flask_session:
        stored = repr(dict(flask_session))
        state = flask_session["pay"][link.token_id]
    assert APPROVED.replace(" ", "") not in stored
    # Ids, amounts and choices only: the method is a row id, the rest never got here.
    assert set(state) == {"link_id", "reviewed", "verified", "offer", "amount_cents",
                          "method_id", "when", "schedule", "nonce", "notice"}  # fmt: skip
    assert isinstance(state["method_id"], int)
    assert state["amount_cents"] == 12550
    assert "123" not in [str(value) for value in state.values()]


def test_link_opens_are_limited_per_address(app, db, client, account):
    token, _link = make_link(app, db, account)
    env = {"REMOTE_ADDR": "203.0.113.50"}
    for _ in range(120):
        assert client.get(f"/p/{token}", environ_base=env).status_code == 200
    assert app.extensions["paylink.hit_counter"].flush()  # counted behind the requests
    limited = client.get(f"/p/{token}", environ_base=env)
    assert limited.status_code == 429
    assert_private(limited)
    check_page(text(limited))
    assert (
        client.get(f"/p/{token}", environ_base={"REMOTE_ADDR": "203.0.113.51"}).status_code == 200
    )


# --- what is due -------------------------------------------------------------------------------


def test_nothing_to_pay_when_the_balance_is_gone(app, db, client):
    account = make_account(db, balance_cents=5000)
    token, link = make_link(app, db, account)
    account = db.get(Account, account.id)
    account.balance_cents = 0
    db.commit()
    c = Customer(client, token)
    page = c.get()
    assert page.status_code == 200
    assert "There is nothing to pay" in text(page)
    assert c.get("/amount").status_code == 200
    assert "nothing to pay" in text(c.get("/amount"))
    assert not payments_of(db, link)


def test_balance_paid_down_mid_flow_caps_the_amount(app, db, client):
    account = make_account(db, balance_cents=15000)
    token, _link = make_link(app, db, account)
    c = Customer(client, token)
    c.to_review(amount="150.00")
    row = db.get(Account, account.id)
    row.balance_cents = 10000  # paid another way meanwhile
    db.commit()
    assert path_of(c.get("/review")) == c.url("/amount")
    assert "The most you can pay on this link is $100.00." in text(c.amount("150.00"))
    assert path_of(c.amount("100")) in (c.url("/schedule"), c.url("/review"))
