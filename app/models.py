"""Core tables every feature stands on: agents, API keys, accounts, settings, audit."""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.clock import utcnow
from app.db import Base, UTCDateTime


class Role(enum.StrEnum):
    agent = "agent"
    supervisor = "supervisor"
    admin = "admin"

    @property
    def rank(self) -> int:
        return ("agent", "supervisor", "admin").index(self.value)


class Hold(enum.StrEnum):
    """Why nothing may be sent to an account."""

    dispute = "dispute"
    cease_communication = "cease_communication"


def _in(column: str, values: type[enum.StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Agent(Base):
    __tablename__ = "agent"
    __table_args__ = (CheckConstraint(_in("role", Role), name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)  # stored lower-case
    name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.agent.value)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="agent")

    def has_role(self, role: Role) -> bool:
        return Role(self.role).rank >= role.rank


class ApiKey(Base):
    __tablename__ = "api_key"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agent.id"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    # The first characters of the key, shown in listings so people can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    # SHA-256 of the whole key: keys are 256-bit random, so a fast hash is safe here.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    agent: Mapped[Agent] = relationship(back_populates="api_keys")


class Account(Base):
    """A customer's debt or bill account at the creditor."""

    __tablename__ = "account"
    __table_args__ = (
        CheckConstraint("balance_cents >= 0", name="balance_not_negative"),
        CheckConstraint("length(currency) = 3", name="currency_code"),
        CheckConstraint("hold IS NULL OR " + _in("hold", Hold), name="hold"),
        Index("ix_account_name", "name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    external_id: Mapped[str] = mapped_column(String(64), unique=True)  # the creditor's number
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str | None] = mapped_column(String(20), index=True)  # E.164
    email: Mapped[str | None] = mapped_column(String(254), index=True)
    timezone: Mapped[str | None] = mapped_column(String(64))  # IANA; settings' default if unset
    balance_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3), default="USD")
    # HMAC-SHA256 of the SSN digits under PAYLINK_SSN_HASH_KEY; the SSN itself is never kept.
    ssn_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    ssn_last4: Mapped[str | None] = mapped_column(String(4))
    date_of_birth: Mapped[date | None] = mapped_column(Date)
    zip: Mapped[str | None] = mapped_column(String(10))
    sms_opted_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    email_opted_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    hold: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class OrgSettings(Base):
    """The organisation's settings: exactly one row, id 1."""

    __tablename__ = "org_settings"
    __table_args__ = (
        CheckConstraint("id = 1", name="single_row"),
        CheckConstraint("link_lifetime_hours > 0", name="link_lifetime"),
        CheckConstraint("offer_lifetime_hours > 0", name="offer_lifetime"),
        CheckConstraint(
            "quiet_hours_start_minute >= 0 AND quiet_hours_start_minute < 1440 "
            "AND quiet_hours_end_minute > quiet_hours_start_minute "
            "AND quiet_hours_end_minute <= 1440",
            name="quiet_hours",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False, default=1)
    contact_verification: Mapped[bool] = mapped_column(Boolean, default=True)
    # Which facts a customer may verify with: ssn_last4, date_of_birth, zip.
    verification_methods: Mapped[list[str]] = mapped_column(
        JSON, default=lambda: ["ssn_last4", "date_of_birth", "zip"]
    )
    virtual_collection: Mapped[bool] = mapped_column(Boolean, default=True)
    allow_skip_offer: Mapped[bool] = mapped_column(Boolean, default=True)
    schedule_payment: Mapped[bool] = mapped_column(Boolean, default=True)
    reminder_offsets: Mapped[list[str]] = mapped_column(JSON, default=lambda: ["72h", "24h", "2h"])
    link_lifetime_hours: Mapped[int] = mapped_column(Integer, default=168)
    offer_lifetime_hours: Mapped[int] = mapped_column(Integer, default=168)
    # Messages go out only inside [start, end) in the customer's local time, in minutes.
    quiet_hours_start_minute: Mapped[int] = mapped_column(Integer, default=8 * 60)
    quiet_hours_end_minute: Mapped[int] = mapped_column(Integer, default=21 * 60)
    expiry_notice: Mapped[bool] = mapped_column(Boolean, default=True)
    first_due_horizon_days: Mapped[int] = mapped_column(Integer, default=365)
    default_timezone: Mapped[str] = mapped_column(String(64), default="America/New_York")
    creditor_name: Mapped[str] = mapped_column(String(200), default="Paylink Demo Creditor")
    creditor_phone: Mapped[str] = mapped_column(String(32), default="+18005550100")
    creditor_email: Mapped[str] = mapped_column(String(254), default="billing@example.com")
    creditor_address: Mapped[str] = mapped_column(Text, default="")
    creditor_hours: Mapped[str] = mapped_column(String(200), default="Mon-Fri 9am-5pm")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    updated_by_agent_id: Mapped[int | None] = mapped_column(ForeignKey("agent.id"))


class AuditEvent(Base):
    """Who did what to which object. Append-only: rows are never updated or deleted."""

    __tablename__ = "audit_event"
    __table_args__ = (Index("ix_audit_event_object", "object_type", "object_id", "id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_type: Mapped[str] = mapped_column(String(16))  # agent, api_key, customer, system
    actor_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))  # e.g. account.created
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ip: Mapped[str | None] = mapped_column(String(45))
    request_id: Mapped[str | None] = mapped_column(String(64))
