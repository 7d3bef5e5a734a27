"""Link campaigns: one payment link, sent, to each account of a selection, by a job."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.clock import utcnow
from app.db import Base, UTCDateTime, one_of
from app.models import Account


class CampaignStatus(enum.StrEnum):
    queued = "queued"  # created, its job not started yet
    running = "running"
    completed = "completed"
    cancelled = "cancelled"


class ItemStatus(enum.StrEnum):
    pending = "pending"  # no link yet
    sent = "sent"  # link minted and its messages queued, in one transaction
    skipped = "skipped"  # nothing to send (no balance, no usable channel, on hold)
    cancelled = "cancelled"  # the campaign was cancelled first


class Campaign(Base):
    """A bulk send of payment links, worked through by ``workers.campaigns.run_campaign``."""

    __tablename__ = "campaign"
    __table_args__ = (
        CheckConstraint(one_of("status", CampaignStatus), name="status"),
        CheckConstraint(
            "expires_in_hours IS NULL OR expires_in_hours > 0", name="expires_in_hours"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=CampaignStatus.queued.value)
    # The channels asked for; each account gets those of them it may be reached on.
    channels: Mapped[list[str]] = mapped_column(JSON)
    expires_in_hours: Mapped[int | None] = mapped_column(Integer)  # settings' when unset
    total: Mapped[int] = mapped_column(Integer, default=0)
    created_by_agent_id: Mapped[int | None] = mapped_column(ForeignKey("agent.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CampaignItem(Base):
    """One account of a campaign. The unique pair and the status, changed in the same
    transaction as the link is minted, make a repeated or killed job mint nothing twice."""

    __tablename__ = "campaign_item"
    __table_args__ = (
        UniqueConstraint("campaign_id", "account_id"),
        CheckConstraint(one_of("status", ItemStatus), name="status"),
        # Progress counts and the job's next batch: by campaign and status.
        Index("ix_campaign_item_progress", "campaign_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id"))
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id"))
    status: Mapped[str] = mapped_column(String(16), default=ItemStatus.pending.value)
    link_id: Mapped[int | None] = mapped_column(ForeignKey("payment_link.id"))
    reason: Mapped[str | None] = mapped_column(String(200))  # why it was skipped
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    account: Mapped[Account] = relationship()
