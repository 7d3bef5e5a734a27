"""The console dashboard: counts by status, delivery per channel, the funnel and amounts,
over the chosen period, from rows arranged around one instant."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest

from app.models import Account, Message
from app.payments.models import Payment, PaymentMethod
from links.models import PaymentLink
from offers.dashboard import Period, figures
from offers.models import Installment, Offer, PaymentPlan
from tests.app.test_console import login

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
DASHBOARD = "/console/dashboard"
OLD = NOW - timedelta(days=60)  # outside the default 30 days


@pytest.fixture(autouse=True)
def _now(time_machine):
    time_machine.move_to(NOW, tick=False)


def _token() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def arranged(app):
    """Links, offers, a plan, payments and messages in and out of the last 30 days."""
    ago = lambda **kw: NOW - timedelta(**kw)  # noqa: E731
    with app.extensions["paylink.db"].transaction() as s:
        account = Account(external_id="D-1", name="Dee Moss", balance_cents=100_000)
        s.add(account)
        s.flush()
        method = PaymentMethod(
            account_id=account.id, kind="card", gateway="sandbox", gateway_token="tok",
            holder_name="Dee Moss", last4="4242", brand="visa", exp_month=1, exp_year=2030,
        )  # fmt: skip
        s.add(method)
        s.flush()

        def link(created, status="active", opened=None, expires=NOW + timedelta(days=3)):
            row = PaymentLink(
                token_id=_token(), account_id=account.id, amount_cents=1000, status=status,
                expires_at=expires, created_at=created, opened_at=opened,
            )  # fmt: skip
            s.add(row)
            s.flush()
            return row

        link(ago(days=1))  # active, never opened
        paid_link = link(ago(days=2), "used", opened=ago(days=2))
        link(ago(days=10), expires=ago(days=3))  # active in the table, past its expiry
        link(ago(days=5), "revoked", opened=ago(days=4))
        old_link = link(OLD, "used", opened=OLD, expires=OLD + timedelta(days=7))

        def offer(created, status, viewed=None, accepted=None):
            row = Offer(
                token_id=_token(), account_id=account.id, kind="plan", total_cents=6000,
                balance_cents=6000, installment_count=3, frequency="monthly",
                first_due_date=date(2026, 10, 20), status=status, expires_at=NOW,
                created_at=created, viewed_at=viewed, accepted_at=accepted,
            )  # fmt: skip
            s.add(row)
            s.flush()
            return row

        offer(ago(days=3), "sent")
        offer(ago(days=3), "viewed", viewed=ago(days=2))
        accepted = offer(ago(days=40), "accepted", ago(days=39), ago(days=39))  # before period
        offer(ago(days=6), "accepted", ago(days=5), ago(days=5))
        offer(ago(days=4), "draft")  # never sent: not counted
        plan = PaymentPlan(
            offer_id=accepted.id, account_id=account.id, method_id=method.id, status="active",
            total_cents=6000,
        )  # fmt: skip
        s.add(plan)
        s.flush()
        for n, due, status in (
            (1, date(2026, 10, 20), "paid"),
            (2, date(2026, 11, 20), "scheduled"),  # due in the period, not yet charged
            (3, date(2026, 12, 20), "scheduled"),  # after the period
        ):
            s.add(Installment(
                plan_id=plan.id, n=n, due_date=due, amount_cents=2000, status=status,
                next_attempt_at=datetime.combine(due, datetime.min.time(), UTC),
            ))  # fmt: skip

        def payment(amount, status, link_id=None, paid=None, scheduled=None):
            s.add(Payment(
                account_id=account.id, link_id=link_id, method_id=method.id,
                amount_cents=amount, status=status, idempotency_key=_token(), paid_at=paid,
                scheduled_for=scheduled, created_at=NOW,
            ))  # fmt: skip

        payment(5000, "paid", paid_link.id, paid=ago(days=2))
        payment(7000, "paid", old_link.id, paid=OLD)
        payment(9999, "declined", paid_link.id)
        payment(1500, "scheduled", scheduled=ago(days=1))
        payment(8000, "scheduled", scheduled=NOW + timedelta(days=40))

        def message(channel, status, created=None):
            created = created or ago(days=1)
            s.add(Message(
                account_id=account.id, kind="link", channel=channel, status=status,
                scheduled_for=created, created_at=created, updated_at=created, body="x",
            ))  # fmt: skip

        for channel, status in (
            ("sms", "delivered"), ("sms", "delivered"), ("sms", "failed"),
            ("sms", "undelivered"), ("email", "bounced"), ("email", "suppressed"),
            ("email", "delivered"), ("email", "queued"),
        ):  # fmt: skip
            message(channel, status)
        message("sms", "delivered", created=OLD)


def flat(html: str) -> str:
    return re.sub(r">\s+<", "><", html)


def test_figures_for_the_last_30_days(app, arranged):
    period = Period(date(2026, 10, 25), date(2026, 11, 23))
    with app.extensions["paylink.db"].Session() as s:
        data = figures(s, period, NOW)

    assert data.links == {"active": 1, "used": 1, "expired": 1, "revoked": 1}
    assert data.offers == {
        "sent": 1, "viewed": 1, "accepted": 1, "declined": 0, "expired": 0, "revoked": 0,
    }  # fmt: skip
    assert data.delivery["sms"] == {
        "delivered": 2, "failed": 2, "bounced": 0, "suppressed": 0, "in flight": 0, "total": 4,
    }  # fmt: skip
    assert data.delivery["email"] == {
        "delivered": 1, "failed": 0, "bounced": 1, "suppressed": 1, "in flight": 1, "total": 4,
    }  # fmt: skip
    assert (data.link_funnel.sent, data.link_funnel.opened, data.link_funnel.converted) == (4, 2, 1)
    assert (data.offer_funnel.sent, data.offer_funnel.opened, data.offer_funnel.converted) == (
        3,
        2,
        1,
    )
    assert data.collected == {"USD": 5000}
    assert data.scheduled == {"USD": 2000 + 1500}


def test_a_longer_period_takes_in_the_older_rows(app, arranged):
    period = Period(date(2026, 9, 1), date(2027, 1, 31))
    with app.extensions["paylink.db"].Session() as s:
        data = figures(s, period, NOW)

    assert data.links["used"] == 2
    assert data.offers["accepted"] == 2
    assert data.collected == {"USD": 12_000}
    assert data.scheduled == {"USD": 2000 + 2000 + 1500 + 8000}
    assert data.delivery["sms"]["delivered"] == 3


def test_dashboard_page_shows_the_figures_with_charts(client, agent, arranged):
    login(client, agent.email, agent.password)

    resp = client.get(DASHBOARD)

    assert resp.status_code == 200
    page = flat(resp.get_data(as_text=True))
    assert "Showing 2026-10-25 to 2026-11-23 (UTC)" in page
    assert '<dd id="collected">USD 50.00</dd>' in page
    assert '<dd id="scheduled">USD 35.00</dd>' in page
    assert re.search(
        r'<th scope="row">Sent</th><td class="num">4</td><td class="num">3</td>'
        r'<td class="num">7</td><td class="num">100%</td>',
        page,
    )
    assert re.search(
        r'<th scope="row">Signed or paid</th><td class="num">1</td><td class="num">1</td>'
        r'<td class="num">2</td><td class="num">29%</td>',
        page,
    )
    sms = '<th scope="row">SMS</th>' + "".join(
        f'<td class="num">{n}</td>' for n in (2, 2, 0, 0, 0, 4)
    )
    assert sms in page
    assert '<th scope="row">expired</th><td class="num">1</td>' in page
    # Bars are SVG next to the numbers, hidden from screen readers; no script, no CDN.
    assert page.count('<svg class="bar"') >= 3 + 2 + 4 + 6
    assert 'aria-hidden="true"' in page
    assert "<script" not in page
    assert "http://" not in page.replace("http://localhost", "")
    assert "cdn" not in page.lower()


def test_dashboard_counts_follow_the_chosen_days_and_dates(client, agent, arranged):
    login(client, agent.email, agent.password)

    week = flat(client.get(f"{DASHBOARD}?days=7").get_data(as_text=True))
    dates = flat(client.get(f"{DASHBOARD}?start=2026-09-01&end=2027-01-31").get_data(as_text=True))

    assert "Showing 2026-11-17 to 2026-11-23" in week
    assert '<option value="7" selected>' in week
    assert '<th scope="row">expired</th><td class="num">0</td>' in week  # made 10 days ago
    assert '<dd id="collected">USD 120.00</dd>' in dates
    assert 'value="2026-09-01"' in dates


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("days=12", "days", "Choose 7, 30 or 90 days."),
        ("start=2026-13-01&end=2026-11-01", "start", "Enter a date as YYYY-MM-DD."),
        ("start=2026-11-10&end=2026-11-01", "end", "The end must not be before the start."),
        ("start=2020-01-01&end=2026-11-01", "end", "Choose at most 732 days."),
        ("start=%00&end=x", "start", "Enter a date as YYYY-MM-DD."),
        ("start=9999-12-30&end=9999-12-31", "end", "Enter a date before 9999-12-31."),
    ],
)
def test_a_bad_period_is_a_400_with_the_error_by_its_field(client, agent, query, field, message):
    login(client, agent.email, agent.password)

    resp = client.get(f"{DASHBOARD}?{query}")

    assert resp.status_code == 400
    page = resp.get_data(as_text=True)
    assert f'<span class="error" id="{field}-error">{message}</span>' in page
    assert "the last 30 days, until the period above is fixed" in page


def test_every_role_sees_the_dashboard_and_signed_out_people_sign_in(app, make_agent, client):
    assert client.get(DASHBOARD).status_code == 302
    for role in ("agent", "supervisor", "admin"):
        person = make_agent(role)
        c = app.test_client()
        login(c, person.email, person.password)
        assert c.get(DASHBOARD).status_code == 200
