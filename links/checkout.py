"""The customer's payment flow on a link, without the web: which steps apply, what each
step leaves in the flow state, amounts, settlement offers, schedules, the agreement text,
and the charge in its two transactions.

Functions take the session, plain values and ``now``; they flush, never commit. The view
owns the transactions: it commits after ``start_payment`` (so a concurrent Confirm finds
the row), calls the gateway outside any transaction, then commits ``finish_payment``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import audit
from app.messaging.outbox import MessageEnv, first_name
from app.messaging.render import money
from app.models import Account, Message, OrgSettings
from app.payments import cards
from app.payments import service as payments
from app.payments.gateway import ChargeResult
from app.payments.models import MethodKind, Payment, PaymentMethod, PaymentStatus
from links import receipts
from links.models import LinkStatus, PaymentAgreement, PaymentLink
from links.service import LinkGone, check_verification, refresh_status

# The payment authorization's wording; change the version whenever the text changes.
AGREEMENT_VERSION = "2026-11"
# Scheduled payments are due from this hour on their date, in the customer's time zone.
SCHEDULED_HOUR = 9
# A Confirm whose gateway call has not been recorded after this long is taken over.
STALE_PROCESSING = timedelta(minutes=1)
# Email receipt: copies a customer may ask for on top of the automatic one.
MAX_RECEIPT_COPIES = 5
MAX_AMOUNT_CENTS = 10**12

VERIFICATION_LABELS = {
    "ssn_last4": "Last 4 of SSN",
    "date_of_birth": "Date of birth",
    "zip": "ZIP",
}


class Step(enum.StrEnum):
    start = "start"
    verify = "verify"
    offer = "offer"
    amount = "amount"
    method = "method"
    schedule = "schedule"
    review = "review"


class InputError(ValueError):
    """Something the customer typed cannot be used; the message says what to fix."""


class ScheduleError(ValueError):
    """A schedule that cannot be used: ``fields`` maps form fields to messages, ``message``
    says what is wrong with the schedule as a whole."""

    def __init__(self, fields: dict[str, str], message: str | None = None):
        super().__init__(message or "check the payments")
        self.fields = fields
        self.message = message


class LinkUsed(Exception):
    """The link was paid meanwhile (another tab, a double tap): show its receipt."""


# --- what applies to this link ------------------------------------------------------------


@dataclass(frozen=True)
class Settlement:
    """Pay ``amount_cents`` today instead of ``full_cents``."""

    percent: int
    amount_cents: int
    full_cents: int

    @property
    def discount_cents(self) -> int:
        return self.full_cents - self.amount_cents


def settlement_offers(due_cents: int, percents: Iterable[int]) -> tuple[Settlement, ...]:
    """One offer per percentage, biggest discount first; the amount rounds half up to the
    cent and is never below one cent."""
    offers = []
    for percent in sorted(set(percents), reverse=True):
        if not 0 < percent < 100:
            continue
        amount = max(1, (due_cents * (100 - percent) + 50) // 100)
        if amount < due_cents:
            offers.append(Settlement(percent, amount, due_cents))
    return tuple(offers)


def verification_methods(settings: OrgSettings, account: Account) -> tuple[str, ...]:
    """The settings' verification methods the account has a fact for, in settings order;
    empty when verification is off or the account has none of the facts."""
    if not settings.contact_verification:
        return ()
    facts = {
        "ssn_last4": bool(account.ssn_last4),
        "date_of_birth": account.date_of_birth is not None,
        "zip": bool((account.zip or "").strip()),
    }
    return tuple(m for m in settings.verification_methods or () if facts.get(m))


@dataclass(frozen=True)
class Flow:
    """The steps one link's customer goes through, from the settings and the account."""

    due_cents: int  # the link's amount, never more than what is still owed
    currency: str
    timezone: str
    verify_methods: tuple[str, ...]
    offers: tuple[Settlement, ...]
    can_skip_offer: bool
    schedule_enabled: bool
    max_payments: int
    horizon_days: int

    def settlement(self, state: FlowState) -> Settlement | None:
        if not state.offer:
            return None
        return next((o for o in self.offers if o.percent == state.offer), None)

    def steps(self, state: FlowState) -> list[Step]:
        steps = [Step.start]
        if self.verify_methods:
            steps.append(Step.verify)
        if self.offers:
            steps.append(Step.offer)
        steps += [Step.amount, Step.method]
        if self.schedule_enabled and self.settlement(state) is None:
            steps.append(Step.schedule)
        steps.append(Step.review)
        return steps

    def today(self, now: datetime) -> date:
        return now.astimezone(ZoneInfo(self.timezone)).date()


def build_flow(link: PaymentLink, account: Account, settings: OrgSettings) -> Flow:
    due = max(0, min(link.amount_cents, account.balance_cents))
    offers = (
        settlement_offers(due, settings.settlement_percent_off or ())
        if settings.virtual_collection
        else ()
    )
    return Flow(
        due_cents=due,
        currency=account.currency,
        timezone=account.timezone or settings.default_timezone,
        verify_methods=verification_methods(settings, account),
        offers=offers,
        can_skip_offer=settings.allow_skip_offer,
        schedule_enabled=settings.schedule_payment and settings.max_scheduled_payments > 0,
        max_payments=settings.max_scheduled_payments,
        horizon_days=settings.schedule_horizon_days,
    )


# --- the flow's state (kept in the customer's session, one entry per link) ------------------


@dataclass
class FlowState:
    """What the customer has done so far on one link. Holds ids and amounts only: never a
    card number, security code or bank account number."""

    link_id: int
    reviewed: bool = False
    verified: bool = False
    offer: int | None = None  # percent off chosen; 0: skipped
    amount_cents: int | None = None
    method_id: int | None = None
    when: str | None = None  # "now" or "later"
    schedule: list[list[Any]] = field(default_factory=list)  # [[iso date, cents], ...]
    nonce: str | None = None  # made when the review page is shown; keys the charge
    notice: str | None = None  # a decline to show on the method page

    @classmethod
    def load(cls, data: Any, link_id: int) -> FlowState:
        """The state in ``data`` if it is one for ``link_id``, else a fresh one."""
        if not isinstance(data, dict) or data.get("link_id") != link_id:
            return cls(link_id)
        state = cls(link_id)
        for name, kinds in _STATE_TYPES.items():
            value = data.get(name, getattr(state, name))
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                return cls(link_id)
            setattr(state, name, value)
        if state.when not in (None, "now", "later") or not all(
            isinstance(row, list) and len(row) == 2 and isinstance(row[0], str)
            and isinstance(row[1], int)
            for row in state.schedule
        ):  # fmt: skip
            return cls(link_id)
        return state

    def dump(self) -> dict[str, Any]:
        return asdict(self)

    def done(self, step: Step) -> bool:
        return {
            Step.start: self.reviewed,
            Step.verify: self.verified,
            Step.offer: self.offer is not None,
            Step.amount: self.amount_cents is not None,
            Step.method: self.method_id is not None,
            Step.schedule: self.when is not None,
            Step.review: False,
        }[step]

    # Each choice clears what depended on it.
    def choose_offer(self, percent: int) -> None:
        if self.offer != percent:
            self.offer = percent
            self.amount_cents = None
            self.when, self.schedule = None, []
        self.nonce = None

    def choose_amount(self, cents: int) -> None:
        if self.amount_cents != cents:
            self.amount_cents = cents
            self.when, self.schedule = None, []
        self.nonce = None

    def choose_method(self, method_id: int) -> None:
        self.method_id = method_id
        self.nonce = None
        self.notice = None

    def choose_schedule(self, when: str, schedule: list[tuple[date, int]]) -> None:
        self.when = when
        self.schedule = [[d.isoformat(), cents] for d, cents in schedule]
        self.nonce = None

    def declined(self, message: str) -> None:
        """A declined charge: the customer picks another method; the next Confirm is a new
        attempt with a new nonce."""
        self.method_id = None
        self.nonce = None
        self.notice = message


_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "reviewed": (bool,),
    "verified": (bool,),
    "offer": (int, type(None)),
    "amount_cents": (int, type(None)),
    "method_id": (int, type(None)),
    "when": (str, type(None)),
    "schedule": (list,),
    "nonce": (str, type(None)),
    "notice": (str, type(None)),
}


def reconcile(flow: Flow, state: FlowState) -> None:
    """Drop choices the link or settings no longer allow (balance paid down meanwhile, an
    offer withdrawn, Skip turned off, scheduling turned off). Whatever changes, the next
    Confirm is a new attempt."""
    before = state.dump()
    if state.offer is not None:
        skipped_ok = state.offer == 0 and flow.can_skip_offer and bool(flow.offers)
        if not skipped_ok and flow.settlement(state) is None:
            state.offer = None
            state.amount_cents = None
    if state.amount_cents is not None:
        try:
            check_amount(state.amount_cents, flow, flow.settlement(state))
        except InputError:
            state.amount_cents = None
    if state.amount_cents is None or Step.schedule not in flow.steps(state):
        state.when, state.schedule = None, []
    if state.dump() != before:
        state.nonce = None


def first_open_step(flow: Flow, state: FlowState) -> Step:
    return next(step for step in flow.steps(state) if not state.done(step))


def may_enter(flow: Flow, state: FlowState, step: Step) -> bool:
    """A step applies and every step before it is done (going back is allowed)."""
    steps = flow.steps(state)
    return step in steps and steps.index(step) <= steps.index(first_open_step(flow, state))


def progress(flow: Flow, state: FlowState, step: Step) -> tuple[int, int]:
    """(this step's number, how many steps) for the "Step 2 of 6" line."""
    steps = flow.steps(state)
    return (steps.index(step) + 1 if step in steps else 1), len(steps)


def new_nonce() -> str:
    return secrets.token_urlsafe(12)


# --- what the customer types ----------------------------------------------------------------

# ASCII digits only: \d would also take other scripts' digits.
_AMOUNT = re.compile(r"\$?\s*([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)?(?:\.([0-9]*))?")


def parse_amount(text: str | None) -> int:
    """Dollars as typed ("125.50", "$1,200", "7.5") → cents; InputError otherwise."""
    raw = (text or "").strip()
    if not raw:
        raise InputError("Enter an amount, such as 125.50.")
    if raw.startswith("-"):
        raise InputError("Enter an amount more than $0.00.")
    match = _AMOUNT.fullmatch(raw)
    if not match or (match.group(1) is None and not match.group(2)):
        raise InputError("Enter an amount in dollars and cents, such as 125.50.")
    if match.group(2) is not None and len(match.group(2)) > 2:
        raise InputError("Enter the amount in whole cents, such as 125.50.")
    try:
        value = Decimal((match.group(1) or "0").replace(",", "") + "." + (match.group(2) or "0"))
    except InvalidOperation:
        raise InputError("Enter an amount in dollars and cents, such as 125.50.") from None
    cents = int(value * 100)
    if cents > MAX_AMOUNT_CENTS:
        raise InputError("This amount is too large.")
    return cents


def check_amount(cents: int, flow: Flow, settlement: Settlement | None) -> int:
    """An amount the customer may pay on this link; InputError saying why not."""
    if cents <= 0:
        raise InputError("Enter an amount more than $0.00.")
    if settlement is not None and cents != settlement.amount_cents:
        raise InputError(
            f"With the offer you chose, the amount is "
            f"{money(settlement.amount_cents, flow.currency)}."
        )
    if cents > flow.due_cents:
        raise InputError(
            f"The most you can pay on this link is {money(flow.due_cents, flow.currency)}."
        )
    return cents


_DATE_FORMATS = (
    re.compile(r"(?P<y>[0-9]{4})-(?P<m>[0-9]{1,2})-(?P<d>[0-9]{1,2})"),
    re.compile(r"(?P<m>[0-9]{1,2})/(?P<d>[0-9]{1,2})/(?P<y>[0-9]{4})"),
)


def parse_date(text: str | None) -> date:
    """A date typed as YYYY-MM-DD (what date inputs send) or MM/DD/YYYY."""
    raw = (text or "").strip()
    for pattern in _DATE_FORMATS:
        match = pattern.fullmatch(raw)
        if match:
            try:
                return date(int(match["y"]), int(match["m"]), int(match["d"]))
            except ValueError:
                break
    raise InputError("Enter the date as MM/DD/YYYY.")


def schedule_bounds(flow: Flow, now: datetime) -> tuple[date, date]:
    """The first and last dates a payment may be scheduled on: tomorrow to the horizon."""
    today = flow.today(now)
    return today + timedelta(days=1), today + timedelta(days=flow.horizon_days)


def check_schedule(
    rows: Sequence[tuple[str | None, str | None]], total_cents: int, flow: Flow, now: datetime
) -> list[tuple[date, int]]:
    """Rows of (date text, amount text) → [(date, cents)] by date. Blank rows are ignored;
    dates from tomorrow to the horizon, each once; the amounts add up to ``total_cents``.
    ScheduleError names every field at fault (``date_<n>``, ``amount_<n>``, n from 1)."""
    first, last = schedule_bounds(flow, now)
    errors: dict[str, str] = {}
    payments: list[tuple[date, int]] = []
    seen: set[date] = set()
    filled = 0
    for n, (date_text, amount_text) in enumerate(rows, start=1):
        if not (date_text or "").strip() and not (amount_text or "").strip():
            continue
        filled += 1
        day: date | None = None
        try:
            day = parse_date(date_text)
        except InputError as exc:
            errors[f"date_{n}"] = str(exc)
        else:
            if day < first:
                errors[f"date_{n}"] = "Choose a date from tomorrow on."
            elif day > last:
                errors[f"date_{n}"] = f"Choose a date no later than {_date_text(last)}."
            elif day in seen:
                errors[f"date_{n}"] = "Each payment needs a different date."
            seen.add(day)
        try:
            cents = parse_amount(amount_text)
            if cents <= 0:
                raise InputError("Enter an amount more than $0.00.")
        except InputError as exc:
            errors[f"amount_{n}"] = str(exc)
        else:
            if day is not None:
                payments.append((day, cents))
    if filled == 0:
        raise ScheduleError({}, "Enter the date and amount of at least one payment.")
    if errors:
        raise ScheduleError(errors)
    if filled > flow.max_payments:
        raise ScheduleError({}, f"You can schedule up to {flow.max_payments} payments.")
    total = sum(cents for _, cents in payments)
    if total != total_cents:
        raise ScheduleError(
            {},
            f"The payments add up to {money(total, flow.currency)}; they must add up to "
            f"{money(total_cents, flow.currency)}.",
        )
    return sorted(payments)


def normalize_verification(method: str, value: str | None) -> str:
    """The fact as the records keep it; InputError (no attempt counted) for a value that
    cannot be one."""
    raw = (value or "").strip()
    if method == "ssn_last4":
        if not re.fullmatch(r"[0-9]{4}", raw):
            raise InputError("Enter the last 4 digits of your Social Security number.")
        return raw
    if method == "date_of_birth":
        try:
            return parse_date(raw).isoformat()
        except InputError:
            raise InputError("Enter your date of birth as MM/DD/YYYY.") from None
    if method == "zip":
        match = re.fullmatch(r"([0-9]{5})(?:-?[0-9]{4})?", raw)
        if not match:
            raise InputError("Enter your 5-digit ZIP code.")
        return match.group(1)
    raise InputError("Choose a way to confirm who you are.")


def verify_contact(
    session: Session, link: PaymentLink, method: str, value: str | None, now: datetime
) -> bool:
    """Check one verification fact against the account; five failures lock the link
    (LinkLocked). A value that cannot be such a fact raises InputError and counts as no
    attempt. Flushes."""
    given = normalize_verification(method, value)
    expected_last4 = link.account.ssn_last4 or ""
    ssn_ok = (
        method == "ssn_last4"
        and len(expected_last4) == 4
        and hmac.compare_digest(given.encode(), expected_last4.encode())
    )
    return check_verification(session, link, method, given, ssn_last4_ok=ssn_ok, now=now)


def no_match_message(tries_left: int) -> str:
    """What a wrong verification answer is told, with the tries before the pause."""
    plural = "s" if tries_left != 1 else ""
    return f"That does not match our records. You can try {tries_left} more time{plural}."


def as_sentence(text: str) -> str:
    """A message as a sentence: capital first letter, one full stop."""
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "." if text else text


def card_problems(number: str, expiry: str, security_code: str, today: date) -> dict[str, str]:
    """Every field at fault in a typed card, so the customer can fix them all at once
    (``add_card`` checks again and stops at the first). Never echoes a number."""
    problems: dict[str, str] = {}
    brand = None
    try:
        _digits, brand = cards.check_card_number(number)
    except cards.InvalidPaymentDetail as exc:
        problems["number"] = as_sentence(str(exc))
    try:
        cards.check_expiry(expiry, today)
    except cards.InvalidPaymentDetail as exc:
        problems["expiry"] = as_sentence(str(exc))
    try:
        cards.check_security_code(security_code, brand or "visa")
    except cards.InvalidPaymentDetail as exc:
        if brand is not None or len((security_code or "").strip()) not in (3, 4):
            problems["security_code"] = as_sentence(str(exc))
    return problems


def bank_problems(routing_number: str, account_number: str) -> dict[str, str]:
    """Every field at fault in a typed bank account (see ``card_problems``)."""
    problems: dict[str, str] = {}
    for field_name, check, value in (
        ("routing_number", cards.check_routing_number, routing_number),
        ("account_number", cards.check_bank_account_number, account_number),
    ):
        try:
            check(value)
        except cards.InvalidPaymentDetail as exc:
            problems[field_name] = as_sentence(str(exc))
    return problems


# --- contact details as shown to whoever holds the link ---------------------------------


def mask_phone(phone: str | None) -> str | None:
    """``+12025550143`` → ``***-***-0143``."""
    digits = re.sub(r"[^0-9]", "", phone or "")
    return f"***-***-{digits[-4:]}" if len(digits) >= 4 else None


def mask_email(address: str | None) -> str | None:
    """``maria@example.com`` → ``m***@example.com``."""
    local, at, domain = (address or "").rpartition("@")
    return f"{local[0]}***@{domain}" if at and local and domain else None


# --- the plan and the agreement ---------------------------------------------------------------


@dataclass(frozen=True)
class Installment:
    n: int
    amount_cents: int
    on: date | None  # None: charged now


def plan_for(flow: Flow, state: FlowState, now: datetime) -> list[Installment]:
    """The payments the customer is about to confirm; InputError (naming nothing) when the
    state no longer makes a valid plan, e.g. a scheduled date that has become today."""
    settlement = flow.settlement(state)
    if state.amount_cents is None:
        raise InputError("Enter the amount.")
    check_amount(state.amount_cents, flow, settlement)
    if state.when == "later" and Step.schedule in flow.steps(state):
        rows = [(str(d), f"{c // 100}.{c % 100:02d}") for d, c in state.schedule]
        try:
            scheduled = check_schedule(rows, state.amount_cents, flow, now)
        except ScheduleError as exc:
            raise InputError("Please choose the dates of your payments again.") from exc
        return [Installment(n, c, d) for n, (d, c) in enumerate(scheduled, start=1)]
    return [Installment(1, state.amount_cents, None)]


def _date_text(day: date) -> str:
    return f"{day:%b} {day.day}, {day.year}"


def agreement_text(
    *,
    customer_name: str,
    account_ref: str,
    settings: OrgSettings,
    method: PaymentMethod,
    plan: Sequence[Installment],
    settlement: Settlement | None,
    currency: str,
    today: date,
) -> str:
    """The payment authorization exactly as shown on the review page and stored when the
    customer accepts it. Deterministic: the same inputs give the same text, byte for byte."""
    creditor = settings.creditor_name
    total = sum(i.amount_cents for i in plan)
    lines = [
        f"PAYMENT AUTHORIZATION (version {AGREEMENT_VERSION})",
        "",
        f"I, {customer_name}, authorize {creditor} to collect the payment"
        f"{'s' if len(plan) > 1 else ''} below from my {method.label} for account {account_ref}.",
        "",
    ]
    for item in plan:
        when = f"on {_date_text(item.on)}" if item.on else f"today, {_date_text(today)}"
        lines.append(f"  {item.n}. {money(item.amount_cents, currency)} {when}")
    lines += ["", f"Total: {money(total, currency)}"]
    if settlement is not None:
        lines += [
            "",
            f"Settlement: {creditor} accepts {money(settlement.amount_cents, currency)} "
            f"({settlement.percent}% off) in full settlement of the "
            f"{money(settlement.full_cents, currency)} due on this link, once the payment "
            "is received.",
        ]
    if method.kind == MethodKind.bank:
        lines += [
            "",
            "I authorize an electronic debit (ACH) of this bank account for each amount on "
            "its date. A debit can take a few business days to complete.",
        ]
    else:
        lines += ["", "I authorize a charge to this card for each amount on its date."]
    if any(item.on for item in plan):
        lines += [
            "",
            f"To change or cancel a scheduled payment, contact {creditor} at least one "
            "business day before its date.",
        ]
    contact = ", ".join(part for part in (settings.creditor_phone, settings.creditor_email) if part)
    if contact:
        hours = f" ({settings.creditor_hours})" if settings.creditor_hours else ""
        lines += ["", f"Questions: {creditor}, {contact}{hours}."]
    return "\n".join(lines) + "\n"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def account_ref(account: Account) -> str:
    """The creditor's account number, shown only by its last 4."""
    return f"ending {account.external_id[-4:]}" if len(account.external_id) > 4 else "on file"


# --- charging -----------------------------------------------------------------------------


def idempotency_key(link_id: int, nonce: str, n: int) -> str:
    return f"link-{link_id}-{nonce}-{n}"


def attempt_payments(session: Session, link: PaymentLink, nonce: str) -> list[Payment]:
    """The payments of one Confirm (one nonce), first installment first."""
    prefix = f"link-{link.id}-{nonce}-"
    stmt = (
        select(Payment)
        .where(Payment.link_id == link.id, Payment.idempotency_key.startswith(prefix))
        .order_by(Payment.id)
    )
    return list(session.scalars(stmt))


@dataclass
class Attempt:
    payments: list[Payment]
    created: bool  # this call wrote them: it, and only it, charges


def start_payment(
    session: Session,
    link: PaymentLink,
    method: PaymentMethod,
    plan: Sequence[Installment],
    *,
    nonce: str,
    text: str,
    ip: str | None,
    user_agent: str | None,
    now: datetime,
    timezone: str,
) -> Attempt:
    """The first transaction of Confirm: record the accepted agreement and one payment per
    installment (``processing`` for now, ``scheduled`` for later). Idempotent by ``nonce``:
    a second call returns the first call's payments with ``created`` False. Scheduled
    payments use the link at once. Raises LinkGone or LinkUsed. Flushes."""
    existing = attempt_payments(session, link, nonce)
    if existing:
        return Attempt(existing, False)
    refresh_status(link, now)
    if link.status in (LinkStatus.expired, LinkStatus.revoked):
        raise LinkGone(link, link.status)
    if link.status == LinkStatus.used:
        raise LinkUsed
    agreement = PaymentAgreement(
        link_id=link.id, version=AGREEMENT_VERSION, text_sha256=text_sha256(text), text=text,
        accepted_at=now, ip=(ip or None) and ip[:45], user_agent=(user_agent or "")[:400] or None,
    )  # fmt: skip
    session.add(agreement)
    session.flush()
    zone = ZoneInfo(timezone)
    created: list[Payment] = []
    for item in plan:
        scheduled_for = datetime.combine(item.on, time(SCHEDULED_HOUR), zone) if item.on else None
        payment, new = payments.begin_charge(
            session, account=link.account, method=method, amount_cents=item.amount_cents,
            idempotency_key=idempotency_key(link.id, nonce, item.n), now=now, link_id=link.id,
            agreement_id=agreement.id, scheduled_for=scheduled_for,
        )  # fmt: skip
        if not new:
            # Someone else's Confirm with this nonce got in first: theirs stands.
            for mine in created:
                session.delete(mine)
            session.delete(agreement)
            session.flush()
            return Attempt(attempt_payments(session, link, nonce), False)
        if scheduled_for is not None:
            payment.receipt_number = payments.new_receipt_number(now)
        created.append(payment)
    actor = audit.Actor("customer", str(link.account_id), ip=ip)
    audit.record(
        session, actor, "link.agreement_accepted", "link", link.id, now,
        {"agreement_id": agreement.id, "version": AGREEMENT_VERSION,
         "sha256": agreement.text_sha256, "payment_ids": [p.id for p in created],
         "method": method.as_json()},
    )  # fmt: skip
    if all(p.status == PaymentStatus.scheduled for p in created):
        mark_used(session, link, now)
    session.flush()
    return Attempt(created, True)


def needs_charge(payment: Payment, now: datetime, *, created: bool) -> bool:
    """Whether this request should call the gateway: it wrote the payment, or an earlier
    request left it ``processing`` for too long (the gateway key makes a repeat harmless)."""
    if payment.status != PaymentStatus.processing:
        return False
    return created or payment.updated_at <= now - STALE_PROCESSING


def finish_payment(
    session: Session,
    link: PaymentLink,
    payment: Payment,
    result: ChargeResult,
    *,
    settlement: Settlement | None,
    env: MessageEnv,
    now: datetime,
) -> None:
    """The second transaction of Confirm: record the gateway's answer. A paid or pending
    payment uses the link, writes off a settlement's discount and queues the receipt email,
    all in this transaction. Recording twice changes nothing. Flushes."""
    session.refresh(link, with_for_update=True)
    session.refresh(payment, with_for_update=True)
    if payment.status != PaymentStatus.processing:
        return
    payments.finish_charge(session, payment, result, now)
    if payment.status not in (PaymentStatus.paid, PaymentStatus.pending):
        return
    mark_used(session, link, now)
    if settlement is not None and settlement.discount_cents > 0:
        account = session.get(Account, payment.account_id, with_for_update=True)
        if account is not None:
            written_off = min(account.balance_cents, settlement.discount_cents)
            account.balance_cents -= written_off
            payment.written_off_cents = written_off
            audit.record(
                session, audit.Actor.system("settlement"), "account.settled", "account",
                account.id, now,
                {"link_id": link.id, "payment_id": payment.id, "percent": settlement.percent,
                 "written_off_cents": written_off},
            )  # fmt: skip
    receipts.queue_receipt(session, payment, env, now)
    session.flush()


def mark_used(session: Session, link: PaymentLink, now: datetime) -> None:
    """The link has done its job: it shows its receipt from now on."""
    if link.status == LinkStatus.used:
        return
    # Paid in the moment it expired or was revoked: the payment stands, so does "used".
    link.status = LinkStatus.used.value
    link.used_at = now
    audit.record(
        session, audit.Actor("customer", str(link.account_id)), "link.used", "link", link.id, now
    )
    session.flush()


def outcome(payments_: Sequence[Payment]) -> str:
    """``done`` (paid, pending or scheduled), ``declined`` or ``processing``."""
    statuses = {PaymentStatus(p.status) for p in payments_}
    if PaymentStatus.declined in statuses:
        return "declined"
    if PaymentStatus.processing in statuses or not statuses:
        return "processing"
    return "done"


# --- the receipt ----------------------------------------------------------------------------


def receipt_payments(session: Session, link: PaymentLink) -> list[Payment]:
    """The payments of the Confirm that used the link (the last agreement accepted on it;
    earlier attempts were declined)."""
    last = session.scalar(
        select(func.max(PaymentAgreement.id)).where(PaymentAgreement.link_id == link.id)
    )
    if last is None:
        return []
    stmt = select(Payment).where(Payment.agreement_id == last).order_by(Payment.id)
    return list(session.scalars(stmt))


def emailable_payment(payments_: Sequence[Payment]) -> Payment | None:
    """The payment a receipt email describes: the first paid or pending one."""
    return next(
        (p for p in payments_ if p.status in (PaymentStatus.paid, PaymentStatus.pending)), None
    )


def email_receipt_again(
    session: Session, payment: Payment, env: MessageEnv, now: datetime
) -> list[Message]:
    """Queue one more copy of the receipt (the customer pressed Email receipt); nothing
    once MAX_RECEIPT_COPIES copies were sent. Flushes."""
    prefix = f"receipt-{payment.id}-again"
    copies = session.scalar(
        select(func.count()).select_from(Message).where(Message.dedupe_key.startswith(prefix))
    )
    if (copies or 0) >= MAX_RECEIPT_COPIES:
        return []
    return receipts.queue_receipt(session, payment, env, now, again=(copies or 0) + 1)


def greeting_name(account: Account) -> str:
    return first_name(account.name)
