"""The offers API: validation, creation in one transaction, reading, revoking."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import time_machine
from sqlalchemy import func, select

from app.models import Message
from offers.models import Offer, OfferEvent, OfferReminder
from tests.helpers import drain

NOW = datetime(2026, 11, 23, 16, 0, tzinfo=UTC)  # 10:00 in Chicago
TODAY = date(2026, 11, 23)


@pytest.fixture(autouse=True)
def _frozen():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def account(client, agent) -> dict[str, Any]:
    resp = client.post(
        "/api/v1/accounts",
        json={"external_id": "O-1", "name": "Ola Nordmann", "phone": "+12025550143",
              "email": "ola@example.com", "balance_cents": 100_000, "timezone": "America/Chicago"},
        headers=agent.headers,
    )  # fmt: skip
    return resp.json


def body(account: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    data = {
        "account_id": account["id"],
        "kind": "plan",
        "total_cents": 100_000,
        "installment_count": 3,
        "frequency": "monthly",
        "first_due_date": (TODAY + timedelta(days=8)).isoformat(),
        "expires_in_hours": 120,
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def post(client, who, data):
    return client.post("/api/v1/offers", json=data, headers=who.headers)


def test_create_writes_offer_reminders_trail_and_messages(client, agent, account, app):
    resp = post(client, agent, body(account))
    assert resp.status_code == 201, resp.json
    offer = resp.json
    assert resp.headers["Location"] == f"/api/v1/offers/{offer['id']}"
    assert offer["status"] == "sent"
    assert [i["amount_cents"] for i in offer["schedule"]] == [33_334, 33_333, 33_333]
    assert [i["due_date"] for i in offer["schedule"]] == ["2026-12-01", "2027-01-01", "2027-02-01"]
    assert [i["n"] for i in offer["schedule"]] == [1, 2, 3]
    expires = NOW + timedelta(hours=120)
    assert offer["expires_at"] == expires.isoformat().replace("+00:00", "Z")
    # The settings' default offsets, earliest first, each before the expiry.
    assert [r["offset"] for r in offer["reminders"]] == ["72h", "24h", "2h"]
    assert [r["due_at"] for r in offer["reminders"]] == [
        (expires - timedelta(hours=h)).isoformat().replace("+00:00", "Z") for h in (72, 24, 2)
    ]
    assert offer["url"].startswith("https://pay.example.test/o/")
    assert len(offer["url"].rsplit("/", 1)[1]) == 39
    assert offer["events"][0]["type"] == "offer.sent"
    assert {m["channel"] for m in offer["messages"]} == {"sms", "email"}
    drain(app)
    with app.extensions["paylink.db"].transaction() as session:
        sms = session.scalar(
            select(Message).where(Message.kind == "offer", Message.channel == "sms")
        )
        assert sms.status == "delivered"
        assert offer["url"] in sms.body


def test_nothing_is_written_when_the_offer_is_invalid(client, agent, account, app):
    resp = post(client, agent, body(account, total_cents=0, installment_count=10_000))
    assert resp.status_code == 422
    with app.extensions["paylink.db"].transaction() as session:
        for model in (Offer, OfferReminder, OfferEvent, Message):
            assert session.scalar(select(func.count()).select_from(model)) == 0


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"total_cents": 0}, "total_cents"),
        ({"total_cents": -5}, "total_cents"),
        ({"total_cents": 12.5}, "total_cents"),
        ({"total_cents": 100_001}, "total_cents"),
        ({"installment_count": 0}, "installment_count"),
        ({"installment_count": 10_000}, "installment_count"),
        ({"installment_count": 25}, "installment_count"),  # settings allow 24
        ({"total_cents": 2, "installment_count": 3}, "total_cents"),
        ({"first_due_date": "2026-02-30"}, "first_due_date"),
        ({"first_due_date": "2026-11-22"}, "first_due_date"),  # yesterday in Chicago
        ({"first_due_date": "2027-12-01"}, "first_due_date"),  # beyond 365 days
        ({"first_due_date": "12/01/2026"}, "first_due_date"),
        ({"frequency": "semimonthly", "first_due_date": "2026-12-02"}, "first_due_date"),
        ({"frequency": "yearly"}, "frequency"),
        ({"kind": "loan"}, "kind"),
        ({"expires_in_hours": None, "expires_at": "2026-11-22T10:00:00Z"}, "expires_at"),
        ({"expires_in_hours": None, "expires_at": "tomorrow"}, "expires_at"),
        ({"expires_at": "2026-12-01T10:00:00Z"}, "expires_at"),  # both given
        ({"reminder_offsets": ["72h", "24h", "2h", "1h"]}, "reminder_offsets"),
        ({"reminder_offsets": ["72h", "3d"]}, "reminder_offsets"),  # the same instant
        ({"reminder_offsets": ["5x"]}, "reminder_offsets"),
        ({"reminder_offsets": ["200h"]}, "reminder_offsets"),  # before now
        ({"channels": ["fax"]}, "channels"),
        ({"channels": []}, "channels"),
        ({"account_id": 999_999}, "account_id"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_offers_are_422_with_the_field_named(client, agent, account, overrides, field):
    resp = post(client, agent, body(account, **overrides))
    assert resp.status_code == 422, resp.json
    assert resp.headers["Content-Type"] == "application/problem+json"
    assert field in resp.json["errors"]


def test_semimonthly_plans_start_on_the_first_or_fifteenth(client, agent, account):
    resp = post(client, agent, body(account, frequency="semimonthly", first_due_date="2026-12-15",
                                    installment_count=4))  # fmt: skip
    assert resp.status_code == 201, resp.json
    assert [i["due_date"] for i in resp.json["schedule"]] == [
        "2026-12-15", "2027-01-01", "2027-01-15", "2027-02-01",
    ]  # fmt: skip


def test_settlement_bounds_and_the_supervisor_threshold(client, agent, supervisor, account):
    # 20% off: any agent.
    ok = post(
        client, agent, body(account, kind="settlement", total_cents=80_000, installment_count=1)
    )
    assert ok.status_code == 201, ok.json
    assert ok.json["percent_off"] == 20
    # 40% off: above the 30% threshold, so a supervisor's.
    refused = post(client, agent, body(account, kind="settlement", total_cents=60_000,
                                       installment_count=1))  # fmt: skip
    assert refused.status_code == 422
    assert "supervisor" in refused.json["errors"]["total_cents"][0]
    allowed = post(client, supervisor, body(account, kind="settlement", total_cents=60_000,
                                            installment_count=1))  # fmt: skip
    assert allowed.status_code == 201
    # 60% off: beyond the 50% maximum for anyone.
    too_much = post(client, supervisor, body(account, kind="settlement", total_cents=40_000,
                                             installment_count=1))  # fmt: skip
    assert too_much.status_code == 422
    # A "settlement" of the whole balance is no settlement.
    whole = post(client, agent, body(account, kind="settlement", total_cents=100_000))
    assert whole.status_code == 422


def test_opted_out_channel_is_refused(client, agent, account, app):
    from app.models import Account

    with app.extensions["paylink.db"].transaction() as session:
        session.get(Account, account["id"]).sms_opted_out_at = NOW
    resp = post(client, agent, body(account, channels=["sms"]))
    assert resp.status_code == 422
    assert "channels" in resp.json["errors"]
    default = post(client, agent, body(account))  # defaults leave the opted-out channel out
    assert {m["channel"] for m in default.json["messages"]} == {"email"}


def test_zero_reminders_is_allowed(client, agent, account):
    resp = post(client, agent, body(account, reminder_offsets=[]))
    assert resp.status_code == 201
    assert resp.json["reminders"] == []


def test_get_revoke_and_conflicts(client, agent, account):
    offer = post(client, agent, body(account)).json
    got = client.get(f"/api/v1/offers/{offer['id']}", headers=agent.headers)
    assert got.status_code == 200
    assert got.json["url"] == offer["url"]
    assert client.get("/api/v1/offers/424242", headers=agent.headers).status_code == 404
    revoked = client.post(f"/api/v1/offers/{offer['id']}/revoke", headers=agent.headers)
    assert revoked.json["status"] == "revoked"
    assert {r["status"] for r in revoked.json["reminders"]} == {"cancelled"}
    again = client.post(f"/api/v1/offers/{offer['id']}/revoke", headers=agent.headers)
    assert again.status_code == 200
    token = offer["url"].rsplit("/", 1)[1]
    assert client.get(f"/o/{token}").status_code == 410


def test_an_expired_offer_reads_expired_and_cannot_be_revoked(client, agent, account):
    offer = post(client, agent, body(account, expires_in_hours=1, reminder_offsets=[])).json
    with time_machine.travel(NOW + timedelta(hours=2), tick=False):
        assert (
            client.get(f"/api/v1/offers/{offer['id']}", headers=agent.headers).json["status"]
            == "expired"
        )
        resp = client.post(f"/api/v1/offers/{offer['id']}/revoke", headers=agent.headers)
    assert resp.status_code == 409


def test_auth(client, account):
    assert client.post("/api/v1/offers", json={}).status_code == 401
