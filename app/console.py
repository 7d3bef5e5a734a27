"""The agents' web console: sign in and out, account search, the account page (contact,
balance, opt-outs, hold, the features' panels and one timeline), holds, and the shared
pieces every console page uses (navigation, money and time helpers, the stylesheet and
the small progressive script)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session
from wtforms import BooleanField, EmailField, PasswordField, RadioField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired, Length

from app import agents, audit, timeline
from app.auth import console_agent, current_actor, login_agent, logout_agent, require_console
from app.clock import utcnow
from app.db import db_session, get_by_id
from app.forms import Form
from app.messaging.render import money
from app.models import Account, AuditEvent, Hold, Message, Role
from app.payments.models import Payment
from app.ratelimit import limiter, login_email_key, login_limit
from app.settings import get_settings

M = TypeVar("M")
bp = Blueprint("console", __name__, url_prefix="/console")
PAGE_SIZE = 25
TIMELINE_PAGE_SIZE = 50
ASSETS = Path(__file__).resolve().parent.parent / "templates" / "console"

# The other console pages, shown in the navigation when registered and the role allows.
NAV = (
    ("console.accounts", "Accounts", Role.agent),
    ("dashboard.index", "Dashboard", Role.agent),
    ("campaigns.index", "Import & campaigns", Role.agent),
    ("console_admin.settings", "Settings", Role.supervisor),
    ("console_admin.agents", "Agents & keys", Role.admin),
    ("console_admin.ops", "Operations", Role.admin),
)
# Blueprints whose pages are about an account: "Accounts" is their navigation entry.
ACCOUNT_PAGES = {"console", "link_console", "offer_console", "agreement_console"}
HOLD_TEXT = {Hold.dispute.value: "Dispute", Hold.cease_communication.value: "Cease contact"}


# --- helpers for every console page -------------------------------------------------------


@dataclass(frozen=True)
class NavEntry:
    endpoint: str
    label: str
    current: bool


def nav_entries() -> list[NavEntry]:
    """The navigation for the signed-in agent: registered endpoints their role allows."""
    agent = g.get("agent")
    if agent is None:
        return []
    current = request.endpoint or ""
    entries: list[NavEntry] = []
    for endpoint, label, role in NAV:
        if endpoint not in current_app.view_functions or not agent.has_role(role):
            continue
        if any(entry.label == label for entry in entries):
            continue
        if endpoint == "console.accounts":
            here = current.split(".")[0] in ACCOUNT_PAGES
        else:
            here = current.startswith(endpoint)
        entries.append(NavEntry(endpoint, label, here))
    return entries


def when(instant: datetime | None, tz_name: str | None = None) -> str:
    """``Nov 21, 2026 9:03 AM EST`` in ``tz_name`` (UTC when none)."""
    if instant is None:
        return ""
    local = instant.astimezone(ZoneInfo(tz_name or "UTC"))
    return local.strftime("%b %-d, %Y %-I:%M %p %Z")


def parse_money(text: str) -> int:
    """Dollars and cents as typed (``1,250.5``, ``$80``) → integer cents; ValueError else."""
    cleaned = text.strip().replace(",", "").removeprefix("$").strip()
    match = re.fullmatch(r"(\d{1,10})(?:\.(\d{1,2}))?", cleaned)
    if not match:
        raise ValueError("Enter an amount such as 125.00")
    return int(match.group(1)) * 100 + int((match.group(2) or "0").ljust(2, "0"))


def cents_text(cents: int | None) -> str:
    """Cents as an amount to put back in a form field: ``12500`` → ``125.00``."""
    return "" if cents is None else f"{cents // 100}.{cents % 100:02d}"


def load_or_404(
    session: Session, model: type[M], row_id: int, what: str, *, lock: bool = False
) -> M:
    """The ``model`` row with ``row_id`` (locked with ``lock``), or the console's 404 page
    saying that no ``what`` has this id."""
    row = get_by_id(session, model, row_id, lock=lock)
    if row is None:
        abort(404, f"No {what} has this id.")
    return row


def load_account(session: Session, account_id: int) -> Account:
    return load_or_404(session, Account, account_id, "account")


def confirmed() -> bool:
    """The confirmation box of a destructive form was ticked."""
    return request.form.get("confirm") == "yes"


@bp.app_context_processor
def _console_helpers() -> dict[str, Any]:
    return {
        "console_nav": nav_entries,
        "money": money,
        "when": when,
        "hold_text": HOLD_TEXT,
        "has_endpoint": lambda name: name in current_app.view_functions,
    }


@bp.get("/assets/<any('console.css', 'console.js'):name>")
def asset(name: str) -> Response:
    """The console's stylesheet and script, served from the templates folder (same
    origin, so the CSP's 'self' allows them without inline code)."""
    mimetype = "text/css" if name.endswith(".css") else "text/javascript"
    response = Response((ASSETS / name).read_text(), mimetype=mimetype)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


# --- sign in and out ----------------------------------------------------------------------


class LoginForm(Form):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=200)])


def _safe_next(target: str | None) -> str:
    """``target`` if it is a path on this site, else the accounts page.

    Browsers drop tabs and newlines from a URL and read a backslash as a slash, so
    ``/<tab>/evil.example`` would leave the site: any such character refuses the target.
    """
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and not any(ch == "\\" or ord(ch) <= 32 or ord(ch) == 127 for ch in target)
        and not urlsplit(target).netloc
    ):
        return target
    return url_for("console.accounts")


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(login_limit, methods=["POST"])
@limiter.limit(login_limit, methods=["POST"], key_func=login_email_key)
def login() -> Response | str:
    if request.method == "GET" and console_agent() is not None:
        return redirect(_safe_next(request.args.get("next")))
    form = LoginForm()
    if form.validate_on_submit():
        session = db_session()
        agent = agents.authenticate_password(
            session, form.email.data or "", form.password.data or ""
        )
        if agent is not None:
            now = utcnow()
            agent.last_login_at = now
            actor = audit.Actor(
                "agent", str(agent.id), ip=request.remote_addr, request_id=g.get("request_id")
            )
            audit.record(session, actor, "agent.logged_in", "agent", agent.id, now)
            login_agent(agent)
            session.commit()
            return redirect(_safe_next(request.args.get("next")))
        flash("That email and password do not match an active agent.", "error")
    status = 400 if request.method == "POST" else 200
    return render_template("console/login.html", form=form), status  # type: ignore[return-value]


@bp.post("/logout")
def logout() -> Response:
    agent = console_agent()
    if agent is not None:
        session = db_session()
        actor = audit.Actor(
            "agent", str(agent.id), ip=request.remote_addr, request_id=g.get("request_id")
        )
        audit.record(session, actor, "agent.logged_out", "agent", agent.id, utcnow())
        logout_agent()
        session.commit()
    else:
        logout_agent()
    flash("You are signed out.", "info")
    return redirect(url_for("console.login"))


# --- account search -----------------------------------------------------------------------


@bp.get("/")
@require_console()
def accounts() -> str:
    # Control characters cannot match anything stored (and PostgreSQL refuses a NUL).
    query = "".join(ch for ch in request.args.get("q", "") if ch.isprintable()).strip()[:100]
    page = max(1, request.args.get("page", 1, type=int) or 1)
    stmt = select(Account)
    if query:
        # autoescape: a % or _ typed in the search box means itself, not a wildcard.
        matches = [
            func.lower(Account.name).contains(query.lower(), autoescape=True),
            Account.external_id == query,
            Account.phone.contains(query, autoescape=True),
            func.lower(Account.email) == query.lower(),
        ]
        # Phones are stored in E.164: "(202) 555-0143" finds +12025550143 by its digits.
        digits = "".join(ch for ch in query if ch.isdigit())
        if len(digits) >= 4 and digits != query:
            matches.append(Account.phone.contains(digits))
        stmt = stmt.where(or_(*matches))
    session = db_session()
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(page, pages)  # past the end shows the last page (and no offset overflows)
    rows = session.scalars(
        stmt.order_by(Account.id).offset((page - 1) * PAGE_SIZE).limit(PAGE_SIZE)
    )
    return render_template(
        "console/accounts.html",
        accounts=list(rows),
        query=query,
        page=page,
        pages=pages,
        total=total,
    )


# --- the account page and holds -----------------------------------------------------------


class HoldForm(Form):
    hold = RadioField(
        "Reason for the hold",
        choices=[
            SelectChoice(Hold.dispute.value, "Dispute: the customer disputes the debt"),
            SelectChoice(
                Hold.cease_communication.value, "Cease contact: the customer asked us to stop"
            ),
        ],
        validators=[InputRequired(message="Choose why the account is on hold.")],
    )
    note = TextAreaField("Note (optional)", validators=[Length(max=500)])


class ReleaseForm(Form):
    note = TextAreaField("Why the hold ends", validators=[DataRequired(), Length(max=500)])
    confirm = BooleanField("Yes, contact with this customer may resume")


def _account_page(
    account: Account,
    *,
    hold_form: HoldForm | None = None,
    release_form: ReleaseForm | None = None,
    status: int = 200,
) -> tuple[str, int]:
    session = db_session()
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    tz = account.timezone or get_settings(session).default_timezone
    items = timeline.items(app, session, account.id)
    pages = max(1, -(-len(items) // TIMELINE_PAGE_SIZE))
    page = min(max(1, request.args.get("page", 1, type=int) or 1), pages)
    shown = items[(page - 1) * TIMELINE_PAGE_SIZE : page * TIMELINE_PAGE_SIZE]
    html = render_template(
        "console/account.html",
        account=account,
        tz=tz,
        panels=timeline.panels(app, session, account.id),
        items=shown,
        total_items=len(items),
        page=page,
        pages=pages,
        hold_form=hold_form or HoldForm(formdata=None),
        release_form=release_form or ReleaseForm(formdata=None),
        can_release=g.agent.has_role(Role.supervisor),
    )
    return html, status


@bp.get("/accounts/<int:account_id>")
@require_console()
def account(account_id: int) -> tuple[str, int]:
    return _account_page(load_account(db_session(), account_id))


@bp.post("/accounts/<int:account_id>/hold")
@require_console()
def put_on_hold(account_id: int) -> Response | tuple[str, int]:
    """Put the account on hold: the compliance gate then suppresses every send to it."""
    session = db_session()
    account = load_account(session, account_id)
    form = HoldForm()
    if not form.validate():
        session.rollback()
        return _account_page(account, hold_form=form, status=400)
    now = utcnow()
    previous = account.hold
    account.hold = form.hold.data
    account.updated_at = now
    audit.record(
        session, current_actor(), "account.hold_set", "account", account.id, now,
        {"hold": account.hold, "previous": previous, "note": (form.note.data or "").strip()},
    )  # fmt: skip
    session.commit()
    flash(f"The account is on hold ({HOLD_TEXT[account.hold]}). Nothing will be sent.", "info")
    return redirect(url_for("console.account", account_id=account.id), 303)


@bp.post("/accounts/<int:account_id>/hold/release")
@require_console(Role.supervisor)
def release_hold(account_id: int) -> Response | tuple[str, int]:
    """End a hold (supervisor or admin): a cease-contact request is not lifted lightly."""
    session = db_session()
    account = load_account(session, account_id)
    form = ReleaseForm()
    valid = form.validate()
    if not form.confirm.data:
        form.confirm.errors = [*form.confirm.errors, "Tick the box to confirm."]
        valid = False
    if account.hold is None:
        flash("The account is not on hold.", "info")
        return redirect(url_for("console.account", account_id=account.id), 303)
    if not valid:
        session.rollback()
        return _account_page(account, release_form=form, status=400)
    now = utcnow()
    previous = account.hold
    account.hold = None
    account.updated_at = now
    audit.record(
        session, current_actor(), "account.hold_released", "account", account.id, now,
        {"previous": previous, "note": (form.note.data or "").strip()},
    )  # fmt: skip
    session.commit()
    flash("The hold is released.", "info")
    return redirect(url_for("console.account", account_id=account.id), 303)


# --- the timeline's app-level items -------------------------------------------------------

KIND_TEXT = {
    "link": "Payment link",
    "offer": "Plan offer",
    "offer_expired": "Offer expired notice",
    "plan_confirmed": "Plan confirmation",
    "plan_cancelled": "Plan cancellation notice",
    "plan_completed": "Plan completed notice",
    "payment_failed": "Payment failed notice",
    "receipt": "Receipt",
    "reminder_1": "Reminder 1",
    "reminder_2": "Reminder 2",
    "reminder_3": "Reminder 3",
    "sms_opted_out": "Opt-out confirmation",
    "sms_opted_in": "Opt-in confirmation",
    "sms_help": "Help reply",
}
AUDIT_TEXT = {
    "account.created": "Account created",
    "account.updated": "Account updated",
    "account.imported": "Account imported",
    "account.hold_set": "Put on hold",
    "account.hold_released": "Hold released",
}


def message_items(session: Session, account_id: int) -> list[timeline.Item]:
    rows = session.scalars(
        select(Message).where(Message.account_id == account_id).order_by(Message.id)
    )
    found = []
    for m in rows:
        channel = "SMS" if m.channel == "sms" else "Email"
        detail = m.subject or m.body
        if m.status_reason:
            detail = f"{detail} — {m.status_reason}" if detail else m.status_reason
        found.append(
            timeline.Item(
                at=m.created_at,
                kind="message",
                title=f"{channel}: {KIND_TEXT.get(m.kind, m.kind)} to {m.recipient or '—'}",
                detail=detail[:300],
                status=m.status,
            )
        )
    return found


def payment_items(session: Session, account_id: int) -> list[timeline.Item]:
    rows = session.scalars(
        select(Payment).where(Payment.account_id == account_id).order_by(Payment.id)
    )
    return [
        timeline.Item(
            at=p.paid_at or p.created_at,
            kind="payment",
            title=f"Payment of {money(p.amount_cents, p.currency)}",
            detail=" · ".join(
                part
                for part in (
                    p.method.label,
                    f"receipt {p.receipt_number}" if p.receipt_number else "",
                    p.decline_message or "",
                )
                if part
            ),
            status=p.status,
        )
        for p in rows
    ]


def account_event_items(session: Session, account_id: int) -> list[timeline.Item]:
    rows = session.scalars(
        select(AuditEvent)
        .where(AuditEvent.object_type == "account", AuditEvent.object_id == str(account_id))
        .order_by(AuditEvent.id)
    )
    found = []
    for e in rows:
        data = e.data or {}
        detail = []
        if data.get("hold"):
            detail.append(HOLD_TEXT.get(data["hold"], data["hold"]))
        if data.get("note"):
            detail.append(str(data["note"]))
        who = f"{e.actor_type} {e.actor_id}" if e.actor_id else e.actor_type
        detail.append(f"by {who}")
        found.append(
            timeline.Item(
                at=e.at,
                kind="hold" if "hold" in e.action else "event",
                title=AUDIT_TEXT.get(e.action, e.action),
                detail=" · ".join(detail),
            )
        )
    return found


@bp.record_once
def _register_timeline(state: BlueprintSetupState) -> None:
    timeline.register_items(state.app, "messages", message_items)
    timeline.register_items(state.app, "payments", payment_items)
    timeline.register_items(state.app, "account_events", account_event_items)
