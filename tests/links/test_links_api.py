"""The links API (/api/v1/links): create, read, revoke and resend, with messages through the
outbox and a real worker delivering them."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from app import audit
from app.clock import isoformat
from app.models import Account, AuditEvent, Message
from app.payments import build_gateway
from app.payments import service as payments
from app.payments.models import Payment
from links import service
from links.models import PaymentLink
from links.tokens import PAYMENT_LINK, UrlTokens
from tests.conftest import TEST_SECRET_KEYS
from tests.helpers import drain

PROBLEM_JSON = "application/problem+json"
BASE = "https://pay.example.test"
# 15:00 UTC is 10:00 in New York: inside the default 08:00-21:00 sending window.
NOON_NY = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
PHONE = "+12025550143"
EMAIL = "lee.park@example.com"


@pytest.fixture(autouse=True)
def _at_noon(time_machine):
    time_machine.move_to(NOON_NY, tick=False)


def make_account(app, **values: Any) -> int:
    now = datetime.now(UTC)
    defaults: dict[str, Any] = {
        "external_id": "L-1", "name": "Lee Park", "phone": PHONE, "email": EMAIL,
        "timezone": "America/New_York", "balance_cents": 9000,
    }  # fmt: skip
    with app.extensions["paylink.db"].transaction() as session:
        account = Account(**{**defaults, **values}, created_at=now, updated_at=now)
        session.add(account)
        session.flush()
        return account.id


def create(client, who, **body: Any):
    return client.post("/api/v1/links", json=body, headers=who.headers)


def new_link(client, who, account_id: int, **body: Any) -> dict[str, Any]:
    resp = create(client, who, account_id=account_id, **body)
    assert resp.status_code == 201, resp.json
    return resp.json


def get(client, who, link_id: int):
    return client.get(f"/api/v1/links/{link_id}", headers=who.headers)


def messages_of(app, account_id: int) -> list[Message]:
    with app.extensions["paylink.db"].transaction() as session:
        return list(
            session.scalars(
                select(Message).where(Message.account_id == account_id).order_by(Message.id)
            )
        )


def set_link(app, link_id: int, **values: Any) -> None:
    with app.extensions["paylink.db"].transaction() as session:
        link = session.get(PaymentLink, link_id)
        for name, value in values.items():
            setattr(link, name, value)


def errors_of(resp) -> dict[str, list[str]]:
    assert resp.status_code == 422, resp.json
    assert resp.mimetype == PROBLEM_JSON
    assert resp.json["status"] == 422
    return resp.json["errors"]


# --- create -------------------------------------------------------------------------------


def test_create_defaults_to_the_balance_every_channel_and_the_settings_lifetime(app, client, agent):
    account_id = make_account(app)

    resp = create(client, agent, account_id=account_id)

    assert resp.status_code == 201, resp.json
    link = resp.json
    assert resp.headers["Location"] == f"/api/v1/links/{link['id']}"
    assert link["account_id"] == account_id
    assert link["amount_cents"] == 9000
    assert link["status"] == "active"
    assert link["opened_at"] is None
    assert link["payments"] == []
    assert link["expires_at"] == isoformat(NOON_NY + timedelta(hours=168))
    assert link["expires_at"].endswith("Z")
    # An absolute URL on PAYLINK_BASE_URL with a 39-character token.
    assert link["url"].startswith(f"{BASE}/p/")
    token = link["url"].removeprefix(f"{BASE}/p/")
    assert len(token) == 39
    tokens = UrlTokens(TEST_SECRET_KEYS, PAYMENT_LINK)
    with app.extensions["paylink.db"].transaction() as session:
        row = session.get(PaymentLink, link["id"])
        assert tokens.verify(token) == row.token_id
        assert row.created_by_agent_id == agent.id
    assert [(m["channel"], m["kind"], m["status"]) for m in link["messages"]] == [
        ("sms", "link", "queued"),
        ("email", "link", "queued"),
    ]


def test_the_messages_go_out_through_the_outbox_with_the_link(app, client, agent):
    account_id = make_account(app)
    link = new_link(client, agent, account_id)

    drain(app)

    sent = messages_of(app, account_id)
    assert [(m.id, m.channel, m.status) for m in sent] == [
        (m["id"], m["channel"], "delivered") for m in link["messages"]
    ]
    sms, email = sent
    assert (sms.recipient, email.recipient) == (PHONE, EMAIL)
    assert link["url"] in sms.body
    assert link["url"] in email.body
    assert all(m.provider_id for m in sent)
    got = get(client, agent, link["id"]).json
    assert [m["status"] for m in got["messages"]] == ["delivered", "delivered"]
    listed = client.get(f"/api/v1/messages?account_id={account_id}", headers=agent.headers)
    assert {m["id"] for m in listed.json["items"]} == {m.id for m in sent}


def test_default_channels_skip_missing_addresses_and_opt_outs(app, client, agent):
    phone_only = make_account(app, external_id="L-2", email=None)
    email_opted_out = make_account(app, external_id="L-3", email_opted_out_at=NOON_NY)
    sms_opted_out = make_account(app, external_id="L-4", sms_opted_out_at=NOON_NY)

    assert [m["channel"] for m in new_link(client, agent, phone_only)["messages"]] == ["sms"]
    assert [m["channel"] for m in new_link(client, agent, email_opted_out)["messages"]] == ["sms"]
    assert [m["channel"] for m in new_link(client, agent, sms_opted_out)["messages"]] == ["email"]


def test_explicit_channels_are_used_as_given(app, client, agent):
    account_id = make_account(app)

    link = new_link(client, agent, account_id, channels=["email", "email"])

    assert [m["channel"] for m in link["messages"]] == ["email"]
    assert [m.channel for m in messages_of(app, account_id)] == ["email"]


@pytest.mark.parametrize(
    ("values", "channels", "reason"),
    [
        ({"sms_opted_out_at": NOON_NY}, ["sms"], "sms: opted out"),
        ({"email_opted_out_at": NOON_NY}, ["sms", "email"], "email: opted out"),
        ({"phone": None}, ["sms"], "sms: no address on file"),
        ({"email": None}, ["email"], "email: no address on file"),
    ],
)
def test_an_unusable_explicit_channel_is_422(app, client, agent, values, channels, reason):
    account_id = make_account(app, **values)

    errors = errors_of(create(client, agent, account_id=account_id, channels=channels))

    assert errors == {"channels": [reason]}
    assert messages_of(app, account_id) == []


@pytest.mark.parametrize("channels", [[], ["fax"], "sms", [None], [["sms"]], {"sms": 1}, 1])
def test_malformed_channels_are_422(app, client, agent, channels):
    account_id = make_account(app)

    assert "channels" in errors_of(create(client, agent, account_id=account_id, channels=channels))


def test_an_account_with_no_usable_channel_is_422(app, client, agent):
    account_id = make_account(app, phone=None, email_opted_out_at=NOON_NY)

    errors = errors_of(create(client, agent, account_id=account_id))

    assert errors == {"channels": ["the account has no phone or email that may be used"]}


def test_lifetime_comes_from_the_settings_or_expires_in_hours(app, client, agent, supervisor):
    account_id = make_account(app)
    patched = client.patch(
        "/api/v1/settings", json={"link_lifetime_hours": 48}, headers=supervisor.headers
    )
    assert patched.status_code == 200, patched.json

    from_settings = new_link(client, agent, account_id)
    explicit = new_link(client, agent, account_id, expires_in_hours=2)

    assert from_settings["expires_at"] == isoformat(NOON_NY + timedelta(hours=48))
    assert explicit["expires_at"] == isoformat(NOON_NY + timedelta(hours=2))


@pytest.mark.parametrize("hours", [0, -1, 1.5, "2", True, 24 * 90 + 1, [2]])
def test_a_bad_lifetime_is_422(app, client, agent, hours):
    account_id = make_account(app)

    errors = errors_of(create(client, agent, account_id=account_id, expires_in_hours=hours))

    assert list(errors) == ["expires_in_hours"]


def test_an_amount_below_the_balance_is_kept(app, client, agent):
    account_id = make_account(app)

    link = new_link(client, agent, account_id, amount_cents=2500)

    assert link["amount_cents"] == 2500
    assert "$25.00" in messages_of(app, account_id)[1].body  # the email names the amount


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        (9001, "must not be more than the balance"),
        (0, "must be between 1 and 1000000000000"),
        (-1, "must be between 1 and 1000000000000"),
        (10.5, "must be a whole number"),
        (100.0, "must be a whole number"),
        ("100", "must be a whole number"),
        (True, "must be a whole number"),
    ],
)
def test_a_bad_amount_is_422(app, client, agent, amount, message):
    account_id = make_account(app)

    errors = errors_of(create(client, agent, account_id=account_id, amount_cents=amount))

    assert errors == {"amount_cents": [message]}
    assert messages_of(app, account_id) == []


def test_nothing_to_pay_is_422(app, client, agent):
    account_id = make_account(app, balance_cents=0)

    errors = errors_of(create(client, agent, account_id=account_id))

    assert errors == {"amount_cents": ["the account has no balance to pay"]}


@pytest.mark.parametrize("account_id", [999, 0, -5, 2**70, "1", 1.0, None, True])
def test_an_unknown_or_malformed_account_is_422(app, client, agent, account_id):
    make_account(app)

    errors = errors_of(create(client, agent, account_id=account_id))

    assert list(errors) == ["account_id"]


def test_a_missing_account_id_is_422(client, agent):
    assert list(errors_of(create(client, agent))) == ["account_id"]


def test_an_unknown_field_is_422_and_creates_nothing(app, client, agent):
    account_id = make_account(app)

    errors = errors_of(create(client, agent, account_id=account_id, amount=100, note="x"))

    assert errors == {"amount": ["is not a known field"], "note": ["is not a known field"]}
    with app.extensions["paylink.db"].transaction() as session:
        assert session.scalar(select(func.count()).select_from(PaymentLink)) == 0


def test_a_body_that_is_not_a_json_object_is_refused(app, client, agent):
    make_account(app)

    as_form = client.post("/api/v1/links", data={"account_id": "1"}, headers=agent.headers)
    as_list = client.post("/api/v1/links", json=[1], headers=agent.headers)
    broken = client.post(
        "/api/v1/links",
        data="{",
        headers={**agent.headers, "Content-Type": "application/json"},
    )

    assert (as_form.status_code, as_list.status_code, broken.status_code) == (415, 400, 400)
    assert {r.mimetype for r in (as_form, as_list, broken)} == {PROBLEM_JSON}


# --- authentication -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer pl_not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
    ],
)
def test_every_links_endpoint_needs_a_valid_key(app, client, agent, headers):
    account_id = make_account(app)
    link = new_link(client, agent, account_id)
    calls = [
        client.post("/api/v1/links", json={"account_id": account_id}, headers=headers),
        client.get(f"/api/v1/links/{link['id']}", headers=headers),
        client.post(f"/api/v1/links/{link['id']}/revoke", headers=headers),
        client.post(f"/api/v1/links/{link['id']}/resend", headers=headers),
    ]

    assert [r.status_code for r in calls] == [401] * 4
    assert {r.mimetype for r in calls} == {PROBLEM_JSON}
    assert get(client, agent, link["id"]).json["status"] == "active"


def test_a_revoked_key_or_a_deactivated_agent_is_401(app, client, make_agent):
    from app.models import Agent, ApiKey

    account_id = make_account(app)
    revoked, deactivated = make_agent(), make_agent()
    with app.extensions["paylink.db"].transaction() as session:
        for key in session.scalars(select(ApiKey).where(ApiKey.agent_id == revoked.id)):
            key.revoked_at = NOON_NY
        session.get(Agent, deactivated.id).active = False

    assert create(client, revoked, account_id=account_id).status_code == 401
    assert create(client, deactivated, account_id=account_id).status_code == 401


@pytest.mark.parametrize("role", ["agent", "supervisor", "admin"])
def test_every_role_may_use_links(app, client, make_agent, role):
    # Links are everyday agent work: no role is refused (a 403 comes from other endpoints).
    who = make_agent(role)
    link = new_link(client, who, make_account(app))

    assert get(client, who, link["id"]).status_code == 200
    assert client.post(f"/api/v1/links/{link['id']}/resend", headers=who.headers).status_code == 202
    assert client.post(f"/api/v1/links/{link['id']}/revoke", headers=who.headers).status_code == 200


def test_the_api_rate_limit_covers_the_links_api(app_config, app, agent):
    from app import create_app

    limited = create_app({**app_config, "api_rate_limit": "2 per minute"})
    try:
        client = limited.test_client()
        account_id = make_account(app)
        statuses = [create(client, agent, account_id=account_id).status_code for _ in range(3)]
    finally:
        limited.extensions["paylink.queue"].close()
        limited.extensions["paylink.db"].dispose()

    assert statuses == [201, 201, 429]


# --- read ---------------------------------------------------------------------------------


def test_get_shows_the_link_as_created(app, client, agent):
    account_id = make_account(app)
    link = new_link(client, agent, account_id)

    got = get(client, agent, link["id"])

    assert got.status_code == 200
    body = got.json
    for name in ("id", "url", "status", "expires_at", "account_id", "amount_cents"):
        assert body[name] == link[name]
    assert body["opened_at"] is None
    assert body["payments"] == []
    assert [m["id"] for m in body["messages"]] == [m["id"] for m in link["messages"]]


@pytest.mark.parametrize(
    "link_id", ["999", "0", str(2**31), str(2**63 - 1), str(2**63), str(2**70)]
)
def test_an_unknown_link_is_404(client, agent, link_id):
    resp = client.get(f"/api/v1/links/{link_id}", headers=agent.headers)
    revoke = client.post(f"/api/v1/links/{link_id}/revoke", headers=agent.headers)
    resend = client.post(f"/api/v1/links/{link_id}/resend", headers=agent.headers)

    assert (resp.status_code, revoke.status_code, resend.status_code) == (404, 404, 404)
    assert resp.mimetype == PROBLEM_JSON


def test_an_expired_link_reads_expired_before_any_sweep(app, client, agent, time_machine):
    link = new_link(client, agent, make_account(app), expires_in_hours=1)

    time_machine.move_to(NOON_NY + timedelta(hours=1), tick=False)

    assert get(client, agent, link["id"]).json["status"] == "expired"
    with app.extensions["paylink.db"].transaction() as session:
        assert session.get(PaymentLink, link["id"]).status == "active"  # a GET writes nothing


def test_opened_at_is_the_first_open(app, client, agent, time_machine):
    link = new_link(client, agent, make_account(app))
    for minutes in (5, 9):
        time_machine.move_to(NOON_NY + timedelta(minutes=minutes), tick=False)
        with app.extensions["paylink.db"].transaction() as session:
            service.open_link(session, session.get(PaymentLink, link["id"]), datetime.now(UTC))

    body = get(client, agent, link["id"]).json

    assert body["opened_at"] == isoformat(NOON_NY + timedelta(minutes=5))
    assert body["status"] == "active"


def _pay(app, link_id: int, *, card: str | None = None, bank: str | None = None, **charge):
    """A payment on the link made through the payment service, as the customer flow does."""
    gateway = build_gateway(app.extensions["paylink.config"])
    now = datetime.now(UTC)
    with app.extensions["paylink.db"].transaction() as session:
        link = session.get(PaymentLink, link_id)
        if card:
            method = payments.add_card(
                session, link.account, gateway,
                payments.CardInput("Lee Park", card, "12/30", "123", "20001"), now.date(), now,
            )  # fmt: skip
        else:
            method = payments.add_bank_account(
                session, link.account, gateway,
                payments.BankInput("Lee Park", "110000000", bank or "1234567890", "checking"), now,
            )  # fmt: skip
        payment, _ = payments.begin_charge(
            session, account=link.account, method=method, link_id=link.id, now=now,
            amount_cents=charge.pop("amount_cents", 1000),
            idempotency_key=charge.pop("key", f"test-{link.id}-{now.timestamp()}-{card}-{bank}"),
            **charge,
        )  # fmt: skip
    if payment.status == "processing":
        result = payments.call_gateway(gateway, payment, method, now)
        with app.extensions["paylink.db"].transaction() as session:
            payment = session.get(Payment, payment.id)
            payments.finish_charge(session, payment, result, now)
    return payment.id


def test_get_lists_the_payments_in_the_contract_shape(app, client, agent):
    link = new_link(client, agent, make_account(app))
    paid = _pay(app, link["id"], card="4242 4242 4242 4242", amount_cents=1000, key="k1")
    declined = _pay(app, link["id"], card="4000 0000 0000 0002", amount_cents=2000, key="k2")
    pending = _pay(app, link["id"], bank="1234567890", amount_cents=1500, key="k3")
    scheduled = _pay(
        app, link["id"], card="4242424242424242", amount_cents=500, key="k4",
        scheduled_for=NOON_NY + timedelta(days=3),
    )  # fmt: skip

    body = get(client, agent, link["id"]).json

    rows = {p["id"]: p for p in body["payments"]}
    assert [p["id"] for p in body["payments"]] == [paid, declined, pending, scheduled]
    assert {name for p in body["payments"] for name in p} >= {
        "id", "amount_cents", "status", "method", "created_at", "receipt_number"
    }  # fmt: skip
    assert rows[paid]["status"] == "paid"
    assert rows[paid]["amount_cents"] == 1000
    assert rows[paid]["method"] == {"kind": "card", "brand": "visa", "last4": "4242"}
    assert rows[paid]["created_at"] == isoformat(NOON_NY)
    assert rows[paid]["receipt_number"].startswith("R-20261123-")
    assert rows[declined]["status"] == "declined"
    assert rows[declined]["receipt_number"] is None
    assert rows[pending]["status"] == "pending"  # a bank debit not yet settled
    assert rows[pending]["method"] == {"kind": "bank", "brand": None, "last4": "7890"}
    assert rows[scheduled]["status"] == "pending"  # scheduled: not charged yet
    assert rows[scheduled]["scheduled_for"] == isoformat(NOON_NY + timedelta(days=3))
    # The balance follows the paid and the pending payments.
    with app.extensions["paylink.db"].transaction() as session:
        assert session.get(Account, body["account_id"]).balance_cents == 9000 - 1000 - 1500


def test_a_cancelled_scheduled_payment_reads_cancelled(app, client, agent):
    from app.payments.models import PaymentStatus

    link = new_link(client, agent, make_account(app))
    payment_id = _pay(
        app, link["id"], card="4242424242424242", key="k5",
        scheduled_for=NOON_NY + timedelta(days=3),
    )  # fmt: skip
    with app.extensions["paylink.db"].transaction() as session:
        payments.transition(session.get(Payment, payment_id), PaymentStatus.cancelled, NOON_NY)

    [payment] = get(client, agent, link["id"]).json["payments"]

    assert payment["status"] == "cancelled"


# --- revoke -------------------------------------------------------------------------------


def test_revoke_answers_200_and_the_link_stops_working(app, client, agent, time_machine):
    link = new_link(client, agent, make_account(app))
    assert client.get(link["url"].removeprefix(BASE)).status_code == 200
    time_machine.move_to(NOON_NY + timedelta(minutes=3), tick=False)

    resp = client.post(f"/api/v1/links/{link['id']}/revoke", headers=agent.headers)

    assert resp.status_code == 200, resp.json
    assert resp.json["status"] == "revoked"
    assert resp.json["revoked_at"] == isoformat(NOON_NY + timedelta(minutes=3))
    assert resp.json["url"] == link["url"]
    assert get(client, agent, link["id"]).json["status"] == "revoked"
    token = link["url"].rsplit("/", 1)[1]
    with app.extensions["paylink.db"].transaction() as session:
        found = service.find_link(session, UrlTokens(TEST_SECRET_KEYS, PAYMENT_LINK), token)
        with pytest.raises(service.LinkGone) as gone:
            service.open_link(session, found, datetime.now(UTC))
        assert gone.value.status == "revoked"
        events = session.scalars(
            select(AuditEvent.action).where(
                AuditEvent.object_type == "link", AuditEvent.object_id == str(link["id"])
            )
        ).all()
    assert events == ["link.created", "link.opened", "link.revoked"]
    page = client.get(link["url"].removeprefix(BASE))
    assert page.status_code == 410
    assert page.headers["Cache-Control"] == "no-store"


def test_revoking_twice_answers_200_and_changes_nothing(app, client, agent, time_machine):
    link = new_link(client, agent, make_account(app))
    first = client.post(f"/api/v1/links/{link['id']}/revoke", headers=agent.headers)
    time_machine.move_to(NOON_NY + timedelta(hours=1), tick=False)

    again = client.post(f"/api/v1/links/{link['id']}/revoke", headers=agent.headers)

    assert again.status_code == 200
    assert again.json == first.json
    with app.extensions["paylink.db"].transaction() as session:
        revocations = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "link.revoked")
        )
    assert revocations == 1


def test_revoking_a_used_link_is_409(app, client, agent):
    link = new_link(client, agent, make_account(app))
    set_link(app, link["id"], status="used", used_at=NOON_NY)

    resp = client.post(f"/api/v1/links/{link['id']}/revoke", headers=agent.headers)

    assert resp.status_code == 409
    assert resp.mimetype == PROBLEM_JSON
    assert "used" in resp.json["detail"]
    assert get(client, agent, link["id"]).json["status"] == "used"


def test_revoking_an_expired_link_is_409(app, client, agent, time_machine):
    link = new_link(client, agent, make_account(app), expires_in_hours=1)
    time_machine.move_to(NOON_NY + timedelta(hours=2), tick=False)

    resp = client.post(f"/api/v1/links/{link['id']}/revoke", headers=agent.headers)

    assert resp.status_code == 409
    assert "expired" in resp.json["detail"]
    assert get(client, agent, link["id"]).json["status"] == "expired"
    with app.extensions["paylink.db"].transaction() as session:
        assert session.get(PaymentLink, link["id"]).revoked_at is None


# --- resend -------------------------------------------------------------------------------


def test_resend_answers_202_with_new_messages_that_are_delivered(app, client, agent, time_machine):
    account_id = make_account(app)
    link = new_link(client, agent, account_id)
    time_machine.move_to(NOON_NY + timedelta(minutes=10), tick=False)

    resp = client.post(f"/api/v1/links/{link['id']}/resend", headers=agent.headers)

    assert resp.status_code == 202, resp.json
    assert resp.json["id"] == link["id"]
    first_ids = {m["id"] for m in link["messages"]}
    new = resp.json["messages"]
    assert [(m["channel"], m["kind"], m["status"]) for m in new] == [
        ("sms", "link", "queued"),
        ("email", "link", "queued"),
    ]
    assert not first_ids & {m["id"] for m in new}
    drain(app)
    sent = messages_of(app, account_id)
    assert len(sent) == 4
    assert {m.status for m in sent} == {"delivered"}
    assert all(link["url"] in m.body for m in sent)  # the same link again
    listed = get(client, agent, link["id"]).json["messages"]
    assert [m["id"] for m in listed] == [m.id for m in sent]


def test_resend_to_chosen_channels(app, client, agent):
    link = new_link(client, agent, make_account(app))

    resp = client.post(
        f"/api/v1/links/{link['id']}/resend", json={"channels": ["email"]}, headers=agent.headers
    )

    assert resp.status_code == 202
    assert [m["channel"] for m in resp.json["messages"]] == ["email"]


def test_resend_validates_its_body(app, client, agent):
    link = new_link(client, agent, make_account(app, email_opted_out_at=NOON_NY))
    url = f"/api/v1/links/{link['id']}/resend"

    unknown = client.post(url, json={"channel": "sms"}, headers=agent.headers)
    opted_out = client.post(url, json={"channels": ["email"]}, headers=agent.headers)
    not_object = client.post(url, json=["sms"], headers=agent.headers)

    assert errors_of(unknown) == {"channel": ["is not a known field"]}
    assert errors_of(opted_out) == {"channels": ["email: opted out"]}
    assert not_object.status_code == 400
    assert len(get(client, agent, link["id"]).json["messages"]) == 1


def test_resending_a_revoked_link_is_409(app, client, agent):
    account_id = make_account(app)
    link = new_link(client, agent, account_id)
    client.post(f"/api/v1/links/{link['id']}/revoke", headers=agent.headers)
    url = f"/api/v1/links/{link['id']}/resend"

    plain = client.post(url, headers=agent.headers)
    # Whatever the body asks for, an ended link is a conflict first.
    with_body = client.post(url, json={"channels": ["fax"]}, headers=agent.headers)

    assert (plain.status_code, with_body.status_code) == (409, 409)
    assert "revoked" in plain.json["detail"]
    assert len(messages_of(app, account_id)) == 2


@pytest.mark.parametrize("status", ["used", "expired"])
def test_resending_an_ended_link_is_409(app, client, agent, status):
    link = new_link(client, agent, make_account(app))
    set_link(app, link["id"], status=status)

    assert (
        client.post(f"/api/v1/links/{link['id']}/resend", headers=agent.headers).status_code == 409
    )


def test_resending_a_link_past_its_expiry_is_409(app, client, agent, time_machine):
    link = new_link(client, agent, make_account(app), expires_in_hours=1)
    time_machine.move_to(NOON_NY + timedelta(hours=1, seconds=1), tick=False)

    resp = client.post(f"/api/v1/links/{link['id']}/resend", headers=agent.headers)

    assert resp.status_code == 409
    assert "expired" in resp.json["detail"]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (timedelta(seconds=30, milliseconds=100), timedelta(seconds=30, milliseconds=700)),
        # Across a second boundary: still one double click.
        (timedelta(seconds=30, milliseconds=900), timedelta(seconds=31, milliseconds=300)),
    ],
)
def test_a_double_clicked_resend_sends_once(app, client, agent, time_machine, first, second):
    account_id = make_account(app)
    link = new_link(client, agent, account_id)
    url = f"/api/v1/links/{link['id']}/resend"

    time_machine.move_to(NOON_NY + first, tick=False)
    one = client.post(url, headers=agent.headers)
    time_machine.move_to(NOON_NY + second, tick=False)
    two = client.post(url, headers=agent.headers)

    assert (one.status_code, two.status_code) == (202, 202)
    assert two.json["messages"] == one.json["messages"]
    assert len(messages_of(app, account_id)) == 4
    with app.extensions["paylink.db"].transaction() as session:
        resends = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "link.resent")
        )
    assert resends == 2  # both clicks are on record; one set of messages went out


def test_resends_a_few_seconds_apart_each_send(app, client, agent, time_machine):
    account_id = make_account(app)
    link = new_link(client, agent, account_id)
    url = f"/api/v1/links/{link['id']}/resend"

    sets = []
    for seconds in (10, 12, 14):
        time_machine.move_to(NOON_NY + timedelta(seconds=seconds), tick=False)
        sets.append({m["id"] for m in client.post(url, headers=agent.headers).json["messages"]})

    assert len(set().union(*sets)) == 6
    assert len(messages_of(app, account_id)) == 8


def test_concurrent_resends_send_once(app, agent):
    account_id = make_account(app)
    link = new_link(app.test_client(), agent, account_id)
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def click() -> None:
        client = app.test_client()
        barrier.wait()
        statuses.append(
            client.post(f"/api/v1/links/{link['id']}/resend", headers=agent.headers).status_code
        )

    threads = [threading.Thread(target=click) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert statuses == [202] * 4
    assert len(messages_of(app, account_id)) == 4


# --- the service directly -----------------------------------------------------------------


def test_create_link_refuses_an_amount_over_the_balance(app):
    from app.messaging.outbox import MessageEnv

    account_id = make_account(app)
    env = MessageEnv.from_config(app.extensions["paylink.config"])
    tokens = UrlTokens(TEST_SECRET_KEYS, PAYMENT_LINK)
    with app.extensions["paylink.db"].transaction() as session:
        account = session.get(Account, account_id)
        with pytest.raises(ValueError, match="amount_cents"):
            service.create_link(
                session, account, amount_cents=9001, channels=None, expires_in_hours=None,
                actor=audit.Actor.system("test"), agent_id=None, now=NOON_NY, env=env,
                tokens=tokens,
            )  # fmt: skip


def test_verification_date_reads_iso_dates_only():
    assert service.verification_date(" 1980-02-29 ") == date(1980, 2, 29)
    assert service.verification_date("02/29/1980") is None
