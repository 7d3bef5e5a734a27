"""The campaign job: mint and send one payment link to each pending account of a campaign.

Each batch is one transaction: the items' status, their links and the links' outbox
messages commit together, and the send jobs are enqueued only after that commit. A job
killed mid-batch leaves its batch pending with nothing minted; a job run twice (a retry,
the Resume button, a duplicate) finds only pending items, which it takes under
``FOR UPDATE SKIP LOCKED`` on PostgreSQL (SQLite serializes writers). So each account
gets at most one link and one message per channel from a campaign.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import audit
from app.clock import utcnow
from app.messaging.outbox import send_job
from app.queue import enqueue_after_commit, job_id
from links import service
from links.campaign_models import Campaign, CampaignItem, CampaignStatus, ItemStatus
from links.campaigns import run_job
from links.web import link_tokens, message_env
from workers.runtime import job_db, job_queue, paylink_job

log = logging.getLogger(__name__)

BATCH = 100  # accounts per transaction
TIME_BUDGET = 30.0  # seconds a job works before handing the rest to a fresh job


@paylink_job
def run_campaign(campaign_id: int) -> dict[str, int]:
    """Work through the campaign's pending items, a batch per transaction, until none is
    left, the campaign is cancelled, or the time budget is spent (then a new job, enqueued
    after the last commit, carries on). Idempotent: only pending items are ever minted."""
    started = time.monotonic()
    done = {"sent": 0, "skipped": 0}
    while True:
        with job_db().transaction() as session:
            # Locked: a Cancel waits for this batch, and its status is never written over.
            campaign = session.get(Campaign, campaign_id, with_for_update=True)
            if campaign is None or campaign.status in (
                CampaignStatus.cancelled,
                CampaignStatus.completed,
            ):
                return done
            now = utcnow()
            if campaign.status == CampaignStatus.queued:
                campaign.status = CampaignStatus.running.value
                campaign.started_at = now
            items = session.scalars(
                select(CampaignItem)
                .where(
                    CampaignItem.campaign_id == campaign_id,
                    CampaignItem.status == ItemStatus.pending.value,
                )
                .order_by(CampaignItem.id)
                .limit(BATCH)
                .with_for_update(skip_locked=True, of=CampaignItem)
            ).all()
            written: list[int] = []
            for item in items:
                done[_mint(session, campaign, item, now, written)] += 1
            if written:
                # The batch's messages go out in one send job (emails in one provider call).
                key = job_id("send-campaign", campaign_id, written[0], len(written))
                enqueue_after_commit(session, send_job(written, key))
            if len(items) < BATCH:
                _finish_if_done(session, campaign, now)
                return done
            if time.monotonic() - started > TIME_BUDGET:
                enqueue_after_commit(session, run_job(campaign_id, "after", items[-1].id))
                return done


def _mint(
    session: Session, campaign: Campaign, item: CampaignItem, now: datetime, written: list[int]
) -> str:
    """Send this item's link, or say why not. Returns the item's new status."""
    account = item.account
    usable = service.available_channels(account)
    channels = [c for c in campaign.channels if c in usable]
    reason = None
    if account.hold:
        reason = f"account on hold ({account.hold.replace('_', ' ')})"
    elif account.balance_cents <= 0:
        reason = "no balance to pay"
    elif not channels:
        reason = "no usable " + " or ".join(
            "phone" if c == "sms" else "email" for c in campaign.channels
        )
    item.updated_at = now
    if reason is not None:
        item.status = ItemStatus.skipped.value
        item.reason = reason
        return "skipped"
    actor = audit.Actor.system(f"campaign-{campaign.id}")
    new = service.create_link(
        session, account, amount_cents=None, channels=channels,
        expires_in_hours=campaign.expires_in_hours, actor=actor,
        agent_id=campaign.created_by_agent_id, now=now, env=message_env(), tokens=link_tokens(),
        enqueue=False,
    )  # fmt: skip
    written.extend(m.id for m in new.messages)
    item.status = ItemStatus.sent.value
    item.link_id = new.link.id
    return "sent"


def _finish_if_done(session: Session, campaign: Campaign, now: datetime) -> None:
    """Mark the campaign completed once no item is pending (another job may still hold
    some of them locked: then that job finishes it)."""
    session.flush()
    counts = dict(
        session.execute(
            select(CampaignItem.status, func.count())
            .where(CampaignItem.campaign_id == campaign.id)
            .group_by(CampaignItem.status)
        ).all()
    )
    if counts.get(ItemStatus.pending.value):
        return
    campaign.status = CampaignStatus.completed.value
    campaign.finished_at = now
    audit.record(
        session, audit.Actor.system(f"campaign-{campaign.id}"), "campaign.completed",
        "campaign", campaign.id, now, {status: counts.get(status, 0) for status in ItemStatus},
    )  # fmt: skip


STALLED_AFTER = timedelta(minutes=5)


def resume_stalled_campaigns(now: datetime) -> dict[str, int]:
    """Sweep duty: a queued or running campaign with items still pending and nothing done
    for STALLED_AFTER lost its job (a worker killed, Redis emptied): enqueue it again, once
    per sweep minute. The job takes only pending items under their row locks, so a job
    that was merely slow and this one never send an item twice."""
    with job_db().transaction() as session:
        active = session.execute(
            select(Campaign.id, Campaign.created_at).where(
                Campaign.status.in_([CampaignStatus.queued.value, CampaignStatus.running.value])
            )
        ).all()
        stalled = []
        for campaign_id, created_at in active:
            last, pending = session.execute(
                select(
                    func.max(CampaignItem.updated_at),
                    func.count().filter(CampaignItem.status == ItemStatus.pending.value),
                ).where(CampaignItem.campaign_id == campaign_id)
            ).one()
            if pending and (last or created_at) <= now - STALLED_AFTER:
                stalled.append(campaign_id)
    slot = int(now.timestamp()) // 60
    enqueued = job_queue().enqueue_many([run_job(c, "sweep", slot) for c in stalled])
    return {"stalled_campaigns": len(stalled), "enqueued": enqueued}
