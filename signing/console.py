"""Console pages for signed agreements: the agreement with its signing trail, and the
downloads of the signed PDF and of the audit trail (JSON, the API's body). Each download
is an audit event. Also the account page's signature items."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Response, current_app, render_template
from flask.blueprints import BlueprintSetupState
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import audit, timeline
from app.auth import current_actor, require_console
from app.clock import utcnow
from app.console import load_or_404
from app.db import db_session
from app.models import Account
from app.settings import get_settings
from offers import chain, trail
from offers.models import Offer, PaymentPlan
from signing.api import agreement_json
from signing.document import ATTACHMENT_FILENAME, PDF_CONTENT_TYPE
from signing.models import Agreement
from signing.storage import DocumentNotFound, sha256_hex, store_for

log = logging.getLogger(__name__)
bp = Blueprint("agreement_console", __name__, url_prefix="/console")


def _load(session: Session, agreement_id: int) -> Agreement:
    return load_or_404(session, Agreement, agreement_id, "agreement")


def audit_body(session: Session, agreement: Agreement) -> dict[str, Any]:
    """The trail oldest first and whether its hash chain verifies: GET
    /api/v1/agreements/<id>/audit's body."""
    events = trail.events_json(session, agreement.offer_id)
    report = chain.verify_chain(events)
    return {
        "agreement_id": agreement.id,
        "offer_id": agreement.offer_id,
        "events": events,
        "verified": report.ok,
        "verification": {
            "ok": report.ok, "count": report.count, "bad_seq": report.bad_seq,
            "reason": report.reason, "detail": report.detail,
        },
    }  # fmt: skip


@bp.get("/agreements/<int:agreement_id>")
@require_console()
def agreement(agreement_id: int) -> str:
    session = db_session()
    found = _load(session, agreement_id)
    offer = session.get(Offer, found.offer_id)
    assert offer is not None
    account = session.get(Account, offer.account_id)
    assert account is not None
    return render_template(
        "console/agreement.html", agreement=found, offer=offer, account=account,
        info=agreement_json(found), trail=audit_body(session, found),
        tz=account.timezone or get_settings(session).default_timezone,
    )  # fmt: skip


@bp.get("/agreements/<int:agreement_id>/document")
@require_console()
def document(agreement_id: int) -> Response | tuple[str, int]:
    """The signed PDF, checked against the agreement's SHA-256 before it is handed out."""
    session = db_session()
    found = _load(session, agreement_id)
    if found.document_key is None or found.sha256 is None:
        html = render_template(
            "errors/error.html", status=409, title="Not ready yet",
            detail="The signed document is still being prepared. Try again in a few seconds.",
        )  # fmt: skip
        return html, 409
    store = store_for(current_app.extensions["paylink.config"], session)
    try:
        content = store.get(found.document_key)
    except DocumentNotFound:
        log.error("agreement %s: no document under %s", found.id, found.document_key)
        content = None
    if content is None or sha256_hex(content) != found.sha256:
        log.error("agreement %s: the stored document is missing or altered", found.id)
        html = render_template(
            "errors/error.html", status=500, title="Document unavailable",
            detail="The stored document is missing or does not match what was signed. "
            "Operations has been told (the log names the agreement).",
        )  # fmt: skip
        return html, 500
    audit.record(session, current_actor(), "agreement.document_downloaded", "agreement",
                 found.id, utcnow(), {"sha256": found.sha256})  # fmt: skip
    session.commit()
    response = Response(content, mimetype=PDF_CONTENT_TYPE)
    name = ATTACHMENT_FILENAME.replace(".pdf", f"-{found.id}.pdf")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.get("/agreements/<int:agreement_id>/audit.json")
@require_console()
def audit_trail(agreement_id: int) -> Response:
    """The signing trail as a JSON file: the API's body, to keep with the PDF."""
    session = db_session()
    found = _load(session, agreement_id)
    body = audit_body(session, found)
    audit.record(session, current_actor(), "agreement.audit_downloaded", "agreement", found.id,
                 utcnow(), {"verified": body["verified"]})  # fmt: skip
    session.commit()
    response = Response(json.dumps(body, indent=2, ensure_ascii=False) + "\n",
                        mimetype="application/json")  # fmt: skip
    name = f"agreement-{found.id}-audit-trail.json"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["Cache-Control"] = "private, no-store"
    return response


def signature_items(session: Session, account_id: int) -> list[timeline.Item]:
    rows = session.execute(
        select(Agreement, PaymentPlan.id)
        .join(Offer, Offer.id == Agreement.offer_id)
        .outerjoin(PaymentPlan, PaymentPlan.offer_id == Agreement.offer_id)
        .where(Offer.account_id == account_id)
        .order_by(Agreement.id)
    )
    found = []
    for agreement, plan_id in rows:
        how = "typed name" if agreement.signature_method == "typed" else "drawn signature"
        plan_text = f", plan {plan_id}" if plan_id else ""
        found.append(
            timeline.Item(
                at=agreement.signed_at, kind="signature",
                title=f"Agreement {agreement.id} signed by {agreement.signer_name}",
                detail=f"{how}, verified by {agreement.verified_by or 'nothing'}{plan_text}",
                href=f"/console/agreements/{agreement.id}",
            )
        )  # fmt: skip
    return found


@bp.record_once
def _register(state: BlueprintSetupState) -> None:
    timeline.register_items(state.app, "signatures", signature_items)
