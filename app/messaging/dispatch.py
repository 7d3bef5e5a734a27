"""Sending: claim due messages, pass the compliance gate, call the backend, record.

Exactly one worker sends a message: it is claimed (status ``sending`` with a lease and
an attempt number) in one transaction, sent outside any transaction, and the result is
recorded only if the claim is still that worker's. A worker that dies leaves a lease that
runs out; the outbox sweep then hands the message to another worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, selectinload

from app import audit
from app.db import Database
from app.messaging import compliance, inbound
from app.messaging.backends.base import (
    Attachment,
    EmailBackend,
    OutgoingEmail,
    OutgoingSms,
    SendError,
    SendResult,
    SmsBackend,
)
from app.messaging.outbox import MessageEnv, advance, record_event, send_job
from app.messaging.ratelimit import SenderRateLimiter
from app.messaging.render import SYSTEM_SMS_KINDS
from app.models import Channel, EmailSuppression, Message, MessageStatus
from app.queue import enqueue_after_commit, job_id
from app.settings import get_settings

log = logging.getLogger(__name__)

LEASE = timedelta(minutes=5)
MAX_ATTEMPTS = 5
BACKOFF = (30, 120, 600, 1800)  # seconds before attempt 2, 3, 4, 5
STOPPED_CODE = "21610"  # Twilio: the recipient has replied STOP
MAX_VALIDITY = 14_400  # seconds Twilio may hold a text


@dataclass
class Dispatcher:
    db: Database
    sms: SmsBackend
    email: EmailBackend
    limiter: SenderRateLimiter
    env: MessageEnv
    sms_per_second: float
    email_per_second: float
    clock: Callable[[], datetime]
    status_callback: str | None = None
    # Loads an attachment's bytes by its storage key (set where storage is known).
    load_attachment: Callable[[str], bytes] | None = None
    # Seconds a job may spend sending texts before handing the rest to another job;
    # well inside SEND_TIMEOUT and LEASE.
    time_budget: float = 40.0
    monotonic: Callable[[], float] = time.monotonic
    counts: dict[str, int] = field(default_factory=dict)

    def _count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    # --- claim --------------------------------------------------------------------------

    def claim(self, message_ids: Sequence[int]) -> list[tuple[Message, int, datetime | None]]:
        """Lock the messages that are due, gate each, and claim those that may go now.

        Returns (message, attempt, window end) for each claimed message.
        """
        now = self.clock()
        claimed: list[tuple[Message, int, datetime | None]] = []
        with self.db.transaction() as session:
            stmt = (
                select(Message)
                .where(Message.id.in_(list(message_ids)), Message.scheduled_for <= now)
                .where(
                    or_(
                        Message.status.in_([MessageStatus.queued, MessageStatus.deferred]),
                        (Message.status == MessageStatus.sending) & (Message.lease_until < now),
                    )
                )
                .options(selectinload(Message.account))
                .order_by(Message.id)
                .with_for_update(skip_locked=True, of=Message)
            )
            messages = list(session.scalars(stmt))
            if not messages:
                return []
            settings = get_settings(session)
            hours = compliance.QuietHours(
                settings.quiet_hours_start_minute, settings.quiet_hours_end_minute
            )
            emails = {
                m.recipient.lower() for m in messages if m.channel == Channel.email and m.recipient
            }
            suppressed: dict[str, str] = {}
            if emails:
                rows = session.execute(
                    select(EmailSuppression.email, EmailSuppression.reason).where(
                        EmailSuppression.email.in_(emails)
                    )
                )
                suppressed = dict(rows.all())
            for message in messages:
                account = message.account
                decision = compliance.decide(
                    channel=message.channel,
                    recipient=message.recipient,
                    sms_opted_out=account.sms_opted_out_at is not None,
                    email_opted_out=account.email_opted_out_at is not None,
                    email_suppressed=suppressed.get((message.recipient or "").lower()),
                    hold=account.hold,
                    timezone=account.timezone or settings.default_timezone,
                    hours=hours,
                    now=now,
                    system_reply=message.kind in SYSTEM_SMS_KINDS,
                )
                decision = compliance.within_deadline(decision, message.send_before, now)
                if decision.action == compliance.SUPPRESS:
                    advance(session, message, MessageStatus.suppressed, now, reason=decision.reason)
                    message.lease_until = None
                    self._count("suppressed")
                elif decision.action == compliance.DEFER:
                    until = decision.until
                    message.status = MessageStatus.deferred.value
                    message.status_reason = decision.reason
                    message.scheduled_for = until
                    message.lease_until = None
                    message.updated_at = now
                    record_event(
                        session,
                        message,
                        "deferred",
                        now,
                        reason=decision.reason,
                        until=until.isoformat(),
                    )
                    key = job_id("send", message.id, "d" + str(int(until.timestamp())))
                    enqueue_after_commit(session, replace(send_job([message.id], key), at=until))
                    self._count("deferred")
                else:
                    message.status = MessageStatus.sending.value
                    message.status_reason = None
                    message.attempts += 1
                    message.lease_until = now + LEASE
                    message.updated_at = now
                    record_event(session, message, "attempt", now, attempt=message.attempts)
                    claimed.append((message, message.attempts, decision.window_ends))
        return claimed

    # --- send ---------------------------------------------------------------------------

    def run(self, message_ids: Sequence[int]) -> dict[str, int]:
        """Send whichever of ``message_ids`` are due; safe to run twice or concurrently.

        Texts go one at a time under the sender's rate limit; when the job's time budget
        runs out, or the quiet-hours window closes, the rest are released and handed to
        a follow-up job, so no claim outlives its job or its lease.
        """
        started = self.monotonic()
        claimed = self.claim(message_ids)
        sms = [c for c in claimed if c[0].channel == Channel.sms]
        emails = [c for c in claimed if c[0].channel == Channel.email]
        self._send_email_batches(emails)
        for index, (message, attempt, window_ends) in enumerate(sms):
            over_budget = self.monotonic() - started > self.time_budget
            window_closed = window_ends is not None and self.clock() >= window_ends
            if over_budget or window_closed:
                self._release(sms[index:])
                break
            self.limiter.acquire(self.sms.sender, self.sms_per_second)
            result = self._send_sms(message, window_ends)
            self.record([(message.id, attempt, result)])
        return self.counts

    def _release(self, items: list[tuple[Message, int, datetime | None]]) -> None:
        """Give unsent claims back (as queued, due now) to a follow-up job."""
        now = self.clock()
        ids = [m.id for m, _a, _w in items]
        with self.db.transaction() as session:
            rows = session.scalars(
                select(Message).where(Message.id.in_(ids)).with_for_update(of=Message)
            )
            attempts = {m.id: a for m, a, _w in items}
            released = []
            for message in rows:
                if (
                    message.status != MessageStatus.sending
                    or message.attempts != attempts[message.id]
                ):
                    continue
                message.status = MessageStatus.queued.value
                message.attempts -= 1  # this attempt never reached the provider
                message.lease_until = None
                message.scheduled_for = now
                record_event(session, message, "released", now)
                released.append(message.id)
            if released:
                key = job_id("send-more", released[0], len(released), int(now.timestamp()))
                enqueue_after_commit(session, send_job(released, key))
        self._count("released", len(released))

    def _send_email_batches(self, emails: list[tuple[Message, int, datetime | None]]) -> None:
        by_kind: dict[str, list[tuple[Message, int, datetime | None]]] = {}
        for item in emails:
            by_kind.setdefault(item[0].kind, []).append(item)
        for group in by_kind.values():
            for start in range(0, len(group), self.email.max_batch):
                batch = group[start : start + self.email.max_batch]
                self.limiter.acquire(self.email.sender, self.email_per_second, cells=len(batch))
                results = self._send_emails([m for m, _a, _w in batch])
                self.record([(m.id, a, r) for (m, a, _w), r in zip(batch, results, strict=True)])

    def _send_sms(self, message: Message, window_ends: datetime | None) -> SendResult:
        validity = None
        if window_ends is not None:
            validity = max(1, min(MAX_VALIDITY, int((window_ends - self.clock()).total_seconds())))
        sms = OutgoingSms(
            message_id=message.id, to=message.recipient or "", body=message.body,
            status_callback=self.status_callback, validity_seconds=validity,
        )  # fmt: skip
        try:
            return self.sms.send(sms)
        except Exception as exc:
            log.exception("sms backend raised for message %s", message.id)
            return SendResult(message.id, error=SendError(True, "exception", type(exc).__name__))

    def _send_emails(self, messages: list[Message]) -> list[SendResult]:
        try:
            emails = [
                OutgoingEmail(
                    message_id=m.id,
                    kind=m.kind,
                    to=m.recipient or "",
                    subject=m.subject or "",
                    text=m.body,
                    html=m.html or "",
                    headers=self._email_headers(m),
                    attachments=self._attachments(m),
                )
                for m in messages
            ]
            return self.email.send_batch(emails)
        except Exception as exc:
            # A backend bug or a missing attachment must not lose the claims: retry later.
            log.exception("sending %d emails failed before the provider answered", len(messages))
            return [
                SendResult(m.id, error=SendError(True, "exception", type(exc).__name__))
                for m in messages
            ]

    def _attachments(self, message: Message) -> tuple[Attachment, ...]:
        if not message.attachments:
            return ()
        if self.load_attachment is None:
            raise RuntimeError("this dispatcher cannot load attachments")
        return tuple(
            Attachment(a["filename"], a["content_type"], self.load_attachment(a["key"]))
            for a in message.attachments
        )

    def _email_headers(self, message: Message) -> dict[str, str]:
        url = self.env.unsubscribe_url(message.id)
        return {
            "List-Unsubscribe": f"<{url}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }

    # --- record -------------------------------------------------------------------------

    def record(self, results: list[tuple[int, int, SendResult]]) -> None:
        """Store results in one transaction, each only if its claim still stands."""
        now = self.clock()
        with self.db.transaction() as session:
            rows = {
                m.id: m
                for m in session.scalars(
                    select(Message)
                    .where(Message.id.in_([r[0] for r in results]))
                    .options(selectinload(Message.account))
                    .with_for_update(of=Message)
                )
            }
            retries: dict[datetime, list[Message]] = {}
            for message_id, attempt, result in results:
                message = rows.get(message_id)
                if message is None or not _claim_stands(message, attempt):
                    log.warning(
                        "message %s was taken over before its result was recorded", message_id
                    )
                    self._count("superseded")
                    continue
                retry_at = self._record_one(session, message, result, now)
                if retry_at is not None:
                    retries.setdefault(retry_at, []).append(message)
            # Messages that failed together are retried together: one job, one provider call.
            for retry_at, group in retries.items():
                first = group[0]
                key = job_id("send", first.id, f"a{first.attempts}", f"n{len(group)}")
                spec = send_job([m.id for m in group], key)
                enqueue_after_commit(session, replace(spec, at=retry_at))

    def _record_one(
        self, session: Session, message: Message, result: SendResult, now: datetime
    ) -> datetime | None:
        """Store one result; returns when to retry it, if it should be retried."""
        if message.status != MessageStatus.sending and not result.ok:
            # A provider report already settled this message; keep it, note the error.
            record_event(
                session, message, "late_error", now, code=result.error and result.error.code
            )
            return None
        message.lease_until = None
        message.updated_at = now
        if result.ok:
            message.provider_id = result.provider_id
            message.sent_at = now
            message.error = None
            advance(session, message, MessageStatus.sent, now, provider_id=result.provider_id)
            if result.delivered:
                advance(session, message, MessageStatus.delivered, now, source="outbox")
            elif message.channel == Channel.sms:
                # A delivery report may have come before this answer was recorded.
                inbound.apply_parked(session, message, now)
            self._count("sent")
            return None
        error = result.error
        assert error is not None
        message.error = f"{error.code}: {error.detail}"
        if error.transient and message.attempts < MAX_ATTEMPTS:
            delay = BACKOFF[min(message.attempts - 1, len(BACKOFF) - 1)]
            retry_at = now + timedelta(seconds=delay)
            message.status = MessageStatus.queued.value
            message.scheduled_for = retry_at
            record_event(
                session,
                message,
                "retry",
                now,
                code=error.code,
                detail=error.detail,
                at=retry_at.isoformat(),
            )
            self._count("retried")
            return retry_at
        advance(session, message, MessageStatus.failed, now, reason=error.code, detail=error.detail)
        if message.channel == Channel.sms and error.code == STOPPED_CODE:
            account = message.account
            if account.sms_opted_out_at is None:
                account.sms_opted_out_at = now
                record_event(session, message, "opted_out", now, source="provider", code=error.code)
                audit.record(
                    session, audit.Actor.system("twilio"), "account.sms_opted_out", "account",
                    account.id, now, {"source": "send error", "code": error.code},
                )  # fmt: skip
        self._count("failed")
        return None


def _claim_stands(message: Message, attempt: int) -> bool:
    """Is this still the worker's claim? A provider webhook may already have moved the
    message past ``sending`` (a fast delivery report); the send still needs recording."""
    if message.attempts != attempt:
        return False
    if message.status == MessageStatus.sending:
        return True
    return message.provider_id is None and message.status in (
        MessageStatus.sent, MessageStatus.delivered, MessageStatus.undelivered,
        MessageStatus.failed, MessageStatus.bounced,
    )  # fmt: skip
