"""Signing jobs: turn a signed agreement into its PDF and the customer's confirmation."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from flask import current_app
from sqlalchemy import select

from app.clock import utcnow
from app.messaging.outbox import MessageEnv
from app.queue import JobSpec, job_id
from signing import document
from signing.models import Agreement
from signing.storage import store_for
from workers.runtime import paylink_job

log = logging.getLogger(__name__)


@paylink_job
def capture_agreement(agreement_id: int) -> dict[str, Any]:
    """Render and store the agreement's PDF, record its SHA-256, and queue the
    ``plan_confirmed`` email with the PDF attached, in one transaction under the
    agreement's row lock. Idempotent: an agreement that has its document is left alone
    (nothing rendered, nothing sent again)."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    config = app.extensions["paylink.config"]
    with app.extensions["paylink.db"].transaction() as session:
        agreement = session.get(Agreement, agreement_id, with_for_update=True)
        if agreement is None:
            log.warning("agreement %s does not exist; nothing to render", agreement_id)
            return {"missing": 1}
        issued = document.issue_document(
            session,
            agreement,
            store_for(config, session),
            env=MessageEnv.from_config(config),
            now=utcnow(),
        )
        if issued is None:
            return {"already_rendered": 1}
        log.info(
            "agreement %s rendered: %d bytes, sha256 %s", agreement_id, issued.size, issued.sha256
        )
        return {"rendered": 1, "bytes": issued.size, "emails": len(issued.messages)}


# A signed agreement still without its document this long after signing has lost its job.
UNRENDERED_AFTER = timedelta(minutes=2)


def render_unrendered(now: datetime) -> dict[str, int]:
    """Sweep duty: agreements signed a while ago that have no document (the capture job
    was lost with Redis, or failed) get their job again; the job itself is idempotent."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    with app.extensions["paylink.db"].transaction() as session:
        ids = list(
            session.scalars(
                select(Agreement.id)
                .where(
                    Agreement.document_key.is_(None), Agreement.signed_at <= now - UNRENDERED_AFTER
                )
                .order_by(Agreement.id)
                .limit(1000)
            )
        )
    job_queue = app.extensions["paylink.queue"]
    enqueued = 0
    for agreement_id in ids:
        # One try per agreement per sweep minute; unique refuses a job already waiting.
        key = job_id("agreement", agreement_id, "sweep", int(now.timestamp()) // 60)
        spec = JobSpec(
            "workers.signing.capture_agreement", (agreement_id,), job_id=key, unique=True
        )
        if job_queue.enqueue(spec) is not None:
            enqueued += 1
    return {"unrendered": len(ids), "jobs": enqueued}
