"""The capture job: render and store the agreement PDF, then the plan_confirmed email with
the PDF attached, delivered through the outbox by a real worker."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask
from sqlalchemy import func, select

from app import create_app
from app.models import Message
from app.queue import JobSpec
from offers import trail
from signing.models import Agreement, StoredDocument
from tests.fakes.providers import FakeProviders
from tests.fakes.providers import provider_server as provider_server
from tests.helpers import drain
from tests.signing.plan_factory import SIGNED_AT, make_signed_plan
from workers.runtime import set_job_app
from workers.signing import capture_agreement

AFTER = SIGNED_AT + timedelta(minutes=5)  # 9:05 in Chicago: emails may go


def enqueue_capture(app: Flask, agreement_id: int) -> None:
    """As the signing service does after its commit."""
    spec = JobSpec(
        "workers.signing.capture_agreement",
        (agreement_id,),
        job_id=f"agreement-{agreement_id}",
        queue="default",
    )
    assert app.extensions["paylink.queue"].enqueue(spec) is not None


def run_capture(app: Flask, agreement_id: int) -> None:
    enqueue_capture(app, agreement_id)
    with time_machine.travel(AFTER, tick=False):
        drain(app)


def agreement_row(app: Flask, agreement_id: int) -> Agreement:
    with app.extensions["paylink.db"].transaction() as session:
        agreement = session.get(Agreement, agreement_id)
        session.expunge(agreement)
        return agreement


def confirmations(app: Flask, account_id: int) -> list[Message]:
    with app.extensions["paylink.db"].transaction() as session:
        rows = list(
            session.scalars(
                select(Message).where(
                    Message.account_id == account_id, Message.kind == "plan_confirmed"
                )
            )
        )
        for row in rows:
            session.expunge(row)
        return rows


def test_the_job_renders_stores_and_sends_the_pdf(app, client):
    signed = make_signed_plan(app)
    run_capture(app, signed.agreement_id)

    agreement = agreement_row(app, signed.agreement_id)
    assert agreement.rendered_at == AFTER
    assert agreement.document_key == f"agreements/{agreement.id}/{agreement.sha256}.pdf"
    with app.extensions["paylink.db"].transaction() as session:
        stored = session.get(StoredDocument, agreement.document_key)
        pdf = bytes(stored.content)
        events = trail.events_json(session, signed.offer_id)
    assert pdf.startswith(b"%PDF-")
    assert hashlib.sha256(pdf).hexdigest() == agreement.sha256 == stored.sha256
    assert events[-1]["type"] == "document.rendered"
    assert events[-1]["data"]["sha256"] == agreement.sha256
    assert events[-1]["at"] == "2026-11-23T15:05:00Z"

    [email] = confirmations(app, signed.account_id)
    assert email.channel == "email"
    assert email.recipient == "ola@example.com"
    assert email.status == "delivered"  # the outbox backend "sent" it
    assert email.dedupe_key == f"plan-confirmed-{signed.plan_id}-email"
    assert email.attachments == [
        {
            "filename": "payment-plan-agreement.pdf",
            "content_type": "application/pdf",
            "key": agreement.document_key,
        }
    ]
    # The schedule and the authorization are in the body too.
    for text in (email.body, email.html):
        assert "Dec 1, 2026" in text
        assert "$333.34" in text
        assert "$1,000.00" in text
        assert "authorize Paylink Demo Creditor to charge my Visa ending 4242" in text
    assert "attached as a PDF" in email.body

    # The development outbox lists the attachment and serves the very bytes.
    page = client.get("/dev/outbox").get_data(as_text=True)
    link = f"/dev/outbox/{email.id}/attachments/0"
    assert link in page
    assert "payment-plan-agreement.pdf" in page
    download = client.get(link)
    assert download.status_code == 200
    assert download.mimetype == "application/pdf"
    assert download.data == pdf
    assert "attachment" in download.headers["Content-Disposition"]
    assert client.get(f"/dev/outbox/{email.id}/attachments/1").status_code == 404
    assert client.get("/dev/outbox/999999/attachments/0").status_code == 404


def test_the_job_is_idempotent(app):
    signed = make_signed_plan(app)
    run_capture(app, signed.agreement_id)
    first = agreement_row(app, signed.agreement_id)
    # Again through a worker, and called directly: nothing rendered, nothing sent.
    run_capture(app, signed.agreement_id)
    with time_machine.travel(AFTER + timedelta(hours=1), tick=False):
        assert capture_agreement(signed.agreement_id) == {"already_rendered": 1}
    again = agreement_row(app, signed.agreement_id)
    assert (again.sha256, again.document_key, again.rendered_at) == (
        first.sha256,
        first.document_key,
        first.rendered_at,
    )
    assert len(confirmations(app, signed.account_id)) == 1
    with app.extensions["paylink.db"].transaction() as session:
        types = [e.type for e in trail.events(session, signed.offer_id)]
        assert session.scalar(select(func.count()).select_from(StoredDocument)) == 1
    assert types.count("document.rendered") == 1


def test_an_unknown_agreement_is_left_alone(app):
    assert capture_agreement(424242) == {"missing": 1}


@pytest.mark.parametrize("contact", ["no_email", "opted_out"])
def test_no_email_without_an_address_that_may_be_used(app, contact):
    email = None if contact == "no_email" else "ola@example.com"
    signed = make_signed_plan(app, email=email)
    if contact == "opted_out":
        from app.models import Account

        with app.extensions["paylink.db"].transaction() as session:
            session.get(Account, signed.account_id).email_opted_out_at = SIGNED_AT
    run_capture(app, signed.agreement_id)
    assert agreement_row(app, signed.agreement_id).sha256 is not None
    assert confirmations(app, signed.account_id) == []


def test_the_files_store_keeps_the_pdf_under_the_instance_folder(app_config):
    files_app = create_app({**app_config, "document_store": "files"})
    set_job_app(files_app)
    try:
        signed = make_signed_plan(files_app)
        run_capture(files_app, signed.agreement_id)
        agreement = agreement_row(files_app, signed.agreement_id)
        instance = Path(files_app.extensions["paylink.config"].instance_path)
        path = instance / "documents" / "agreements" / str(agreement.id) / f"{agreement.sha256}.pdf"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == agreement.sha256
        with files_app.extensions["paylink.db"].transaction() as session:
            assert session.scalar(select(func.count()).select_from(StoredDocument)) == 0
        [email] = confirmations(files_app, signed.account_id)
        assert email.status == "delivered"
        download = files_app.test_client().get(f"/dev/outbox/{email.id}/attachments/0")
        assert download.data == path.read_bytes()
    finally:
        set_job_app(None)
        files_app.extensions["paylink.queue"].close()
        files_app.extensions["paylink.db"].dispose()


# --- through SendGrid ---------------------------------------------------------------------


@pytest.fixture
def sendgrid_app(app_config: dict[str, Any], provider_server: FakeProviders) -> Iterator[Flask]:
    application = create_app(
        {**app_config, **provider_server.config(), "email_per_second": 1_000_000.0}
    )
    set_job_app(application)
    yield application
    set_job_app(None)
    application.extensions["paylink.queue"].close()
    application.extensions["paylink.db"].dispose()


def test_sendgrid_receives_the_pdf_as_an_attachment(sendgrid_app, provider_server):
    signed = make_signed_plan(sendgrid_app, phone=None)
    run_capture(sendgrid_app, signed.agreement_id)
    agreement = agreement_row(sendgrid_app, signed.agreement_id)
    [request] = [
        r
        for r in provider_server.sendgrid.requests
        if r.ok and r.json["categories"] == ["plan_confirmed"]
    ]
    [attachment] = request.json["attachments"]
    assert attachment["filename"] == "payment-plan-agreement.pdf"
    assert attachment["type"] == "application/pdf"
    assert attachment["disposition"] == "attachment"
    content = base64.b64decode(attachment["content"])
    assert hashlib.sha256(content).hexdigest() == agreement.sha256
    [email] = confirmations(sendgrid_app, signed.account_id)
    assert email.status == "sent"
    assert email.provider_id
    # The outbox page is off with a real provider, attachments included.
    client = sendgrid_app.test_client()
    assert client.get(f"/dev/outbox/{email.id}/attachments/0").status_code == 404


def test_the_sweep_renders_an_agreement_whose_job_was_lost(app, redis_client):
    from workers.signing import render_unrendered

    signed = make_signed_plan(app)
    redis_client.flushall()  # the capture job was lost with Redis
    with app.app_context():
        assert render_unrendered(SIGNED_AT + timedelta(seconds=30)) == {"unrendered": 0, "jobs": 0}
        assert render_unrendered(AFTER) == {"unrendered": 1, "jobs": 1}
        assert render_unrendered(AFTER) == {"unrendered": 1, "jobs": 0}  # same minute: once
    with time_machine.travel(AFTER, tick=False):
        drain(app)
    assert agreement_row(app, signed.agreement_id).sha256 is not None
    assert len(confirmations(app, signed.account_id)) == 1
    with app.app_context():
        assert render_unrendered(AFTER + timedelta(minutes=5)) == {"unrendered": 0, "jobs": 0}
