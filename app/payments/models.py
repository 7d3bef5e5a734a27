"""Payment methods and payments, shared by links and plans.

A method keeps the gateway's token and what a person needs to recognise it (brand, last
4, expiry, or routing number and last 4) — never a card number, security code or full
bank account number.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.clock import utcnow
from app.db import Base, UTCDateTime, one_of
from app.models import Account


class MethodKind(enum.StrEnum):
    card = "card"
    bank = "bank"


class PaymentStatus(enum.StrEnum):
    scheduled = "scheduled"  # to be charged on scheduled_for
    processing = "processing"  # a charge call is under way
    pending = "pending"  # a bank debit accepted, not yet settled
    paid = "paid"
    declined = "declined"
    cancelled = "cancelled"  # a scheduled payment that will not be charged
    refunded = "refunded"


# Where each status may go: the one transition table (see app.payments.service.transition).
TRANSITIONS: dict[PaymentStatus, frozenset[PaymentStatus]] = {
    PaymentStatus.scheduled: frozenset({PaymentStatus.processing, PaymentStatus.cancelled}),
    PaymentStatus.processing: frozenset(
        {PaymentStatus.paid, PaymentStatus.pending, PaymentStatus.declined}
    ),
    PaymentStatus.pending: frozenset({PaymentStatus.paid, PaymentStatus.declined}),
    PaymentStatus.paid: frozenset({PaymentStatus.refunded}),
    PaymentStatus.declined: frozenset(),
    PaymentStatus.cancelled: frozenset(),
    PaymentStatus.refunded: frozenset(),
}


class PaymentMethod(Base):
    __tablename__ = "payment_method"
    __table_args__ = (
        CheckConstraint(one_of("kind", MethodKind), name="kind"),
        CheckConstraint("length(last4) = 4", name="last4"),
        CheckConstraint(
            "account_type IS NULL OR account_type IN ('checking', 'savings')", name="account_type"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    gateway: Mapped[str] = mapped_column(String(32))
    gateway_token: Mapped[str] = mapped_column(String(128))
    holder_name: Mapped[str] = mapped_column(String(200))
    last4: Mapped[str] = mapped_column(String(4))
    brand: Mapped[str | None] = mapped_column(String(20))  # cards
    exp_month: Mapped[int | None] = mapped_column(Integer)
    exp_year: Mapped[int | None] = mapped_column(Integer)
    zip: Mapped[str | None] = mapped_column(String(10))
    routing_number: Mapped[str | None] = mapped_column(String(9))  # banks: public
    account_type: Mapped[str | None] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def label(self) -> str:
        if self.kind == MethodKind.card:
            names = {"amex": "American Express", "mastercard": "Mastercard", "visa": "Visa"}
            return (
                f"{names.get(self.brand or '', (self.brand or 'Card').title())} ending {self.last4}"
            )
        return f"{(self.account_type or 'bank').title()} account ending {self.last4}"

    def as_json(self) -> dict[str, str | None]:
        return {"kind": self.kind, "brand": self.brand, "last4": self.last4}


class Payment(Base):
    """One charge (or one scheduled charge) of a payment method."""

    __tablename__ = "payment"
    __table_args__ = (
        CheckConstraint("amount_cents > 0", name="amount_positive"),
        CheckConstraint(one_of("status", PaymentStatus), name="status"),
        Index(
            "ix_payment_due",
            "scheduled_for",
            postgresql_where=text("status = 'scheduled'"),
            sqlite_where=text("status = 'scheduled'"),
        ),
        # Charges stuck mid-call (a worker died) are found and reconciled by a sweep.
        Index(
            "ix_payment_processing",
            "updated_at",
            postgresql_where=text("status = 'processing'"),
            sqlite_where=text("status = 'processing'"),
        ),
        Index(
            "ix_payment_settling",
            "settles_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id"), index=True)
    link_id: Mapped[int | None] = mapped_column(ForeignKey("payment_link.id"), index=True)
    # The payment agreement the customer accepted for this payment.
    agreement_id: Mapped[int | None] = mapped_column(ForeignKey("payment_agreement.id"))
    method_id: Mapped[int] = mapped_column(ForeignKey("payment_method.id"))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    status: Mapped[str] = mapped_column(String(16))
    # One charge per key, whatever retries, double taps or concurrent requests happen.
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True)
    gateway_reference: Mapped[str | None] = mapped_column(String(100))
    decline_code: Mapped[str | None] = mapped_column(String(50))
    decline_message: Mapped[str | None] = mapped_column(String(200))
    receipt_number: Mapped[str | None] = mapped_column(String(32), unique=True)
    scheduled_for: Mapped[datetime | None] = mapped_column(UTCDateTime)
    settles_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What a settlement paid with this payment wrote off the balance; given back if the
    # payment is returned.
    written_off_cents: Mapped[int | None] = mapped_column(BigInteger)

    account: Mapped[Account] = relationship()
    method: Mapped[PaymentMethod] = relationship()
