"""Console pages for supervisors and admins: settings, agents and API keys, operations.

Settings go through ``app.settings.update_settings`` (the API's own validation and audit
event). Agents and keys go through ``app.agents`` (an audit event each). A new API key is
shown once, in the answer to the POST that made it; only its hash is stored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import redis
from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from app import agents, audit, validation
from app import settings as org_settings
from app.auth import require_console
from app.clock import utcnow
from app.console import load_or_404
from app.db import db_session
from app.models import Agent, ApiKey, Role
from app.queue import QUEUE_NAMES, JobQueue
from app.validation import Errors, FieldError

bp = Blueprint("console_admin", __name__, url_prefix="/console")

FAILED_SHOWN = 50  # failed jobs listed per queue
JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


# --- settings (supervisors) ---------------------------------------------------------------


@dataclass(frozen=True)
class SettingField:
    name: str  # as in the settings API
    label: str
    kind: str  # bool, int, offsets, ints, methods, choice, time, text, textarea
    hint: str = ""
    choices: tuple[tuple[str, str], ...] = ()


METHOD_LABELS = (
    ("ssn_last4", "Last 4 of SSN"),
    ("date_of_birth", "Date of birth"),
    ("zip", "ZIP"),
)
SETTING_GROUPS: tuple[tuple[str, tuple[SettingField, ...]], ...] = (
    ("Payment link pages", (
        SettingField("contact_verification", "Ask customers to verify who they are", "bool"),
        SettingField("verification_methods", "Facts a customer may verify with", "methods",
                     choices=METHOD_LABELS),
        SettingField("virtual_collection", "Offer settlements on payment links", "bool"),
        SettingField("allow_skip_offer", "Show Skip next to settlement offers", "bool"),
        SettingField("settlement_percent_off", "Settlement offers, percent off", "ints",
                     "Up to 3 whole percentages from 1 to 90, comma-separated, e.g. 20, 10."),
        SettingField("schedule_payment", "Let customers schedule payments", "bool"),
        SettingField("schedule_horizon_days", "Schedule payments at most this many days ahead",
                     "int", "1 to 365."),
        SettingField("max_scheduled_payments", "Most scheduled payments per link", "int",
                     "1 to 12."),
    )),
    ("Links and offers", (
        SettingField("link_lifetime_hours", "Payment link lifetime (hours)", "int",
                     "1 to 2160."),
        SettingField("offer_lifetime_hours", "Offer lifetime (hours)", "int", "1 to 2160."),
        SettingField("reminder_offsets", "Offer reminders before expiry", "offsets",
                     "Up to 3, comma-separated, in m, h or d: e.g. 72h, 24h, 2h. Empty: none."),
        SettingField("expiry_notice", "Tell customers when an offer expires", "bool"),
        SettingField("max_installments", "Most installments in a plan", "int", "1 to 120."),
        SettingField("settlement_max_percent_off", "Largest settlement discount (percent)",
                     "int", "1 to 90."),
        SettingField("settlement_supervisor_percent_off",
                     "Discounts above this need a supervisor (percent)", "int", "1 to 90."),
        SettingField("first_due_horizon_days", "First due date at most this many days ahead",
                     "int", "1 to 3650."),
    )),
    ("Plan payments", (
        SettingField("charge_hour", "Hour installments are charged (customer's time)", "int",
                     "0 to 23."),
        SettingField("retry_after_days", "Retry a declined installment after (days)", "ints",
                     "Up to 5 increasing day counts, comma-separated, e.g. 3, 7. Empty: no retry."),
        SettingField("failed_plan_action", "After the last failed retry, the plan is", "choice",
                     choices=(("defaulted", "Defaulted"), ("cancelled", "Cancelled"))),
    )),
    ("Messages", (
        SettingField("quiet_hours_start", "Send messages from (customer's time)", "time",
                     "The customer's local time."),
        SettingField("quiet_hours_end", "Send messages until (customer's time)", "time",
                     "The customer's local time, later than the start."),
        SettingField("default_timezone", "Time zone for accounts without one", "text",
                     "An IANA name such as America/Chicago."),
    )),
    ("Creditor (shown to customers)", (
        SettingField("creditor_name", "Creditor name", "text"),
        SettingField("creditor_phone", "Creditor phone", "text"),
        SettingField("creditor_email", "Creditor email", "text"),
        SettingField("creditor_address", "Creditor address", "textarea"),
        SettingField("creditor_hours", "Creditor opening hours", "text"),
    )),
)  # fmt: skip
SETTING_FIELDS = {f.name: f for _group, fields in SETTING_GROUPS for f in fields}


def _shown(field: SettingField, value: Any) -> Any:
    """A setting's value as its form field holds it."""
    if field.kind in ("offsets", "ints"):
        return ", ".join(str(v) for v in value)
    return value


def _split(raw: str) -> list[str]:
    return [part for part in re.split(r"[\s,;]+", raw) if part]


def _whole_or_text(raw: str) -> Any:
    """Digits become a number; anything else stays text, for the checker to refuse."""
    raw = raw.strip()
    return int(raw) if re.fullmatch(r"-?\d{1,12}", raw) else raw


def _settings_patch(form: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what was typed, per field; the patch for update_settings) from the posted form."""
    typed: dict[str, Any] = {}
    patch: dict[str, Any] = {}
    for name, field in SETTING_FIELDS.items():
        if field.kind == "bool":
            typed[name] = patch[name] = form.get(name) == "on"
        elif field.kind == "methods":
            typed[name] = patch[name] = form.getlist(name)
        else:
            raw = form.get(name, "")
            typed[name] = raw
            if field.kind == "int":
                patch[name] = _whole_or_text(raw)
            elif field.kind == "ints":
                patch[name] = [_whole_or_text(part) for part in _split(raw)]
            elif field.kind == "offsets":
                patch[name] = _split(raw)
            else:
                patch[name] = raw
    return typed, patch


def _settings_page(values: dict[str, Any], errors: dict[str, list[str]], status: int = 200):
    settings = org_settings.get_settings(db_session())
    updated_by = (
        db_session().get(Agent, settings.updated_by_agent_id)
        if settings.updated_by_agent_id
        else None
    )
    return render_template(
        "console/admin/settings.html", groups=SETTING_GROUPS, values=values, errors=errors,
        settings=settings, updated_by=updated_by,
    ), status  # fmt: skip


@bp.route("/settings", methods=["GET", "POST"])
@require_console(Role.supervisor)
def settings() -> Any:
    session = db_session()
    if request.method == "POST":
        typed, patch = _settings_patch(request.form)
        _row, errors = org_settings.update_settings(session, patch, g.actor, g.agent.id, utcnow())
        if errors:
            session.rollback()
            return _settings_page(typed, errors.by_field, 400)
        session.commit()
        flash("Settings saved.", "success")
        return redirect(url_for("console_admin.settings"))
    current = org_settings.settings_json(org_settings.get_settings(session))
    session.commit()  # the row may just have been created with the defaults
    values = {name: _shown(field, current[name]) for name, field in SETTING_FIELDS.items()}
    return _settings_page(values, {})


# --- agents and API keys (admins) ---------------------------------------------------------

ROLE_CHOICES = tuple((r.value, r.value.title()) for r in Role)
ROLE_VALUES = frozenset(r.value for r in Role)
ROLE_PROBLEM = "Choose agent, supervisor or admin."


def _agents_page(status: int = 200, **context: Any) -> tuple[str, int]:
    rows = db_session().scalars(
        select(Agent).options(selectinload(Agent.api_keys)).order_by(Agent.id)
    )
    context.setdefault("typed", {"email": "", "name": "", "role": "agent"})
    context.setdefault("errors", {})
    return render_template(
        "console/admin/agents.html", agents=list(rows), roles=ROLE_CHOICES, **context
    ), status


def _agent(agent_id: int) -> Agent:
    return load_or_404(db_session(), Agent, agent_id, "agent")


@bp.get("/agents", endpoint="agents")
@require_console(Role.admin)
def agents_page() -> tuple[str, int]:
    return _agents_page()


@bp.post("/agents")
@require_console(Role.admin)
def create_agent() -> Response | tuple[str, int]:
    form = request.form
    typed = {
        "email": form.get("email", ""),
        "name": form.get("name", ""),
        "role": form.get("role", ""),
    }
    errors = Errors()
    email = name = ""
    try:
        email = validation.text(typed["email"], max_length=254)
        if not re.fullmatch(r"[^@\s]+@[^@\s]+", email):
            raise FieldError("must be an email address")
    except FieldError as exc:
        errors.add("email", f"Email {exc}.")
    try:
        name = validation.text(typed["name"], max_length=200, min_length=0)
    except FieldError as exc:
        errors.add("name", f"Name {exc}.")
    if typed["role"] not in ROLE_VALUES:
        errors.add("role", ROLE_PROBLEM)
    password = form.get("password", "")
    try:
        agents.check_password_strength(password)
    except agents.WeakPassword as exc:
        errors.add("password", f"{str(exc).capitalize()}.")
    session = db_session()
    if not errors:
        try:
            agent = agents.create_agent(
                session, email, Role(typed["role"]), password, g.actor, utcnow(), name=name
            )
        except agents.AgentExists:
            session.rollback()
            errors.add("email", "An agent with that email already exists.")
        else:
            session.commit()
            flash(f"Agent {agent.email} added as {agent.role}.", "success")
            return redirect(url_for("console_admin.agents"))
    return _agents_page(400, typed=typed, errors=errors.by_field)


@bp.post("/agents/<int:agent_id>/deactivate")
@require_console(Role.admin)
def deactivate_agent(agent_id: int) -> Response | tuple[str, int]:
    session = db_session()
    agent = _agent(agent_id)
    if agent.id == g.agent.id:
        return _agents_page(400, page_error="You cannot deactivate yourself: ask another admin.")
    agents.set_agent_active(session, agent, False, g.actor, utcnow())
    session.commit()
    flash(
        f"{agent.email} is deactivated: signed out, and their API keys no longer work.", "success"
    )
    return redirect(url_for("console_admin.agents"))


@bp.post("/agents/<int:agent_id>/role")
@require_console(Role.admin)
def change_role(agent_id: int) -> Response | tuple[str, int]:
    session = db_session()
    agent = _agent(agent_id)
    if agent.id == g.agent.id:
        return _agents_page(400, page_error="You cannot change your own role: ask another admin.")
    role = request.form.get("role", "")
    if role not in ROLE_VALUES:
        return _agents_page(400, page_error=ROLE_PROBLEM)
    if agents.set_agent_role(session, agent, Role(role), g.actor, utcnow()):
        session.commit()
        flash(f"{agent.email} is now {role}.", "success")
    return redirect(url_for("console_admin.agents"))


@bp.post("/agents/<int:agent_id>/activate")
@require_console(Role.admin)
def activate_agent(agent_id: int) -> Response:
    session = db_session()
    agent = _agent(agent_id)
    agents.set_agent_active(session, agent, True, g.actor, utcnow())
    session.commit()
    flash(f"{agent.email} is active again.", "success")
    return redirect(url_for("console_admin.agents"))


@bp.post("/agents/<int:agent_id>/keys")
@require_console(Role.admin)
def create_key(agent_id: int) -> Response | tuple[str, int]:
    session = db_session()
    agent = _agent(agent_id)
    errors = Errors()
    name = ""
    try:
        name = validation.text(request.form.get("name", ""), max_length=100, min_length=0)
    except FieldError as exc:
        errors.add(f"key-name-{agent.id}", f"Key name {exc}.")
    if not agent.active:
        return _agents_page(
            400, page_error=f"{agent.email} is deactivated: activate them before making a key."
        )
    if errors:
        return _agents_page(400, errors=errors.by_field)
    issued = agents.issue_api_key(session, agent, name, g.actor, utcnow())
    session.commit()
    response = Response(
        render_template("console/admin/key_created.html", agent=agent, issued=issued)
    )
    response.headers["Cache-Control"] = "no-store"  # the secret is shown once, never cached
    return response


@bp.post("/keys/<int:key_id>/revoke")
@require_console(Role.admin)
def revoke_key(key_id: int) -> Response:
    session = db_session()
    api_key = load_or_404(session, ApiKey, key_id, "API key")
    agents.revoke_api_key(session, api_key, g.actor, utcnow())
    session.commit()
    flash(f"Key {api_key.prefix}… is revoked.", "success")
    return redirect(url_for("console_admin.agents"))


# --- operations (admins) ------------------------------------------------------------------


@dataclass(frozen=True)
class FailedJob:
    queue: str
    id: str
    func: str
    ended_at: Any
    error: str


def _job_queue() -> JobQueue:
    return current_app.extensions["paylink.queue"]


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _queue_state(job_queue: JobQueue) -> tuple[list[dict[str, Any]], list[FailedJob]]:
    depths: list[dict[str, Any]] = []
    failed: list[FailedJob] = []
    for queue in job_queue.queues():
        depths.append({
            "name": queue.name,
            "waiting": queue.count,
            "running": queue.started_job_registry.count,
            "scheduled": queue.scheduled_job_registry.count,
            "deferred": queue.deferred_job_registry.count,
            "failed": queue.failed_job_registry.count,
        })  # fmt: skip
        ids = queue.failed_job_registry.get_job_ids(0, FAILED_SHOWN - 1, desc=True)
        jobs = Job.fetch_many(ids, connection=job_queue.connection, serializer=queue.serializer)
        for job in jobs:
            if job is None:
                continue
            result = job.latest_result()
            failed.append(FailedJob(
                queue.name, job.id, job.func_name or "?", job.ended_at,
                _last_line(result.exc_string if result else None),
            ))  # fmt: skip
    return depths, failed


@bp.get("/ops")
@require_console(Role.admin)
def ops() -> tuple[str, int]:
    try:
        depths, failed = _queue_state(_job_queue())
    except (redis.RedisError, OSError) as exc:
        return render_template(
            "console/admin/ops.html", depths=[], failed=[], shown=FAILED_SHOWN,
            outage=type(exc).__name__,
        ), 503  # fmt: skip
    return render_template(
        "console/admin/ops.html", depths=depths, failed=failed, shown=FAILED_SHOWN, outage=None
    ), 200


@bp.post("/ops/failed/<queue_name>/<job_id>/retry")
@require_console(Role.admin)
def retry_job(queue_name: str, job_id: str) -> Response:
    if queue_name not in QUEUE_NAMES or not JOB_ID.fullmatch(job_id):
        abort(404, "There is no such failed job.")
    job_queue = _job_queue()
    queue = job_queue.queue(queue_name)
    try:
        if job_id not in queue.failed_job_registry:
            abort(404, "There is no such failed job; it may have been retried already.")
        queue.failed_job_registry.requeue(job_id)
    except (NoSuchJobError, InvalidJobOperation):
        abort(404, "There is no such failed job; it may have been retried already.")
    except (redis.RedisError, OSError):
        abort(503, "Redis is not reachable; try again in a moment.")
    session = db_session()
    audit.record(session, g.actor, "job.requeued", "job", job_id, utcnow(), {"queue": queue_name})
    session.commit()
    flash(f"Job {job_id} is queued again.", "success")
    return redirect(url_for("console_admin.ops"))
