"""The transactional outbox: message rows are written in the caller's transaction and a
send job is enqueued only after it commits. Statuses only move forward."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Config
from app.messaging import render
from app.models import Account, Channel, Message, MessageEvent, MessageStatus, OrgSettings
from app.queue import MESSAGES, JobSpec, enqueue_after_commit, job_id
from app.settings import get_settings
from app.tokens import TokenService

SEND_JOB = "workers.messaging.send_messages"
UNSUBSCRIBE_PURPOSE = "unsubscribe"

# A status may only move to one of higher rank (callbacks arrive late and out of order).
RANK = {
    MessageStatus.queued: 0,
    MessageStatus.deferred: 0,
    MessageStatus.sending: 1,
    MessageStatus.sent: 2,
    MessageStatus.delivered: 3,
    MessageStatus.undelivered: 4,
    MessageStatus.failed: 4,
    MessageStatus.bounced: 4,
    MessageStatus.suppressed: 5,
}
FINAL = {
    MessageStatus.undelivered,
    MessageStatus.failed,
    MessageStatus.bounced,
    MessageStatus.suppressed,
}


@dataclass(frozen=True)
class MessageEnv:
    """What rendering needs from the configuration."""

    base_url: str
    unsubscribe_tokens: TokenService

    @classmethod
    def from_config(cls, config: Config) -> MessageEnv:
        return cls(
            base_url=config.base_url.rstrip("/"),
            unsubscribe_tokens=TokenService(config.secret_keys, UNSUBSCRIBE_PURPOSE),
        )

    def unsubscribe_url(self, message_id: int) -> str:
        return f"{self.base_url}/u/{self.unsubscribe_tokens.dumps(message_id)}"


def first_name(name: str) -> str:
    return name.split()[0] if name.split() else name


def base_context(account: Account, settings: OrgSettings, env: MessageEnv) -> dict[str, Any]:
    return {
        "first_name": first_name(account.name),
        "name": account.name,
        "currency": account.currency,
        "base_url": env.base_url,
        "creditor": {
            "name": settings.creditor_name,
            "phone": settings.creditor_phone,
            "email": settings.creditor_email,
            "hours": settings.creditor_hours,
            "address": settings.creditor_address,
        },
    }


def record_event(
    session: Session, message: Message, type_: str, now: datetime, **detail: Any
) -> None:
    session.add(MessageEvent(message_id=message.id, at=now, type=type_, detail=detail))


# A send job hands its remaining texts on after 40 s (Dispatcher.time_budget); the timeout
# leaves room for the last provider call and a 1,000-email batch.
SEND_TIMEOUT = 180


def send_job(message_ids: list[int], key: str) -> JobSpec:
    return JobSpec(
        SEND_JOB, (message_ids,), job_id=key, queue=MESSAGES, timeout=SEND_TIMEOUT, retry=(),
        unique=True,
    )  # fmt: skip


def queue_message(
    session: Session,
    account: Account,
    kind: str,
    channels: Iterable[str],
    context: dict[str, Any],
    *,
    now: datetime,
    env: MessageEnv,
    dedupe_key: str | None = None,
    not_before: datetime | None = None,
    send_before: datetime | None = None,
    enqueue: bool = True,
    attachments: list[dict[str, str]] | None = None,
) -> list[Message]:
    """Write one message per channel, rendered now, and send each after commit.

    With ``dedupe_key``, a second call for the same event returns the first call's
    messages instead of writing new ones. With ``send_before``, a message that cannot go
    out before that instant (quiet hours, a backlog) is suppressed instead of sent late.
    ``enqueue=False`` leaves sending to the caller (batch senders) or to the outbox sweep.
    Flushes; never commits.
    """
    settings = get_settings(session)
    messages: list[Message] = []
    for channel in dict.fromkeys(channels):
        Channel(channel)  # ValueError for an unknown channel
        key = f"{dedupe_key}-{channel}" if dedupe_key else None
        if key is not None:
            existing = session.scalar(select(Message).where(Message.dedupe_key == key))
            if existing is not None:
                messages.append(existing)
                continue
        recipient = account.phone if channel == Channel.sms else account.email
        message = Message(
            account_id=account.id, kind=kind, channel=channel, recipient=recipient,
            status=MessageStatus.queued.value, dedupe_key=key, scheduled_for=not_before or now,
            send_before=send_before, created_at=now, updated_at=now, body="",
        )  # fmt: skip
        try:
            with session.begin_nested():
                session.add(message)
                session.flush()
        except IntegrityError:
            existing = session.scalar(select(Message).where(Message.dedupe_key == key))
            if key is None or existing is None:
                raise
            messages.append(existing)
            continue
        full = {**base_context(account, settings, env), **context}
        if channel == Channel.sms:
            message.body = render.render_sms(kind, full).body
        else:
            full["unsubscribe_url"] = env.unsubscribe_url(message.id)
            email = render.render_email(kind, full)
            message.subject, message.body, message.html = email.subject, email.text, email.html
            message.attachments = attachments or None
        record_event(session, message, "queued", now, kind=kind)
        messages.append(message)
        if enqueue:
            at = not_before if not_before and not_before > now else None
            spec = replace(send_job([message.id], job_id("send", message.id, "a0")), at=at)
            enqueue_after_commit(session, spec)
    session.flush()
    return messages


def advance(
    session: Session,
    message: Message,
    status: MessageStatus,
    now: datetime,
    *,
    reason: str | None = None,
    source: str = "paylink",
    **detail: Any,
) -> bool:
    """Move ``message`` to ``status`` if that is forward; record it either way."""
    current = MessageStatus(message.status)
    moved = RANK[status] > RANK[current]
    if moved:
        message.status = status.value
        message.status_reason = reason
        message.updated_at = now
        if status == MessageStatus.delivered and message.delivered_at is None:
            message.delivered_at = now
    record_event(
        session, message, "status" if moved else "status_ignored", now,
        status=status.value, previous=current.value, source=source, reason=reason, **detail,
    )  # fmt: skip
    return moved
