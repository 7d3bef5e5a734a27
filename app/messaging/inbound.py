"""What customers and providers tell us: inbound SMS keywords (STOP, START, HELP), Twilio
status callbacks and SendGrid events.

Framework-free service functions: the webhook view checks the signature, reads the
request and passes plain values and ``now``. Each function flushes, never commits, and is
idempotent: a provider repeating a delivery changes nothing the second time.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Table, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, selectinload

from app import audit, validation
from app.audit import Actor
from app.messaging.outbox import MessageEnv, advance, queue_message, record_event
from app.models import (
    Account,
    Channel,
    EmailSuppression,
    Message,
    MessageStatus,
    ParkedSmsStatus,
    WebhookReceipt,
)

log = logging.getLogger(__name__)

OPT_OUT = "opt_out"
OPT_IN = "opt_in"
HELP = "help"

# Whole-message keywords, compared after lower-casing and dropping punctuation. Twilio's
# and CTIA's standard words, plus the FCC's "revoke" and "opt out".
OPT_OUT_WORDS = frozenset(
    {"stop", "stopall", "stop all", "unsubscribe", "cancel", "end", "quit", "revoke",
     "optout", "opt out"}
)  # fmt: skip
OPT_IN_WORDS = frozenset({"start", "yes", "unstop"})
HELP_WORDS = frozenset({"help", "info"})

# Plain-language opt-outs. A customer may revoke consent "by any reasonable means", so
# these err on the side of stopping; the text they match is kept in the audit trail.
_TEXTS = r"(?:texts?|texting|txts?|txting|messages?|messaging|msgs?|sms|contacting|calling)"
_OPT_OUT_PHRASES = re.compile(
    rf"""
      \bstop\s(?:all\s|the\s|these\s|your\s|sending\s(?:me\s)?(?:any\s)?)?{_TEXTS}\b
    | ^(?:please\s|pls\s|plz\s)?stop(?:\s(?:it|now|please|pls|plz|immediately|already
                                          |thanks|thank\syou))*$
    | \b(?:please|pls|plz)\sstop\b
    | \b(?:remove|delete)\s(?:me|my\s(?:number|phone|cell))\b
    | \bunsubscribe\sme\b
    | \bopt\sme\sout\b
    | \btake\sme\soff\b
    | \b(?:dont|do\snot|never)\s(?:text|txt|message|msg|sms|contact)\s(?:me|this\snumber)\b
    | \bno\smore\s{_TEXTS}\b
    | \bi\swant\sto\s(?:unsubscribe|opt\sout)\b
    | \bwrong\s(?:number|person)\b
    """,
    re.VERBOSE,
)
_NEGATED_STOP = re.compile(r"\b(?:dont|do\snot|never)\sstop\b")

INBOUND_PROVIDER = "twilio-inbound"
STATUS_PROVIDER = "twilio-status"
SENDGRID_PROVIDER = "sendgrid"
STOPPED_CODE = "21610"  # Twilio: the recipient replied STOP; nothing reaches them now
AUDIT_TEXT_LIMIT = 320  # characters of an inbound text kept in the audit trail
RECEIPT_ID_LIMIT = 128  # WebhookReceipt.event_id
ROWS_PER_STATEMENT = 1000

# Twilio's outbound statuses. The early ones never move a message back from what our own
# send recorded; anything else Twilio invents later is recorded as an event only.
TWILIO_STATUSES = {
    "queued": MessageStatus.sent,
    "accepted": MessageStatus.sent,
    "scheduled": MessageStatus.sent,
    "sending": MessageStatus.sent,
    "sent": MessageStatus.sent,
    "delivered": MessageStatus.delivered,
    "read": MessageStatus.delivered,
    "undelivered": MessageStatus.undelivered,
    "failed": MessageStatus.failed,
}

# SendGrid delivery events and the status each moves the message to; bounce, blocked and
# dropped also suppress the address.
SENDGRID_STATUSES = {
    "processed": MessageStatus.sent,
    "delivered": MessageStatus.delivered,
    "bounce": MessageStatus.bounced,
    "blocked": MessageStatus.bounced,
    "dropped": MessageStatus.bounced,
}
EMAIL_OPT_OUT_EVENTS = {"spamreport": "spamreport", "unsubscribe": "unsubscribe",
                        "group_unsubscribe": "unsubscribe"}  # fmt: skip


# --- receipts -----------------------------------------------------------------------------


def _insert_ignoring_duplicates(session: Session, table: Table, rows: list[dict[str, Any]]):
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table).values(rows).on_conflict_do_nothing()


def claim_receipts(
    session: Session, provider: str, event_ids: Iterable[str], now: datetime
) -> set[str]:
    """Record that these provider events arrived; return the ids seen for the first time.

    One INSERT ... ON CONFLICT DO NOTHING per batch: a concurrent delivery of the same
    event waits for the other transaction and then finds the id taken. Flushes only.
    """
    ids = list(dict.fromkeys(event_ids))
    fresh: set[str] = set()
    table = WebhookReceipt.__table__
    for start in range(0, len(ids), ROWS_PER_STATEMENT):
        rows = [
            {"provider": provider, "event_id": i, "received_at": now}
            for i in ids[start : start + ROWS_PER_STATEMENT]
        ]
        stmt = _insert_ignoring_duplicates(session, table, rows).returning(table.c.event_id)
        fresh.update(session.execute(stmt).scalars())
    return fresh


def _receipt_id(value: str, limit: int = RECEIPT_ID_LIMIT) -> str:
    """``value`` if it fits the column, else its SHA-256 (Twilio sids are 34 characters)."""
    return value if len(value) <= limit else hashlib.sha256(value.encode()).hexdigest()


# --- inbound SMS --------------------------------------------------------------------------


def _normalise(body: str) -> str:
    text = body.lower().replace("\u2019", "").replace("\u2018", "").replace("'", "")
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def classify(body: str) -> str | None:
    """What an inbound text asks for: OPT_OUT, OPT_IN, HELP, or None for anything else."""
    text = _normalise(body)
    if text in OPT_OUT_WORDS:
        return OPT_OUT
    if text in OPT_IN_WORDS:
        return OPT_IN
    if text in HELP_WORDS:
        return HELP
    if _OPT_OUT_PHRASES.search(text) and not _NEGATED_STOP.search(text):
        return OPT_OUT
    return None


def normalise_phone(raw: str) -> str:
    """E.164 as accounts store it; Twilio already sends E.164, this only tidies."""
    try:
        return validation.phone(raw)
    except validation.FieldError:
        return raw.strip()


@dataclass(frozen=True)
class InboundResult:
    intent: str | None  # OPT_OUT, OPT_IN, HELP or None
    duplicate: bool = False  # this MessageSid was handled before
    account_ids: tuple[int, ...] = ()  # every account with the sender's phone
    changed_ids: tuple[int, ...] = ()  # accounts whose opt-out state changed
    reply_id: int | None = None  # the confirmation or help message queued


def handle_inbound_sms(
    session: Session,
    *,
    message_sid: str,
    phone: str,
    body: str,
    now: datetime,
    env: MessageEnv,
    request_id: str | None = None,
) -> InboundResult:
    """Act on a text from a customer: STOP-like words opt every account with that phone
    out of SMS, START/YES/UNSTOP opt them back in, HELP gets the creditor's contact.

    Confirmations are queued through the outbox (one per change, none when nothing
    changed: a second STOP gets no second text). Idempotent per ``message_sid``. Flushes.
    """
    intent = classify(body)
    if not claim_receipts(session, INBOUND_PROVIDER, [_receipt_id(message_sid)], now):
        return InboundResult(intent, duplicate=True)
    accounts = list(
        session.scalars(
            select(Account)
            .where(Account.phone == normalise_phone(phone))
            .order_by(Account.id)
            .with_for_update()
        )
    )
    if not accounts:
        # Nothing to do, and the reply must not reveal whether the number is on file.
        log.info("inbound sms %s from a number on no account", message_sid)
        return InboundResult(intent)

    changed: list[Account] = []
    if intent == OPT_OUT:
        changed = [a for a in accounts if a.sms_opted_out_at is None]
        for account in changed:
            account.sms_opted_out_at = now
    elif intent == OPT_IN:
        changed = [a for a in accounts if a.sms_opted_out_at is not None]
        for account in changed:
            account.sms_opted_out_at = None

    action = {OPT_OUT: "sms_opted_out", OPT_IN: "sms_opted_in", HELP: "sms_help"}.get(
        intent or "", "sms_received"
    )
    changed_ids = {a.id for a in changed}
    for account in accounts:
        # A keyword that changed nothing (START while subscribed) is kept as a plain text.
        did = action if intent == HELP or account.id in changed_ids else "sms_received"
        audit.record(
            session,
            Actor("customer", str(account.id), request_id=request_id),
            f"account.{did}",
            "account",
            account.id,
            now,
            {"message_sid": message_sid, "intent": intent, "text": body[:AUDIT_TEXT_LIMIT]},
        )

    reply_to: Account | None = None
    if intent == HELP:
        reply_to = accounts[0]
    elif changed:
        reply_to = changed[0]
    reply_id = None
    if reply_to is not None:
        # One reply per inbound text, whatever the number of accounts sharing the phone.
        [reply] = queue_message(
            session, reply_to, action, [Channel.sms.value], {},
            now=now, env=env, dedupe_key=f"reply-{_receipt_id(message_sid, 64)}",
        )  # fmt: skip
        reply_id = reply.id
    session.flush()
    return InboundResult(
        intent,
        account_ids=tuple(a.id for a in accounts),
        changed_ids=tuple(sorted(changed_ids)),
        reply_id=reply_id,
    )


# --- Twilio status callbacks --------------------------------------------------------------


@dataclass(frozen=True)
class StatusResult:
    found: bool
    parked: bool = False  # kept for a send not recorded yet
    duplicate: bool = False
    moved: bool = False
    status: str | None = None  # the message's status afterwards


def record_sms_status(
    session: Session,
    *,
    message_sid: str,
    status: str,
    error_code: str | None,
    now: datetime,
) -> StatusResult:
    """Apply a Twilio status callback to the message whose provider id is ``message_sid``.

    Statuses only move forward, so callbacks may arrive in any order; the same callback
    twice records nothing new. Error 21610 opts the account out of SMS. A callback for a
    sid not on record is parked: it may have overtaken the worker recording the send,
    which applies it (``apply_parked``). Flushes.
    """
    message = _message_of(session, message_sid)
    if message is None:
        # The send may be committing right now: once it has, or once this is parked,
        # the other side sees it (the sid's lock orders the two on PostgreSQL; SQLite
        # runs them one after the other anyway).
        _lock_sid(session, message_sid)
        message = _message_of(session, message_sid)
    if message is None:
        log.info("twilio status %r for unknown message sid %s: parked", status, message_sid)
        row = {
            "message_sid": message_sid[:64], "status": status[:32],
            "error_code": (error_code or "")[:16], "received_at": now,
        }  # fmt: skip
        session.execute(_insert_ignoring_duplicates(session, ParkedSmsStatus.__table__, [row]))
        return StatusResult(found=False, parked=True)
    status = status.strip().lower()
    error_code = (error_code or "").strip() or None
    receipt = _receipt_id(f"{message_sid}:{status}:{error_code or ''}")
    if not claim_receipts(session, STATUS_PROVIDER, [receipt], now):
        return StatusResult(found=True, duplicate=True, status=message.status)

    detail: dict[str, Any] = {"provider_status": status}
    if error_code:
        detail["error_code"] = error_code
    target = TWILIO_STATUSES.get(status)
    moved = False
    if target is None:
        record_event(session, message, "provider_status", now, source="twilio", **detail)
    else:
        moved = advance(
            session, message, target, now,
            reason=f"twilio {error_code}" if error_code else None, source="twilio", **detail,
        )  # fmt: skip
        if moved and target in (MessageStatus.failed, MessageStatus.undelivered):
            message.error = f"{error_code}: {status}" if error_code else status
    if error_code == STOPPED_CODE and message.channel == Channel.sms:
        account = message.account
        if account.sms_opted_out_at is None:
            account.sms_opted_out_at = now
            record_event(session, message, "opted_out", now, source="twilio", code=error_code)
            audit.record(
                session, Actor.system("twilio"), "account.sms_opted_out", "account",
                account.id, now, {"message_sid": message_sid, "error_code": error_code},
            )  # fmt: skip
    session.flush()
    return StatusResult(found=True, moved=moved, status=message.status)


def _message_of(session: Session, message_sid: str) -> Message | None:
    return session.scalar(
        select(Message)
        .where(Message.provider_id == message_sid)
        .options(selectinload(Message.account))
        .with_for_update(of=Message)
    )


def _lock_sid(session: Session, message_sid: str) -> None:
    """PostgreSQL: a transaction lock on the sid, taken by a callback that finds no
    message and by the send that records one, so the two never miss each other."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext(message_sid))))


def apply_parked(session: Session, message: Message, now: datetime) -> int:
    """Apply, in the order they came, the status callbacks parked for ``message``'s
    provider id (it is being recorded in this transaction), and drop them. Each in a
    savepoint: one that fails is logged and left parked, and the send is recorded all
    the same. Returns how many applied."""
    assert message.provider_id is not None
    session.flush()  # the provider id is written before the sid's lock is taken
    _lock_sid(session, message.provider_id)
    parked = session.scalars(
        select(ParkedSmsStatus)
        .where(ParkedSmsStatus.message_sid == message.provider_id)
        .order_by(ParkedSmsStatus.id)
    ).all()
    applied = 0
    for callback in parked:
        try:
            with session.begin_nested():
                record_sms_status(
                    session, message_sid=callback.message_sid, status=callback.status,
                    error_code=callback.error_code or None, now=now,
                )  # fmt: skip
                session.delete(callback)
        except Exception:  # a bad callback must not undo the send's record
            log.exception("parked twilio status %s for %s not applied", callback.id, message.id)
        else:
            applied += 1
    return applied


def sweep_parked(session: Session, before: datetime, now: datetime) -> dict[str, int]:
    """The sweep: apply the parked callbacks whose send is on record now (a send that was
    recorded by other means), then forget those received before ``before``: no send of
    ours will come for them."""
    matched = session.scalars(
        select(Message)
        .where(Message.provider_id.in_(select(ParkedSmsStatus.message_sid)))
        .with_for_update(of=Message)
    ).all()
    applied = sum(apply_parked(session, message, now) for message in matched)
    dropped = session.execute(
        delete(ParkedSmsStatus).where(ParkedSmsStatus.received_at < before)
    ).rowcount
    return {"applied": applied, "dropped": dropped}


# --- SendGrid events ----------------------------------------------------------------------


class BadEvents(ValueError):
    """The body is not a list of SendGrid event objects."""


@dataclass
class EmailEventsResult:
    applied: int = 0
    duplicates: int = 0
    unmatched: int = 0  # no message of ours named in the event
    suppressed: list[str] = field(default_factory=list)  # addresses newly suppressed


def _message_id(event: Mapping[str, Any]) -> int | None:
    value = event.get("paylink_message_id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"\d{1,18}", value.strip()):
        return int(value.strip())
    return None


def _address(event: Mapping[str, Any]) -> str | None:
    value = event.get("email")
    if not isinstance(value, str):
        return None
    value = value.strip().lower()
    return value if value and len(value) <= 254 else None


# SendGrid's field -> the name kept in the message event (clear of advance()'s own keys).
_DETAIL_KEYS = {
    "sg_event_id": "sg_event_id",
    "reason": "provider_reason",
    "type": "bounce_type",
    "status": "smtp_status",
    "bounce_classification": "bounce_classification",
    "timestamp": "provider_timestamp",
}


def _event_detail(event: Mapping[str, Any]) -> dict[str, Any]:
    # Only what explains the outcome: no IP addresses or user agents from opens and clicks.
    detail: dict[str, Any] = {"event": event["event"]}
    for key, name in _DETAIL_KEYS.items():
        value = event.get(key)
        if isinstance(value, str):
            detail[name] = value[:500]
        elif isinstance(value, int | float) and not isinstance(value, bool):
            detail[name] = value
    return detail


def _suppression_reason(event: Mapping[str, Any]) -> str | None:
    kind = event["event"]
    if kind == "bounce":
        return "blocked" if event.get("type") == "blocked" else "bounce"
    if kind in ("blocked", "dropped"):
        return kind
    return EMAIL_OPT_OUT_EVENTS.get(kind)


def check_events(payload: Any) -> list[dict[str, Any]]:
    """The events of a SendGrid POST, or BadEvents: a list of objects with a string
    ``event`` each."""
    if not isinstance(payload, list):
        raise BadEvents("the body must be a JSON array of events")
    for n, event in enumerate(payload):
        if not isinstance(event, dict) or not isinstance(event.get("event"), str):
            raise BadEvents(f"event {n} is not an object with an 'event' name")
    return payload


def _suppress(session: Session, rows: dict[str, str], now: datetime) -> list[str]:
    if not rows:
        return []
    table = EmailSuppression.__table__
    values = [{"email": e, "reason": r, "created_at": now} for e, r in rows.items()]
    # The first reason an address was suppressed for is the one kept.
    stmt = _insert_ignoring_duplicates(session, table, values).returning(table.c.email)
    return sorted(session.execute(stmt).scalars())


def record_email_events(
    session: Session, events: Sequence[Mapping[str, Any]], now: datetime
) -> EmailEventsResult:
    """Apply one POST of SendGrid events (see ``check_events``) in the caller's transaction.

    Events already seen (by ``sg_event_id``) are skipped. Bounces, blocks and drops mark
    the message bounced and suppress the address; spam reports and unsubscribes also opt
    the account out of email. Statuses only move forward. Flushes.
    """
    result = EmailEventsResult()
    ids = [_receipt_id(e["sg_event_id"]) for e in events if isinstance(e.get("sg_event_id"), str)]
    fresh = claim_receipts(session, SENDGRID_PROVIDER, ids, now)
    todo: list[Mapping[str, Any]] = []
    seen: set[str] = set()
    for event in events:
        event_id = event.get("sg_event_id")
        if isinstance(event_id, str):
            key = _receipt_id(event_id)
            if key not in fresh or key in seen:
                result.duplicates += 1
                continue
            seen.add(key)
        todo.append(event)

    wanted = sorted({i for e in todo if (i := _message_id(e)) is not None})
    messages: dict[int, Message] = {}
    for start in range(0, len(wanted), ROWS_PER_STATEMENT):
        # Locked in id order, so two concurrent POSTs cannot deadlock on each other.
        rows = session.scalars(
            select(Message)
            .where(
                Message.id.in_(wanted[start : start + ROWS_PER_STATEMENT]),
                Message.channel == Channel.email.value,
            )
            .options(selectinload(Message.account))
            .order_by(Message.id)
            .with_for_update(of=Message)
        )
        messages.update((m.id, m) for m in rows)

    suppress: dict[str, str] = {}
    for event in todo:
        kind = event["event"]
        message_id = _message_id(event)
        message = messages.get(message_id) if message_id is not None else None
        address = _address(event)
        detail = _event_detail(event)
        reason = _suppression_reason(event)
        if address and reason:
            suppress.setdefault(address, reason)
        if message is None:
            result.unmatched += 1
            log.info("sendgrid %s event for no message of ours (%r)", kind, message_id)
            continue
        result.applied += 1
        target = SENDGRID_STATUSES.get(kind)
        if target is not None:
            moved = advance(session, message, target, now, reason=reason or None,
                            source="sendgrid", **detail)  # fmt: skip
            if moved and target == MessageStatus.bounced:
                text = event.get("reason")
                message.error = f"{reason}: {text}"[:1000] if isinstance(text, str) else reason
        else:
            record_event(session, message, kind, now, source="sendgrid", **detail)
        if kind in EMAIL_OPT_OUT_EVENTS:
            account = message.account
            if account.email_opted_out_at is None:
                account.email_opted_out_at = now
                audit.record(
                    session, Actor("customer", str(account.id)), "account.email_opted_out",
                    "account", account.id, now, {"source": "sendgrid", **detail},
                )  # fmt: skip
    result.suppressed = _suppress(session, suppress, now)
    session.flush()
    return result
