"""An offer's signing trail: hash-chained, append-only events (offers.chain does the
hashing). The agreement's certificate and the audit endpoint show it; anyone can
recompute every hash from the JSON."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.clock import isoformat
from offers import chain
from offers.models import Offer, OfferEvent


def append(
    session: Session,
    offer_id: int,
    type_: str,
    now: datetime,
    *,
    ip: str | None = None,
    user_agent: str | None = None,
    data: dict[str, Any] | None = None,
) -> OfferEvent:
    """Add the next event to the offer's chain. Locks the offer row so concurrent
    appends take turns. Flushes."""
    session.execute(select(Offer.id).where(Offer.id == offer_id).with_for_update())
    last = session.scalar(
        select(OfferEvent)
        .where(OfferEvent.offer_id == offer_id)
        .order_by(OfferEvent.seq.desc())
        .limit(1)
    )
    body = {
        "seq": (last.seq + 1) if last else 1,
        "type": type_,
        "at": isoformat(now),
        "ip": ip,
        "user_agent": (user_agent or None) and user_agent[:400],
        "data": data or {},
    }
    linked = chain.link_event(last.hash if last else chain.GENESIS, body)
    event = OfferEvent(offer_id=offer_id, **linked)
    session.add(event)
    session.flush()
    return event


def events(session: Session, offer_id: int) -> list[OfferEvent]:
    stmt = select(OfferEvent).where(OfferEvent.offer_id == offer_id).order_by(OfferEvent.seq)
    return list(session.scalars(stmt))


def event_json(event: OfferEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "type": event.type,
        "at": event.at,
        "ip": event.ip,
        "user_agent": event.user_agent,
        "data": event.data,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }


def events_json(session: Session, offer_id: int) -> list[dict[str, Any]]:
    return [event_json(e) for e in events(session, offer_id)]


def verify(session: Session, offer_id: int, head: str | None = None) -> chain.ChainReport:
    return chain.verify_chain(events_json(session, offer_id), head=head)
