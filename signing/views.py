"""The customer's offer flow at /o/<token> (journey 2 in product.md): Complete Payment
Agreement → (confirm it's you) → plan details, Get Started → payment method → E-SIGN
consent → terms and the recurring payment authorization → Sign → confirmation. The
customer can decline instead.

It lives in ``signing`` rather than ``offers`` because Sign calls
``signing.service.capture_signature`` and offers may not depend on signing.

Each step is a GET that shows a page and a POST that records the step and redirects to the
next open step. Only the first page's first GET writes (sent → viewed), and the terms page
notes that the terms were shown. The flow's state lives in the session under the offer's
token id (and names the offer), so it cannot be carried to another offer; the database
decides on every request whether the offer is still open.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask import session as cookie_session
from flask_wtf.csrf import CSRFError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from werkzeug.exceptions import RequestEntityTooLarge, TooManyRequests

from app.clock import isoformat, parse_instant, utcnow
from app.db import db_session
from app.messaging.render import money
from app.models import Account, OrgSettings
from app.pages import private_page
from app.payments import cards
from app.payments.models import MethodKind, PaymentMethod
from app.ratelimit import limiter
from app.settings import get_settings
from app.tokens import TokenInvalid
from links import checkout
from links.service import local_text
from links.views import phone_text
from links.web import gateway
from offers import forms, plan_math
from offers import service as offers
from offers.models import Installment, Offer, OfferStatus, PaymentPlan
from offers.web import offer_tokens
from signing import service, text
from signing.models import Agreement

bp = Blueprint("offer", __name__)

OPEN_LIMIT = "120 per minute"
VERIFY_LIMIT = "20 per 15 minutes"
STATE_KEY = "offer_flow"
MAX_OFFERS_IN_SESSION = 3

INSTALLMENT_LABELS = {
    "scheduled": "Scheduled",
    "pending": "Pending",
    "paid": "Paid",
    "declined": "Declined",
    "cancelled": "Cancelled",
}


class Step(enum.StrEnum):
    start = "start"
    verify = "verify"
    plan = "plan"
    method = "method"
    consent = "consent"
    terms = "terms"
    sign = "sign"


ENDPOINTS = {
    Step.start: ".start",
    Step.verify: ".verify",
    Step.plan: ".plan",
    Step.method: ".method",
    Step.consent: ".consent",
    Step.terms: ".terms",
    Step.sign: ".sign",
}


class OfferNotFound(Exception):
    """No open-able offer for this token: 404, revealing nothing."""


class OfferAccepted(Exception):
    """The offer was accepted (here, in another tab, or a moment ago): show the
    confirmation."""


class OtherOffer(Exception):
    """A form shown for one offer was posted to another offer's address."""


bp.after_request(private_page)


@bp.context_processor
def _helpers() -> dict[str, object]:
    return {"money": money, "phone_text": phone_text, "date_text": text.date_text}


# --- the flow state --------------------------------------------------------------------------


@dataclass
class FlowState:
    """What the customer has done so far on one offer. Ids, times and hashes only: never a
    card number, security code or bank account number."""

    offer_id: int
    started: bool = False  # pressed Complete Payment Agreement
    verified_by: str | None = None  # ssn_last4, date_of_birth, zip; "none" when not asked
    plan_seen: bool = False  # pressed Get Started
    method_id: int | None = None
    consent_at: str | None = None  # ISO instant of the E-SIGN consent
    consent_sha256: str | None = None  # the disclosure consented to
    terms_sha256: str | None = None  # the agreement text accepted on the terms page
    terms_shown_sha256: str | None = None  # the last text recorded as shown

    @classmethod
    def load(cls, data: Any, offer_id: int) -> FlowState:
        """The state in ``data`` if it belongs to ``offer_id``, else a fresh one."""
        if not isinstance(data, dict) or data.get("offer_id") != offer_id:
            return cls(offer_id)
        try:
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except TypeError:
            return cls(offer_id)

    def dump(self) -> dict[str, Any]:
        return asdict(self)

    def done(self, step: Step) -> bool:
        return {
            Step.start: self.started,
            Step.verify: self.verified_by is not None,
            Step.plan: self.plan_seen,
            Step.method: self.method_id is not None,
            Step.consent: self.consent_at is not None,
            Step.terms: self.terms_sha256 is not None,
            Step.sign: False,
        }[step]

    def choose_method(self, method_id: int) -> None:
        # The authorization names the method: it must be accepted again.
        if self.method_id != method_id:
            self.terms_sha256 = None
        self.method_id = method_id


def _steps(verify_methods: tuple[str, ...]) -> list[Step]:
    steps = [Step.start]
    if verify_methods:
        steps.append(Step.verify)
    return [*steps, Step.plan, Step.method, Step.consent, Step.terms, Step.sign]


@dataclass
class Page:
    token: str
    offer: Offer
    account: Account
    settings: OrgSettings
    verify_methods: tuple[str, ...]
    state: FlowState
    now: datetime

    @property
    def steps(self) -> list[Step]:
        return _steps(self.verify_methods)

    def first_open_step(self) -> Step:
        return next(step for step in self.steps if not self.state.done(step))

    def may_enter(self, step: Step) -> bool:
        """The step applies and every step before it is done (going back is allowed)."""
        steps = self.steps
        return step in steps and steps.index(step) <= steps.index(self.first_open_step())

    def url(self, step: Step, **args: str) -> str:
        return url_for(ENDPOINTS[step], token=self.token, **args)

    def next_url(self) -> str:
        return self.url(self.first_open_step())

    @property
    def verified_by(self) -> str:
        return "none" if Step.verify not in self.steps else (self.state.verified_by or "none")

    @property
    def timezone(self) -> str:
        return self.account.timezone or self.settings.default_timezone

    def save(self) -> None:
        store = dict(cookie_session.get(STATE_KEY) or {})
        if self.offer.token_id not in store and len(store) >= MAX_OFFERS_IN_SESSION:
            store = {}
        store[self.offer.token_id] = self.state.dump()
        cookie_session[STATE_KEY] = store

    def forget(self) -> None:
        store = dict(cookie_session.get(STATE_KEY) or {})
        if store.pop(self.offer.token_id, None) is not None:
            cookie_session[STATE_KEY] = store

    def context(self, step: Step | None = None, **extra: object) -> dict[str, object]:
        steps = self.steps
        number = steps.index(step) + 1 if step in steps else 0
        back = self.url(steps[number - 2]) if number > 1 else None
        return {
            "page": self,
            "token": self.token,
            "offer": self.offer,
            "creditor": self.settings,
            "account": self.account,
            "currency": self.account.currency,
            "step_number": number,
            "step_total": len(steps) if number else 0,
            "back_url": back,
            **extra,
        }


def _client() -> dict[str, str | None]:
    return {"ip": request.remote_addr, "user_agent": request.user_agent.string or None}


def _find_offer(token: str) -> Offer:
    try:
        token_id = offer_tokens().verify(token)
    except TokenInvalid:
        raise OfferNotFound from None
    offer = db_session().scalar(select(Offer).where(Offer.token_id == token_id))
    if offer is None or offer.status == OfferStatus.draft:
        raise OfferNotFound
    return offer


def _load(token: str, *, allow_accepted: bool = False) -> Page:
    """The offer of ``token`` and this session's state for it. OfferNotFound (404),
    OfferGone (410) for an expired, revoked or declined offer, OfferAccepted (the
    confirmation) for an accepted one unless ``allow_accepted``."""
    session = db_session()
    offer = _find_offer(token)
    now = utcnow()
    offers.refresh_status(offer, now)
    if offer.status in (OfferStatus.expired, OfferStatus.revoked, OfferStatus.declined):
        raise offers.OfferGone(offer)
    if offer.status == OfferStatus.accepted and not allow_accepted:
        raise OfferAccepted
    account = offer.account
    settings = get_settings(session)
    methods = checkout.verification_methods(settings, account)
    stored = (cookie_session.get(STATE_KEY) or {}).get(offer.token_id)
    state = FlowState.load(stored, offer.id)
    if methods and state.verified_by == "none":
        state.verified_by = None  # verification was turned on meanwhile
    return Page(token, offer, account, settings, methods, state, now)


def _enter(token: str, step: Step) -> Page:
    """Load the page of ``step``, or answer with a redirect to the first step not done."""
    page = _load(token)
    if not page.may_enter(step):
        abort(redirect(page.next_url()))
    return page


def _advance(page: Page) -> Response:
    page.save()
    return redirect(page.next_url())


def _current_method(page: Page) -> PaymentMethod | None:
    if page.state.method_id is None:
        return None
    method = db_session().get(PaymentMethod, page.state.method_id)
    if method is None or method.account_id != page.account.id:
        page.state.method_id = None
        page.state.terms_sha256 = None
        return None
    return method


def _schedule(page: Page) -> list[plan_math.Installment]:
    return offers.offer_schedule(page.offer)


# --- pages that end the flow -----------------------------------------------------------------


@bp.errorhandler(OfferNotFound)
def _not_found(_exc: OfferNotFound) -> tuple[str, int]:
    creditor = get_settings(db_session())
    return render_template("offer/not_found.html", creditor=creditor), 404


@bp.errorhandler(offers.OfferGone)
def _gone(exc: offers.OfferGone) -> tuple[str, int]:
    status = exc.offer.status  # as refresh_status read it: the rollback forgets that
    db_session().rollback()
    creditor = get_settings(db_session())
    return render_template("offer/gone.html", creditor=creditor, status=status), 410


@bp.errorhandler(OfferAccepted)
def _accepted(_exc: OfferAccepted) -> Response:
    token = (request.view_args or {}).get("token", "")
    return redirect(url_for(".start", token=token))


def _locked(page: Page, until: datetime) -> tuple[str, int, dict[str, str]]:
    seconds = max(1, int((until - page.now).total_seconds()))
    html = render_template(
        "offer/locked.html",
        until_text=local_text(until, page.timezone),
        **page.context(),
    )
    return html, 429, {"Retry-After": str(seconds)}


@bp.errorhandler(OtherOffer)
def _other_offer(_exc: OtherOffer) -> tuple[str, int]:
    token = (request.view_args or {}).get("token", "")
    creditor = get_settings(db_session())
    html = render_template(
        "offer/other_offer.html", creditor=creditor, again=url_for(".start", token=token)
    )
    return html, 400


@bp.errorhandler(TooManyRequests)
def _too_many(_exc: TooManyRequests) -> tuple[str, int]:
    creditor = get_settings(db_session())
    return render_template("pay/too_many.html", creditor=creditor), 429


@bp.errorhandler(CSRFError)
def _csrf_failed(_exc: CSRFError) -> tuple[str, int]:
    creditor = get_settings(db_session())
    return render_template("pay/expired_form.html", creditor=creditor, again=request.path), 400


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_exc: RequestEntityTooLarge) -> tuple[str, int]:
    # A drawn signature far over its limit is refused before the form is read.
    creditor = get_settings(db_session())
    html = render_template(
        "offer/too_large.html",
        creditor=creditor,
        again=request.path,
        signature=request.endpoint == "offer.sign",
    )
    return html, 413


def _confirmation(page: Page) -> str:
    session = db_session()
    plan = session.scalar(select(PaymentPlan).where(PaymentPlan.offer_id == page.offer.id))
    if plan is None:
        raise offers.OfferEnded("accepted without a plan")
    installments = list(
        session.scalars(
            select(Installment).where(Installment.plan_id == plan.id).order_by(Installment.n)
        )
    )
    method = session.get(PaymentMethod, plan.method_id)
    agreement = session.scalar(select(Agreement).where(Agreement.offer_id == page.offer.id))
    return render_template(
        "offer/confirmation.html",
        plan=plan,
        rows=[
            {
                "n": i.n,
                "due_date": i.due_date,
                "amount_cents": i.amount_cents,
                "status": INSTALLMENT_LABELS.get(i.status, i.status.title()),
            }
            for i in installments
        ],
        method=method,
        agreement=agreement,
        signed_on=plan_math.local_today(agreement.signed_at, page.timezone) if agreement else None,
        email=checkout.mask_email(page.account.email),
        first_name=checkout.greeting_name(page.account),
        **page.context(),
    )


# --- 1. the first page -----------------------------------------------------------------------


@bp.get("/o/<token>")
@limiter.limit(OPEN_LIMIT)
def start(token: str) -> str | Response:
    page = _load(token, allow_accepted=True)
    if page.offer.status == OfferStatus.accepted:
        return _confirmation(page)
    session = db_session()
    offers.mark_viewed(session, page.offer, page.now, **_client())
    session.commit()
    schedule = _schedule(page)
    return render_template(
        "offer/start.html",
        form=forms.ButtonForm(),
        first_name=checkout.greeting_name(page.account),
        schedule=schedule,
        frequency_text=offers.FREQUENCY_TEXT[page.offer.frequency],
        phone=checkout.mask_phone(page.account.phone),
        email=checkout.mask_email(page.account.email),
        expires_text=local_text(page.offer.expires_at, page.timezone),
        **page.context(Step.start),
    )


@bp.post("/o/<token>")
def start_next(token: str) -> Response:
    page = _enter(token, Step.start)
    if forms.ButtonForm().validate_on_submit():
        page.state.started = True
    return _advance(page)


# --- 2. confirm it's you ---------------------------------------------------------------------


@bp.route("/o/<token>/verify", methods=["GET", "POST"])
@limiter.limit(VERIFY_LIMIT, methods=["POST"])
def verify(token: str) -> str | Response | tuple[str, int, dict[str, str]]:
    page = _enter(token, Step.verify)
    session = db_session()
    until, failures = service.verification_lock(session, page.offer.id, page.now)
    if until is not None:
        return _locked(page, until)
    methods = page.verify_methods
    asked = request.form.get("method") or request.args.get("method")
    form = forms.VerifyForm.for_methods(methods, asked)
    method, field = form.method.data, form.answer
    if form.validate_on_submit():
        try:
            ok = service.verify_contact(
                session, page.offer, method, field.data, page.now, **_client()
            )
        except checkout.InputError as exc:
            field.errors.append(str(exc))
        except service.OfferLocked as exc:
            session.commit()  # the failed try and the lockout are kept
            return _locked(page, exc.until)
        else:
            session.commit()
            if ok:
                page.state.verified_by = method
                return _advance(page)
            _, failures = service.verification_lock(session, page.offer.id, page.now)
            left = service.MAX_FAILED_VERIFICATIONS - failures
            field.errors.append(checkout.no_match_message(left))
    return render_template(
        "offer/verify.html", **form.page_context(methods),
        **page.context(Step.verify),
    )  # fmt: skip


# --- 3. the plan's details -------------------------------------------------------------------


@bp.route("/o/<token>/plan", methods=["GET", "POST"])
def plan(token: str) -> str | Response:
    page = _enter(token, Step.plan)
    form = forms.ButtonForm()
    if form.validate_on_submit():
        page.state.plan_seen = True
        return _advance(page)
    schedule = _schedule(page)
    return render_template(
        "offer/plan.html",
        form=form,
        schedule=schedule,
        frequency_text=offers.FREQUENCY_TEXT[page.offer.frequency],
        expires_text=local_text(page.offer.expires_at, page.timezone),
        **page.context(Step.plan),
    )


# --- 4. the payment method -------------------------------------------------------------------


@bp.route("/o/<token>/method", methods=["GET", "POST"])
def method(token: str) -> str | Response:
    page = _enter(token, Step.method)
    current = _current_method(page)
    asked = request.form.get("kind") or request.args.get("kind")
    kind = asked if asked in ("card", "bank") else (current.kind if current else "card")
    form: forms.CardForm | forms.BankForm = (
        forms.CardForm() if kind == MethodKind.card else forms.BankForm()
    )
    hint = None
    if form.validate_on_submit():
        session = db_session()
        try:
            saved = _save_method(page, form)
        except cards.InvalidPaymentDetail as exc:
            session.rollback()
            getattr(form, getattr(exc, "field", "number")).errors.append(
                checkout.as_sentence(str(exc))
            )
        else:
            service.record_method(session, page.offer, saved, page.now, **_client())
            session.commit()
            page.state.choose_method(saved.id)
            return _advance(page)
    if request.method == "POST":
        hint = form.forget_secrets()
    return render_template(
        "offer/method.html", form=form, kind=kind, hint=hint, current=current,
        **page.context(Step.method),
    )  # fmt: skip


def _save_method(page: Page, form: forms.CardForm | forms.BankForm) -> PaymentMethod:
    today = plan_math.local_today(page.now, page.timezone)
    return forms.save_method(db_session(), page.account, gateway(), form, today=today, now=page.now)


# --- 5. the E-SIGN disclosure ----------------------------------------------------------------


@bp.route("/o/<token>/consent", methods=["GET", "POST"])
def consent(token: str) -> str | Response:
    page = _enter(token, Step.consent)
    form = forms.ConsentForm()
    if request.method == "GET" and page.state.consent_at:
        form.agree.data = True
    disclosure = text.disclosure_text(page.account, page.settings)
    if form.validate_on_submit():
        session = db_session()
        service.record_consent(session, page.offer, page.now, **_client())
        session.commit()
        page.state.consent_at = isoformat(page.now)
        page.state.consent_sha256 = text.text_sha256(disclosure)
        return _advance(page)
    return render_template(
        "offer/consent.html", form=form, disclosure=disclosure, **page.context(Step.consent)
    )


# --- 6. the terms and the recurring payment authorization ------------------------------------


@bp.route("/o/<token>/terms", methods=["GET", "POST"])
def terms(token: str) -> str | Response:
    page = _enter(token, Step.terms)
    method = _current_method(page)
    if method is None:
        return _advance(page)
    session = db_session()
    rendered = service.agreement_text(session, page.offer, method)
    if _disclosure_changed(page, rendered):
        return _advance(page)
    form = forms.TermsForm()
    problem = None
    if form.validate_on_submit():
        if form.text_sha256.data != rendered.sha256:
            problem = "Some details changed since you opened this page. Please read them again."
        else:
            service.record_terms(
                session, page.offer, "terms.accepted", rendered.sha256, page.now, **_client()
            )
            session.commit()
            page.state.terms_sha256 = rendered.sha256
            return _advance(page)
    if page.state.terms_shown_sha256 != rendered.sha256:
        service.record_terms(
            session, page.offer, "terms.viewed", rendered.sha256, page.now, **_client()
        )
        session.commit()
        page.state.terms_shown_sha256 = rendered.sha256
        page.save()
    form.text_sha256.data = rendered.sha256
    if request.method == "GET" and page.state.terms_sha256 == rendered.sha256:
        form.agree.data = True
    return render_template(
        "offer/terms.html", form=form, problem=problem, agreement=rendered, method=method,
        schedule=_schedule(page), **page.context(Step.terms),
    )  # fmt: skip


def _disclosure_changed(page: Page, rendered: text.AgreementText) -> bool:
    """The E-SIGN disclosure is not the one consented to (the creditor's contact details
    changed meanwhile): consent is asked for again, so the frozen text is what was read."""
    if page.state.consent_sha256 == text.text_sha256(rendered.disclosure):
        return False
    page.state.consent_at = page.state.consent_sha256 = None
    page.state.terms_sha256 = None
    flash("Some details changed since you read them. Please read them again.", "error")
    return True


# --- 7. the signature ------------------------------------------------------------------------


@bp.route("/o/<token>/sign", methods=["GET", "POST"])
def sign(token: str) -> str | Response:
    page = _enter(token, Step.sign)
    method = _current_method(page)
    if method is None:
        return _advance(page)
    form = forms.SignForm()
    if request.method == "POST" and form.offer_ref.data != page.offer.token_id:
        raise OtherOffer
    if request.method == "POST":
        valid = form.validate_on_submit()
        signature = _signature(form, page)
        if valid and signature is not None:
            return _capture(page, method, signature)
    form.offer_ref.data = page.offer.token_id
    form.signature_png.data = ""  # never sent back: the customer draws again
    return render_template(
        "offer/sign.html",
        form=form,
        method=method,
        schedule=_schedule(page),
        decline_url=url_for(".decline", token=token),
        **page.context(Step.sign),
    )


def _signature(form: forms.SignForm, page: Page) -> service.Signature | None:
    """The checked signature, or None with the errors put on the form's fields."""
    name = None
    if not form.full_name.errors:
        try:
            name = service.check_signer_name(form.full_name.data, page.account.name)
        except service.SignatureInvalid as exc:
            form.full_name.errors = [exc.message]
    png = None
    if form.signature_method.data == "drawn":
        try:
            png = service.decode_drawn_signature(form.signature_png.data)
        except service.SignatureInvalid as exc:
            form.signature_png.errors = [exc.message]
            return None
    if name is None:
        return None
    return service.Signature(name, "drawn" if png else "typed", png)


def _capture(page: Page, method: PaymentMethod, signature: service.Signature) -> Response:
    session = db_session()
    state = page.state
    consent_at = parse_instant(state.consent_at) if state.consent_at else page.now
    try:
        service.capture_signature(
            session, page.offer.id, signature=signature, method_id=method.id,
            accepted_sha256=state.terms_sha256 or "", consent_at=consent_at,
            verified_by=page.verified_by, now=page.now, **_client(),
        )  # fmt: skip
    except service.TermsChanged:
        session.rollback()
        rendered = service.agreement_text(session, page.offer, method)
        if not _disclosure_changed(page, rendered):
            state.terms_sha256 = None
            flash("Some details changed since you read them. Please read them again.", "error")
        return _advance(page)
    except service.MethodUnusable:
        session.rollback()
        state.method_id = None
        state.terms_sha256 = None
        return _advance(page)
    try:
        session.commit()
    except IntegrityError:
        # Another Sign for this offer committed first (a double tap): its plan stands.
        session.rollback()
    page.forget()
    return redirect(page.url(Step.start))


# --- declining -------------------------------------------------------------------------------


@bp.route("/o/<token>/decline", methods=["GET", "POST"])
def decline(token: str) -> str | Response:
    # Only someone who got past verification may decline: it ends the offer for good.
    page = _enter(token, Step.plan)
    form = forms.ButtonForm(prefix="decline")
    if form.validate_on_submit():
        session = db_session()
        try:
            offers.decline_offer(session, page.offer, page.now, **_client())
        except offers.OfferEnded:
            session.rollback()
        else:
            session.commit()
        page.forget()
        return redirect(page.url(Step.start))
    return render_template("offer/decline.html", form=form, **page.context())
