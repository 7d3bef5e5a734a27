"""The messages API under /api/v1: what was sent to whom, and every decision about it."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from app.api import ID, MAX_ID, page_args
from app.auth import require_api
from app.clock import isoformat
from app.db import db_session
from app.errors import ApiError, NotFound, ValidationFailed
from app.models import Channel, Message, MessageStatus
from app.validation import Errors

bp = Blueprint("messages_api", __name__, url_prefix="/api/v1")

# Kinds are template names such as link, reminder_2 or plan_cancelled.
KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")
STATUSES = tuple(s.value for s in MessageStatus)
CHANNELS = tuple(c.value for c in Channel)


def message_json(message: Message) -> dict[str, Any]:
    return {
        "id": message.id,
        "account_id": message.account_id,
        "channel": message.channel,
        "kind": message.kind,
        "to": message.recipient,
        "status": message.status,
        "status_reason": message.status_reason,
        "body": message.body,
        "subject": message.subject,
        "provider_id": message.provider_id,
        "attempts": message.attempts,
        "scheduled_for": isoformat(message.scheduled_for),
        "sent_at": isoformat(message.sent_at),
        "delivered_at": isoformat(message.delivered_at),
        "created_at": isoformat(message.created_at),
        "updated_at": isoformat(message.updated_at),
        "error": message.error,
    }


def _query_args() -> tuple[list[Any], int, int]:
    """(SQL conditions, cursor, limit) from the query string; every bad argument is
    reported under its own name in one 422."""
    errors = Errors()
    conditions: list[Any] = []
    args = request.args
    if (raw := args.get("account_id")) is not None:
        raw = raw.strip()
        if re.fullmatch(r"\d{1,20}", raw) and 0 < int(raw) <= MAX_ID:
            conditions.append(Message.account_id == int(raw))
        else:
            errors.add("account_id", "must be an account id (a whole number)")
    if (raw := args.get("kind")) is not None:
        if KIND.fullmatch(raw.strip()):
            conditions.append(Message.kind == raw.strip())
        else:
            errors.add("kind", "must be a message kind such as link, offer or reminder_1")
    if (raw := args.get("status")) is not None:
        if raw.strip() in STATUSES:
            conditions.append(Message.status == raw.strip())
        else:
            errors.add("status", f"must be one of {', '.join(STATUSES)}")
    if (raw := args.get("channel")) is not None:
        if raw.strip() in CHANNELS:
            conditions.append(Message.channel == raw.strip())
        else:
            errors.add("channel", f"must be one of {', '.join(CHANNELS)}")
    cursor, limit = 0, 0
    try:
        cursor, limit = page_args()
    except ApiError as exc:
        for field, messages in (exc.errors or {}).items():
            for text in messages:
                errors.add(field, text)
    if errors:
        raise ValidationFailed(errors.by_field)
    return conditions, cursor, limit


@bp.get("/messages")
@require_api()
def list_messages() -> Response:
    """Newest first; ``next_cursor`` is the last id of this page, ``null`` on the last."""
    conditions, cursor, limit = _query_args()
    stmt = select(Message).where(*conditions)
    if cursor:
        stmt = stmt.where(Message.id < cursor)
    rows = list(db_session().scalars(stmt.order_by(Message.id.desc()).limit(limit + 1)))
    body: dict[str, Any] = {"items": [message_json(m) for m in rows[:limit]]}
    body["next_cursor"] = str(rows[limit - 1].id) if len(rows) > limit else None
    return jsonify(body)


@bp.get(f"/messages/<{ID}:message_id>")
@require_api()
def get_message(message_id: int) -> Response:
    message = db_session().scalar(
        select(Message).where(Message.id == message_id).options(selectinload(Message.events))
    )
    if message is None:
        raise NotFound("No message with that id.")
    body = message_json(message)
    body["html"] = message.html
    body["events"] = [
        {"at": isoformat(e.at), "type": e.type, "detail": e.detail} for e in message.events
    ]
    return jsonify(body)
