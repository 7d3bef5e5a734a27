"""Payment operations: save a method, charge once per idempotency key, settle, follow.

``begin_charge`` and ``finish_charge`` each run in a transaction of their own (the caller
commits between them and the gateway call), so a crash leaves a ``processing`` row that
the same key will find again, never a second charge.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.models import Account
from app.payments import cards
from app.payments.gateway import APPROVED, PENDING, ChargeResult, Gateway
from app.payments.models import (
    TRANSITIONS,
    MethodKind,
    Payment,
    PaymentMethod,
    PaymentStatus,
)

log = logging.getLogger(__name__)


class InvalidTransition(Exception):
    pass


def transition(payment: Payment, status: PaymentStatus, now: datetime) -> None:
    current = PaymentStatus(payment.status)
    if status not in TRANSITIONS[current]:
        raise InvalidTransition(f"payment {payment.id}: {current} -> {status} is not allowed")
    payment.status = status.value
    payment.updated_at = now


@dataclass(frozen=True)
class CardInput:
    name: str
    number: str
    expiry: str  # MM/YY
    security_code: str
    zip: str


@dataclass(frozen=True)
class BankInput:
    holder_name: str
    routing_number: str
    account_number: str
    account_type: str  # checking or savings


def add_card(
    session: Session,
    account: Account,
    gateway: Gateway,
    card: CardInput,
    today: date,
    now: datetime,
) -> PaymentMethod:
    """Check and tokenize a card; keep only the token, brand, last 4, expiry. Flushes.

    Raises ``cards.InvalidPaymentDetail`` naming the field at fault in ``.field``.
    """
    number, brand = _field("number", lambda: cards.check_card_number(card.number))
    month, year = _field("expiry", lambda: cards.check_expiry(card.expiry, today))
    code = _field("security_code", lambda: cards.check_security_code(card.security_code, brand))
    token = gateway.tokenize_card(number, month, year, code, card.zip)
    method = PaymentMethod(
        account_id=account.id, kind=MethodKind.card.value, gateway=gateway.name,
        gateway_token=token.token, holder_name=card.name, last4=token.last4, brand=token.brand,
        exp_month=token.exp_month, exp_year=token.exp_year, zip=card.zip, created_at=now,
    )  # fmt: skip
    session.add(method)
    session.flush()
    return method


def add_bank_account(
    session: Session, account: Account, gateway: Gateway, bank: BankInput, now: datetime
) -> PaymentMethod:
    """Check and tokenize a bank account; keep the token, routing number, last 4. Flushes."""
    routing = _field("routing_number", lambda: cards.check_routing_number(bank.routing_number))
    number = _field("account_number", lambda: cards.check_bank_account_number(bank.account_number))
    if bank.account_type not in ("checking", "savings"):
        raise _invalid("account_type", "choose checking or savings")
    token = gateway.tokenize_bank(routing, number, bank.account_type)
    method = PaymentMethod(
        account_id=account.id, kind=MethodKind.bank.value, gateway=gateway.name,
        gateway_token=token.token, holder_name=bank.holder_name, last4=token.last4,
        routing_number=routing, account_type=bank.account_type, created_at=now,
    )  # fmt: skip
    session.add(method)
    session.flush()
    return method


def _invalid(field: str, message: str) -> cards.InvalidPaymentDetail:
    exc = cards.InvalidPaymentDetail(message)
    exc.field = field  # type: ignore[attr-defined]
    return exc


def _field(field, check):
    try:
        return check()
    except cards.InvalidPaymentDetail as exc:
        raise _invalid(field, str(exc)) from None


def new_receipt_number(now: datetime) -> str:
    return f"R-{now:%Y%m%d}-{secrets.token_hex(4).upper()}"


def begin_charge(
    session: Session,
    *,
    account: Account,
    method: PaymentMethod,
    amount_cents: int,
    idempotency_key: str,
    now: datetime,
    link_id: int | None = None,
    agreement_id: int | None = None,
    scheduled_for: datetime | None = None,
) -> tuple[Payment, bool]:
    """The payment for ``idempotency_key``: (payment, created). Created ``processing``
    (or ``scheduled`` when ``scheduled_for`` is given); an existing one is returned as it is.
    The caller commits before charging, so a concurrent request sees the row."""
    existing = session.scalar(select(Payment).where(Payment.idempotency_key == idempotency_key))
    if existing is not None:
        return existing, False
    payment = Payment(
        account_id=account.id, link_id=link_id, agreement_id=agreement_id, method_id=method.id,
        amount_cents=amount_cents, currency=account.currency, idempotency_key=idempotency_key,
        status=(PaymentStatus.scheduled if scheduled_for else PaymentStatus.processing).value,
        scheduled_for=scheduled_for, created_at=now, updated_at=now,
    )  # fmt: skip
    try:
        with session.begin_nested():
            session.add(payment)
            session.flush()
    except IntegrityError:
        existing = session.scalar(select(Payment).where(Payment.idempotency_key == idempotency_key))
        if existing is None:
            raise
        return existing, False
    return payment, True


def call_gateway(
    gateway: Gateway, payment: Payment, method: PaymentMethod, now: datetime
) -> ChargeResult:
    """The gateway call, outside any transaction; the key makes a repeat harmless."""
    return gateway.charge(method.gateway_token, payment.amount_cents, payment.idempotency_key, now)


def finish_charge(session: Session, payment: Payment, result: ChargeResult, now: datetime) -> None:
    """Record the gateway's answer on a ``processing`` payment; the balance follows. Flushes."""
    if payment.status != PaymentStatus.processing:
        return  # already recorded by whoever got here first
    payment.gateway_reference = result.reference
    if result.status == APPROVED:
        _mark_paid(session, payment, now)
    elif result.status == PENDING:
        transition(payment, PaymentStatus.pending, now)
        payment.settles_at = result.settles_at
        payment.receipt_number = payment.receipt_number or new_receipt_number(now)
        _reduce_balance(session, payment)
    else:
        transition(payment, PaymentStatus.declined, now)
        payment.decline_code = result.decline_code
        payment.decline_message = result.decline_message
    session.flush()
    _log_outcome(payment, "charge")


def settle(session: Session, payment: Payment, result: ChargeResult, now: datetime) -> None:
    """A pending bank debit settled (paid) or was returned (declined). Flushes."""
    if payment.status != PaymentStatus.pending:
        return
    if result.status == APPROVED:
        transition(payment, PaymentStatus.paid, now)
        payment.paid_at = now
    elif result.status != PENDING:
        transition(payment, PaymentStatus.declined, now)
        payment.decline_code = result.decline_code
        payment.decline_message = result.decline_message
        account = session.get(Account, payment.account_id, with_for_update=True)
        if account is not None:
            # The money never came: the balance is owed again, with any settlement discount.
            account.balance_cents += payment.amount_cents + (payment.written_off_cents or 0)
    session.flush()
    if payment.status != PaymentStatus.pending:
        _log_outcome(payment, "settlement")


def _log_outcome(payment: Payment, event: str) -> None:
    """What happened to the money, for operations: ids, amount and outcome as recorded in
    the caller's transaction; never the method's details."""
    log.info(
        "payment %s %s: %s",
        payment.id,
        event,
        payment.status,
        extra={
            "payment_id": payment.id, "account_id": payment.account_id, "event": event,
            "amount_cents": payment.amount_cents, "status": str(payment.status),
            "decline_code": payment.decline_code, "gateway_reference": payment.gateway_reference,
        },
    )  # fmt: skip


def _mark_paid(session: Session, payment: Payment, now: datetime) -> None:
    transition(payment, PaymentStatus.paid, now)
    payment.paid_at = now
    payment.receipt_number = payment.receipt_number or new_receipt_number(now)
    _reduce_balance(session, payment)


def _reduce_balance(session: Session, payment: Payment) -> None:
    account = session.get(Account, payment.account_id, with_for_update=True)
    if account is not None:
        # A payment larger than what is left (two links paid at once) leaves zero, not less.
        account.balance_cents = max(0, account.balance_cents - payment.amount_cents)
