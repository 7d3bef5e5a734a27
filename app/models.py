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
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.clock import utcnow
from app.db import Base, UTCDateTime, one_of


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


class Agent(Base):
    __tablename__ = "agent"
    __table_args__ = (CheckConstraint(one_of("role", Role), name="role"),)

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


class ConsoleSession(Base):
    """One console sign-in. The session cookie carries its secret and the database only
    the secret's hash, so signing out ends it for good, even for a copy of the cookie."""

    __tablename__ = "console_session"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agent.id"), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256, hex
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


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
        CheckConstraint("hold IS NULL OR " + one_of("hold", Hold), name="hold"),
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
    # Virtual collection: settlement offers shown on a payment link, as percent off the
    # balance for paying it in full today.
    settlement_percent_off: Mapped[list[int]] = mapped_column(JSON, default=lambda: [20])
    # Scheduling payments from a link: how far ahead, and how many.
    schedule_horizon_days: Mapped[int] = mapped_column(Integer, default=60)
    max_scheduled_payments: Mapped[int] = mapped_column(Integer, default=4)
    # Offers: most installments, settlement discounts (above the threshold only a
    # supervisor may offer one), the local hour installments are charged, what happens
    # after declines (retry after these many days, then default or cancel the plan).
    max_installments: Mapped[int] = mapped_column(Integer, default=24)
    settlement_max_percent_off: Mapped[int] = mapped_column(Integer, default=50)
    settlement_supervisor_percent_off: Mapped[int] = mapped_column(Integer, default=30)
    charge_hour: Mapped[int] = mapped_column(Integer, default=9)
    retry_after_days: Mapped[list[int]] = mapped_column(JSON, default=lambda: [3, 7])
    failed_plan_action: Mapped[str] = mapped_column(String(16), default="defaulted")
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


class Channel(enum.StrEnum):
    sms = "sms"
    email = "email"


class MessageStatus(enum.StrEnum):
    queued = "queued"
    deferred = "deferred"  # held back by quiet hours until scheduled_for
    sending = "sending"  # claimed by a worker until lease_until
    sent = "sent"
    delivered = "delivered"
    undelivered = "undelivered"
    failed = "failed"
    bounced = "bounced"
    suppressed = "suppressed"  # never sent: opted out, on hold, no address


class Message(Base):
    """One SMS or email, written in the transaction of the event that causes it."""

    __tablename__ = "message"
    __table_args__ = (
        CheckConstraint(one_of("channel", Channel), name="channel"),
        CheckConstraint(one_of("status", MessageStatus), name="status"),
        CheckConstraint("attempts >= 0", name="attempts"),
        # The outbox sweep reads only messages still waiting to go out.
        Index(
            "ix_message_pending",
            "scheduled_for",
            postgresql_where=text("status IN ('queued', 'deferred', 'sending')"),
            sqlite_where=text("status IN ('queued', 'deferred', 'sending')"),
        ),
        Index("ix_message_account", "account_id", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id"))
    kind: Mapped[str] = mapped_column(String(32))  # link, offer, reminder_1, receipt, ...
    channel: Mapped[str] = mapped_column(String(8))
    recipient: Mapped[str | None] = mapped_column(String(254))  # E.164 phone or email
    subject: Mapped[str | None] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text, default="")  # SMS text, or the email's text part
    html: Mapped[str | None] = mapped_column(Text)
    # Files sent with an email: [{"filename", "content_type", "key"}], the content kept in
    # document storage under "key" and loaded when the email is sent.
    attachments: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=MessageStatus.queued.value)
    status_reason: Mapped[str | None] = mapped_column(String(200))
    provider_id: Mapped[str | None] = mapped_column(String(100), unique=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    # One message per causing event and channel, e.g. "reminder-17-2-sms".
    dedupe_key: Mapped[str | None] = mapped_column(String(120), unique=True)
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime)  # not before this instant
    # Moot from this instant on (a reminder after its offer's expiry): never sent after it.
    send_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    account: Mapped[Account] = relationship()
    events: Mapped[list[MessageEvent]] = relationship(
        back_populates="message", order_by="MessageEvent.id"
    )


class MessageEvent(Base):
    """Every decision and provider report about a message, in order."""

    __tablename__ = "message_event"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("message.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    type: Mapped[str] = mapped_column(String(32))  # queued, deferred, suppressed, sent, status, ...
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    message: Mapped[Message] = relationship(back_populates="events")


class EmailSuppression(Base):
    """An address that bounced, complained or unsubscribed: no more email to it."""

    __tablename__ = "email_suppression"

    email: Mapped[str] = mapped_column(String(254), primary_key=True)  # lower-case
    reason: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ParkedSmsStatus(Base):
    """A Twilio status callback for a message sid not on record yet: the callback can
    overtake the worker still recording the send that sid came from. Applied when the
    send is recorded; dropped by a sweep once it is older than a day. The same callback
    is parked once ("" for no error code, so the unique constraint sees it)."""

    __tablename__ = "parked_sms_status"
    __table_args__ = (UniqueConstraint("message_sid", "status", "error_code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_sid: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    error_code: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class WebhookReceipt(Base):
    """Provider events already processed, so a repeated delivery changes nothing."""

    __tablename__ = "webhook_receipt"

    provider: Mapped[str] = mapped_column(String(16), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
