"""Console pages for payment links: create one for an account, resend it, revoke it (after
a confirmation), and the account page's links panel and timeline items. The same service
functions as the JSON API (links.service) do the work; every action is audited there."""

from __future__ import annotations

from flask import (
    Blueprint,
    Response,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.blueprints import BlueprintSetupState
from sqlalchemy import select
from sqlalchemy.orm import Session
from wtforms import IntegerField, StringField
from wtforms.validators import NumberRange, Optional

from app import timeline
from app.auth import current_actor, require_console
from app.clock import utcnow
from app.console import cents_text, confirmed, load_account, load_or_404, parse_money
from app.db import db_session
from app.forms import Form
from app.messaging.render import money
from app.models import Account
from links import service
from links.models import LinkStatus, PaymentLink
from links.web import link_tokens, message_env

bp = Blueprint("link_console", __name__, url_prefix="/console")
CHANNEL_TEXT = {"sms": "SMS", "email": "Email"}


class LinkForm(Form):
    amount = StringField("Amount to pay ($)")
    expires_in_hours = IntegerField(
        "Link lifetime (hours)",
        validators=[Optional(), NumberRange(min=1, max=24 * 90, message="From 1 to 2160 hours.")],
    )


def channel_options(account: Account) -> list[tuple[str, str, bool, str]]:
    """(value, label, usable, why not) for the channel checkboxes."""
    usable = service.available_channels(account)
    options = []
    for channel, address, opted_out in (
        ("sms", account.phone, account.sms_opted_out_at),
        ("email", account.email, account.email_opted_out_at),
    ):
        note = address or "no address on file"
        if address and opted_out:
            note = f"{address}, opted out"
        options.append((channel, CHANNEL_TEXT[channel], channel in usable, note))
    return options


def chosen_channels(account: Account, errors: list[str]) -> list[str]:
    """The ticked channels, checked against the account: ``errors`` gets what is wrong."""
    usable = service.available_channels(account)
    chosen = list(dict.fromkeys(request.form.getlist("channels")))
    if not chosen:
        errors.append("Choose at least one channel." if usable else
                      "The account has no phone or email that may be used.")  # fmt: skip
    for channel in chosen:
        if channel not in CHANNEL_TEXT:
            errors.append(f"{channel!r} is not a channel.")
        elif channel not in usable:
            errors.append(f"{CHANNEL_TEXT[channel]}: opted out or no address on file.")
    return chosen


def load_link(session: Session, link_id: int, *, lock: bool = False) -> PaymentLink:
    return load_or_404(session, PaymentLink, link_id, "link", lock=lock)


@bp.route("/accounts/<int:account_id>/links/new", methods=["GET", "POST"])
@require_console()
def new_link(account_id: int) -> Response | tuple[str, int]:
    session = db_session()
    account = load_account(session, account_id)
    form = LinkForm()
    channel_errors: list[str] = []
    selected = service.available_channels(account)
    if request.method == "GET":
        form.amount.data = cents_text(account.balance_cents)
    if request.method == "POST":
        form.validate()
        amount = None
        typed = (form.amount.data or "").strip()
        try:
            amount = parse_money(typed) if typed else None
        except ValueError as exc:
            form.amount.errors.append(str(exc))
        selected = chosen_channels(account, channel_errors)
        if amount is not None and amount <= 0:
            form.amount.errors.append("Enter an amount more than zero.")
        if not form.errors and not channel_errors:
            try:
                new = service.create_link(
                    session, account, amount_cents=amount, channels=selected,
                    expires_in_hours=form.expires_in_hours.data, actor=current_actor(),
                    agent_id=g.agent.id, now=utcnow(), env=message_env(), tokens=link_tokens(),
                )  # fmt: skip
            except ValueError as exc:
                _field, message = exc.args
                form.amount.errors.append(message[0].upper() + message[1:] + ".")
            else:
                session.commit()
                sent = ", ".join(CHANNEL_TEXT[c] for c in selected)
                flash(f"Payment link created for {money(new.link.amount_cents, account.currency)}"
                      f" and sent by {sent}.", "success")  # fmt: skip
                return redirect(url_for("console.account", account_id=account.id), 303)
        session.rollback()
    status = 400 if request.method == "POST" else 200
    html = render_template(
        "console/link_new.html", account=account, form=form,
        channels=channel_options(account), selected=selected, channel_errors=channel_errors,
    )  # fmt: skip
    return html, status


@bp.post("/links/<int:link_id>/resend")
@require_console()
def resend(link_id: int) -> Response:
    session = db_session()
    link = load_link(session, link_id, lock=True)
    account = link.account
    channels = service.available_channels(account)
    if not channels:
        session.rollback()
        flash("The link was not resent: the account has no phone or email that may be used.",
              "error")  # fmt: skip
        return redirect(url_for("console.account", account_id=account.id), 303)
    try:
        service.resend_link(
            session, link, channels=channels, actor=current_actor(), now=utcnow(),
            env=message_env(), tokens=link_tokens(),
        )  # fmt: skip
    except service.LinkEnded as exc:
        session.rollback()
        flash(f"The link cannot be resent: {exc}.", "error")
        return redirect(url_for("console.account", account_id=account.id), 303)
    session.commit()
    flash(f"Link {link.id} resent by {', '.join(CHANNEL_TEXT[c] for c in channels)}.", "success")
    return redirect(url_for("console.account", account_id=account.id), 303)


@bp.route("/links/<int:link_id>/revoke", methods=["GET", "POST"])
@require_console()
def revoke(link_id: int) -> Response | tuple[str, int]:
    """A confirmation page; its form revokes the link once the box is ticked."""
    session = db_session()
    link = load_link(session, link_id, lock=request.method == "POST")
    now = utcnow()
    service.refresh_status(link, now)
    errors: list[str] = []
    if request.method == "POST":
        status = link.status  # as of now (refresh_status), before the rollback reloads it
        if status not in (LinkStatus.active, LinkStatus.revoked):
            session.rollback()
            flash(f"The link cannot be revoked: it is {status}.", "error")
            return redirect(url_for("console.account", account_id=link.account_id), 303)
        if confirmed():
            service.revoke_link(session, link, current_actor(), now)
            session.commit()
            flash(f"Link {link.id} is revoked: it no longer opens.", "success")
            return redirect(url_for("console.account", account_id=link.account_id), 303)
        errors.append("Tick the box to confirm.")
    # Nothing is committed: the request's session ends with a rollback.
    html = render_template("console/link_revoke.html", link=link, account=link.account,
                           errors=errors)  # fmt: skip
    return html, 400 if errors else 200


# --- the account page ---------------------------------------------------------------------


def _links(session: Session, account_id: int) -> list[PaymentLink]:
    stmt = select(PaymentLink).where(PaymentLink.account_id == account_id)
    return list(session.scalars(stmt.order_by(PaymentLink.id.desc())))


def links_panel(session: Session, account_id: int) -> timeline.Panel | None:
    now = utcnow()
    rows = _links(session, account_id)
    for link in rows:
        service.refresh_status(link, now)  # shown as expired; the sweep writes it
    return timeline.Panel(10, "Payment links", "console/_links_panel.html", {"links": rows})


def link_items(session: Session, account_id: int) -> list[timeline.Item]:
    found = []
    for link in _links(session, account_id):
        amount = money(link.amount_cents, link.account.currency)
        found.append(timeline.Item(link.created_at, "link", f"Payment link {link.id} created",
                                   f"{amount}, open until {link.expires_at:%Y-%m-%d %H:%M} UTC",
                                   "active"))  # fmt: skip
        for at, what, status in (
            (link.opened_at, "opened by the customer", None),
            (link.used_at, "used: paid", "used"),
            (link.revoked_at, "revoked", "revoked"),
        ):
            if at is not None:
                kind = "open" if status is None else "link"
                title = f"Payment link {link.id} {what}"
                found.append(timeline.Item(at, kind, title, status=status))
    return found


@bp.record_once
def _register(state: BlueprintSetupState) -> None:
    timeline.register_panel(state.app, "links", links_panel)
    timeline.register_items(state.app, "links", link_items)
