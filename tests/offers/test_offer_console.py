"""Console pages for offers and plans: the offer form with its preview (schedule, SMS with
character and segment counts, email) with and without JavaScript, create, the API's
validation under the form's fields (nothing written), revoke and cancel after a
confirmation, each an audit event."""

from __future__ import annotations

import re
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.clock import utcnow
from app.models import AuditEvent, Message
from offers.console import EVENT_TEXT
from offers.models import Installment, Offer, OfferReminder, PaymentPlan
from tests.app.test_console import login
from tests.app.test_console_account import audit_actions, make_account, token_on
from tests.signing.plan_factory import make_signed_plan


def signed_in(client, who):
    assert login(client, who.email, who.password).status_code == 302
    return client


def first_due() -> str:
    return (utcnow().date() + timedelta(days=10)).isoformat()


def fields(**overrides) -> dict:
    return {
        "kind": "plan", "total": "150.00", "installment_count": "3", "frequency": "monthly",
        "first_due_date": first_due(), "expires_in_hours": "72", "reminder_offsets": "24h, 2h",
        "channels": ["sms", "email"], **overrides,
    }  # fmt: skip


def post(client, account_id: int, action: str, **overrides):
    path = f"/console/accounts/{account_id}/offers/new"
    data = {"csrf_token": token_on(client, path), "action": action, **fields(**overrides)}
    return client.post(path, data=data)


def count(db, model) -> int:
    db.rollback()
    n = db.scalar(select(func.count()).select_from(model))
    db.rollback()
    return n


@pytest.fixture
def account_id(app) -> int:
    return make_account(app)


def test_offer_form_opens_with_a_preview_of_the_defaults(client, agent, account_id):
    signed_in(client, agent)

    resp = client.get(f"/console/accounts/{account_id}/offers/new")

    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    for label in ("Total to pay ($)", "Number of payments", "How often", "First payment date"):
        assert f">{label}</label>" in page
    assert "<legend>Send by</legend>" in page
    assert re.search(r"<td class=\"num\">\$50\.00</td>", page)  # 150.00 in 3
    assert "Maria, review and sign your payment plan offer: https://pay.example.test/o/" in page
    assert re.search(r"\d+ characters · 1 segment \(GSM-7", page)
    assert "Your payment plan offer from Paylink Demo Creditor" in page
    assert 'src="/console/assets/console.js"' in page


def test_preview_button_shows_the_schedule_without_javascript(db, client, agent, account_id):
    signed_in(client, agent)

    resp = post(client, account_id, "preview", total="100.00", installment_count="3")

    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    amounts = re.findall(r"<td class=\"num\">(\$[\d.,]+)</td>", page)
    assert amounts[:3] == ["$33.34", "$33.33", "$33.33"]
    assert "$100.00" in page
    assert count(db, Offer) == 0  # a preview writes nothing
    assert count(db, Message) == 0


def test_preview_endpoint_serves_the_fragment_for_the_script(client, agent, account_id):
    signed_in(client, agent)

    resp = client.get(
        f"/console/accounts/{account_id}/offers/preview",
        query_string={**fields(total="99.99", installment_count="2"), "channels": "sms"},
    )

    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    assert "<html" not in page
    assert "$50.00" in page
    assert "$49.99" in page
    assert "segment" in page


def test_preview_counts_segments_of_a_long_name(app, client, agent):
    account_id = make_account(app, external_id="LONG", name="Ŵilhelmina" + "x" * 150 + " Lee")
    signed_in(client, agent)

    page = client.get(
        f"/console/accounts/{account_id}/offers/preview", query_string=fields()
    ).get_data(as_text=True)

    match = re.search(r"(\d+) characters · (\d+) segments", page)
    assert match
    assert int(match.group(1)) > 160
    assert int(match.group(2)) == 2


def test_preview_email_is_the_rendered_html_in_a_locked_down_frame(client, agent, account_id):
    signed_in(client, agent)

    resp = client.get(f"/console/accounts/{account_id}/offers/preview/email", query_string=fields())

    assert resp.status_code == 200
    body = resp.get_data(as_text=True)
    assert "Complete Payment Agreement" in body
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert "script" not in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "SAMEORIGIN"
    bad = client.get(
        f"/console/accounts/{account_id}/offers/preview/email",
        query_string=fields(total="abc"),
    )
    assert bad.status_code == 400


def test_create_offer_makes_it_like_the_api_and_is_audited(db, client, agent, account_id):
    signed_in(client, agent)

    resp = post(client, account_id, "create", total="150.00", installment_count="3")

    assert resp.status_code == 303
    assert resp.headers["Location"] == f"/console/accounts/{account_id}"
    db.rollback()
    offer = db.scalar(select(Offer))
    assert offer.total_cents == 15_000
    assert offer.installment_count == 3
    assert offer.created_by_agent_id == agent.id
    assert offer.first_due_date == date.fromisoformat(first_due())
    assert [r.offset for r in db.scalars(select(OfferReminder).order_by(OfferReminder.n))] == [
        "24h", "2h",
    ]  # fmt: skip
    assert sorted(db.scalars(select(Message.channel))) == ["email", "sms"]
    event = db.scalar(select(AuditEvent).where(AuditEvent.action == "offer.created"))
    assert event.actor_type == "agent"
    db.rollback()
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert f"Offer {offer.id} created and sent by SMS and email." in page
    assert f"Plan offer {offer.id} sent" in page  # the timeline
    assert f'aria-label="Revoke offer {offer.id}"' in page  # the panel


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"total": "200.00"}, "total", "Must not be more than the balance."),
        ({"total": "1.2.3"}, "total", "Enter an amount such as 125.00"),
        ({"installment_count": "0"}, "installment_count", "Must be between 1 and 24."),
        ({"installment_count": "x"}, "installment_count", "Not a valid integer value."),
        ({"first_due_date": "2001-01-01"}, "first_due_date", "Must not be in the past."),
        ({"frequency": "semimonthly"}, "first_due_date",
         "A semimonthly plan starts on a 1st or a 15th."),
        ({"reminder_offsets": "72x"}, "reminder_offsets", None),
        ({"expires_in_hours": "9999"}, "expires_in_hours", "Must be between 1 and 2160."),
        ({"kind": "settlement", "total": "100.00"}, "total",
         "More than 30% off needs a supervisor."),
    ],
)  # fmt: skip
def test_bad_offer_input_is_400_under_the_field_and_writes_nothing(
    db, client, agent, account_id, overrides, field, message
):
    if overrides.get("frequency") == "semimonthly":
        day = utcnow().date() + timedelta(days=10)
        overrides["first_due_date"] = day.replace(day=2 if day.day != 2 else 3).isoformat()
        if date.fromisoformat(overrides["first_due_date"]) <= utcnow().date():
            overrides["first_due_date"] = (day + timedelta(days=31)).replace(day=2).isoformat()
    signed_in(client, agent)

    resp = post(client, account_id, "create", **overrides)

    assert resp.status_code == 400
    page = resp.get_data(as_text=True)
    error = re.search(rf'<p class="error" id="{field}-error">([^<]*)</p>', page)
    assert error, page
    if message:
        assert error.group(1) == message
    typed = overrides.get("total") or overrides.get("installment_count")
    if typed:
        assert f'value="{typed}"' in page  # what was typed stays
    assert count(db, Offer) == 0
    assert count(db, Message) == 0
    db.rollback()
    assert db.scalars(select(AuditEvent.action).where(AuditEvent.object_type != "agent")).all() == [
        "api_key.created"
    ]  # the fixture's; nothing from the form
    db.rollback()


def test_a_supervisor_may_offer_a_bigger_settlement(db, client, supervisor, account_id):
    signed_in(client, supervisor)

    resp = post(client, account_id, "create", kind="settlement", total="90.00",
                installment_count="1")  # fmt: skip

    assert resp.status_code == 303
    db.rollback()
    assert db.scalar(select(Offer.percent_off)) == 40


def test_no_channel_chosen_is_an_error(db, client, agent, account_id):
    signed_in(client, agent)

    resp = post(client, account_id, "create", channels=[])

    assert resp.status_code == 400
    assert "Choose at least one channel." in resp.get_data(as_text=True)
    assert count(db, Offer) == 0


def test_revoke_offer_after_confirmation(db, client, agent, account_id):
    signed_in(client, agent)
    assert post(client, account_id, "create").status_code == 303
    db.rollback()
    offer_id = db.scalar(select(Offer.id))
    db.rollback()
    path = f"/console/offers/{offer_id}/revoke"

    unconfirmed = client.post(path, data={"csrf_token": token_on(client, path)})
    assert unconfirmed.status_code == 400
    db.rollback()
    assert db.get(Offer, offer_id).status == "sent"
    db.rollback()

    resp = client.post(path, data={"csrf_token": token_on(client, path), "confirm": "yes"})

    assert resp.status_code == 303
    db.rollback()
    assert db.get(Offer, offer_id).status == "revoked"
    db.rollback()
    assert audit_actions(db, "offer", offer_id) == ["offer.created", "offer.revoked"]
    again = client.get(path).get_data(as_text=True)
    assert "it can no longer be revoked" in again


def test_plan_page_and_cancel_with_a_reason(app, db, client, agent):
    signed = make_signed_plan(app)
    signed_in(client, agent)

    plan_page = client.get(f"/console/plans/{signed.plan_id}").get_data(as_text=True)
    assert "Installments" in plan_page
    assert f"/console/agreements/{signed.agreement_id}" in plan_page
    path = f"/console/plans/{signed.plan_id}/cancel"

    missing = client.post(path, data={"csrf_token": token_on(client, path), "reason": " "})
    assert missing.status_code == 400
    page = missing.get_data(as_text=True)
    assert "Give the reason: it goes on the plan&#39;s record." in page
    assert "Tick the box to confirm." in page
    db.rollback()
    assert db.get(PaymentPlan, signed.plan_id).status == "active"
    db.rollback()

    reason = "customer paid in full by phone"
    token = token_on(client, path)
    resp = client.post(path, data={"csrf_token": token, "reason": reason, "confirm": "yes"})

    assert resp.status_code == 303
    db.rollback()
    plan = db.get(PaymentPlan, signed.plan_id)
    assert plan.status == "cancelled"
    assert plan.cancel_reason == "customer paid in full by phone"
    statuses = db.scalars(select(Installment.status).where(Installment.plan_id == plan.id))
    assert set(statuses) == {"cancelled"}
    db.rollback()
    assert audit_actions(db, "payment_plan", signed.plan_id) == ["plan.cancelled"]
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "is cancelled; the customer is told." in page
    assert "customer paid in full by phone" in page


def test_unknown_offer_and_plan_are_404(client, agent):
    signed_in(client, agent)

    for path in ("/console/offers/77/revoke", "/console/plans/77", "/console/plans/77/cancel",
                 f"/console/plans/{2**70}"):  # fmt: skip
        assert client.get(path).status_code == 404, path


def test_every_offer_event_type_has_words_on_the_timeline():
    """The account page says what happened in words: each event type the code adds to an
    offer's trail (found in the source) has its text."""
    root = Path(__file__).resolve().parents[2]
    appended = re.compile(r'trail\.append\(\s*session,\s*[^,]+,\s*"([a-z_]+\.[a-z_.]+)"')
    types: set[str] = set()
    for path in [*root.glob("offers/*.py"), *root.glob("signing/*.py")]:
        types |= set(appended.findall(path.read_text()))
    assert {"offer.sent", "plan.completed", "plan.defaulted"} <= types  # the scan works
    assert sorted(types - set(EVENT_TEXT)) == []
