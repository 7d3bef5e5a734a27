"""The plans API: GET /plans/{id} and POST /plans/{id}/cancel."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from flask import Flask
from sqlalchemy import select

from app.models import Account, AuditEvent, Message
from offers import trail
from offers.models import Installment, PaymentPlan
from tests.helpers import drain
from tests.signing.plan_factory import SIGNED_AT, make_signed_plan

CANCEL_AT = SIGNED_AT + timedelta(days=1)  # 9:00 in Chicago: notices may go


def set_installment(app: Flask, plan_id: int, n: int, status: str, **values) -> None:
    with app.extensions["paylink.db"].transaction() as session:
        item = session.scalar(
            select(Installment).where(Installment.plan_id == plan_id, Installment.n == n)
        )
        item.status = status
        for name, value in values.items():
            setattr(item, name, value)


def set_plan_status(app: Flask, plan_id: int, status: str) -> None:
    with app.extensions["paylink.db"].transaction() as session:
        session.get(PaymentPlan, plan_id).status = status


def cancel(client, agent, plan_id: int, body=None, **kw):
    with time_machine.travel(CANCEL_AT, tick=False):
        return client.post(
            f"/api/v1/plans/{plan_id}/cancel",
            json={"reason": "Customer asked to stop"} if body is None else body,
            headers=agent.headers,
            **kw,
        )


def notices(app: Flask, account_id: int) -> list[Message]:
    with app.extensions["paylink.db"].transaction() as session:
        rows = list(
            session.scalars(
                select(Message)
                .where(Message.account_id == account_id, Message.kind == "plan_cancelled")
                .order_by(Message.id)
            )
        )
        for row in rows:
            session.expunge(row)
        return rows


def test_a_plan_as_the_contract_shows_it(app, client, agent):
    signed = make_signed_plan(app)
    set_installment(app, signed.plan_id, 1, "paid", paid_at=SIGNED_AT + timedelta(days=8))
    resp = client.get(f"/api/v1/plans/{signed.plan_id}", headers=agent.headers)
    assert resp.status_code == 200
    plan = resp.json
    assert {k: plan[k] for k in ("id", "offer_id", "account_id", "status", "agreement_id")} == {
        "id": signed.plan_id,
        "offer_id": signed.offer_id,
        "account_id": signed.account_id,
        "status": "active",
        "agreement_id": signed.agreement_id,
    }
    assert plan["installments"] == [
        {
            "n": 1,
            "due_date": "2026-12-01",
            "amount_cents": 33334,
            "status": "paid",
            "paid_at": "2026-12-01T15:00:00Z",
        },
        {
            "n": 2,
            "due_date": "2027-01-01",
            "amount_cents": 33333,
            "status": "scheduled",
            "paid_at": None,
        },
        {
            "n": 3,
            "due_date": "2027-02-01",
            "amount_cents": 33333,
            "status": "scheduled",
            "paid_at": None,
        },
    ]
    assert plan["total_cents"] == 100_000
    assert plan["method"] == {"kind": "card", "brand": "visa", "last4": "4242"}
    assert plan["cancelled_at"] is None
    offer = client.get(f"/api/v1/offers/{signed.offer_id}", headers=agent.headers).json
    assert offer["plan_id"] == signed.plan_id
    assert offer["status"] == "accepted"


def test_plans_need_a_key_and_an_id_that_exists(app, client, agent):
    signed = make_signed_plan(app)
    assert client.get(f"/api/v1/plans/{signed.plan_id}").status_code == 401
    assert client.post(f"/api/v1/plans/{signed.plan_id}/cancel", json={}).status_code == 401
    for bad in (999_999, 2**31, 2**63 - 1, 2**70):
        assert client.get(f"/api/v1/plans/{bad}", headers=agent.headers).status_code == 404
        assert cancel(client, agent, bad).status_code == 404


def test_cancelling_stops_every_remaining_installment_and_tells_the_customer(app, client, agent):
    signed = make_signed_plan(app)
    set_installment(app, signed.plan_id, 1, "paid", paid_at=SIGNED_AT + timedelta(days=8))
    set_installment(app, signed.plan_id, 2, "pending")  # a bank debit under way
    resp = cancel(client, agent, signed.plan_id)
    assert resp.status_code == 200
    plan = resp.json
    assert plan["status"] == "cancelled"
    assert plan["cancelled_at"] == "2026-11-24T15:00:00Z"
    assert plan["cancel_reason"] == "Customer asked to stop"
    assert [i["status"] for i in plan["installments"]] == ["paid", "pending", "cancelled"]
    assert {(m["channel"], m["kind"]) for m in plan["messages"]} == {
        ("email", "plan_cancelled"),
        ("sms", "plan_cancelled"),
    }
    with app.extensions["paylink.db"].transaction() as session:
        [audit] = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "plan.cancelled")
        ).all()
        assert (audit.object_type, audit.object_id) == ("payment_plan", str(signed.plan_id))
        assert audit.actor_type == "api_key"
        assert audit.data == {"reason": "Customer asked to stop", "installments_cancelled": [3]}
        last = trail.events(session, signed.offer_id)[-1]
        assert last.type == "plan.cancelled"
        assert last.data["installments_cancelled"] == [3]
        assert trail.verify(session, signed.offer_id).ok
    # Delivered through the outbox by a real worker; the agent's reason stays internal.
    with time_machine.travel(CANCEL_AT, tick=False):
        drain(app)
    sent = notices(app, signed.account_id)
    assert {m.channel for m in sent} == {"email", "sms"}
    assert all(m.status == "delivered" for m in sent)
    email = next(m for m in sent if m.channel == "email")
    assert "has been cancelled" in email.body
    assert "Customer asked to stop" not in email.body


def test_cancelling_a_cancelled_plan_changes_nothing(app, client, agent):
    signed = make_signed_plan(app)
    first = cancel(client, agent, signed.plan_id).json
    with time_machine.travel(CANCEL_AT + timedelta(hours=3), tick=False):
        again = client.post(
            f"/api/v1/plans/{signed.plan_id}/cancel",
            json={"reason": "Clicked twice"},
            headers=agent.headers,
        )
    assert again.status_code == 200
    assert again.json == first
    assert len(notices(app, signed.account_id)) == 2
    with app.extensions["paylink.db"].transaction() as session:
        cancels = session.scalars(select(AuditEvent).where(AuditEvent.action == "plan.cancelled"))
        assert len(cancels.all()) == 1


@pytest.mark.parametrize("status", ["completed", "defaulted"])
def test_an_ended_plan_cannot_be_cancelled(app, client, agent, status):
    signed = make_signed_plan(app)
    set_plan_status(app, signed.plan_id, status)
    resp = cancel(client, agent, signed.plan_id)
    assert resp.status_code == 409
    assert resp.mimetype == "application/problem+json"
    assert status in resp.json["detail"]
    plan = client.get(f"/api/v1/plans/{signed.plan_id}", headers=agent.headers).json
    assert plan["status"] == status
    assert all(i["status"] == "scheduled" for i in plan["installments"])
    assert notices(app, signed.account_id) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "reason"),
        ({"reason": None}, "reason"),
        ({"reason": "   "}, "reason"),
        ({"reason": "x" * 501}, "reason"),
        ({"reason": 42}, "reason"),
        ({"reason": "ok", "extra": 1}, "extra"),
    ],
)
def test_a_reason_is_required(app, client, agent, body, field):
    signed = make_signed_plan(app)
    resp = cancel(client, agent, signed.plan_id, body)
    assert resp.status_code == 422
    assert field in resp.json["errors"]
    plan = client.get(f"/api/v1/plans/{signed.plan_id}", headers=agent.headers).json
    assert plan["status"] == "active"


def test_a_reason_of_500_characters_and_a_body_that_is_not_json(app, client, agent):
    signed = make_signed_plan(app)
    with time_machine.travel(CANCEL_AT, tick=False):
        not_json = client.post(
            f"/api/v1/plans/{signed.plan_id}/cancel", data="reason=x", headers=agent.headers
        )
    assert not_json.status_code == 415
    resp = cancel(client, agent, signed.plan_id, {"reason": "é" * 500})
    assert resp.status_code == 200
    assert resp.json["cancel_reason"] == "é" * 500


def test_the_notice_goes_only_where_the_customer_allows(app, client, agent):
    signed = make_signed_plan(app)
    with app.extensions["paylink.db"].transaction() as session:
        session.get(Account, signed.account_id).sms_opted_out_at = SIGNED_AT
    assert cancel(client, agent, signed.plan_id).status_code == 200
    assert [m.channel for m in notices(app, signed.account_id)] == ["email"]

    quiet = make_signed_plan(app, n=2, email=None, phone=None)
    resp = cancel(client, agent, quiet.plan_id)
    assert resp.status_code == 200
    assert resp.json["status"] == "cancelled"
    assert notices(app, quiet.account_id) == []
