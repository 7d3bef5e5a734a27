"""Message jobs: send a list of messages, and the sweep duty that finds stuck ones."""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import or_, select

from app.clock import utcnow
from app.messaging import inbound
from app.messaging.backends import build_email_backend, build_sms_backend
from app.messaging.dispatch import Dispatcher
from app.messaging.outbox import MessageEnv, send_job
from app.messaging.ratelimit import SenderRateLimiter
from app.models import Message, MessageStatus
from app.queue import job_id
from signing.storage import loader as document_loader
from workers.runtime import paylink_job

# A queued message still waiting this long after its time has lost its job: enqueue again.
STUCK_AFTER = timedelta(minutes=2)
# A Twilio status parked this long found no send of ours: not one we will ever record.
PARKED_FOR = timedelta(days=1)
SWEEP_BATCH = 1000  # one SendGrid call's worth of emails


def dispatcher() -> Dispatcher:
    """The dispatcher of the current app, built once per app and reused by every job."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    found = app.extensions.get("paylink.dispatcher")
    if found is None:
        config = app.extensions["paylink.config"]
        found = Dispatcher(
            db=app.extensions["paylink.db"],
            sms=build_sms_backend(config),
            email=build_email_backend(config),
            limiter=SenderRateLimiter(app.extensions["paylink.queue"].connection),
            env=MessageEnv.from_config(config),
            sms_per_second=config.sms_per_second,
            email_per_second=config.email_per_second,
            clock=utcnow,
            status_callback=f"{config.base_url.rstrip('/')}/webhooks/twilio/status"
            if config.sms_backend == "twilio"
            else None,
            load_attachment=document_loader(config, app.extensions["paylink.db"]),
        )
        app.extensions["paylink.dispatcher"] = found
    found.counts = {}
    return found


@paylink_job
def send_messages(message_ids: list[int]) -> dict[str, int]:
    """Send the given messages that are due. Idempotent: each message is claimed first."""
    return dict(dispatcher().run(message_ids))


def resend_stuck(now: datetime) -> dict[str, int]:
    """Sweep duty: messages whose job was lost (a crash before enqueue, Redis emptied, a
    worker killed mid-send) get a new job. Reads only pending rows, by index."""
    db = current_app.extensions["paylink.db"]
    job_queue = current_app.extensions["paylink.queue"]
    found = 0
    with db.transaction() as session:
        rows = session.execute(
            select(Message.id, Message.attempts, Message.status)
            .where(
                or_(
                    Message.status.in_([MessageStatus.queued, MessageStatus.deferred])
                    & (Message.scheduled_for <= now - STUCK_AFTER),
                    (Message.status == MessageStatus.sending) & (Message.lease_until < now),
                )
            )
            .order_by(Message.scheduled_for)
            .limit(50_000)
        ).all()
    enqueued = 0
    for start in range(0, len(rows), SWEEP_BATCH):
        batch = rows[start : start + SWEEP_BATCH]
        found += len(batch)
        ids = [r.id for r in batch]
        # One job per batch, named after its first message and the sweep's minute, so two
        # sweeps in the same minute enqueue it once; the claim makes any repeat harmless.
        key = job_id("send-sweep", ids[0], len(ids), int(now.timestamp()) // 60)
        if job_queue.enqueue(send_job(ids, key)) is not None:
            enqueued += 1
    return {"stuck_messages": found, "jobs": enqueued}


def drop_parked_statuses(now: datetime) -> dict[str, int]:
    """Sweep duty: apply the parked Twilio status callbacks whose send is on record, and
    forget those parked for a day with no send of ours to apply them to."""
    db = current_app.extensions["paylink.db"]
    with db.transaction() as session:
        return inbound.sweep_parked(session, now - PARKED_FOR, now)
