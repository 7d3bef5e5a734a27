"""The customer's payment flow at /p/<token> (journey 1 in product.md).

Each step is a GET that shows a page and changes nothing (only the first page records the
link's first open) and a POST that records the step and redirects to the next open step.
The flow's state lives in the session under the link's token id, so it cannot be carried
to another link; the database decides on every request whether the link still works.

Confirm runs in two transactions around the gateway call (``links.checkout``): the
payment row is committed first, keyed by a nonce made when the review page was shown, so a
double tap or a second concurrent POST finds it and never charges again.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import phonenumbers
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask import session as cookie_session
from flask_wtf.csrf import CSRFError
from sqlalchemy import JSON, bindparam, select
from werkzeug.exceptions import TooManyRequests
from wtforms.fields.choices import SelectChoice

from app import ratelimit
from app.clock import utcnow
from app.db import Database, db_session, get_db
from app.messaging.render import money
from app.models import Account, OrgSettings
from app.pages import RenderedPages, private_page
from app.payments import cards
from app.payments import service as payments
from app.payments.models import MethodKind, Payment, PaymentMethod, PaymentStatus
from app.ratelimit import limiter
from app.settings import get_settings
from app.tokens import TokenInvalid
from links import checkout, forms, service
from links.checkout import Step
from links.models import LinkStatus, PaymentLink
from links.web import gateway, link_tokens, message_env

bp = Blueprint("pay", __name__)

# Per client address. Tokens cannot be guessed, so these only slow down abuse.
OPEN_LIMIT = "120 per minute"
# The start pages of recent opens, kept per process: the busiest page renders once a link.
START_PAGES = RenderedPages()
START_TEMPLATE = "pay/start.html"
# Where links.open_lane leaves (token, now, read_showable's answer), or (token, None, the
# database's error), for the view when it does not answer an open itself: the link is read
# once.
LANE_READ = "paylink.open_lane.read"
VERIFY_LIMIT = "20 per 15 minutes"
# Per link: Email receipt sends a real email each time.
RECEIPT_LIMIT = "5 per 10 minutes"
STATE_KEY = "pay"
MAX_LINKS_IN_SESSION = 3

ENDPOINTS = {
    Step.start: ".start",
    Step.verify: ".verify",
    Step.offer: ".offer",
    Step.amount: ".amount",
    Step.method: ".method",
    Step.schedule: ".schedule",
    Step.review: ".review",
}


bp.after_request(private_page)


@bp.context_processor
def _helpers() -> dict[str, object]:
    return {"money": money, "phone_text": phone_text}


@functools.lru_cache(maxsize=256)
def phone_text(e164: str | None) -> str:
    """``+18005550100`` → ``(800) 555-0100``; anything unparsable as it is. Remembered:
    every customer page shows the creditor's number."""
    try:
        number = phonenumbers.parse(e164 or "", "US")
    except phonenumbers.NumberParseException:
        return e164 or ""
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)


# --- loading the link and the flow state ----------------------------------------------------


@dataclass
class Page:
    token: str
    link: PaymentLink
    account: Account
    settings: OrgSettings
    flow: checkout.Flow
    state: checkout.FlowState
    now: datetime

    def url(self, step: Step) -> str:
        return url_for(ENDPOINTS[step], token=self.token)

    def next_url(self) -> str:
        return self.url(checkout.first_open_step(self.flow, self.state))

    def save(self) -> None:
        store = dict(cookie_session.get(STATE_KEY) or {})
        if self.link.token_id not in store and len(store) >= MAX_LINKS_IN_SESSION:
            store = {}
        store[self.link.token_id] = self.state.dump()
        cookie_session[STATE_KEY] = store

    def forget(self) -> None:
        store = dict(cookie_session.get(STATE_KEY) or {})
        if store.pop(self.link.token_id, None) is not None:
            cookie_session[STATE_KEY] = store

    def context(self, step: Step | None = None, **extra: object) -> dict[str, object]:
        number, total = checkout.progress(self.flow, self.state, step) if step else (0, 0)
        steps = self.flow.steps(self.state)
        back = None
        if step in steps and steps.index(step) > 0:
            back = self.url(steps[steps.index(step) - 1])
        return {
            "page": self,
            "token": self.token,
            "creditor": self.settings,
            "account": self.account,
            "account_ref": checkout.account_ref(self.account),
            "flow": self.flow,
            "state": self.state,
            "currency": self.account.currency,
            "step_number": number,
            "step_total": total,
            "back_url": back,
            **extra,
        }


def _load(token: str, *, allow_used: bool = False) -> Page:
    """The link of ``token`` and this session's state for it. LinkNotFound (404) for a token
    that does not verify, LinkGone (410) for an expired or revoked link, LinkUsed (the
    receipt) for a paid one unless ``allow_used``."""
    session = db_session()
    link = service.find_link(session, link_tokens(), token)
    now = utcnow()
    service.refresh_status(link, now)
    if link.status in (LinkStatus.expired, LinkStatus.revoked):
        raise service.LinkGone(link, link.status)
    if link.status == LinkStatus.used and not allow_used:
        raise checkout.LinkUsed
    account = link.account
    settings = get_settings(session)
    flow = checkout.build_flow(link, account, settings)
    stored = (cookie_session.get(STATE_KEY) or {}).get(link.token_id)
    state = checkout.FlowState.load(stored, link.id)
    checkout.reconcile(flow, state)
    return Page(token, link, account, settings, flow, state, now)


def _enter(token: str, step: Step) -> Page:
    """Load the page of ``step``, or answer with a redirect to the first step not done."""
    page = _load(token)
    if page.flow.due_cents <= 0:
        abort(Response(render_template("pay/nothing_due.html", **page.context()), 200))
    if not checkout.may_enter(page.flow, page.state, step):
        abort(redirect(page.next_url()))
    return page


def _advance(page: Page) -> Response:
    page.save()
    return redirect(page.next_url())


def _local(instant: datetime, page: Page) -> str:
    return service.local_text(instant, page.flow.timezone)


# --- pages that end the flow ----------------------------------------------------------------


@bp.errorhandler(service.LinkNotFound)
def _not_found(_exc: service.LinkNotFound) -> tuple[str, int]:
    creditor = get_settings(db_session())
    return render_template("pay/not_found.html", creditor=creditor), 404


@bp.errorhandler(service.LinkGone)
def _gone(exc: service.LinkGone) -> tuple[str, int]:
    creditor = get_settings(db_session())
    return render_template("pay/gone.html", creditor=creditor, status=exc.status), 410


@bp.errorhandler(checkout.LinkUsed)
def _used(_exc: checkout.LinkUsed) -> Response:
    token = (request.view_args or {}).get("token", "")
    return redirect(url_for(".start", token=token))


@bp.errorhandler(service.LinkLocked)
def _locked_error(exc: service.LinkLocked) -> tuple[str, int, dict[str, str]]:
    token = (request.view_args or {}).get("token", "")
    return _locked(_load(token), exc.until)


def _locked(page: Page, until: datetime) -> tuple[str, int, dict[str, str]]:
    seconds = max(1, int((until - page.now).total_seconds()))
    html = render_template("pay/locked.html", until_text=_local(until, page), **page.context())
    return html, 429, {"Retry-After": str(seconds)}


@bp.errorhandler(TooManyRequests)
def _too_many(exc: TooManyRequests) -> tuple[str, int]:
    creditor = get_settings(db_session())
    return render_template("pay/too_many.html", creditor=creditor), 429


@bp.errorhandler(CSRFError)
def _csrf_failed(_exc: CSRFError) -> tuple[str, int]:
    creditor = get_settings(db_session())
    return render_template("pay/expired_form.html", creditor=creditor, again=request.path), 400


def _receipt(page: Page) -> str:
    session = db_session()
    items = checkout.receipt_payments(session, page.link)
    emailable = checkout.emailable_payment(items)
    can_email = (
        emailable is not None
        and bool(page.account.email)
        and page.account.email_opted_out_at is None
    )
    rows = [_receipt_row(p, page) for p in items]
    return render_template(
        "pay/receipt.html",
        rows=rows,
        method=items[0].method.label if items else None,
        total=sum(p.amount_cents for p in items),
        email_form=forms.ButtonForm() if can_email else None,
        masked_email=checkout.mask_email(page.account.email),
        **page.context(),
    )


STATUS_LABELS = {
    PaymentStatus.paid: "Paid",
    PaymentStatus.pending: "Pending",
    PaymentStatus.processing: "Processing",
    PaymentStatus.scheduled: "Scheduled",
    PaymentStatus.declined: "Declined",
    PaymentStatus.cancelled: "Cancelled",
    PaymentStatus.refunded: "Refunded",
}


def _receipt_row(payment: Payment, page: Page) -> dict[str, object]:
    if payment.status == PaymentStatus.scheduled and payment.scheduled_for is not None:
        local = payment.scheduled_for.astimezone(ZoneInfo(page.flow.timezone))
        when = f"{local:%b} {local.day}, {local.year}"
    else:
        when = _local(payment.paid_at or payment.created_at, page)
    return {
        "receipt_number": payment.receipt_number,
        "amount_cents": payment.amount_cents,
        "when": when,
        "status": STATUS_LABELS[PaymentStatus(payment.status)],
        "pending": payment.status == PaymentStatus.pending,
    }


# --- 1. the first page: who we think you are, what is due -------------------------------
#
# Opening a link is the flow's busiest request (every SMS tap), so it takes the short way:
# one query reads the link, its account and the settings row together, outside any
# transaction (``Database.read_one``), and nothing else touches the database unless this is
# the first open. The start page itself is kept per process (``START_PAGES``).
# The settings are read on every open, in that same query, so a change made anywhere
# (the settings API, another process, a direct database write) shows on the next open.
# Anything but an active link with a settings row takes the general path (``_load``).

_OPEN_LINK = (
    "id", "token_id", "account_id", "amount_cents", "status", "expires_at", "opened_at",
)  # fmt: skip
_OPEN_ACCOUNT = (
    "name", "phone", "email", "timezone", "balance_cents", "currency", "external_id",
    "ssn_last4", "date_of_birth", "zip",
)  # fmt: skip
# What build_flow reads, and the page with its layout and contact line.
_OPEN_SETTINGS = (
    "contact_verification", "verification_methods", "virtual_collection",
    "settlement_percent_off", "allow_skip_offer", "schedule_payment", "max_scheduled_payments",
    "schedule_horizon_days", "default_timezone", "creditor_name", "creditor_phone",
    "creditor_email", "creditor_hours",
)  # fmt: skip
# The one query of an open: the link, its account and the settings row.
OPEN_QUERY = (
    select(
        *(PaymentLink.__table__.c[name] for name in _OPEN_LINK),
        *(Account.__table__.c[name] for name in _OPEN_ACCOUNT),
        *(OrgSettings.__table__.c[name] for name in _OPEN_SETTINGS),
        OrgSettings.__table__.c.id.label("settings_id"),
    )
    .select_from(PaymentLink.__table__)
    .join(Account.__table__, Account.__table__.c.id == PaymentLink.__table__.c.account_id)
    .outerjoin(OrgSettings.__table__, OrgSettings.__table__.c.id == 1)
    .where(PaymentLink.__table__.c.token_id == bindparam("token_id"))
)
_OPEN_SLICES = (
    (_OPEN_LINK, 0),
    (_OPEN_ACCOUNT, len(_OPEN_LINK)),
    (_OPEN_SETTINGS, len(_OPEN_LINK) + len(_OPEN_ACCOUNT)),
)
_OPENED_AT = _OPEN_LINK.index("opened_at")
# The JSON columns (read as lists) among the open query's, by position.
_OPEN_JSON = tuple(
    i for i, column in enumerate(OPEN_QUERY.selected_columns) if isinstance(column.type, JSON)
)


class Columns:
    """Some columns of one row, read by name as on the model (the open query's link,
    account and settings)."""

    def __init__(self, names: tuple[str, ...], values: Sequence[object]):
        self.__dict__.update(zip(names, values, strict=True))


def _read_open(
    token: str, app: Flask
) -> tuple[Columns, Columns, Columns, tuple[object, ...]] | None:
    """The link of ``token`` with its account and the settings, and what the row they
    came from shows, as one hashable value; None when the token does not verify or the row
    is missing (the general path answers those)."""
    try:
        token_id = link_tokens(app).verify(token)
    except TokenInvalid:
        return None
    db: Database = app.extensions["paylink.db"]
    row = db.read_one(OPEN_QUERY, {"token_id": token_id})
    if row is None or row.settings_id is None:  # no link, or no settings row yet
        return None
    link, account, settings = (
        Columns(names, row[start : start + len(names)]) for names, start in _OPEN_SLICES
    )
    values = list(row)
    for i in _OPEN_JSON:  # lists or dicts: their repr is hashable and says all they hold
        values[i] = repr(values[i])
    # No page shows when the link was first opened: the page kept at the first open (which
    # writes it) serves the later ones.
    del values[_OPENED_AT]
    return link, account, settings, tuple(values)


def _record_open(token: str, now: datetime) -> None:
    """The first open, written once: under the link's row lock, open_link writes it only
    if no one has yet."""
    with get_db().transaction() as session:
        link = service.find_link(session, link_tokens(), token, lock=True)
        service.open_link(session, link, now)


def read_showable(
    token: str, now: datetime, app: Flask
) -> tuple[Columns, Columns, Columns, tuple[object, ...]] | None:
    """``_read_open``'s link, account, settings and row when the start page can be made
    from them: the link is active and not past its expiry. None: the general path
    answers. (``app`` is given: the open lane calls this outside any Flask context.)"""
    read = _read_open(token, app)
    if read is None or read[0].status != LinkStatus.active or read[0].expires_at <= now:
        return None
    return read


def start_key(token: str, values: tuple[object, ...], state: checkout.FlowState) -> Hashable:
    """What the start page of ``token`` is kept under: everything it shows comes from the
    open query's row and the flow state (a dataclass, whose repr names every field)."""
    return (token, values, repr(state))


@bp.get("/p/<token>")
@ratelimit.counted_behind(OPEN_LIMIT)
def start(token: str) -> str | Response:
    # links.open_lane serves the commonest opens without Flask; it must send what this does.
    handed = request.environ.get(LANE_READ)
    if handed is not None and handed[0] == token:  # the lane read the link and left it here
        _token, now, read = handed
        if isinstance(read, Exception):  # the database failed the lane's read
            raise read
    else:
        now = utcnow()
        read = read_showable(token, now, current_app._get_current_object())  # type: ignore[attr-defined]
    if read is None:
        return _start_in_full(token)
    link, account, settings, values = read
    if link.opened_at is None:
        _record_open(token, now)
    flow = checkout.build_flow(link, account, settings)  # type: ignore[arg-type]
    stored = (cookie_session.get(STATE_KEY) or {}).get(link.token_id)
    state = checkout.FlowState.load(stored, link.id)
    if stored is not None:  # a fresh state holds no choice to reconcile
        checkout.reconcile(flow, state)
    page = Page(token, link, account, settings, flow, state, now)  # type: ignore[arg-type]
    if flow.due_cents <= 0:
        return _start_page(page)
    return START_PAGES.render(
        start_key(token, values, state), START_TEMPLATE, lambda: _start_context(page)
    )


def _start_in_full(token: str) -> str | Response:
    """The general path: 404, 410, the receipt of a used link, the settings' first read."""
    page = _load(token, allow_used=True)
    if page.link.status == LinkStatus.used:
        return _receipt(page)
    session = db_session()
    service.open_link(session, page.link, page.now)
    session.commit()
    return _start_page(page)


def _start_page(page: Page) -> str:
    if page.flow.due_cents <= 0:
        return render_template("pay/nothing_due.html", **page.context())
    return render_template(START_TEMPLATE, **_start_context(page))


def _start_context(page: Page) -> dict[str, object]:
    return {
        "first_name": checkout.greeting_name(page.account),
        "phone": checkout.mask_phone(page.account.phone),
        "email": checkout.mask_email(page.account.email),
        "expires_text": _local(page.link.expires_at, page),
        **page.context(Step.start),
    }


@bp.post("/p/<token>")
def start_next(token: str) -> Response:
    page = _enter(token, Step.start)
    if forms.ButtonForm().validate_on_submit():
        page.state.reviewed = True
    return _advance(page)


# --- 2. verification ------------------------------------------------------------------------


@bp.route("/p/<token>/verify", methods=["GET", "POST"])
@limiter.limit(VERIFY_LIMIT, methods=["POST"])
def verify(token: str) -> str | Response | tuple[str, int, dict[str, str]]:
    page = _enter(token, Step.verify)
    link, now = page.link, page.now
    if link.locked_until is not None and link.locked_until > now:
        return _locked(page, link.locked_until)
    methods = page.flow.verify_methods
    asked = request.form.get("method") or request.args.get("method")
    form = forms.VerifyForm.for_methods(methods, asked)
    method, field = form.method.data, form.answer
    if form.validate_on_submit():
        session = db_session()
        try:
            ok = checkout.verify_contact(session, link, method, field.data, now)
        except checkout.InputError as exc:
            field.errors.append(str(exc))
        except service.LinkLocked as exc:
            session.commit()
            return _locked(page, exc.until)
        else:
            session.commit()
            if ok:
                page.state.verified = True
                return _advance(page)
            left = service.MAX_FAILED_VERIFICATIONS - link.failed_verifications
            field.errors.append(checkout.no_match_message(left))
    return render_template(
        "pay/verify.html", **form.page_context(methods),
        **page.context(Step.verify),
    )  # fmt: skip


# --- 3. settlement offers -------------------------------------------------------------------


def _offer_form(page: Page) -> forms.OfferForm:
    form = forms.OfferForm()
    form.offer.choices = [
        SelectChoice(
            str(o.percent),
            f"Pay {money(o.amount_cents, page.flow.currency)} today ({o.percent}% off)",
        )
        for o in page.flow.offers
    ]
    return form


@bp.route("/p/<token>/offer", methods=["GET", "POST"])
def offer(token: str) -> str | Response:
    page = _enter(token, Step.offer)
    form = _offer_form(page)
    if request.method == "GET" and page.state.offer:
        form.offer.data = str(page.state.offer)
    if form.validate_on_submit():
        page.state.choose_offer(int(form.offer.data or 0))
        return _advance(page)
    return render_template(
        "pay/offer.html", form=form, skip_form=forms.ButtonForm(prefix="skip"),
        **page.context(Step.offer),
    )  # fmt: skip


@bp.post("/p/<token>/offer/skip")
def skip_offer(token: str) -> Response:
    page = _enter(token, Step.offer)
    if page.flow.can_skip_offer and forms.ButtonForm(prefix="skip").validate_on_submit():
        page.state.choose_offer(0)
        return _advance(page)
    # Skip is not offered: the customer chooses one of the offers.
    return redirect(page.url(Step.offer))


# --- 4. amount ------------------------------------------------------------------------------


def _dollars(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


@bp.route("/p/<token>/amount", methods=["GET", "POST"])
def amount(token: str) -> str | Response:
    page = _enter(token, Step.amount)
    settlement = page.flow.settlement(page.state)
    form = forms.AmountForm()
    if request.method == "GET":
        suggested = (
            settlement.amount_cents
            if settlement
            else (page.state.amount_cents or page.flow.due_cents)
        )
        form.amount.data = _dollars(suggested)
    if form.validate_on_submit():
        try:
            cents = checkout.parse_amount(form.amount.data)
            checkout.check_amount(cents, page.flow, settlement)
        except checkout.InputError as exc:
            form.amount.errors.append(str(exc))
        else:
            page.state.choose_amount(cents)
            return _advance(page)
    return render_template(
        "pay/amount.html", form=form, settlement=settlement, **page.context(Step.amount)
    )


# --- 5. payment method ----------------------------------------------------------------------


def _current_method(page: Page) -> PaymentMethod | None:
    if page.state.method_id is None:
        return None
    method = db_session().get(PaymentMethod, page.state.method_id)
    if method is None or method.account_id != page.account.id:
        page.state.method_id = None
        return None
    return method


@bp.route("/p/<token>/method", methods=["GET", "POST"])
def method(token: str) -> str | Response:
    page = _enter(token, Step.method)
    current = _current_method(page)
    asked = request.form.get("kind") or request.args.get("kind")
    kind = asked if asked in ("card", "bank") else (current.kind if current else "card")
    form: forms.CardForm | forms.BankForm = (
        forms.CardForm() if kind == MethodKind.card else forms.BankForm()
    )
    hint = None
    if form.is_submitted():
        valid = form.validate()
        # The number checks too, so every field at fault is named at once.
        for name, message in _method_problems(page, form).items():
            field = getattr(form, name)
            if not field.errors:
                field.errors.append(message)
            valid = False
        if valid:
            session = db_session()
            try:
                saved = _save_method(page, form)
            except cards.InvalidPaymentDetail as exc:
                session.rollback()
                name = getattr(exc, "field", "number")
                getattr(form, name).errors.append(checkout.as_sentence(str(exc)))
            else:
                session.commit()
                page.state.choose_method(saved.id)
                return _advance(page)
    if request.method == "POST":
        hint = form.forget_secrets()
    return render_template(
        "pay/method.html",
        form=form,
        kind=kind,
        hint=hint,
        current=current,
        notice=page.state.notice,
        amount_cents=page.state.amount_cents,
        **page.context(Step.method),
    )


def _method_problems(page: Page, form: forms.CardForm | forms.BankForm) -> dict[str, str]:
    if isinstance(form, forms.CardForm):
        return checkout.card_problems(
            form.number.data or "", form.expiry.data or "", form.security_code.data or "",
            page.flow.today(page.now),
        )  # fmt: skip
    return checkout.bank_problems(form.routing_number.data or "", form.account_number.data or "")


def _save_method(page: Page, form: forms.CardForm | forms.BankForm) -> PaymentMethod:
    today = page.flow.today(page.now)
    return forms.save_method(db_session(), page.account, gateway(), form, today=today, now=page.now)


# --- 6. scheduling --------------------------------------------------------------------------


@bp.route("/p/<token>/schedule", methods=["GET", "POST"])
def schedule(token: str) -> str | Response:
    page = _enter(token, Step.schedule)
    flow, state = page.flow, page.state
    form = forms.schedule_form(flow.max_payments)
    if request.method == "GET":
        form.when.data = state.when or "now"
        for n, (day, cents) in enumerate(state.schedule, start=1):
            if n <= flow.max_payments:
                form[f"date_{n}"].data = day
                form[f"amount_{n}"].data = _dollars(cents)
    problem = None
    if form.validate_on_submit():
        if form.when.data == "now":
            state.choose_schedule("now", [])
            return _advance(page)
        rows = [
            (form[f"date_{n}"].data, form[f"amount_{n}"].data)
            for n in range(1, flow.max_payments + 1)
        ]
        try:
            planned = checkout.check_schedule(rows, state.amount_cents or 0, flow, page.now)
        except checkout.ScheduleError as exc:
            for name, message in exc.fields.items():
                form[name].errors.append(message)
            problem = exc.message
        else:
            state.choose_schedule("later", planned)
            return _advance(page)
    first, last = checkout.schedule_bounds(flow, page.now)
    return render_template(
        "pay/schedule.html", form=form, problem=problem, first=first, last=last,
        rows=range(1, flow.max_payments + 1), amount_cents=state.amount_cents,
        **page.context(Step.schedule),
    )  # fmt: skip


# --- 7. review, Confirm and the payment agreement -------------------------------------------


@bp.route("/p/<token>/review", methods=["GET", "POST"])
def review(token: str) -> str | Response | tuple[str, int]:
    page = _enter(token, Step.review)
    state = page.state
    method = _current_method(page)
    if method is None:
        return _advance(page)
    try:
        plan = checkout.plan_for(page.flow, state, page.now)
    except checkout.InputError as exc:
        flash(str(exc), "error")
        state.when, state.schedule = None, []
        return _advance(page)
    if state.nonce:
        earlier = checkout.attempt_payments(db_session(), page.link, state.nonce)
        if earlier and request.method == "GET":
            return _after_attempt(page, earlier, method)
    else:
        if request.method == "POST":
            # Confirm without the review page in this session: show the page first.
            return _advance(page)
        state.nonce = checkout.new_nonce()
        page.save()
    settlement = page.flow.settlement(state)
    text = checkout.agreement_text(
        customer_name=page.account.name, account_ref=checkout.account_ref(page.account),
        settings=page.settings, method=method, plan=plan, settlement=settlement,
        currency=page.flow.currency, today=page.flow.today(page.now),
    )  # fmt: skip
    digest = checkout.text_sha256(text)
    form = forms.ReviewForm()
    problem = None
    if request.method == "GET":
        form.agreement_sha256.data = digest
    elif form.validate_on_submit():
        if form.agreement_sha256.data != digest:
            problem = "Some details changed since you opened this page. Please read them again."
            form.agreement_sha256.data = digest
        else:
            return _confirm(page, method, plan, text)
    return render_template(
        "pay/review.html", form=form, plan=plan, method=method, settlement=settlement,
        agreement=text, problem=problem, total=sum(i.amount_cents for i in plan),
        **page.context(Step.review),
    )  # fmt: skip


def _confirm(
    page: Page, method: PaymentMethod, plan: list[checkout.Installment], text: str
) -> str | Response | tuple[str, int]:
    """Charge once per nonce: commit the payment rows, call the gateway outside any
    transaction, commit its answer (see links.checkout)."""
    session = db_session()
    state = page.state
    assert state.nonce is not None
    link = page.link
    session.refresh(link, with_for_update=True)
    try:
        attempt = checkout.start_payment(
            session, link, method, plan, nonce=state.nonce, text=text, ip=request.remote_addr,
            user_agent=request.user_agent.string, now=page.now, timezone=page.flow.timezone,
        )  # fmt: skip
    except checkout.LinkUsed:
        session.rollback()
        return redirect(page.url(Step.start))
    # Each payment's own method (a replayed older Confirm may name another), loaded now:
    # nothing may touch the database between the commit and the gateway call.
    methods = {p.id: p.method for p in attempt.payments}
    session.commit()
    settlement = page.flow.settlement(state)
    for payment in attempt.payments:
        if checkout.needs_charge(payment, utcnow(), created=attempt.created):
            result = payments.call_gateway(gateway(), payment, methods[payment.id], utcnow())
            checkout.finish_payment(
                session, link, payment, result, settlement=settlement, env=message_env(),
                now=utcnow(),
            )  # fmt: skip
            session.commit()
    return _after_attempt(page, attempt.payments, method)


def _after_attempt(
    page: Page, attempt: list[Payment], method: PaymentMethod
) -> str | Response | tuple[str, int]:
    result = checkout.outcome(attempt)
    if result == "done":
        page.forget()
        return redirect(page.url(Step.start))
    if result == "declined":
        declined = next(p for p in attempt if p.status == PaymentStatus.declined)
        reason = declined.decline_message or "The payment was declined."
        other = (
            "another card or a bank account"
            if method.kind == MethodKind.card
            else ("another bank account or a card")
        )
        page.state.declined(f"{checkout.as_sentence(reason)} Please try {other}.")
        return _advance(page)
    return render_template("pay/processing.html", **page.context()), 202


# --- 8. the receipt -------------------------------------------------------------------------


@bp.get("/p/<token>/print")
def print_receipt(token: str) -> str | Response:
    page = _load(token, allow_used=True)
    if page.link.status != LinkStatus.used:
        return redirect(page.url(Step.start))
    items = checkout.receipt_payments(db_session(), page.link)
    return render_template(
        "pay/print.html",
        rows=[_receipt_row(p, page) for p in items],
        method=items[0].method.label if items else None,
        total=sum(p.amount_cents for p in items),
        **page.context(),
    )


def _receipt_key() -> str:
    token = (request.view_args or {}).get("token", "")
    return "pay-receipt:" + hashlib.sha256(token.encode()).hexdigest()[:32]


@bp.post("/p/<token>/receipt/email")
@limiter.limit(RECEIPT_LIMIT, key_func=_receipt_key)
def email_receipt(token: str) -> Response:
    page = _load(token, allow_used=True)
    if page.link.status != LinkStatus.used or not forms.ButtonForm().validate_on_submit():
        return redirect(page.url(Step.start))
    session = db_session()
    payment = checkout.emailable_payment(checkout.receipt_payments(session, page.link))
    address = checkout.mask_email(page.account.email)
    if payment is None or address is None or page.account.email_opted_out_at is not None:
        flash("We cannot email this receipt. Please use Print receipt instead.", "error")
        return redirect(page.url(Step.start))
    sent = checkout.email_receipt_again(session, payment, message_env(), page.now)
    session.commit()
    if sent:
        flash(f"We are emailing a copy of your receipt to {address}.", "info")
    else:
        flash(f"We have already emailed several copies of this receipt to {address}.", "info")
    return redirect(page.url(Step.start))
