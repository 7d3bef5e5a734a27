"""The audit trail: one append-only row per state change."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from app.models import AuditEvent


@dataclass(frozen=True)
class Actor:
    """Who acts: an agent (console or API key), a customer, or the system."""

    type: str
    id: str | None = None
    ip: str | None = None
    request_id: str | None = None

    @classmethod
    def system(cls, name: str = "paylink") -> Actor:
        return cls("system", name)


def record(
    session: Session,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: object,
    now: datetime,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Add an audit event to the caller's transaction (flushes nothing, commits nothing)."""
    audit_event = AuditEvent(
        at=now,
        actor_type=actor.type,
        actor_id=actor.id,
        action=action,
        object_type=object_type,
        object_id=None if object_id is None else str(object_id),
        data=data or {},
        ip=actor.ip,
        request_id=actor.request_id,
    )
    session.add(audit_event)
    return audit_event


class AuditTampering(Exception):
    """Something tried to change or delete an audit event."""


@event.listens_for(Session, "before_flush")
def _append_only(session: Session, _context: object, _instances: object) -> None:
    # The database refuses too (triggers in the migration); this names the culprit early.
    for obj in list(session.dirty) + list(session.deleted):
        if isinstance(obj, AuditEvent) and (obj in session.deleted or session.is_modified(obj)):
            raise AuditTampering(f"audit event {obj.id} is append-only")
