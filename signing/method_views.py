"""The customer's page for a new payment method of a plan, at ``/m/<token>``.

The payment-failed notice of a declined installment links here. The token (purpose
``plan-method``) carries the plan's offer id only; the plan decides whether the page
works: while it is active. A new card or bank account (the link flow's form, tokenized at
once) replaces the plan's method, and an installment waiting for a retry is tried again
at the next local charge hour. When the settings ask for contact verification, the
customer first confirms a fact on file, as in the offer flow (the same tries and lockout,
counted on the offer's trail); the pass is kept in the session for this plan only.
"""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from flask import session as web_session
from flask_wtf.csrf import CSRFError
from sqlalchemy import select
from werkzeug.exceptions import TooManyRequests

from app import audit
from app.clock import utcnow
from app.db import db_session
from app.messaging.outbox import MessageEnv
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
from links.tokens import PLAN_METHOD, UrlTokens
from links.views import phone_text
from links.web import gateway
from offers import forms, installments, plan_math
from offers.models import Offer, PaymentPlan, PlanStatus
from signing import service

bp = Blueprint("plan_method", __name__)

OPEN_LIMIT = "120 per minute"
SAVE_LIMIT = "10 per 15 minutes"  # each try tokenizes a card: no card testing here
VERIFY_LIMIT = "20 per 15 minutes"
VERIFIED = "plan_method_verified"  # session key: the offer token id of the plan passed


def method_tokens() -> UrlTokens:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if "paylink.plan_method_tokens" not in app.extensions:
        app.extensions["paylink.plan_method_tokens"] = UrlTokens(
            app.extensions["paylink.config"].secret_keys, PLAN_METHOD
        )
    return app.extensions["paylink.plan_method_tokens"]


def method_url(env: MessageEnv, offer_token_id: str) -> str:
    """The page's absolute URL for the plan of the offer with ``offer_token_id``."""
    return f"{env.base_url}/m/{method_tokens().token_for(offer_token_id)}"


class PlanNotFound(Exception):
    """No plan for this token: 404, revealing nothing."""


class PlanEnded(Exception):
    def __init__(self, plan: PaymentPlan):
        super().__init__(plan.status)
        self.plan = plan


bp.after_request(private_page)


@bp.context_processor
def _helpers() -> dict[str, object]:
    return {"money": money, "phone_text": phone_text}


def _creditor() -> OrgSettings:
    return get_settings(db_session())


@bp.errorhandler(PlanNotFound)
def _not_found(_exc: PlanNotFound) -> tuple[str, int]:
    return render_template("offer/not_found.html", creditor=_creditor()), 404


@bp.errorhandler(PlanEnded)
def _ended(exc: PlanEnded) -> tuple[str, int]:
    status = exc.plan.status
    db_session().rollback()
    return render_template("plan/ended.html", creditor=_creditor(), status=status), 410


@bp.errorhandler(TooManyRequests)
def _too_many(_exc: TooManyRequests) -> tuple[str, int]:
    return render_template("pay/too_many.html", creditor=_creditor()), 429


@bp.errorhandler(CSRFError)
def _csrf_failed(_exc: CSRFError) -> tuple[str, int]:
    html = render_template("pay/expired_form.html", creditor=_creditor(), again=request.path)
    return html, 400


def _load(token: str, *, lock: bool = False) -> tuple[PaymentPlan, Account]:
    try:
        token_id = method_tokens().verify(token)
    except TokenInvalid:
        raise PlanNotFound from None
    session = db_session()
    plan = session.scalar(
        select(PaymentPlan)
        .join(Offer, Offer.id == PaymentPlan.offer_id)
        .where(Offer.token_id == token_id)
    )
    if plan is None:
        raise PlanNotFound
    if lock:
        session.refresh(plan, with_for_update=True)
    if plan.status != PlanStatus.active:
        raise PlanEnded(plan)
    account = session.get(Account, plan.account_id)
    assert account is not None
    return plan, account


def _page(plan: PaymentPlan, account: Account, **extra: object) -> dict[str, object]:
    session = db_session()
    settings = get_settings(session)
    zone = installments.account_zone(account, settings)
    failed = installments.failed_installment(session, plan)
    return {
        "creditor": settings,
        "first_name": checkout.greeting_name(account),
        "failed": failed,
        "retry_text": installments.date_text(failed.next_attempt_at, zone) if failed else None,
        "currency": account.currency,
        **extra,
    }


@bp.route("/m/<token>", methods=["GET", "POST"])
@limiter.limit(OPEN_LIMIT, methods=["GET"])
@limiter.limit(SAVE_LIMIT, methods=["POST"])
def method(token: str) -> str | Response:
    """The form (GET), and saving a new method (POST): card or bank, as in the link flow."""
    plan, account = _load(token)
    if _needs_verification(plan, account):
        return redirect(url_for(".verify", token=token))
    asked = request.form.get("kind") or request.args.get("kind")
    kind = asked if asked in ("card", "bank") else "card"
    form: forms.CardForm | forms.BankForm = (
        forms.CardForm() if kind == MethodKind.card else forms.BankForm()
    )
    hint = None
    if form.validate_on_submit():
        session = db_session()
        plan, account = _load(token, lock=True)
        if _needs_verification(plan, account):
            return redirect(url_for(".verify", token=token))
        now = utcnow()
        try:
            saved = _save_method(account, form, now)
        except cards.InvalidPaymentDetail as exc:
            session.rollback()
            getattr(form, getattr(exc, "field", "number")).errors.append(
                checkout.as_sentence(str(exc))
            )
        else:
            ip, user_agent = request.remote_addr, request.user_agent.string or None
            actor = audit.Actor("customer", str(account.id), ip=ip)
            installments.change_method(
                session, plan, saved, actor, now, ip=ip, user_agent=user_agent
            )
            session.commit()
            return redirect(url_for(".updated", token=token))
    if request.method == "POST":
        hint = form.forget_secrets()
    return render_template(
        "plan/method.html", form=form, kind=kind, hint=hint, token=token,
        **_page(plan, account),
    )  # fmt: skip


def _needs_verification(plan: PaymentPlan, account: Account) -> bool:
    methods = checkout.verification_methods(get_settings(db_session()), account)
    return bool(methods) and web_session.get(VERIFIED) != plan.offer.token_id


@bp.route("/m/<token>/verify", methods=["GET", "POST"])
@limiter.limit(VERIFY_LIMIT, methods=["POST"])
def verify(token: str) -> str | Response | tuple[str, int, dict[str, str]]:
    """Confirm it's you, when the settings ask: a fact on file, five wrong tries pause the
    page (and the offer's own flow) for 15 minutes."""
    plan, account = _load(token)
    session = db_session()
    settings = get_settings(session)
    methods = checkout.verification_methods(settings, account)
    if not methods or web_session.get(VERIFIED) == plan.offer.token_id:
        return redirect(url_for(".method", token=token))
    now = utcnow()
    until, _failures = service.verification_lock(session, plan.offer_id, now)
    if until is not None:
        return _locked(account, settings, until, now)
    asked = request.form.get("method") or request.args.get("method")
    form = forms.VerifyForm.for_methods(methods, asked)
    method, field = form.method.data, form.answer
    if form.validate_on_submit():
        ip, user_agent = request.remote_addr, request.user_agent.string or None
        try:
            ok = service.verify_contact(
                session, plan.offer, method, field.data, now, ip=ip, user_agent=user_agent
            )
        except checkout.InputError as exc:
            field.errors.append(str(exc))
        except service.OfferLocked as exc:
            session.commit()  # the failed try and the lockout are kept
            return _locked(account, settings, exc.until, now)
        else:
            session.commit()
            if ok:
                web_session[VERIFIED] = plan.offer.token_id
                return redirect(url_for(".method", token=token))
            _, failures = service.verification_lock(session, plan.offer_id, now)
            left = service.MAX_FAILED_VERIFICATIONS - failures
            field.errors.append(checkout.no_match_message(left))
    return render_template(
        "plan/verify.html", **form.page_context(methods), token=token,
        **_page(plan, account),
    )  # fmt: skip


def _locked(
    account: Account, settings: OrgSettings, until: datetime, now: datetime
) -> tuple[str, int, dict[str, str]]:
    seconds = max(1, int((until - now).total_seconds()))
    zone = account.timezone or settings.default_timezone
    html = render_template(
        "offer/locked.html",
        creditor=settings,
        until_text=local_text(until, zone),
        paused_what="this page",
    )
    return html, 429, {"Retry-After": str(seconds)}


@bp.get("/m/<token>/updated")
@limiter.limit(OPEN_LIMIT)
def updated(token: str) -> str:
    plan, account = _load(token)
    method = db_session().get(PaymentMethod, plan.method_id)
    return render_template("plan/updated.html", method=method, **_page(plan, account))


def _save_method(
    account: Account, form: forms.CardForm | forms.BankForm, now: datetime
) -> PaymentMethod:
    session = db_session()
    settings = get_settings(session)
    today = plan_math.local_today(now, account.timezone or settings.default_timezone)
    return forms.save_method(session, account, gateway(), form, today=today, now=now)
