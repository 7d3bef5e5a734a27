"""Payment links and the payment agreements customers accept through them."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.clock import utcnow
from app.db import Base, UTCDateTime
from app.models import Account


class LinkStatus(enum.StrEnum):
    active = "active"
    used = "used"
    expired = "expired"
    revoked = "revoked"


class PaymentLink(Base):
    """A personal link to pay (part of) an account's balance. The token in the URL
    carries ``token_id`` only; this row decides whether the link still works."""

    __tablename__ = "payment_link"
    __table_args__ = (
        CheckConstraint("amount_cents > 0", name="amount_positive"),
        CheckConstraint("status IN ('active', 'used', 'expired', 'revoked')", name="status"),
        CheckConstraint("failed_verifications >= 0", name="failed_verifications"),
        # Expiry sweep: only active links, by expiry.
        Index(
            "ix_payment_link_active_expiry",
            "expires_at",
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    token_id: Mapped[str] = mapped_column(String(32), unique=True)  # 128 random bits
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id"), index=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), default=LinkStatus.active.value)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_agent_id: Mapped[int | None] = mapped_column(ForeignKey("agent.id"))
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # first open only
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Contact verification: five failures lock the link for a while.
    failed_verifications: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)

    account: Mapped[Account] = relationship()


class PaymentAgreement(Base):
    """A customer's acceptance of the payment agreement text, as shown to them."""

    __tablename__ = "payment_agreement"

    id: Mapped[int] = mapped_column(primary_key=True)
    link_id: Mapped[int] = mapped_column(ForeignKey("payment_link.id"), index=True)
    version: Mapped[str] = mapped_column(String(20))
    text_sha256: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)  # exactly what the customer saw
    accepted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(400))
