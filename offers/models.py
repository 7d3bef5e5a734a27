"""Offers, their reminders, and the plans (with installments) that accepted offers become."""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.clock import utcnow
from app.db import Base, UTCDateTime, one_of
from app.models import Account


class OfferStatus(enum.StrEnum):
    draft = "draft"
    sent = "sent"
    viewed = "viewed"
    accepted = "accepted"
    declined = "declined"
    expired = "expired"
    revoked = "revoked"


OPEN_OFFER = (OfferStatus.sent, OfferStatus.viewed)


class PlanStatus(enum.StrEnum):
    active = "active"
    completed = "completed"
    cancelled = "cancelled"
    defaulted = "defaulted"


class InstallmentStatus(enum.StrEnum):
    scheduled = "scheduled"
    pending = "pending"
    paid = "paid"
    declined = "declined"
    cancelled = "cancelled"


class Offer(Base):
    """A payment-plan or settlement offer sent to a customer. The token in its URL carries
    ``token_id`` only; this row decides whether it is still open."""

    __tablename__ = "offer"
    __table_args__ = (
        CheckConstraint(one_of("status", OfferStatus), name="status"),
        CheckConstraint("kind IN ('plan', 'settlement')", name="kind"),
        CheckConstraint(
            "frequency IN ('weekly', 'biweekly', 'monthly', 'semimonthly')", name="frequency"
        ),
        CheckConstraint("total_cents > 0", name="total_positive"),
        CheckConstraint("installment_count >= 1", name="installments"),
        CheckConstraint(
            "percent_off IS NULL OR (percent_off > 0 AND percent_off < 100)", name="percent_off"
        ),
        # The expiry sweep reads only open offers, by expiry.
        Index(
            "ix_offer_open_expiry",
            "expires_at",
            postgresql_where=text("status IN ('sent', 'viewed')"),
            sqlite_where=text("status IN ('sent', 'viewed')"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    token_id: Mapped[str] = mapped_column(String(32), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    total_cents: Mapped[int] = mapped_column(BigInteger)
    # For a settlement: the balance it settles and the discount (percent off).
    balance_cents: Mapped[int] = mapped_column(BigInteger)
    percent_off: Mapped[int | None] = mapped_column(Integer)
    installment_count: Mapped[int] = mapped_column(Integer)
    frequency: Mapped[str] = mapped_column(String(16))
    first_due_date: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), default=OfferStatus.sent.value)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_agent_id: Mapped[int | None] = mapped_column(ForeignKey("agent.id"))
    viewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    declined_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    account: Mapped[Account] = relationship()
    reminders: Mapped[list[OfferReminder]] = relationship(
        back_populates="offer", order_by="OfferReminder.n"
    )


class OfferReminder(Base):
    """One of an offer's up to three reminders: sent at most once, by the sweep."""

    __tablename__ = "offer_reminder"
    __table_args__ = (
        UniqueConstraint("offer_id", "n"),
        CheckConstraint("n BETWEEN 1 AND 3", name="n"),
        CheckConstraint("status IN ('pending', 'sent', 'skipped', 'cancelled')", name="status"),
        Index(
            "ix_offer_reminder_due",
            "due_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    offer_id: Mapped[int] = mapped_column(ForeignKey("offer.id"), index=True)
    n: Mapped[int] = mapped_column(Integer)
    offset: Mapped[str] = mapped_column(String(8))  # as given: "72h"
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decision: Mapped[str | None] = mapped_column(Text)  # why it went when it did, or not

    offer: Mapped[Offer] = relationship(back_populates="reminders")


class OfferEvent(Base):
    """One step of an offer's life, from sending to signing, as its agreement's audit
    trail shows it. Append-only; each row's ``hash`` covers the previous row's (see
    offers.chain), so a changed or removed row shows."""

    __tablename__ = "offer_event"
    __table_args__ = (UniqueConstraint("offer_id", "seq"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    offer_id: Mapped[int] = mapped_column(ForeignKey("offer.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(40))
    at: Mapped[str] = mapped_column(String(40))  # ISO 8601 UTC with Z, exactly as hashed
    ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(400))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class PaymentPlan(Base):
    """The plan an accepted offer became."""

    __tablename__ = "payment_plan"
    __table_args__ = (CheckConstraint(one_of("status", PlanStatus), name="status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    offer_id: Mapped[int] = mapped_column(ForeignKey("offer.id"), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id"), index=True)
    method_id: Mapped[int] = mapped_column(ForeignKey("payment_method.id"))
    status: Mapped[str] = mapped_column(String(16), default=PlanStatus.active.value)
    total_cents: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_reason: Mapped[str | None] = mapped_column(String(500))

    offer: Mapped[Offer] = relationship()
    installments: Mapped[list[Installment]] = relationship(
        back_populates="plan", order_by="Installment.n"
    )


class Installment(Base):
    __tablename__ = "installment"
    __table_args__ = (
        UniqueConstraint("plan_id", "n"),
        CheckConstraint("amount_cents > 0", name="amount_positive"),
        CheckConstraint(one_of("status", InstallmentStatus), name="status"),
        CheckConstraint("attempts >= 0", name="attempts"),
        # The charge sweep reads only scheduled installments, by when they are next due.
        Index(
            "ix_installment_due",
            "next_attempt_at",
            postgresql_where=text("status = 'scheduled'"),
            sqlite_where=text("status = 'scheduled'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("payment_plan.id"))
    n: Mapped[int] = mapped_column(Integer)
    due_date: Mapped[date] = mapped_column(Date)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=InstallmentStatus.scheduled.value)
    # When the sweep should next charge it: the due date at the account's local charge
    # hour, later after a decline per the retry policy.
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_payment_id: Mapped[int | None] = mapped_column(ForeignKey("payment.id"))

    plan: Mapped[PaymentPlan] = relationship(back_populates="installments")
