"""The agreements API (the agreement, its PDF, its audit trail) and `agreements verify`,
including an attacker with database access changing an event or the stored PDF."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from flask import Flask
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app import create_app
from offers import chain
from signing.models import Agreement
from tests.signing.plan_factory import IP, NAME, SIGNED_AT, UA, make_signed_plan
from workers.runtime import set_job_app
from workers.signing import capture_agreement

RENDERED_AT = SIGNED_AT + timedelta(minutes=2)


def capture(app: Flask, agreement_id: int) -> Agreement:
    with time_machine.travel(RENDERED_AT, tick=False):
        assert capture_agreement(agreement_id)["rendered"] == 1
    with app.extensions["paylink.db"].transaction() as session:
        agreement = session.get(Agreement, agreement_id)
        session.expunge(agreement)
        return agreement


def verify(app: Flask, agreement_id: int):
    return app.test_cli_runner().invoke(args=["agreements", "verify", str(agreement_id)])


def raw(app: Flask, *statements: str, **params) -> None:
    with app.extensions["paylink.db"].engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement), params)


def tamper_event(app: Flask, offer_id: int, seq: int, **values: str) -> None:
    """What an attacker with database access does: switch off the append-only trigger
    (on PostgreSQL only for this one transaction; SQLite's file is the test's own)."""
    sets = ", ".join(f"{name} = :{name}" for name in values)
    update = f"UPDATE offer_event SET {sets} WHERE offer_id = :offer_id AND seq = :seq"  # noqa: S608
    params = {**values, "offer_id": offer_id, "seq": seq}
    if app.extensions["paylink.db"].engine.dialect.name == "sqlite":
        raw(app, "DROP TRIGGER offer_event_no_update", update, **params)
    else:
        raw(
            app,
            "ALTER TABLE offer_event DISABLE TRIGGER offer_event_append_only",
            update,
            "ALTER TABLE offer_event ENABLE TRIGGER offer_event_append_only",
            **params,
        )


# --- GET /agreements/{id} and its document ------------------------------------------------


def test_an_agreement_before_and_after_its_document_is_rendered(app, client, agent):
    signed = make_signed_plan(app)
    url = f"/api/v1/agreements/{signed.agreement_id}"
    before = client.get(url, headers=agent.headers)
    assert before.status_code == 200
    body = before.json
    assert {k: body[k] for k in ("id", "offer_id", "signer_name", "signature_method")} == {
        "id": signed.agreement_id,
        "offer_id": signed.offer_id,
        "signer_name": NAME,
        "signature_method": "typed",
    }
    assert body["signed_at"] == "2026-11-23T15:00:00Z"
    assert (body["ip"], body["user_agent"]) == (IP, UA)
    assert body["sha256"] is None
    assert body["plan_id"] == signed.plan_id
    assert body["text_sha256"] == signed.text_sha256
    not_yet = client.get(f"{url}/document", headers=agent.headers)
    assert not_yet.status_code == 409
    assert not_yet.mimetype == "application/problem+json"
    # At least the job's few seconds (the API's rate limiter may name a later time).
    assert int(not_yet.headers["Retry-After"]) >= 5

    agreement = capture(app, signed.agreement_id)
    after = client.get(url, headers=agent.headers).json
    assert after["sha256"] == agreement.sha256
    assert after["rendered_at"] == "2026-11-23T15:02:00Z"
    assert after["document_url"] == f"{url}/document"
    document = client.get(f"{url}/document", headers=agent.headers)
    assert document.status_code == 200
    assert document.mimetype == "application/pdf"
    assert hashlib.sha256(document.data).hexdigest() == after["sha256"]
    assert document.headers["ETag"] == f'"{after["sha256"]}"'
    assert "attachment" in document.headers["Content-Disposition"]
    assert "no-store" in document.headers["Cache-Control"]


def test_agreements_need_a_key_and_an_id_that_exists(app, client, agent):
    signed = make_signed_plan(app)
    assert client.get(f"/api/v1/agreements/{signed.agreement_id}").status_code == 401
    for path in ("", "/document", "/audit"):
        for bad in (999_999, 2**31, 2**63 - 1, 2**70):
            resp = client.get(f"/api/v1/agreements/{bad}{path}", headers=agent.headers)
            assert resp.status_code == 404, (path, bad)
            assert resp.mimetype == "application/problem+json"


# --- the audit trail ------------------------------------------------------------------------


def test_the_audit_trail_is_oldest_first_and_every_hash_recomputes(app, client, agent):
    signed = make_signed_plan(app, method="drawn")
    agreement = capture(app, signed.agreement_id)
    resp = client.get(f"/api/v1/agreements/{signed.agreement_id}/audit", headers=agent.headers)
    assert resp.status_code == 200
    body = resp.json
    assert body["verified"] is True
    events = body["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "offer.sent"
    assert events[-1]["type"] == "document.rendered"
    assert events[-1]["data"]["sha256"] == agreement.sha256
    # Recomputed here without Paylink's code, as the contract describes it.
    prev = "0" * 64
    for event in events:
        assert set(event) == {"seq", "type", "at", "ip", "user_agent", "data", "prev_hash", "hash"}
        assert event["prev_hash"] == prev
        canonical = json.dumps(
            {k: event[k] for k in ("seq", "type", "at", "ip", "user_agent", "data")},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        assert hashlib.sha256(prev.encode() + canonical).hexdigest() == event["hash"]
        prev = event["hash"]


def test_the_trail_refuses_updates_in_the_database(app):
    signed = make_signed_plan(app)
    with pytest.raises(DBAPIError, match="append-only"):
        raw(app, "UPDATE offer_event SET ip = '198.51.100.1' WHERE seq = 2")
    with pytest.raises(DBAPIError, match="append-only"):
        raw(app, "DELETE FROM offer_event WHERE offer_id = :id", id=signed.offer_id)


# --- flask agreements verify ------------------------------------------------------------


def test_verify_says_ok_for_an_untouched_agreement(app):
    signed = make_signed_plan(app)
    agreement = capture(app, signed.agreement_id)
    result = verify(app, signed.agreement_id)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "OK"
    assert "trail: ok: 9 events, hash chain intact" in result.output
    assert f"document: ok: SHA-256 {agreement.sha256}" in result.output
    assert f"text: ok: SHA-256 {signed.text_sha256}" in result.output


def test_a_changed_event_fails_verification(app, client, agent):
    signed = make_signed_plan(app)
    capture(app, signed.agreement_id)
    # Someone rewrites where the customer opened the offer from.
    tamper_event(app, signed.offer_id, 2, ip="198.51.100.99")
    result = verify(app, signed.agreement_id)
    assert result.exit_code == 1
    assert "trail: FAILED: first bad event at seq 2: hash mismatch" in result.output
    assert result.output.splitlines()[-1] == "FAILED"
    audit = client.get(f"/api/v1/agreements/{signed.agreement_id}/audit", headers=agent.headers)
    assert audit.json["verified"] is False
    assert audit.json["verification"]["bad_seq"] == 2
    assert audit.json["verification"]["reason"] == chain.HASH_MISMATCH


def test_a_changed_event_with_its_hash_recomputed_breaks_the_next_link(app):
    signed = make_signed_plan(app)
    capture(app, signed.agreement_id)
    with app.extensions["paylink.db"].transaction() as session:
        from offers import trail

        event = trail.events_json(session, signed.offer_id)[2]
    forged = {**event, "ip": "198.51.100.99"}
    tamper_event(
        app, signed.offer_id, 3, ip=forged["ip"], hash=chain.event_hash(event["prev_hash"], forged)
    )
    result = verify(app, signed.agreement_id)
    assert result.exit_code == 1
    assert "first bad event at seq 4: broken link" in result.output


def test_a_changed_pdf_fails_verification_and_is_not_served(app, client, agent):
    signed = make_signed_plan(app)
    agreement = capture(app, signed.agreement_id)
    raw(
        app,
        "UPDATE stored_document SET content = :content WHERE key = :key",
        content=b"%PDF-1.7 a different agreement",
        key=agreement.document_key,
    )
    result = verify(app, signed.agreement_id)
    assert result.exit_code == 1
    assert "trail: ok" in result.output
    digest = hashlib.sha256(b"%PDF-1.7 a different agreement").hexdigest()
    assert f"document: FAILED: the stored PDF hashes to {digest}" in result.output
    resp = client.get(f"/api/v1/agreements/{signed.agreement_id}/document", headers=agent.headers)
    assert resp.status_code == 500
    assert resp.json["title"] == "Document Integrity Failure"


def test_a_pdf_and_sha256_replaced_together_still_fail_against_the_trail(app):
    signed = make_signed_plan(app)
    agreement = capture(app, signed.agreement_id)
    forged = b"%PDF-1.7 forged"
    digest = hashlib.sha256(forged).hexdigest()
    raw(
        app,
        "UPDATE stored_document SET content = :content, sha256 = :sha WHERE key = :key",
        "UPDATE agreement SET sha256 = :sha WHERE id = :id",
        content=forged,
        sha=digest,
        key=agreement.document_key,
        id=agreement.id,
    )
    result = verify(app, signed.agreement_id)
    assert result.exit_code == 1
    assert "document: ok" in result.output
    assert f"record: FAILED: document.rendered (seq 9) records {agreement.sha256}" in result.output


def test_a_changed_pdf_file_fails_verification(app_config):
    files_app = create_app({**app_config, "document_store": "files"})
    set_job_app(files_app)
    try:
        signed = make_signed_plan(files_app)
        agreement = capture(files_app, signed.agreement_id)
        assert verify(files_app, signed.agreement_id).exit_code == 0
        instance = Path(files_app.extensions["paylink.config"].instance_path)
        path = instance / "documents" / agreement.document_key
        path.write_bytes(path.read_bytes() + b"\n% appended")
        result = verify(files_app, signed.agreement_id)
        assert result.exit_code == 1
        assert "document: FAILED: the stored PDF hashes to" in result.output
        path.unlink()
        result = verify(files_app, signed.agreement_id)
        assert f"document: FAILED: nothing stored under {agreement.document_key}" in result.output
    finally:
        set_job_app(None)
        files_app.extensions["paylink.queue"].close()
        files_app.extensions["paylink.db"].dispose()


def test_verify_before_rendering_and_for_no_agreement(app):
    signed = make_signed_plan(app)
    result = verify(app, signed.agreement_id)
    assert result.exit_code == 1
    assert "document: FAILED: not rendered yet" in result.output
    assert "trail: ok" in result.output
    missing = verify(app, 999_999)
    assert missing.exit_code == 1
    assert "no such agreement" in missing.output
    assert verify(app, 0).exit_code == 1
