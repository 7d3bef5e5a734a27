"""The agreement PDF (read back with pypdf) and document storage."""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from pypdf import PdfReader

from app import create_app
from app.config import ConfigError
from app.messaging.outbox import MessageEnv
from offers import chain, trail
from signing import document
from signing.models import Agreement, StoredDocument
from signing.storage import (
    DatabaseStore,
    DocumentConflict,
    DocumentNotFound,
    FileStore,
    check_key,
    loader,
    store_for,
)
from tests.signing.plan_factory import IP, NAME, SIGNED_AT, UA, make_signed_plan


def render(app, agreement_id: int) -> tuple[bytes, document.AgreementInputs]:
    with app.extensions["paylink.db"].transaction() as session:
        inputs = document.gather(session, session.get(Agreement, agreement_id))
        return document.render(inputs), inputs


def issue(app, agreement_id: int, now=SIGNED_AT + timedelta(minutes=1)):
    config = app.extensions["paylink.config"]
    with app.extensions["paylink.db"].transaction() as session:
        agreement = session.get(Agreement, agreement_id)
        return document.issue_document(
            session, agreement, store_for(config, session), env=MessageEnv.from_config(config),
            now=now,
        )  # fmt: skip


def pages_text(pdf: bytes) -> list[str]:
    return [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]


def certificate_start(pages: list[str]) -> int:
    """The index of the certificate's first page (it runs to the end)."""
    return next(k for k, text in enumerate(pages) if "Certificate of completion" in text)


def squashed(text: str) -> str:
    return "".join(text.split())


# --- the PDF --------------------------------------------------------------------------------


def test_the_pdf_holds_the_agreement_the_signature_and_a_certificate(app):
    signed = make_signed_plan(app)
    pdf, inputs = render(app, signed.agreement_id)
    assert pdf.startswith(b"%PDF-")
    pages = pages_text(pdf)
    everything = "\n".join(pages)
    # The frozen text, the schedule table, the authorization, the signature block.
    for line in inputs.agreement.text.splitlines():
        assert squashed(line) in squashed(everything)
    assert "Payment schedule" in everything
    assert "$333.34" in everything
    assert "$1,000.00" in everything
    assert "Payment authorization" in everything
    assert f"Signed electronically by {NAME}" in everything
    assert "2026-11-23 15:00:00 UTC" in everything
    assert "Nov 23, 2026 9:00:00 AM CST (America/Chicago)" in everything
    # The certificate: its own page, the text's SHA-256, how the customer was verified,
    # the offer and link ids, and every event up to signing with time, IP, agent, hash.
    certificate = "\n".join(pages[certificate_start(pages) :])
    assert certificate_start(pages) >= 1
    assert NAME in certificate
    assert signed.text_sha256 in certificate
    assert "ssn_last4" in certificate
    assert inputs.offer.token_id in certificate
    events = inputs.events
    assert [e["type"] for e in events] == [
        "offer.sent", "offer.viewed", "verification.passed", "payment_method.chosen",
        "esign.consented", "terms.accepted", "signature.captured", "offer.accepted",
    ]  # fmt: skip
    for event in events:
        assert event["hash"] in certificate
        assert f"{event['seq']}. {event['type']}" in certificate
        assert event["at"] in certificate
    assert IP in certificate
    assert squashed(UA) in squashed(certificate)


def test_the_exact_text_is_embedded_and_the_metadata_dates_from_signing(app):
    signed = make_signed_plan(app)
    pdf, inputs = render(app, signed.agreement_id)
    reader = PdfReader(io.BytesIO(pdf))
    [embedded] = reader.attachments["agreement-text.txt"]
    assert embedded == inputs.agreement.text.encode("utf-8")
    assert hashlib.sha256(embedded).hexdigest() == signed.text_sha256
    assert reader.metadata.creation_date == SIGNED_AT
    assert reader.metadata.title == f"Payment plan agreement {signed.agreement_id}"


def test_a_drawn_signature_is_the_image(app):
    signed = make_signed_plan(app, method="drawn")
    pdf, _inputs = render(app, signed.agreement_id)
    reader = PdfReader(io.BytesIO(pdf))
    images = [image for page in reader.pages for image in page.images]
    assert len(images) == 1
    assert images[0].image.size == (600, 200)
    text = "\n".join(pages_text(pdf))
    assert "drawn signature" in text
    assert f"Signed electronically by {NAME}" in text


def test_the_authorization_is_the_signed_words(app):
    signed = make_signed_plan(app)
    _pdf, inputs = render(app, signed.agreement_id)
    assert inputs.authorization.startswith(f"I, {NAME}, authorize Paylink Demo Creditor")
    assert inputs.authorization.endswith("date of the next payment.")
    assert document.authorization_from_text("no sections here") is None
    summary = "PAYMENT PLAN AGREEMENT\n\n1. TERMS\n\nPay.\n"
    assert document.authorization_from_text(summary) is None


def test_rendering_is_deterministic(app):
    signed = make_signed_plan(app, method="drawn")
    first, _ = render(app, signed.agreement_id)
    with time_machine.travel(SIGNED_AT + timedelta(days=40), tick=False):
        again, _ = render(app, signed.agreement_id)
    assert again == first


def test_the_certificate_covers_the_trail_up_to_signing(app):
    signed = make_signed_plan(app)
    before, _ = render(app, signed.agreement_id)
    with app.extensions["paylink.db"].transaction() as session:
        trail.append(session, signed.offer_id, "note.added", SIGNED_AT + timedelta(seconds=5))
    after_note, inputs = render(app, signed.agreement_id)
    assert after_note == before
    assert "note.added" not in "\n".join(pages_text(after_note))
    assert inputs.events[-1]["type"] == "offer.accepted"

    issued = issue(app, signed.agreement_id)
    assert issued is not None
    assert issued.sha256 == hashlib.sha256(before).hexdigest()
    # Later events (the rendering itself, a cancellation) never change a re-render.
    with app.extensions["paylink.db"].transaction() as session:
        trail.append(session, signed.offer_id, "plan.cancelled", SIGNED_AT + timedelta(days=2))
        events = trail.events_json(session, signed.offer_id)
    rendered = document.rendered_event(events)
    assert rendered["data"]["covers_seq"] == 8
    assert rendered["data"]["covers_hash"] == events[7]["hash"]
    assert rendered["data"]["sha256"] == issued.sha256
    rerendered, _ = render(app, signed.agreement_id)
    assert rerendered == before


def test_issuing_twice_does_nothing_the_second_time(app):
    signed = make_signed_plan(app)
    first = issue(app, signed.agreement_id)
    assert first is not None
    assert issue(app, signed.agreement_id, now=SIGNED_AT + timedelta(hours=1)) is None
    with app.extensions["paylink.db"].transaction() as session:
        agreement = session.get(Agreement, signed.agreement_id)
        assert agreement.sha256 == first.sha256
        assert agreement.document_key == f"agreements/{signed.agreement_id}/{first.sha256}.pdf"
        assert agreement.rendered_at == SIGNED_AT + timedelta(minutes=1)
        types = [e.type for e in trail.events(session, signed.offer_id)]
        assert types.count("document.rendered") == 1
        assert chain.verify_chain(trail.events_json(session, signed.offer_id)).ok
        row = session.get(StoredDocument, first.key)
        assert row.sha256 == first.sha256
        assert row.content_type == "application/pdf"


def test_a_long_plan_and_long_trail_paginate(app):
    signed = make_signed_plan(app, installments=24, total_cents=1_000_000)
    with app.extensions["paylink.db"].transaction() as session:
        for k in range(30):
            trail.append(
                session, signed.offer_id, "offer.viewed", SIGNED_AT - timedelta(minutes=40 - k),
                ip="2001:db8::1", user_agent="Agent/" + "x" * 390,
            )  # fmt: skip
    pdf, inputs = render(app, signed.agreement_id)
    pages = pages_text(pdf)
    assert len(pages) >= 5
    assert len(inputs.events) == 38
    certificate = "\n".join(pages[certificate_start(pages) :])
    for event in inputs.events:
        assert event["hash"] in certificate
    assert f"Page {len(pages)} of {len(pages)}" in pages[-1]


# --- storage --------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["database", "files"])
def test_a_store_keeps_documents_by_key(app, tmp_path, backend):
    with app.extensions["paylink.db"].transaction() as session:
        store = DatabaseStore(session) if backend == "database" else FileStore(tmp_path / "docs")
        digest = store.put("agreements/1/a.pdf", b"%PDF-1", "application/pdf")
        assert digest == hashlib.sha256(b"%PDF-1").hexdigest()
        assert store.put("agreements/1/a.pdf", b"%PDF-1", "application/pdf") == digest
        with pytest.raises(DocumentConflict):
            store.put("agreements/1/a.pdf", b"%PDF-2", "application/pdf")
        assert store.get("agreements/1/a.pdf") == b"%PDF-1"
        with pytest.raises(DocumentNotFound):
            store.get("agreements/1/b.pdf")
    if backend == "files":
        assert (tmp_path / "docs" / "agreements" / "1" / "a.pdf").read_bytes() == b"%PDF-1"
        assert not list((tmp_path / "docs" / "agreements" / "1").glob(".tmp-*"))


@pytest.mark.parametrize("key", ["", "../x", "a/../b", "/etc/passwd", "A.pdf", "a//b", ".x"])
def test_keys_cannot_leave_the_store(key):
    with pytest.raises(ValueError, match="not a document key"):
        check_key(key)


def test_the_setting_picks_the_store(app_config):
    files_app = create_app({**app_config, "document_store": "files"})
    try:
        config = files_app.extensions["paylink.config"]
        db = files_app.extensions["paylink.db"]
        with db.transaction() as session:
            store = store_for(config, session)
            assert isinstance(store, FileStore)
            store.put("x/y.pdf", b"data", "application/pdf")
        assert loader(config, db)("x/y.pdf") == b"data"
        assert store.root == Path(config.instance_path) / "documents"
    finally:
        files_app.extensions["paylink.queue"].close()
        db.dispose()
    with pytest.raises(ConfigError, match="PAYLINK_DOCUMENT_STORE"):
        create_app({**app_config, "document_store": "s3"})


def test_the_database_loader_reads_in_a_transaction_of_its_own(app):
    with app.extensions["paylink.db"].transaction() as session:
        DatabaseStore(session).put("k.pdf", b"content", "application/pdf")
    load = loader(app.extensions["paylink.config"], app.extensions["paylink.db"])
    assert load("k.pdf") == b"content"
    with pytest.raises(DocumentNotFound):
        load("missing.pdf")
