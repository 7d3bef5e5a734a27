"""Console pages for offers and plans: create an offer with a live preview (the schedule,
the SMS with its character and segment count, the email), revoke an offer and cancel a
plan (each after a confirmation), the plan page, and the account page's offers and plans
panel and timeline items.

The work is done by the same functions as the JSON API: offers.api.parse_request and
offers.service.validate_offer / create_offer / revoke_offer, offers.plans.cancel_plan.
The preview renders the offer message with app.messaging.render, as the outbox will.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
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
from werkzeug.datastructures import MultiDict
from wtforms import DateField, IntegerField, RadioField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Length, Optional

from app import timeline
from app.auth import current_actor, require_console
from app.clock import parse_instant, utcnow
from app.console import cents_text, confirmed, load_account, load_or_404, parse_money
from app.db import db_session
from app.forms import Form
from app.messaging import render, segments
from app.messaging.outbox import base_context
from app.models import Account, Role
from app.settings import get_settings
from app.validation import Errors
from links import checkout
from links.console import channel_options
from links.service import available_channels
from links.tokens import new_token_id
from links.web import message_env
from offers import plan_math, plans, service
from offers.api import parse_request
from offers.models import OPEN_OFFER, Offer, OfferEvent, PaymentPlan, PlanStatus
from offers.web import offer_tokens

bp = Blueprint("offer_console", __name__, url_prefix="/console")
FREQUENCY_LABELS = [
    SelectChoice("monthly", "Monthly"),
    SelectChoice("semimonthly", "1st and 15th of the month"),
    SelectChoice("biweekly", "Every two weeks"),
    SelectChoice("weekly", "Weekly"),
]
# Where the API's field names show on the form.
FORM_FIELD = {
    "total_cents": "total",
    "expires_at": "expires_in_hours",
    "account_id": "kind",
}
EVENT_TEXT = {
    "offer.sent": "sent",
    "offer.viewed": "opened by the customer",
    "verification.passed": "customer verified",
    "verification.failed": "verification failed",
    "verification.locked": "verification locked",
    "payment_method.chosen": "payment method chosen",
    "esign.consented": "consent to sign electronically",
    "terms.accepted": "terms accepted",
    "signature.captured": "signed",
    "offer.accepted": "accepted: plan created",
    "offer.declined": "declined by the customer",
    "offer.revoked": "revoked",
    "offer.expired": "expired",
    "offer.reminder_sent": "reminder sent",
    "offer.reminder_skipped": "reminder skipped",
    "payment_method.changed": "payment method changed",
    "plan.cancelled": "plan cancelled",
    "plan.completed": "plan paid in full",
    "plan.defaulted": "plan in default",
}
EVENT_KIND = {"offer.viewed": "open", "signature.captured": "signature"}


class OfferForm(Form):
    kind = RadioField(
        "Kind of offer",
        choices=[
            SelectChoice("plan", "Payment plan: the total in installments"),
            SelectChoice("settlement", "Settlement: less than the balance, to settle the account"),
        ],
        default="plan",
    )
    total = StringField("Total to pay ($)")
    installment_count = IntegerField("Number of payments", validators=[Optional()])
    frequency = SelectField("How often", choices=FREQUENCY_LABELS, default="monthly")
    first_due_date = DateField("First payment date", validators=[Optional()])
    expires_in_hours = IntegerField("Offer open for (hours)", validators=[Optional()])
    reminder_offsets = StringField("Reminders before it expires")


class CancelForm(Form):
    reason = TextAreaField("Reason for cancelling", validators=[Length(max=plans.MAX_REASON)])


@dataclass
class Draft:
    """The offer form as read: the service's request when it parsed, every error, and
    whether the offer may be created."""

    form: OfferForm
    request: service.OfferRequest | None
    percent_off: int | None
    channels: list[str]
    channel_errors: list[str]
    general_errors: list[str]

    @property
    def ok(self) -> bool:
        return self.request is not None and not self.form.errors and not self.channel_errors


def _default_form(session: Session, account: Account) -> OfferForm:
    settings = get_settings(session)
    tz = account.timezone or settings.default_timezone
    form = OfferForm(formdata=None, meta={"csrf": False})
    form.total.data = cents_text(account.balance_cents)
    form.installment_count.data = 3
    form.first_due_date.data = plan_math.local_today(utcnow(), tz) + timedelta(days=7)
    form.expires_in_hours.data = settings.offer_lifetime_hours
    form.reminder_offsets.data = ", ".join(settings.reminder_offsets)
    return form


def _read(session: Session, account: Account, formdata: MultiDict[str, str]) -> Draft:
    """Check the form the API's way: parse_request for formats, validate_offer for rules."""
    # The request was CSRF-checked already (CSRFProtect); the preview is a GET.
    form = OfferForm(formdata=formdata, meta={"csrf": False})
    form.validate()
    now = utcnow()
    data: dict[str, Any] = {"account_id": account.id, "kind": form.kind.data or "plan"}
    total_text = (form.total.data or "").strip()
    if total_text:
        try:
            data["total_cents"] = parse_money(total_text)
        except ValueError as exc:
            form.total.errors.append(str(exc))
    if form.installment_count.data is not None:
        data["installment_count"] = form.installment_count.data
    elif data["kind"] == "plan" and not form.installment_count.errors:
        form.installment_count.errors.append("Enter the number of payments.")
    if form.frequency.data:
        data["frequency"] = form.frequency.data
    if form.first_due_date.data is not None:
        data["first_due_date"] = form.first_due_date.data.isoformat()
    if form.expires_in_hours.data is not None:
        data["expires_in_hours"] = form.expires_in_hours.data
    data["reminder_offsets"] = [
        part.strip() for part in (form.reminder_offsets.data or "").split(",") if part.strip()
    ]
    channels = list(dict.fromkeys(formdata.getlist("channels")))
    channel_errors = []
    if not channels:
        channel_errors.append(
            "Choose at least one channel."
            if available_channels(account)
            else "The account has no phone or email that may be used."
        )
    else:
        data["channels"] = channels
    req, errors = parse_request(data, now)
    percent_off = None
    if req is not None:
        errors, percent_off = service.validate_offer(session, req, Role(g.agent.role), now)
    general: list[str] = []
    _attach(form, errors, channel_errors, general)
    return Draft(form, req, percent_off, channels, channel_errors, general)


def _attach(form: OfferForm, errors: Errors, channel_errors: list[str], general: list[str]) -> None:
    """The service's messages under the form's fields (a field that already shows a
    format error keeps only that one)."""
    for name, messages in errors.by_field.items():
        if name == "channels":
            if not channel_errors:
                channel_errors.extend(checkout.as_sentence(m) for m in messages)
            continue
        field = getattr(form, FORM_FIELD.get(name, name), None)
        if field is None:
            general.extend(f"{name} {m}" for m in messages)
        elif not field.errors:
            field.errors.extend(checkout.as_sentence(m) for m in messages)


@dataclass
class Preview:
    schedule: list[plan_math.Installment]
    total_cents: int | None
    sms: str
    sms_info: segments.SegmentInfo
    sms_chars: int
    subject: str
    email_text: str
    email_html: str
    reminders: list[Any]


def _preview(session: Session, account: Account, draft: Draft) -> Preview | None:
    """What the offer would look like: its schedule and its SMS and email, rendered with
    a token of the real length (so the SMS counts are the real ones)."""
    req = draft.request
    if req is None:
        return None
    try:
        schedule = plan_math.schedule(
            req.total_cents, req.installment_count, req.frequency, req.first_due_date
        )
    except (ValueError, TypeError):
        schedule = []
    settings = get_settings(session)
    env = message_env()
    offer = Offer(
        token_id=new_token_id(), account_id=account.id, kind=req.kind,
        total_cents=req.total_cents, installment_count=req.installment_count,
        frequency=req.frequency, first_due_date=req.first_due_date, expires_at=req.expires_at,
    )  # fmt: skip
    offer.account = account
    url = service.offer_url(env, offer_tokens(), offer)
    context = {
        **base_context(account, settings, env),
        **service.offer_message_context(offer, settings, url),
        "unsubscribe_url": env.unsubscribe_url(0),
    }
    if offer in session:  # pragma: no cover - nothing adds it; never written either way
        session.expunge(offer)
    sms = render.render_sms("offer", context).body
    email = render.render_email("offer", context)
    try:
        reminders = plan_math.reminder_times(req.expires_at, req.reminder_offsets)
    except ValueError:
        reminders = []
    return Preview(
        schedule=schedule, total_cents=sum(i.amount_cents for i in schedule) or None, sms=sms,
        sms_info=segments.count(sms), sms_chars=len(sms), subject=email.subject,
        email_text=email.text, email_html=email.html, reminders=reminders,
    )  # fmt: skip


def _form_query(formdata: MultiDict[str, str]) -> dict[str, Any]:
    """The form's fields as query arguments for the preview URLs (no CSRF token)."""
    names = [name for name in formdata if name not in ("csrf_token", "action")]
    keep = {name: formdata.getlist(name) for name in names}
    return {k: v if len(v) > 1 or k == "channels" else v[0] for k, v in keep.items()}


def _offer_page(
    account: Account, form: OfferForm, draft: Draft | None, preview: Preview | None,
    query: dict[str, Any], status: int,
) -> tuple[str, int]:  # fmt: skip
    html = render_template(
        "console/offer_new.html", account=account, form=form, draft=draft, preview=preview,
        channels=channel_options(account),
        selected=draft.channels if draft else available_channels(account),
        channel_errors=draft.channel_errors if draft else [],
        general_errors=draft.general_errors if draft else [], query=query,
        tz=account.timezone or get_settings(db_session()).default_timezone,
    )  # fmt: skip
    return html, status


@bp.route("/accounts/<int:account_id>/offers/new", methods=["GET", "POST"])
@require_console()
def new_offer(account_id: int) -> Response | tuple[str, int]:
    """The offer form. "Preview" (and the script, through ``preview``) shows the offer;
    "Create and send offer" makes it."""
    session = db_session()
    account = load_account(session, account_id)
    if request.method == "GET":
        form = _default_form(session, account)
        formdata = MultiDict(
            [("kind", "plan"), ("total", form.total.data),
             ("installment_count", str(form.installment_count.data)),
             ("frequency", "monthly"), ("first_due_date", form.first_due_date.data.isoformat()),
             ("expires_in_hours", str(form.expires_in_hours.data)),
             ("reminder_offsets", form.reminder_offsets.data)]
            + [("channels", c) for c in available_channels(account)]
        )  # fmt: skip
        draft = _read(session, account, formdata)
        preview = _preview(session, account, draft) if draft.ok else None
        session.rollback()
        return _offer_page(account, form, None, preview, _form_query(formdata), 200)
    draft = _read(session, account, request.form)
    creating = request.form.get("action") == "create"
    if creating and draft.ok:
        assert draft.request is not None
        offer, _url, messages = service.create_offer(
            session, draft.request, percent_off=draft.percent_off, actor=current_actor(),
            agent_id=g.agent.id, now=utcnow(), env=message_env(), tokens=offer_tokens(),
        )  # fmt: skip
        session.commit()
        sent = " and ".join("SMS" if m.channel == "sms" else "email" for m in messages)
        flash(f"Offer {offer.id} created and sent by {sent}.", "success")
        return redirect(url_for("console.account", account_id=account.id), 303)
    preview = _preview(session, account, draft) if draft.ok else None
    session.rollback()
    status = 200 if draft.ok else 400
    return _offer_page(account, draft.form, draft, preview, _form_query(request.form), status)


@bp.get("/accounts/<int:account_id>/offers/preview")
@require_console()
def preview(account_id: int) -> tuple[str, int]:
    """The preview panel alone, for the form's script (the same as "Preview" shows)."""
    session = db_session()
    account = load_account(session, account_id)
    draft = _read(session, account, request.args)
    shown = _preview(session, account, draft) if draft.ok else None
    session.rollback()
    html = render_template(
        "console/_offer_preview.html", account=account, draft=draft, preview=shown,
        query=_form_query(request.args),
        tz=account.timezone or get_settings(session).default_timezone,
    )  # fmt: skip
    return html, 200 if draft.ok else 400


@bp.get("/accounts/<int:account_id>/offers/preview/email")
@require_console()
def preview_email(account_id: int) -> Response:
    """The offer email's HTML exactly as sent, for the preview's sandboxed frame."""
    session = db_session()
    account = load_account(session, account_id)
    draft = _read(session, account, request.args)
    shown = _preview(session, account, draft) if draft.ok else None
    session.rollback()
    if shown is None:
        abort(400, "The offer has errors: fix them to see its email.")
    response = Response(shown.email_html, mimetype="text/html")
    # Emails carry inline styles; this document runs no script and may only be framed here.
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"
    )
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Cache-Control"] = "no-store"
    return response


def load_offer(session: Session, offer_id: int) -> Offer:
    return load_or_404(session, Offer, offer_id, "offer")


def load_plan(session: Session, plan_id: int) -> PaymentPlan:
    return load_or_404(session, PaymentPlan, plan_id, "plan")


@bp.route("/offers/<int:offer_id>/revoke", methods=["GET", "POST"])
@require_console()
def revoke(offer_id: int) -> Response | tuple[str, int]:
    session = db_session()
    offer = load_offer(session, offer_id)
    now = utcnow()
    service.refresh_status(offer, now)
    errors: list[str] = []
    if request.method == "POST":
        if confirmed():
            try:
                service.revoke_offer(session, offer, current_actor(), now)
            except service.OfferEnded as exc:
                session.rollback()
                flash(f"The offer cannot be revoked: {exc}.", "error")
                return redirect(url_for("console.account", account_id=offer.account_id), 303)
            session.commit()
            flash(f"Offer {offer.id} is revoked: its link no longer opens.", "success")
            return redirect(url_for("console.account", account_id=offer.account_id), 303)
        errors.append("Tick the box to confirm.")
    # Nothing is committed: the request's session ends with a rollback.
    html = render_template("console/offer_revoke.html", offer=offer, account=offer.account,
                           errors=errors, open_offer=offer.status in OPEN_OFFER)  # fmt: skip
    return html, 400 if errors else 200


@bp.get("/plans/<int:plan_id>")
@require_console()
def plan(plan_id: int) -> str:
    session = db_session()
    payment_plan = load_plan(session, plan_id)
    account = session.get(Account, payment_plan.account_id)
    return render_template(
        "console/plan.html", plan=payment_plan, account=account,
        agreement_id=plans.agreement_id(session, payment_plan),
        messages=plans.plan_messages(session, payment_plan),
        tz=(account.timezone if account else None) or get_settings(session).default_timezone,
    )  # fmt: skip


@bp.route("/plans/<int:plan_id>/cancel", methods=["GET", "POST"])
@require_console()
def cancel(plan_id: int) -> Response | tuple[str, int]:
    """The cancellation page: a reason and a confirmation box, then plans.cancel_plan."""
    session = db_session()
    payment_plan = load_plan(session, plan_id)
    account = session.get(Account, payment_plan.account_id)
    form = CancelForm() if request.method == "POST" else CancelForm(formdata=None)
    errors: list[str] = []
    if request.method == "POST":
        valid = form.validate()
        reason = " ".join((form.reason.data or "").split())
        if not reason:
            form.reason.errors.append("Give the reason: it goes on the plan's record.")
            valid = False
        if not confirmed():
            errors.append("Tick the box to confirm.")
            valid = False
        if valid and payment_plan.status == PlanStatus.active:
            try:
                plans.cancel_plan(session, payment_plan, reason, current_actor(), utcnow(),
                                  env=message_env())  # fmt: skip
            except plans.PlanEnded as exc:
                session.rollback()
                flash(f"The plan cannot be cancelled: {exc}.", "error")
                return redirect(url_for("offer_console.plan", plan_id=plan_id), 303)
            session.commit()
            flash(f"Plan {plan_id} is cancelled; the customer is told.", "success")
            return redirect(url_for("offer_console.plan", plan_id=plan_id), 303)
        if valid:
            session.rollback()
            flash(f"The plan cannot be cancelled: it is {payment_plan.status}.", "error")
            return redirect(url_for("offer_console.plan", plan_id=plan_id), 303)
    session.rollback()
    html = render_template("console/plan_cancel.html", plan=payment_plan, account=account,
                           form=form, errors=errors)  # fmt: skip
    return html, 400 if request.method == "POST" else 200


# --- the account page ---------------------------------------------------------------------


def offers_panel(session: Session, account_id: int) -> timeline.Panel | None:
    now = utcnow()
    offers = list(
        session.scalars(
            select(Offer).where(Offer.account_id == account_id).order_by(Offer.id.desc())
        )
    )
    for offer in offers:
        service.refresh_status(offer, now)  # shown as expired; the sweep writes it
    plan_rows = list(
        session.scalars(
            select(PaymentPlan)
            .where(PaymentPlan.account_id == account_id)
            .order_by(PaymentPlan.id.desc())
        )
    )
    plan_of = {p.offer_id: p for p in plan_rows}
    agreements = {p.id: plans.agreement_id(session, p) for p in plan_rows}
    return timeline.Panel(
        20, "Offers and plans", "console/_offers_panel.html",
        {"offers": offers, "plan_of": plan_of, "agreements": agreements, "open": OPEN_OFFER},
    )  # fmt: skip


def offer_items(session: Session, account_id: int) -> list[timeline.Item]:
    rows = session.execute(
        select(OfferEvent, Offer.kind)
        .join(Offer, Offer.id == OfferEvent.offer_id)
        .where(Offer.account_id == account_id)
        .order_by(OfferEvent.id)
    )
    found = []
    for event, kind in rows:
        data = event.data or {}
        detail = ""
        if event.type == "offer.sent":
            count, channels = len(data.get("schedule", [])), ", ".join(data.get("channels", []))
            detail = f"{count} payment(s) by {channels}"
        elif event.type == "signature.captured":
            detail = f"{data.get('signer_name', '')} ({data.get('signature_method', '')})"
        elif event.type == "payment_method.chosen":
            detail = str(data.get("label", ""))
        elif event.type == "plan.cancelled":
            detail = f"by {data.get('by', '')}"
        elif event.type == "payment_method.changed":
            detail = str(data.get("method", ""))
        elif event.type == "plan.defaulted":
            detail = str(data.get("reason", "")).replace("_", " ")
        found.append(
            timeline.Item(
                at=parse_instant(event.at), kind=EVENT_KIND.get(event.type, "offer"),
                title=f"{'Settlement' if kind == 'settlement' else 'Plan'} offer "
                f"{event.offer_id} {EVENT_TEXT.get(event.type, event.type)}",
                detail=detail,
            )
        )  # fmt: skip
    return found


@bp.record_once
def _register(state: BlueprintSetupState) -> None:
    timeline.register_panel(state.app, "offers", offers_panel)
    timeline.register_items(state.app, "offers", offer_items)
