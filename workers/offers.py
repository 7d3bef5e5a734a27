"""Offer jobs and the sweep duties that find due reminders and offers to expire.

The duties read only due rows through the partial indexes (``ix_offer_reminder_due``,
``ix_offer_open_expiry``), page by page, so a pass costs what is due, not what exists.
Every writer of an offer takes the offer's row lock before its reminders' (PostgreSQL:
``FOR UPDATE SKIP LOCKED``, so two sweeps split the work; SQLite serializes writers), and a
reminder leaves ``pending`` in the same commit that writes its messages: whatever runs
twice — a sweep, a job, a retry after a crash — finds nothing left to do.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session, selectinload

from app.messaging.outbox import send_job
from app.models import Message
from app.queue import MESSAGES, JobSpec, enqueue_after_commit, job_id
from app.settings import get_settings
from links.web import message_env
from offers import reminders as offer_reminders
from offers.models import OPEN_OFFER, Offer, OfferReminder
from offers.service import offer_message_context, offer_url
from offers.web import offer_tokens
from workers.runtime import job_db, job_now, job_queue, literal, paylink_job

REMINDER_BATCH = 1000  # reminders per job: their emails go in one provider call
EXPIRY_BATCH = 500  # offers per transaction
MAX_ROWS = 100_000  # per duty run; a larger backlog is left for the next run
REMINDER_JOB = "workers.offers.send_reminders"
REMINDER_TIMEOUT = 600


# --- reminders -----------------------------------------------------------------------------


def reminders_job(reminder_ids: Sequence[int], now: datetime) -> JobSpec:
    """One job for a page of due reminders, named by the page and the sweep's minute: two
    sweeps in the same minute enqueue it once; a later sweep can enqueue it again if it
    was lost, and the job's row locks make any repeat harmless."""
    ids = list(reminder_ids)
    key = job_id("reminders", ids[0], ids[-1], len(ids), int(now.timestamp()) // 60)
    return JobSpec(
        REMINDER_JOB, (ids, now.isoformat()), job_id=key, queue=MESSAGES,
        timeout=REMINDER_TIMEOUT,
    )  # fmt: skip


def send_due_reminders(now: datetime) -> dict[str, int]:
    """Sweep duty: one ``send_reminders`` job per page of pending reminders that are due,
    enqueued through one Redis pipeline. Changes no row."""
    specs: list[JobSpec] = []
    due = 0
    after: tuple[datetime, int] | None = None
    with job_db().transaction() as session:
        while due < MAX_ROWS:
            stmt = (
                select(OfferReminder.id, OfferReminder.due_at)
                .where(OfferReminder.status == literal("pending"), OfferReminder.due_at <= now)
                .order_by(OfferReminder.due_at, OfferReminder.id)
                .limit(REMINDER_BATCH)
            )
            if after is not None:
                stmt = stmt.where(tuple_(OfferReminder.due_at, OfferReminder.id) > after)
            rows = session.execute(stmt).all()
            if not rows:
                break
            specs.append(reminders_job(sorted(r.id for r in rows), now))
            due += len(rows)
            after = (rows[-1].due_at, rows[-1].id)
            if len(rows) < REMINDER_BATCH:
                break
    enqueued = job_queue().enqueue_many(specs)
    return {"reminders_due": due, "reminder_jobs": enqueued}


@paylink_job
def send_reminders(reminder_ids: list[int], as_of: str | None = None) -> dict[str, int]:
    """Send the given reminders that are still due, in one transaction: lock their offers
    (skipping any another job holds), then the reminders; each offer's latest due reminder
    goes, earlier ones are moot; the messages go out in one send job after commit.
    Idempotent: a reminder already decided is left alone. Acts as of the sweep's instant
    (``as_of``) when that is later than now (``flask sweep --at``)."""
    now = job_now(as_of)
    counts = {"sent": 0, "not_sent": 0, "messages": 0}
    with job_db().transaction() as session:
        offer_ids = select(OfferReminder.offer_id).where(
            OfferReminder.id.in_(reminder_ids), OfferReminder.status == "pending"
        )
        offers = {
            o.id: o
            for o in session.scalars(
                select(Offer)
                .where(Offer.id.in_(offer_ids))
                .order_by(Offer.id)
                .options(selectinload(Offer.account))
                .with_for_update(skip_locked=True, of=Offer)
            )
        }
        if not offers:
            return counts
        due = session.scalars(
            select(OfferReminder)
            .where(
                OfferReminder.offer_id.in_(list(offers)),
                OfferReminder.status == "pending",
                OfferReminder.due_at <= now,
            )
            .order_by(OfferReminder.offer_id, OfferReminder.n)
            .with_for_update()
        ).all()
        by_offer: dict[int, list[OfferReminder]] = defaultdict(list)
        for reminder in due:
            by_offer[reminder.offer_id].append(reminder)
        messages = _send(session, offers, by_offer, now)
        for reminder in due:
            counts["sent" if reminder.status == "sent" else "not_sent"] += 1
        counts["messages"] = len(messages)
        if messages:
            ids = [m.id for m in messages]
            enqueue_after_commit(session, send_job(ids, job_id("send-reminders", ids[0], len(ids))))
    return counts


def _send(
    session: Session,
    offers: dict[int, Offer],
    by_offer: dict[int, list[OfferReminder]],
    now: datetime,
) -> list[Message]:
    settings = get_settings(session)
    env = message_env()
    tokens = offer_tokens()
    channels = offer_reminders.offer_channels(session, [offers[i] for i in by_offer])
    messages: list[Message] = []
    for offer_id, due in by_offer.items():
        offer = offers[offer_id]
        context = offer_message_context(offer, settings, offer_url(env, tokens, offer))
        messages += offer_reminders.send_due(
            session, offer, due, channels=channels.get(offer_id, []), settings=settings,
            env=env, tokens=tokens, context=context, now=now,
        )  # fmt: skip
    return messages


# --- expiry ---------------------------------------------------------------------------------


def expire_offers(now: datetime) -> dict[str, int]:
    """Sweep duty: open offers past their expiry become expired, with their notice, a page
    per transaction under SKIP LOCKED; each page's notices go out in one send job."""
    expired = notices = 0
    settings_env = message_env()
    while expired < MAX_ROWS:
        with job_db().transaction() as session:
            offers = session.scalars(
                select(Offer)
                .where(Offer.status.in_([literal(s.value) for s in OPEN_OFFER]))
                .where(Offer.expires_at <= now)
                .order_by(Offer.expires_at, Offer.id)
                .limit(EXPIRY_BATCH)
                .options(selectinload(Offer.account), selectinload(Offer.reminders))
                .with_for_update(skip_locked=True, of=Offer)
            ).all()
            settings = get_settings(session)
            channels = offer_reminders.offer_channels(session, offers)
            written: list[Message] = []
            for offer in offers:
                written += offer_reminders.expire_offer(
                    session, offer, channels=channels.get(offer.id, []), settings=settings,
                    env=settings_env, now=now,
                )  # fmt: skip
            if written:
                ids = [m.id for m in written]
                key = job_id("send-expired", ids[0], len(ids))
                enqueue_after_commit(session, send_job(ids, key))
        expired += len(offers)
        notices += len(written)
        if len(offers) < EXPIRY_BATCH:
            break
    return {"offers_expired": expired, "expiry_notices": notices}
