"""The agents' web console. This issue's part: sign in, sign out, the accounts list."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Response, flash, g, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from sqlalchemy import func, or_, select
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from app import agents, audit
from app.auth import console_agent, login_agent, logout_agent, require_console
from app.clock import utcnow
from app.db import db_session
from app.models import Account
from app.ratelimit import limiter, login_email_key, login_limit

bp = Blueprint("console", __name__, url_prefix="/console")
PAGE_SIZE = 25


class LoginForm(FlaskForm):
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
            session.commit()
            login_agent(agent)
            return redirect(_safe_next(request.args.get("next")))
        flash("That email and password do not match an active agent.", "error")
    status = 400 if request.method == "POST" else 200
    return render_template("console/login.html", form=form), status  # type: ignore[return-value]


@bp.post("/logout")
def logout() -> Response:
    logout_agent()
    flash("You are signed out.", "info")
    return redirect(url_for("console.login"))


@bp.get("/")
@require_console()
def accounts() -> str:
    # Control characters cannot match anything stored (and PostgreSQL refuses a NUL).
    query = "".join(ch for ch in request.args.get("q", "") if ch.isprintable()).strip()[:100]
    page = max(1, request.args.get("page", 1, type=int) or 1)
    stmt = select(Account)
    if query:
        # autoescape: a % or _ typed in the search box means itself, not a wildcard.
        stmt = stmt.where(
            or_(
                func.lower(Account.name).contains(query.lower(), autoescape=True),
                Account.external_id == query,
                Account.phone.contains(query, autoescape=True),
                func.lower(Account.email) == query.lower(),
            )
        )
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
