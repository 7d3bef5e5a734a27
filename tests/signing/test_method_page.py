"""The page a payment-failed notice links to, /m/<token>: a new card or bank account for
the plan, through the Flask test client with CSRF on; a declined installment is then
tried again at the next local charge hour, and charged by the next sweep."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from app.models import AuditEvent, Message
from app.payments.models import Payment, PaymentMethod
from links.tokens import OFFER, PLAN_METHOD, UrlTokens
from offers import trail
from offers.models import Installment, Offer, PaymentPlan
from tests.conftest import TEST_SECRET_KEYS
from tests.helpers import drain
from tests.links.test_link_duties import sweep
from tests.signing.plan_factory import make_signed_plan
from tests.workers.test_installments import DECLINED_CARD, FIRST, use_method

CSRF = re.compile(r'name="csrf_token"[^>]*?value="([^"]+)"')
TOKENS = UrlTokens(TEST_SECRET_KEYS, PLAN_METHOD)
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X)"
# The first installment declined at 09:00 Chicago on Dec 1; the customer comes at noon.
NOON = FIRST + timedelta(hours=3)
RETRY = datetime(2026, 12, 4, 15, 0, tzinfo=UTC)
SOON = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)  # the next 09:00 in Chicago


def page_path(app, plan_id: int) -> str:
    with app.extensions["paylink.db"].transaction() as session:
        offer = session.get(Offer, session.get(PaymentPlan, plan_id).offer_id)
        return f"/m/{TOKENS.token_for(offer.token_id)}"


def declined_plan(app, time_machine):
    signed = make_signed_plan(app)
    use_method(app, signed.plan_id, card=DECLINED_CARD)
    time_machine.move_to(FIRST, tick=False)
    sweep(app, FIRST)
    drain(app)
    time_machine.move_to(NOON, tick=False)
    return signed


def first_installment(app, plan_id: int) -> Installment:
    with app.extensions["paylink.db"].transaction() as session:
        return session.scalar(
            select(Installment).where(Installment.plan_id == plan_id, Installment.n == 1)
        )


def post(client, path: str, data: dict[str, str], *, page: str | None = None):
    html = client.get(page or path).get_data(as_text=True)
    match = CSRF.search(html)
    assert match, html
    return client.post(
        path, data={"csrf_token": match.group(1), **data}, environ_base={"HTTP_USER_AGENT": UA}
    )


def verified(client, path: str, ssn_last4: str = "6789"):
    """Confirm it's you with the last 4 of the SSN on file (make_signed_plan's)."""
    return post(
        client, f"{path}/verify", {"method": "ssn_last4", "ssn_last4": ssn_last4},
        page=f"{path}/verify",
    )  # fmt: skip


CARD = {
    "kind": "card",
    "name": "Ola Nguyen",
    "number": "4242 4242 4242 4242",
    "expiry": "12/30",
    "security_code": "123",
    "zip": "60601",
}


def test_the_notice_links_to_the_page_which_shows_the_failed_payment(app, client, time_machine):
    signed = declined_plan(app, time_machine)
    path = page_path(app, signed.plan_id)
    with app.extensions["paylink.db"].transaction() as session:
        bodies = session.scalars(select(Message.body).where(Message.kind == "payment_failed"))
        assert all(f"https://pay.example.test{path}" in b for b in bodies)

    assert client.get(path).headers["Location"].endswith(f"{path}/verify")
    assert verified(client, path).headers["Location"].endswith(path)
    resp = client.get(path)

    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert "Update your payment method" in html
    assert "$333.34" in html
    assert "Dec 4, 2026" in html
    for label in ("Card number", "Expiration (MM/YY)", "Security code", "Name on card", "ZIP"):
        assert label in html
    assert 'name="csrf_token"' in html
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert "Routing number" in client.get(f"{path}?kind=bank").get_data(as_text=True)


def test_a_new_card_replaces_the_method_and_brings_the_retry_forward(app, client, time_machine):
    signed = declined_plan(app, time_machine)
    path = page_path(app, signed.plan_id)
    assert first_installment(app, signed.plan_id).next_attempt_at == RETRY
    verified(client, path)

    resp = post(client, path, CARD)

    assert resp.status_code == 302
    assert resp.headers["Location"].endswith(f"{path}/updated")
    done = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "Visa ending 4242" in done
    assert "Dec 2, 2026" in done
    first = first_installment(app, signed.plan_id)
    assert (first.status, first.next_attempt_at) == ("scheduled", SOON)
    with app.extensions["paylink.db"].transaction() as session:
        plan = session.get(PaymentPlan, signed.plan_id)
        method = session.get(PaymentMethod, plan.method_id)
        assert (method.brand, method.last4) == ("visa", "4242")
        [event] = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "plan.method_changed")
        ).all()
        assert event.actor_type == "customer"
        assert event.data["installments"] == [1]
        last = trail.events(session, plan.offer_id)[-1]
        assert (last.type, last.user_agent) == ("payment_method.changed", UA)
        assert trail.verify(session, plan.offer_id).ok
        # Nothing of the card but its last 4 is kept.
        assert "4242424242424242" not in str(event.data)

    # The next sweep at the charge hour charges it with the new card.
    time_machine.move_to(SOON, tick=False)
    counts = sweep(app, SOON)
    drain(app)
    assert counts["installments"] == {"due": 1, "enqueued": 1}
    first = first_installment(app, signed.plan_id)
    assert (first.status, first.attempts) == ("paid", 2)
    with app.extensions["paylink.db"].transaction() as session:
        statuses = session.scalars(select(Payment.status).order_by(Payment.id)).all()
    assert statuses == ["declined", "paid"]


def test_a_bad_card_is_named_in_its_field_and_changes_nothing(app, client, time_machine):
    signed = declined_plan(app, time_machine)
    path = page_path(app, signed.plan_id)
    verified(client, path)

    resp = post(client, path, {**CARD, "number": "4242 4242 4242 4241"})

    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    assert "4242 4242 4242 4241" not in html  # never sent back
    assert "You entered a card ending 4241" in html
    assert first_installment(app, signed.plan_id).next_attempt_at == RETRY
    with app.extensions["paylink.db"].transaction() as session:
        plan = session.get(PaymentPlan, signed.plan_id)
        assert session.get(PaymentMethod, plan.method_id).last4 == "0002"


def test_a_post_without_its_csrf_token_is_refused(app, client, time_machine):
    signed = declined_plan(app, time_machine)
    resp = client.post(page_path(app, signed.plan_id), data=CARD)
    assert resp.status_code == 400
    assert "Please try again" in resp.get_data(as_text=True)


@pytest.mark.parametrize("kind", ["forged", "offer_token"])
def test_a_token_that_does_not_verify_is_a_404(app, client, kind):
    signed = make_signed_plan(app)
    with app.extensions["paylink.db"].transaction() as session:
        token_id = session.get(Offer, signed.offer_id).token_id
    token = (
        UrlTokens(TEST_SECRET_KEYS, OFFER).token_for(token_id)  # another purpose's token
        if kind == "offer_token"
        else "A" * 22 + "." + "B" * 16
    )
    resp = client.get(f"/m/{token}")
    assert resp.status_code == 404
    assert client.get("/m/not-a-token").status_code == 404


def test_an_ended_plans_page_is_gone(app, client, agent, time_machine):
    signed = make_signed_plan(app)
    time_machine.move_to(FIRST - timedelta(days=2), tick=False)
    client.post(
        f"/api/v1/plans/{signed.plan_id}/cancel", json={"reason": "asked"}, headers=agent.headers
    )
    resp = client.get(page_path(app, signed.plan_id))
    assert resp.status_code == 410
    assert "This payment plan has ended" in resp.get_data(as_text=True)


# --- confirm it's you -------------------------------------------------------------------


def test_the_method_cannot_be_changed_before_the_customer_confirms_it_is_them(
    app, client, time_machine
):
    signed = declined_plan(app, time_machine)
    path = page_path(app, signed.plan_id)
    with app.extensions["paylink.db"].transaction() as session:
        methods_before = len(session.scalars(select(PaymentMethod.id)).all())
    form = client.get(f"{path}/verify").get_data(as_text=True)
    assert "Last 4 of SSN" in form
    token = CSRF.search(form).group(1)

    resp = client.post(path, data={"csrf_token": token, **CARD})

    assert resp.status_code == 302
    assert resp.headers["Location"].endswith(f"{path}/verify")
    with app.extensions["paylink.db"].transaction() as session:
        plan = session.get(PaymentPlan, signed.plan_id)
        assert session.get(PaymentMethod, plan.method_id).last4 == "0002"
        assert len(session.scalars(select(PaymentMethod.id)).all()) == methods_before


def test_five_wrong_answers_pause_the_page_and_are_on_the_offers_trail(app, client, time_machine):
    signed = declined_plan(app, time_machine)
    path = page_path(app, signed.plan_id)
    for left in (4, 3, 2, 1):
        html = verified(client, path, "0000").get_data(as_text=True)
        assert f"You can try {left} more" in html
    resp = verified(client, path, "0000")
    assert resp.status_code == 429
    assert "paused" in resp.get_data(as_text=True)
    assert 15 * 60 - 1 <= int(resp.headers["Retry-After"]) <= 15 * 60 + 1
    # Even the right answer waits for the pause to end.
    locked = client.get(f"{path}/verify")
    assert locked.status_code == 429
    with app.extensions["paylink.db"].transaction() as session:
        types = [e.type for e in trail.events(session, signed.offer_id)]
    assert types[-6:] == ["verification.failed"] * 5 + ["verification.locked"]
    time_machine.move_to(NOON + timedelta(minutes=16), tick=False)
    assert verified(client, path).status_code == 302


def test_a_pass_for_one_plan_does_not_open_another(app, client, time_machine):
    first = declined_plan(app, time_machine)
    second = make_signed_plan(app, n=2)
    verified(client, page_path(app, first.plan_id))
    other = page_path(app, second.plan_id)
    assert client.get(other).headers["Location"].endswith(f"{other}/verify")


def test_with_verification_off_the_form_opens_at_once(app, client, db, time_machine):
    from app.settings import get_settings

    signed = declined_plan(app, time_machine)
    get_settings(db).contact_verification = False
    db.commit()
    path = page_path(app, signed.plan_id)
    assert client.get(path).status_code == 200
    assert client.get(f"{path}/verify").headers["Location"].endswith(path)
