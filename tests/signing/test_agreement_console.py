"""Console pages for signed agreements: the agreement with its trail, the signed PDF (the
API's bytes, checked against its SHA-256) and the audit trail as JSON (the API's body),
each download an audit event; the signature on the account's timeline."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import select

from app.models import AuditEvent
from tests.app.test_console import login
from tests.signing.plan_factory import make_signed_plan
from tests.signing.test_agreements_api import capture, raw


def signed_in(client, who):
    assert login(client, who.email, who.password).status_code == 302
    return client


def audit_rows(db, action: str) -> list[AuditEvent]:
    db.rollback()
    rows = list(db.scalars(select(AuditEvent).where(AuditEvent.action == action)))
    db.rollback()
    return rows


def test_agreement_page_shows_the_signer_and_a_verified_trail(app, client, agent):
    signed = make_signed_plan(app)
    agreement = capture(app, signed.agreement_id)
    signed_in(client, agent)

    resp = client.get(f"/console/agreements/{signed.agreement_id}")

    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    assert "Nguyễn Thị Ánh" in page
    assert agreement.sha256 in page
    assert "hash chain intact" in page
    assert "Download signed agreement (PDF)" in page
    assert "signature.captured" in page


def test_the_pdf_download_is_the_signed_document_and_audited(app, db, client, agent):
    signed = make_signed_plan(app)
    agreement = capture(app, signed.agreement_id)
    signed_in(client, agent)

    resp = client.get(f"/console/agreements/{signed.agreement_id}/document")

    assert resp.status_code == 200
    assert resp.mimetype == "application/pdf"
    assert hashlib.sha256(resp.data).hexdigest() == agreement.sha256
    api = client.get(f"/api/v1/agreements/{signed.agreement_id}/document", headers=agent.headers)
    assert resp.data == api.data
    assert "attachment" in resp.headers["Content-Disposition"]
    [event] = audit_rows(db, "agreement.document_downloaded")
    assert event.actor_type == "agent"
    assert event.actor_id == str(agent.id)
    assert event.object_id == str(signed.agreement_id)


def test_the_audit_download_is_the_api_body_and_audited(app, db, client, agent):
    signed = make_signed_plan(app)
    capture(app, signed.agreement_id)
    signed_in(client, agent)

    resp = client.get(f"/console/agreements/{signed.agreement_id}/audit.json")

    assert resp.status_code == 200
    assert "attachment" in resp.headers["Content-Disposition"]
    body = json.loads(resp.data)
    api = client.get(f"/api/v1/agreements/{signed.agreement_id}/audit", headers=agent.headers)
    assert body == api.json
    assert body["verified"] is True
    assert len(audit_rows(db, "agreement.audit_downloaded")) == 1


def test_a_document_not_rendered_yet_is_a_friendly_409(app, db, client, agent):
    signed = make_signed_plan(app)
    signed_in(client, agent)

    resp = client.get(f"/console/agreements/{signed.agreement_id}/document")

    assert resp.status_code == 409
    assert resp.mimetype == "text/html"
    assert "still being prepared" in resp.get_data(as_text=True)
    assert audit_rows(db, "agreement.document_downloaded") == []


def test_a_changed_pdf_is_not_handed_out(app, db, client, agent):
    signed = make_signed_plan(app)
    agreement = capture(app, signed.agreement_id)
    raw(app, "UPDATE stored_document SET content = :content WHERE key = :key",
        content=b"%PDF-1.7 something else", key=agreement.document_key)  # fmt: skip
    signed_in(client, agent)

    resp = client.get(f"/console/agreements/{signed.agreement_id}/document")

    assert resp.status_code == 500
    assert b"something else" not in resp.data
    assert "does not match what was signed" in resp.get_data(as_text=True)
    assert audit_rows(db, "agreement.document_downloaded") == []


def test_the_signature_is_on_the_account_timeline(app, client, agent):
    signed = make_signed_plan(app)
    signed_in(client, agent)

    page = client.get(f"/console/accounts/{signed.account_id}").get_data(as_text=True)

    assert f'href="/console/agreements/{signed.agreement_id}"' in page
    assert f"Agreement {signed.agreement_id} signed by Nguyễn Thị Ánh" in page
    assert f"Plan offer {signed.offer_id} opened by the customer" in page
    assert f"Plan {signed.plan_id}" in page  # the offers panel


def test_unknown_agreement_is_404(client, agent):
    signed_in(client, agent)

    for path in ("/console/agreements/5", "/console/agreements/5/document",
                 f"/console/agreements/{2**70}/audit.json"):  # fmt: skip
        assert client.get(path).status_code == 404, path


def test_agreement_pages_need_a_signed_in_agent(app, client):
    signed = make_signed_plan(app)

    resp = client.get(f"/console/agreements/{signed.agreement_id}/document")

    assert resp.status_code == 302
    assert "/console/login" in resp.headers["Location"]
