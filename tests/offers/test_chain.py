"""The audit trail's hash chain: the exact bytes hashed, tampering caught, properties."""

from __future__ import annotations

import copy
import hashlib
import itertools
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from offers.chain import (
    BROKEN_LINK,
    EVENT_FIELDS,
    GENESIS,
    HASH_MISMATCH,
    MALFORMED,
    OUT_OF_ORDER,
    SEQ_GAP,
    TRUNCATED,
    build_chain,
    canonical_json,
    event_hash,
    link_event,
    verify_chain,
)

# Hypothesis keeps a cache under ./.hypothesis by default, and the suite's norecursedirs makes
# pytest warn (an error here) about that folder on the next run: keep the cache in /tmp.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "paylink-hypothesis")

PROPERTY = settings(max_examples=100, deadline=None, database=None)

UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) Safari/604.1"


def events() -> list[dict[str, Any]]:
    """A signing session's trail, without hashes."""
    start = datetime(2026, 4, 2, 15, 4, 5, 123000, tzinfo=UTC)
    rows = [
        ("offer.viewed", {"link_id": 41}),
        ("verification.passed", {"method": "ssn_last4"}),
        ("consent.given", {"esign_disclosure_version": 3}),
        ("terms.accepted", {"authorization": "recurring", "method_last4": "4242"}),
        ("signature.captured", {"method": "typed", "signer_name": "José Núñez"}),
        ("agreement.rendered", {"sha256": "ab" * 32}),
    ]
    return [
        {
            "seq": seq,
            "type": kind,
            "at": (start + timedelta(seconds=seq)).isoformat().replace("+00:00", "Z"),
            "ip": "203.0.113.7",
            "user_agent": UA,
            "data": data,
        }
        for seq, (kind, data) in enumerate(rows, start=1)
    ]


@pytest.fixture
def chain() -> list[dict[str, Any]]:
    return build_chain(events())


def test_build_and_verify(chain):
    assert [e["seq"] for e in chain] == [1, 2, 3, 4, 5, 6]
    assert chain[0]["prev_hash"] == GENESIS == "0" * 64
    for before, after in itertools.pairwise(chain):
        assert after["prev_hash"] == before["hash"]
    report = verify_chain(chain)
    assert report.ok
    assert report.count == 6
    assert report.bad_seq is None
    assert report.reason is None


def test_the_events_given_are_not_changed():
    given_events = events()
    kept = copy.deepcopy(given_events)
    build_chain(given_events)
    assert given_events == kept


def test_the_hash_format_recomputed_by_hand(chain):
    # Pins the bytes: prev_hash as ASCII hex, then the six fields as sorted, compact, UTF-8 JSON.
    first = chain[0]
    body = (
        '{"at":"2026-04-02T15:04:06.123000Z","data":{"link_id":41},"ip":"203.0.113.7",'
        f'"seq":1,"type":"offer.viewed","user_agent":"{UA}"}}'
    )
    expected = hashlib.sha256(("0" * 64 + body).encode("utf-8")).hexdigest()
    assert first["hash"] == expected
    # Non-ASCII is hashed as UTF-8 bytes, not as \u escapes.
    fifth = chain[4]
    body5 = (
        '{"at":"2026-04-02T15:04:10.123000Z",'
        '"data":{"method":"typed","signer_name":"José Núñez"},"ip":"203.0.113.7",'
        f'"seq":5,"type":"signature.captured","user_agent":"{UA}"}}'
    )
    assert "\\u" not in body5
    assert fifth["hash"] == hashlib.sha256((chain[3]["hash"] + body5).encode()).hexdigest()


def test_canonical_json():
    assert canonical_json({"b": 1, "a": {"d": [1, None, True], "c": "ñ"}}) == (
        '{"a":{"c":"ñ","d":[1,null,true]},"b":1}'.encode()
    )
    with pytest.raises(TypeError):
        canonical_json({"at": datetime(2026, 1, 1, tzinfo=UTC)})
    with pytest.raises(ValueError, match="Out of range float"):
        canonical_json({"x": float("nan")})


def test_the_hash_ignores_the_chain_fields_and_refuses_unhashed_ones(chain):
    first = chain[0]
    assert event_hash(GENESIS, first) == first["hash"]
    assert event_hash(GENESIS, {k: first[k] for k in EVENT_FIELDS}) == first["hash"]
    with pytest.raises(ValueError, match="would not cover: agreement_id"):
        event_hash(GENESIS, {**first, "agreement_id": 9})
    missing_ip = {k: v for k, v in first.items() if k != "ip"}
    with pytest.raises(ValueError, match="lacks ip"):
        event_hash(GENESIS, missing_ip)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        event_hash("0" * 63, first)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        event_hash("A" * 64, first)


def test_appending_one_event_at_a_time_gives_the_same_chain(chain):
    prev_hash = GENESIS
    appended = []
    for event in events():
        appended.append(link_event(prev_hash, event))
        prev_hash = appended[-1]["hash"]
    assert appended == chain


def test_build_needs_seqs_1_to_n():
    trail = events()
    trail[2]["seq"] = 4
    with pytest.raises(ValueError, match="seqs run 1, 2, 3"):
        build_chain(trail)
    with pytest.raises(ValueError, match="seqs run 1, 2, 3"):
        build_chain([{**events()[0], "seq": 0}])


def test_an_empty_chain_verifies():
    assert build_chain([]) == []
    assert verify_chain([]).ok
    assert verify_chain([], head=GENESIS).ok


# --- tampering -----------------------------------------------------------------------------


def test_changed_data_is_a_hash_mismatch_at_that_seq(chain):
    chain[4]["data"]["signer_name"] = "Jose Nunez"
    report = verify_chain(chain)
    assert not report.ok
    assert (report.bad_seq, report.index, report.reason) == (5, 4, HASH_MISMATCH)


def test_changed_time_is_a_hash_mismatch(chain):
    chain[2]["at"] = "2026-04-02T15:04:07.123001Z"
    report = verify_chain(chain)
    assert (report.ok, report.bad_seq, report.reason) == (False, 3, HASH_MISMATCH)


def test_a_changed_hash_is_caught_at_that_event(chain):
    chain[3]["hash"] = "f" * 64
    report = verify_chain(chain)
    assert (report.ok, report.bad_seq, report.reason) == (False, 4, HASH_MISMATCH)


def test_an_event_rehashed_after_tampering_breaks_the_next_link(chain):
    chain[1]["data"] = {"method": "date_of_birth"}
    chain[1]["hash"] = event_hash(chain[1]["prev_hash"], chain[1])
    report = verify_chain(chain)
    assert (report.ok, report.bad_seq, report.reason) == (False, 3, BROKEN_LINK)


def test_a_changed_prev_hash_is_a_broken_link(chain):
    chain[0]["prev_hash"] = "1" + GENESIS[1:]
    report = verify_chain(chain)
    assert (report.ok, report.bad_seq, report.reason) == (False, 1, BROKEN_LINK)


def test_a_deleted_event_is_a_seq_gap(chain):
    del chain[2]
    report = verify_chain(chain)
    assert (report.ok, report.bad_seq, report.index, report.reason) == (False, 4, 2, SEQ_GAP)
    assert report.detail == "seq 3 is missing"


def test_a_deleted_first_event_is_a_seq_gap(chain):
    del chain[0]
    report = verify_chain(chain)
    assert (report.ok, report.bad_seq, report.reason) == (False, 2, SEQ_GAP)


def test_deleted_and_renumbered_is_a_broken_link(chain):
    del chain[2]
    for index, event in enumerate(chain, start=1):
        event["seq"] = index
    report = verify_chain(chain)
    assert not report.ok
    assert report.bad_seq == 3
    assert report.reason in (BROKEN_LINK, HASH_MISMATCH)


def test_two_events_swapped_are_out_of_order(chain):
    chain[2], chain[3] = chain[3], chain[2]
    report = verify_chain(chain)
    assert (report.ok, report.bad_seq, report.index, report.reason) == (
        False,
        4,
        2,
        OUT_OF_ORDER,
    )


def test_a_duplicated_event_is_out_of_order(chain):
    chain.insert(3, copy.deepcopy(chain[2]))
    report = verify_chain(chain)
    assert (report.ok, report.bad_seq, report.index, report.reason) == (
        False,
        3,
        3,
        OUT_OF_ORDER,
    )


def test_a_cut_off_tail_needs_the_recorded_head(chain):
    head = chain[-1]["hash"]
    assert verify_chain(chain, head=head).ok
    del chain[-1]
    assert verify_chain(chain).ok  # a chain alone cannot see a missing tail
    report = verify_chain(chain, head=head)
    assert (report.ok, report.reason, report.bad_seq) == (False, TRUNCATED, None)


@pytest.mark.parametrize(
    ("change", "detail"),
    [
        (lambda e: e.pop("user_agent"), "lacks user_agent"),
        (lambda e: e.update(extra=1), "would not cover: extra"),
        (lambda e: e.update(seq="3"), "not an integer"),
        (lambda e: e.update(seq=True), "not an integer"),
        (lambda e: e.update(hash="F" * 64), "hash is not 64 lowercase hex"),
        (lambda e: e.update(prev_hash=None), "prev_hash is not 64 lowercase hex"),
        (lambda e: e.update(data={"x": float("inf")}), "cannot be hashed"),
        (lambda e: e.update(at=datetime(2026, 1, 1, tzinfo=UTC)), "cannot be hashed"),
    ],
)
def test_malformed_events_are_reported_not_raised(chain, change, detail):
    change(chain[2])
    report = verify_chain(chain)
    assert (report.ok, report.index, report.reason) == (False, 2, MALFORMED)
    assert detail in report.detail


def test_a_non_object_is_malformed(chain):
    chain[1] = "not an event"
    report = verify_chain(chain)
    assert (report.ok, report.index, report.bad_seq, report.reason) == (False, 1, None, MALFORMED)


# --- properties ----------------------------------------------------------------------------

json_leaves = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda at: at.isoformat().replace("+00:00", "Z"))
field_values = {
    "type": st.text(min_size=1, max_size=30),
    "at": instants,
    "ip": st.none() | st.ip_addresses().map(str),
    "user_agent": st.none() | st.text(max_size=80),
    "data": st.dictionaries(st.text(max_size=8), json_values, max_size=5),
}


@st.composite
def trails(draw: st.DrawFn, min_size: int = 0) -> list[dict[str, Any]]:
    size = draw(st.integers(min_value=min_size, max_value=12))
    return [
        {"seq": seq, **{name: draw(strategy) for name, strategy in field_values.items()}}
        for seq in range(1, size + 1)
    ]


@PROPERTY
@given(trails())
def test_any_trail_builds_a_chain_that_verifies(trail):
    chain = build_chain(trail)
    assert len(chain) == len(trail)
    assert verify_chain(chain).ok
    assert verify_chain(chain, head=chain[-1]["hash"] if chain else GENESIS).ok
    for event, linked in zip(trail, chain, strict=True):
        assert {k: linked[k] for k in EVENT_FIELDS} == event


@PROPERTY
@given(trail=trails(min_size=1), data=st.data())
def test_any_single_field_change_breaks_the_chain(trail, data):
    chain = build_chain(trail)
    index = data.draw(st.integers(min_value=0, max_value=len(chain) - 1), label="index")
    name = data.draw(st.sampled_from([*EVENT_FIELDS, "prev_hash", "hash"]), label="field")
    if name == "seq":
        new = data.draw(st.integers(min_value=-5, max_value=20))
    elif name in ("prev_hash", "hash"):
        new = data.draw(st.text("0123456789abcdef", min_size=64, max_size=64))
    else:
        new = data.draw(field_values[name])
    assume(canonical_json(new) != canonical_json(chain[index][name]))
    chain[index][name] = new
    report = verify_chain(chain)
    assert not report.ok
    assert report.index == index
