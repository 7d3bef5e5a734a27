"""Customer notices about payments: the receipt and the payment-failed notice."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from app.messaging.outbox import MessageEnv, queue_message
from app.models import Account, Channel, Message
from app.payments.models import Payment
from app.settings import get_settings
from links.service import local_text


def queue_receipt(
    session: Session, payment: Payment, env: MessageEnv, now: datetime, *, again: int = 0
) -> list[Message]:
    """The ``receipt`` email for a paid (or pending bank) payment, once per payment;
    ``again`` > 0 sends another copy (the customer pressed Email receipt). Flushes."""
    account: Account = payment.account
    if not account.email or account.email_opted_out_at is not None:
        return []
    settings = get_settings(session)
    tz = account.timezone or settings.default_timezone
    context = {
        "amount_cents": payment.amount_cents,
        "receipt_number": payment.receipt_number,
        # A pending bank debit has no paid_at yet: it was taken when it became pending
        # (updated_at), which for a scheduled payment is days after created_at.
        "paid_at_text": local_text(payment.paid_at or payment.updated_at or payment.created_at, tz),
        "method_text": payment.method.label,
    }
    key = f"receipt-{payment.id}" + (f"-again{again}" if again else "")
    return queue_message(
        session,
        account,
        "receipt",
        [Channel.email.value],
        context,
        now=now,
        env=env,
        dedupe_key=key,
    )


def queue_payment_failed(
    session: Session,
    payment: Payment,
    env: MessageEnv,
    now: datetime,
    *,
    url: str,
    retry_date_text: str | None = None,
) -> list[Message]:
    """The ``payment_failed`` notice (email, and SMS where allowed), once per payment."""
    account: Account = payment.account
    channels = []
    if account.email and account.email_opted_out_at is None:
        channels.append(Channel.email.value)
    if account.phone and account.sms_opted_out_at is None:
        channels.append(Channel.sms.value)
    if not channels:
        return []
    context = {"amount_cents": payment.amount_cents, "url": url, "retry_date_text": retry_date_text}
    return queue_message(
        session, account, "payment_failed", channels, context, now=now, env=env,
        dedupe_key=f"payment-failed-{payment.id}",
    )  # fmt: skip
