"""Console pages for payment links: create (amount, channels, lifetime; errors under their
fields, nothing written), resend, revoke after a confirmation; each an audit event made by
links.service, as the API's."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from app.clock import utcnow
from app.models import AuditEvent, Message
from links.models import PaymentLink
from tests.app.test_console import login
from tests.app.test_console_account import audit_actions, make_account, token_on


def count(db, model) -> int:
    db.rollback()
    n = db.scalar(select(func.count()).select_from(model))
    db.rollback()
    return n


def signed_in(client, who):
    assert login(client, who.email, who.password).status_code == 302
    return client


def create(client, account_id: int, **fields):
    path = f"/console/accounts/{account_id}/links/new"
    data = {"csrf_token": token_on(client, path), **fields}
    return client.post(path, data=data)


def test_new_link_form_has_labels_and_the_balance(app, client, agent):
    account_id = make_account(app, email=None)
    signed_in(client, agent)

    page = client.get(f"/console/accounts/{account_id}/links/new").get_data(as_text=True)

    assert '<label for="amount">Amount to pay ($)</label>' in page
    assert 'value="150.00"' in page
    assert '<label for="channels-sms">SMS' in page
    # No email on file: the box is there, disabled, and says why.
    assert 'id="channels-email" name="channels" value="email" disabled' in page
    assert "no address on file" in page


def test_create_link_sends_it_and_is_audited(app, db, client, agent):
    account_id = make_account(app)
    signed_in(client, agent)

    resp = create(client, account_id, amount="80.50", channels=["sms", "email"],
                  expires_in_hours="48")  # fmt: skip

    assert resp.status_code == 303
    assert resp.headers["Location"] == f"/console/accounts/{account_id}"
    db.rollback()
    link = db.scalar(select(PaymentLink))
    assert link.amount_cents == 8050
    assert link.created_by_agent_id == agent.id
    assert (link.expires_at - link.created_at).total_seconds() == 48 * 3600
    kinds = db.scalars(select(Message.channel).where(Message.kind == "link")).all()
    assert sorted(kinds) == ["email", "sms"]
    event = db.scalar(select(AuditEvent).where(AuditEvent.action == "link.created"))
    assert event.actor_type == "agent"
    assert event.actor_id == str(agent.id)
    db.rollback()
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "Payment link created for $80.50 and sent by SMS, Email." in page
    assert f"Payment link {link.id} created" in page  # the timeline
    assert "$80.50" in page  # the links panel


def test_bad_link_input_is_400_under_the_field_and_writes_nothing(app, db, client, agent):
    account_id = make_account(app, email=None)
    signed_in(client, agent)

    for fields, field_id, message in (
        ({"amount": "12,5x", "channels": "sms"}, "amount", "Enter an amount such as 125.00"),
        ({"amount": "151.00", "channels": "sms"}, "amount", "Must not be more than the balance."),
        ({"amount": "0", "channels": "sms"}, "amount", "Enter an amount more than zero."),
        ({"amount": "10", "channels": "email"}, "channels",
         "Email: opted out or no address on file."),
        ({"amount": "10"}, "channels", "Choose at least one channel."),
        ({"amount": "10", "channels": "sms", "expires_in_hours": "0"}, "expires_in_hours",
         "From 1 to 2160 hours."),
    ):  # fmt: skip
        resp = create(client, account_id, **fields)
        assert resp.status_code == 400, fields
        page = resp.get_data(as_text=True)
        assert f'<p class="error" id="{field_id}-error">{message}</p>' in page, page
        assert f'value="{fields["amount"]}"' in page  # what was typed stays
    assert count(db, PaymentLink) == 0
    assert count(db, Message) == 0


def test_unknown_account_for_a_link_is_404(client, agent):
    signed_in(client, agent)

    assert client.get("/console/accounts/424242/links/new").status_code == 404


def _link(app, db, client, agent) -> tuple[int, int]:
    account_id = make_account(app)
    signed_in(client, agent)
    assert create(client, account_id, amount="20", channels="sms").status_code == 303
    db.rollback()
    link_id = db.scalar(select(PaymentLink.id))
    db.rollback()
    return account_id, link_id


def test_resend_queues_new_messages_and_is_audited(app, db, client, agent, time_machine):
    account_id, link_id = _link(app, db, client, agent)
    time_machine.move_to(utcnow() + timedelta(minutes=5), tick=False)  # not a double click
    token = token_on(client, f"/console/accounts/{account_id}")

    resp = client.post(f"/console/links/{link_id}/resend", data={"csrf_token": token})

    assert resp.status_code == 303
    db.rollback()
    assert db.scalar(select(func.count()).select_from(Message)) == 3  # sms first, then both
    db.rollback()
    assert audit_actions(db, "link", link_id) == ["link.created", "link.resent"]
    assert f"Link {link_id} resent by SMS, Email." in client.get(resp.headers["Location"]).get_data(
        as_text=True
    )


def test_revoke_asks_for_confirmation_first(app, db, client, agent):
    _account_id, link_id = _link(app, db, client, agent)
    path = f"/console/links/{link_id}/revoke"

    page = client.get(path).get_data(as_text=True)
    assert '<label for="confirm">Yes, revoke this payment link</label>' in page
    unconfirmed = client.post(path, data={"csrf_token": token_on(client, path)})

    assert unconfirmed.status_code == 400
    assert "Tick the box to confirm." in unconfirmed.get_data(as_text=True)
    db.rollback()
    assert db.get(PaymentLink, link_id).status == "active"
    db.rollback()

    resp = client.post(path, data={"csrf_token": token_on(client, path), "confirm": "yes"})

    assert resp.status_code == 303
    db.rollback()
    assert db.get(PaymentLink, link_id).status == "revoked"
    db.rollback()
    assert audit_actions(db, "link", link_id) == ["link.created", "link.revoked"]
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert f"Link {link_id} is revoked" in page
    assert f"Payment link {link_id} revoked" in page  # the timeline
    assert f'aria-label="Revoke link {link_id}"' not in page  # nothing left to revoke


def test_an_ended_link_is_neither_revoked_nor_resent(app, db, client, agent, time_machine):
    account_id, link_id = _link(app, db, client, agent)
    path = f"/console/links/{link_id}/revoke"
    time_machine.move_to(utcnow() + timedelta(days=8), tick=False)  # past its lifetime
    login(client, agent.email, agent.password)  # the 8-hour session ended too

    token = token_on(client, "/console/")
    revoke = client.post(path, data={"csrf_token": token, "confirm": "yes"})
    resend = client.post(f"/console/links/{link_id}/resend", data={"csrf_token": token})

    assert revoke.status_code == 303
    assert resend.status_code == 303
    page = client.get(f"/console/accounts/{account_id}").get_data(as_text=True)
    assert "The link cannot be revoked: it is expired." in page
    assert "The link cannot be resent: the link is expired." in page
    db.rollback()
    assert db.get(PaymentLink, link_id).status == "active"  # the sweep writes expiry
    db.rollback()
    assert audit_actions(db, "link", link_id) == ["link.created"]


def test_unknown_link_is_404(client, agent):
    signed_in(client, agent)

    assert client.get("/console/links/999/revoke").status_code == 404
    assert client.get(f"/console/links/{2**70}/revoke").status_code == 404
