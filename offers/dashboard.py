"""The console dashboard: offers and links by status, delivery per channel, the funnel
sent → opened → signed or paid, and amounts collected and scheduled, over a period.

Every figure is one grouped query over the period's rows; the charts are server-rendered
SVG bars next to the numbers (no script).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from flask import Blueprint, render_template, request
from sqlalchemy import and_, case, func, literal, select
from sqlalchemy.orm import Session

from app.auth import require_console
from app.clock import utcnow
from app.db import db_session
from app.models import Account, Message
from app.payments.models import Payment
from links.models import PaymentLink
from offers.models import Installment, Offer, PaymentPlan

bp = Blueprint("dashboard", __name__, url_prefix="/console")

PERIODS = {"7": "Last 7 days", "30": "Last 30 days", "90": "Last 90 days"}
DEFAULT_DAYS = 30
MAX_DAYS = 366 * 2
LINK_STATUSES = ("active", "used", "expired", "revoked")
OFFER_STATUSES = ("sent", "viewed", "accepted", "declined", "expired", "revoked")
# Delivery columns: what the dashboard shows, and the message statuses each one counts.
DELIVERY = (
    ("delivered", ("delivered",)),
    ("failed", ("failed", "undelivered")),
    ("bounced", ("bounced",)),
    ("suppressed", ("suppressed",)),
    ("in flight", ("queued", "deferred", "sending", "sent")),
)


@dataclass
class Period:
    start: date
    end: date  # inclusive

    @property
    def since(self) -> datetime:
        return datetime.combine(self.start, time(), UTC)

    @property
    def until(self) -> datetime:
        return datetime.combine(self.end + timedelta(days=1), time(), UTC)


@dataclass
class Funnel:
    sent: int = 0
    opened: int = 0
    converted: int = 0  # signed (offers) or paid (links)


@dataclass
class Figures:
    links: dict[str, int] = field(default_factory=dict)
    offers: dict[str, int] = field(default_factory=dict)
    delivery: dict[str, dict[str, int]] = field(default_factory=dict)
    link_funnel: Funnel = field(default_factory=Funnel)
    offer_funnel: Funnel = field(default_factory=Funnel)
    collected: dict[str, int] = field(default_factory=dict)  # currency -> cents
    scheduled: dict[str, int] = field(default_factory=dict)

    @property
    def funnel(self) -> Funnel:
        a, b = self.link_funnel, self.offer_funnel
        return Funnel(a.sent + b.sent, a.opened + b.opened, a.converted + b.converted)


def _count(n: Any) -> Any:
    return func.coalesce(func.sum(case((n, 1), else_=0)), 0)


def figures(session: Session, period: Period, now: datetime) -> Figures:
    """Every figure of the dashboard for links, offers and messages made in ``period``,
    payments paid in it and amounts scheduled to be charged in it."""
    since, until = period.since, period.until
    out = Figures()
    # An active link past its expiry is expired, whether or not the sweep has written it.
    link_status = case(
        (and_(PaymentLink.status == "active", PaymentLink.expires_at <= now), literal("expired")),
        else_=PaymentLink.status,
    )
    in_links = and_(PaymentLink.created_at >= since, PaymentLink.created_at < until)
    out.links = dict.fromkeys(LINK_STATUSES, 0)
    out.links.update(
        session.execute(
            select(link_status, func.count()).where(in_links).group_by(link_status)
        ).all()
    )
    in_offers = and_(Offer.created_at >= since, Offer.created_at < until)
    out.offers = dict.fromkeys(OFFER_STATUSES, 0)
    out.offers.update(
        session.execute(
            select(Offer.status, func.count())
            .where(in_offers, Offer.status != "draft")
            .group_by(Offer.status)
        ).all()
    )

    by_status: dict[tuple[str, str], int] = {
        (channel, status): n
        for channel, status, n in session.execute(
            select(Message.channel, Message.status, func.count())
            .where(Message.created_at >= since, Message.created_at < until)
            .group_by(Message.channel, Message.status)
        )
    }
    for channel in ("sms", "email"):
        out.delivery[channel] = {
            column: sum(by_status.get((channel, s), 0) for s in statuses)
            for column, statuses in DELIVERY
        }
        out.delivery[channel]["total"] = sum(out.delivery[channel].values())

    paid_links = (
        select(Payment.link_id)
        .where(Payment.link_id.is_not(None), Payment.status.in_(("paid", "pending")))
        .distinct()
    )
    row = session.execute(
        select(
            func.count(),
            _count(PaymentLink.opened_at.is_not(None)),
            _count(
                (PaymentLink.status == "used") | PaymentLink.id.in_(paid_links.scalar_subquery())
            ),
        ).where(in_links)
    ).one()
    out.link_funnel = Funnel(*row)
    row = session.execute(
        select(
            func.count(),
            _count(Offer.viewed_at.is_not(None) | Offer.accepted_at.is_not(None)),
            _count(Offer.accepted_at.is_not(None)),
        ).where(in_offers, Offer.status != "draft")
    ).one()
    out.offer_funnel = Funnel(*row)

    out.collected = dict(
        session.execute(
            select(Payment.currency, func.sum(Payment.amount_cents))
            .where(Payment.status == "paid", Payment.paid_at >= since, Payment.paid_at < until)
            .group_by(Payment.currency)
        ).all()
    )
    scheduled: dict[str, int] = dict(
        session.execute(
            select(Payment.currency, func.sum(Payment.amount_cents))
            .where(
                Payment.status == "scheduled",
                Payment.scheduled_for >= since,
                Payment.scheduled_for < until,
            )
            .group_by(Payment.currency)
        ).all()
    )
    for currency, cents in session.execute(
        select(Account.currency, func.sum(Installment.amount_cents))
        .join(PaymentPlan, PaymentPlan.id == Installment.plan_id)
        .join(Account, Account.id == PaymentPlan.account_id)
        .where(
            Installment.status.in_(("scheduled", "pending")),
            Installment.due_date >= period.start,
            Installment.due_date <= period.end,
        )
        .group_by(Account.currency)
    ):
        scheduled[currency] = scheduled.get(currency, 0) + int(cents)
    out.scheduled = scheduled
    return out


def _period(args: Any, today: date) -> tuple[Period, dict[str, str], dict[str, list[str]]]:
    """The period asked for (?days=7|30|90, or ?start=&end= dates), what was typed, and
    errors by field."""
    typed = {
        "days": args.get("days", ""),
        "start": args.get("start", "").strip(),
        "end": args.get("end", "").strip(),
    }
    errors: dict[str, list[str]] = {}
    default = Period(today - timedelta(days=DEFAULT_DAYS - 1), today)
    if not typed["start"] and not typed["end"]:
        days = typed["days"] or str(DEFAULT_DAYS)
        if days not in PERIODS:
            errors["days"] = ["Choose 7, 30 or 90 days."]
            return default, typed, errors
        typed["days"] = days
        return Period(today - timedelta(days=int(days) - 1), today), typed, errors
    parsed: dict[str, date] = {}
    for name in ("start", "end"):
        try:
            parsed[name] = date.fromisoformat(typed[name])
        except ValueError:
            errors[name] = ["Enter a date as YYYY-MM-DD."]
    if errors:
        return default, typed, errors
    if parsed["end"] >= date.max:  # the period runs to the end of its last day
        errors["end"] = ["Enter a date before 9999-12-31."]
    elif parsed["end"] < parsed["start"]:
        errors["end"] = ["The end must not be before the start."]
    elif (parsed["end"] - parsed["start"]).days >= MAX_DAYS:
        errors["end"] = [f"Choose at most {MAX_DAYS} days."]
    if errors:
        return default, typed, errors
    typed["days"] = ""
    return Period(parsed["start"], parsed["end"]), typed, errors


@bp.get("/dashboard")
@require_console()
def index() -> tuple[str, int]:
    now = utcnow()
    period, typed, errors = _period(request.args, now.date())
    data = figures(db_session(), period, now)
    return render_template(
        "console/dashboard.html", period=period, typed=typed, errors=errors, periods=PERIODS,
        data=data, delivery_columns=[c for c, _ in DELIVERY],
    ), (400 if errors else 200)  # fmt: skip
