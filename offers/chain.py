"""The agreement's audit trail as a hash chain: pure functions to build and verify it.

Each event is ``{seq, type, at, ip, user_agent, data}``; the chain adds ``prev_hash`` and
``hash``. The exact bytes hashed, so anyone can recompute a hash without Paylink::

    hash = sha256(prev_hash.encode("ascii") + canonical_json(body)).hexdigest()

where ``prev_hash`` is the previous event's ``hash`` as 64 lowercase hex characters (for the
first event, ``GENESIS``: 64 zeros), ``body`` is the object with exactly the six keys above
(not ``prev_hash``, not ``hash``), and ``canonical_json`` is JSON with the keys sorted at every
level, no whitespace (``","`` and ``":"`` separators), non-ASCII characters written as
themselves rather than ``\\u`` escapes, encoded as UTF-8. In Python::

    json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

``at`` is already an ISO 8601 string; ``data`` holds strings, integers, booleans, null, lists
and objects (floats would hash as Python writes them, so the trail keeps them out).

A chain proves that no event in it was changed, removed from the middle or reordered. It
cannot by itself show that events were cut off the end; pass the head hash stored elsewhere
(``verify_chain(events, head=...)``) for that.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64

# The fields an event's hash covers, in the order the API lists them.
EVENT_FIELDS = ("seq", "type", "at", "ip", "user_agent", "data")
CHAIN_FIELDS = ("prev_hash", "hash")

_HEX64 = re.compile(r"[0-9a-f]{64}")

# Why verification stopped, as ChainReport.reason says it.
MALFORMED = "malformed event"
SEQ_GAP = "seq gap"
OUT_OF_ORDER = "out of order"
BROKEN_LINK = "broken link"
HASH_MISMATCH = "hash mismatch"
TRUNCATED = "head mismatch"


def canonical_json(obj: Any) -> bytes:
    """``obj`` as canonical JSON bytes: sorted keys, no whitespace, UTF-8, no ``\\u`` escapes.

    Datetimes must already be ISO strings (anything JSON cannot write raises TypeError), and
    NaN or infinity raise ValueError.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _is_hash(value: Any) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def event_body(event: dict[str, Any]) -> dict[str, Any]:
    """The part of ``event`` its hash covers: exactly EVENT_FIELDS.

    ValueError when one is missing or when the event carries any other field than those and
    ``prev_hash``/``hash``: nothing may sit in the trail without being hashed.
    """
    missing = [name for name in EVENT_FIELDS if name not in event]
    if missing:
        raise ValueError(f"event lacks {', '.join(missing)}")
    extra = sorted(set(event) - set(EVENT_FIELDS) - set(CHAIN_FIELDS))
    if extra:
        raise ValueError(f"event has fields the hash would not cover: {', '.join(extra)}")
    return {name: event[name] for name in EVENT_FIELDS}


def event_hash(prev_hash: str, event: dict[str, Any]) -> str:
    """SHA-256 hex of ``prev_hash.encode() + canonical_json(event_body(event))``."""
    if not _is_hash(prev_hash):
        raise ValueError("prev_hash must be 64 lowercase hex characters")
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(canonical_json(event_body(event)))
    return digest.hexdigest()


def link_event(prev_hash: str, event: dict[str, Any]) -> dict[str, Any]:
    """``event``'s six fields plus ``prev_hash`` and its ``hash``: the next link of a chain
    whose last hash is ``prev_hash`` (GENESIS for the first event)."""
    body = event_body(event)
    return {**body, "prev_hash": prev_hash, "hash": event_hash(prev_hash, body)}


def build_chain(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """New dicts for ``events`` with ``prev_hash`` and ``hash`` added, oldest first.

    The events' ``seq`` must run 1, 2, 3, ... in list order (ValueError otherwise), so every
    chain built here verifies.
    """
    chained: list[dict[str, Any]] = []
    prev_hash = GENESIS
    for expected, event in enumerate(events, start=1):
        seq = event.get("seq")
        if isinstance(seq, bool) or seq != expected:
            raise ValueError(f"event {expected} has seq {seq!r}; seqs run 1, 2, 3, ...")
        link = link_event(prev_hash, event)
        chained.append(link)
        prev_hash = link["hash"]
    return chained


@dataclass(frozen=True)
class ChainReport:
    """The outcome of ``verify_chain``: ``ok``, or where and why it first failed.

    ``index`` is the position in the list (0-based) of the first bad event, ``bad_seq`` its
    ``seq`` (None when that is not an integer), ``reason`` one of the module's reason names.
    """

    ok: bool
    count: int
    bad_seq: int | None = None
    index: int | None = None
    reason: str | None = None
    detail: str | None = None


def _failure(events: list[dict[str, Any]], index: int, reason: str, detail: str) -> ChainReport:
    seq = events[index].get("seq") if isinstance(events[index], dict) else None
    bad_seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    return ChainReport(
        ok=False, count=len(events), bad_seq=bad_seq, index=index, reason=reason, detail=detail
    )


def _remaining_seqs(events: list[dict[str, Any]], start: int) -> set[Any]:
    return {event.get("seq") for event in events[start:] if isinstance(event, dict)}


def verify_chain(events: list[dict[str, Any]], head: str | None = None) -> ChainReport:
    """Check a chain oldest first and report the first bad event.

    For each event in turn: well formed (the six fields, two 64-hex hashes, an integer seq),
    seq is the next number (a missing number is a ``seq gap``, a number that comes later in
    the list is ``out of order``), ``prev_hash`` equals the previous event's ``hash`` (a
    ``broken link``), and ``hash`` is the recomputed one (a ``hash mismatch``). With ``head``,
    the last hash (GENESIS for an empty chain) must equal it, which catches a cut-off tail.
    """
    prev_hash = GENESIS
    for index, event in enumerate(events):
        expected = index + 1
        if not isinstance(event, dict):
            return _failure(events, index, MALFORMED, "not an object")
        try:
            body = event_body(event)
        except ValueError as exc:
            return _failure(events, index, MALFORMED, str(exc))
        seq = body["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int):
            return _failure(events, index, MALFORMED, f"seq {seq!r} is not an integer")
        for name in CHAIN_FIELDS:
            if not _is_hash(event.get(name)):
                return _failure(events, index, MALFORMED, f"{name} is not 64 lowercase hex")
        if seq != expected:
            if seq > expected and expected not in _remaining_seqs(events, index + 1):
                detail = f"seq {expected} is missing"
                return _failure(events, index, SEQ_GAP, detail)
            detail = f"seq {seq} where {expected} was expected"
            return _failure(events, index, OUT_OF_ORDER, detail)
        if event["prev_hash"] != prev_hash:
            return _failure(events, index, BROKEN_LINK, "prev_hash is not the previous hash")
        try:
            recomputed = event_hash(prev_hash, body)
        except (TypeError, ValueError) as exc:
            return _failure(events, index, MALFORMED, f"cannot be hashed: {exc}")
        if recomputed != event["hash"]:
            return _failure(events, index, HASH_MISMATCH, "hash does not match the event")
        prev_hash = event["hash"]
    if head is not None and head != prev_hash:
        return ChainReport(
            ok=False,
            count=len(events),
            reason=TRUNCATED,
            detail="the last hash is not the recorded head: events were cut off or added",
        )
    return ChainReport(ok=True, count=len(events))
