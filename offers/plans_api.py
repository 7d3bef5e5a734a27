"""The plans API: /api/v1/plans."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify

from app import validation
from app.api import json_body
from app.auth import require_api
from app.clock import utcnow
from app.db import db_session, get_by_id
from app.errors import Conflict, NotFound, ValidationFailed
from app.ratelimit import api_caller_key, api_limit, limiter
from app.validation import Errors, FieldError
from links.web import message_env
from offers import plans
from offers.models import PaymentPlan, PlanStatus

bp = Blueprint("plans_api", __name__, url_prefix="/api/v1")
# The API's configured limit (PAYLINK_API_RATE_LIMIT), as on the rest of /api/v1.
limiter.limit(api_limit, key_func=api_caller_key)(bp)
ENDED = (PlanStatus.completed, PlanStatus.defaulted)


def _load(plan_id: int) -> PaymentPlan:
    plan = get_by_id(db_session(), PaymentPlan, plan_id)
    if plan is None:
        raise NotFound("No plan with that id.")
    return plan


def _reason() -> str:
    data = json_body()
    errors = Errors()
    for name in sorted(set(data) - {"reason"}):
        errors.add(name, "is not a known field")
    reason = ""
    if data.get("reason") is None:
        errors.add("reason", "is required")
    else:
        try:
            reason = validation.text(data["reason"], max_length=plans.MAX_REASON)
        except FieldError as exc:
            errors.add("reason", str(exc))
    if errors:
        raise ValidationFailed(errors.by_field)
    return reason


@bp.get("/plans/<int:plan_id>")
@require_api()
def get_plan(plan_id: int) -> Response:
    return jsonify(plans.plan_json(db_session(), _load(plan_id)))


@bp.post("/plans/<int:plan_id>/cancel")
@require_api()
def cancel_plan(plan_id: int) -> Response:
    """Cancel an active plan (its scheduled installments too) and tell the customer.
    A cancelled plan answers 200 unchanged; a completed or defaulted one 409."""
    session = db_session()
    plan = _load(plan_id)
    # The plan's state decides before the body does, as for the other ended objects.
    if plan.status in ENDED:
        raise Conflict(f"The plan cannot be cancelled: it is {plan.status}.")
    if plan.status == PlanStatus.cancelled:
        return jsonify(plans.plan_json(session, plan))
    reason = _reason()
    try:
        plans.cancel_plan(session, plan, reason, g.actor, utcnow(), env=message_env())
    except plans.PlanEnded as exc:
        raise Conflict(f"The plan cannot be cancelled: {exc}.") from None
    session.commit()
    return jsonify(plans.plan_json(session, plan))
