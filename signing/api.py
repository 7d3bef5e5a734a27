"""The agreements API: /api/v1/agreements — the agreement, its signed PDF, its audit trail."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import select

from app.auth import require_api
from app.clock import isoformat
from app.db import db_session, get_by_id
from app.errors import ApiError, NotFound
from app.ratelimit import api_caller_key, api_limit, limiter
from offers import chain, trail
from offers.models import PaymentPlan
from signing.document import ATTACHMENT_FILENAME, PDF_CONTENT_TYPE
from signing.models import Agreement
from signing.storage import DocumentNotFound, sha256_hex, store_for

log = logging.getLogger(__name__)
bp = Blueprint("agreements_api", __name__, url_prefix="/api/v1")
# The API's configured limit (PAYLINK_API_RATE_LIMIT), as on the rest of /api/v1.
limiter.limit(api_limit, key_func=api_caller_key)(bp)
RETRY_RENDER_SECONDS = 5


def _load(agreement_id: int) -> Agreement:
    agreement = get_by_id(db_session(), Agreement, agreement_id)
    if agreement is None:
        raise NotFound("No agreement with that id.")
    return agreement


def agreement_json(agreement: Agreement) -> dict[str, Any]:
    plan_id = db_session().scalar(
        select(PaymentPlan.id).where(PaymentPlan.offer_id == agreement.offer_id)
    )
    return {
        "id": agreement.id,
        "offer_id": agreement.offer_id,
        "plan_id": plan_id,
        "signer_name": agreement.signer_name,
        "signature_method": agreement.signature_method,
        "signed_at": isoformat(agreement.signed_at),
        "consent_at": isoformat(agreement.consent_at),
        "sha256": agreement.sha256,
        "text_sha256": agreement.text_sha256,
        "version": agreement.version,
        "verified_by": agreement.verified_by,
        "ip": agreement.ip,
        "user_agent": agreement.user_agent,
        "rendered_at": isoformat(agreement.rendered_at),
        "document_url": f"/api/v1/agreements/{agreement.id}/document"
        if agreement.document_key
        else None,
    }


@bp.get("/agreements/<int:agreement_id>")
@require_api()
def get_agreement(agreement_id: int) -> Response:
    return jsonify(agreement_json(_load(agreement_id)))


@bp.get("/agreements/<int:agreement_id>/document")
@require_api()
def get_document(agreement_id: int) -> Response:
    """The signed PDF, whose SHA-256 is the agreement's ``sha256``. 409 (with Retry-After)
    while the capture job has not rendered it yet."""
    agreement = _load(agreement_id)
    if agreement.document_key is None or agreement.sha256 is None:
        raise ApiError(
            409, "Conflict", "The agreement's document has not been rendered yet; try again "
            "in a few seconds.", headers={"Retry-After": str(RETRY_RENDER_SECONDS)},
        )  # fmt: skip
    store = store_for(current_app.extensions["paylink.config"], db_session())
    try:
        content = store.get(agreement.document_key)
    except DocumentNotFound:
        log.error("agreement %s: no document under %s", agreement.id, agreement.document_key)
        raise ApiError(
            500, "Document Missing", "The agreement's document is missing from storage."
        ) from None
    if sha256_hex(content) != agreement.sha256:
        # Never hand out a document that is not the one signed; `agreements verify` explains.
        log.error("agreement %s: the stored document does not match its SHA-256", agreement.id)
        raise ApiError(
            500, "Document Integrity Failure",
            "The stored document does not match the agreement's SHA-256.",
        )  # fmt: skip
    response = Response(content, mimetype=PDF_CONTENT_TYPE)
    name = ATTACHMENT_FILENAME.replace(".pdf", f"-{agreement.id}.pdf")
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    response.headers["ETag"] = f'"{agreement.sha256}"'
    response.headers["Cache-Control"] = "private, no-store"
    return response


@bp.get("/agreements/<int:agreement_id>/audit")
@require_api()
def get_audit(agreement_id: int) -> Response:
    """The signing trail oldest first, and whether its hash chain verifies."""
    agreement = _load(agreement_id)
    events = trail.events_json(db_session(), agreement.offer_id)
    report = chain.verify_chain(events)  # offers.trail.verify, on the same rows as shown
    return jsonify(
        {
            "agreement_id": agreement.id,
            "offer_id": agreement.offer_id,
            "events": events,
            "verified": report.ok,
            "verification": {
                "ok": report.ok,
                "count": report.count,
                "bad_seq": report.bad_seq,
                "reason": report.reason,
                "detail": report.detail,
            },
        }
    )
