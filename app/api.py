"""The JSON API under /api/v1: accounts, settings, agents and API keys."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app import accounts, agents, validation
from app import settings as org_settings
from app.auth import require_api
from app.clock import isoformat, utcnow
from app.db import MAX_ID, db_session
from app.errors import ApiError, Conflict, NotFound, ValidationFailed
from app.models import Account, Agent, ApiKey, Role
from app.ratelimit import api_caller_key, api_limit, limiter
from app.validation import Errors, FieldError

bp = Blueprint("api", __name__, url_prefix="/api/v1")
limiter.limit(api_limit, key_func=api_caller_key)(bp)
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
ID = f"int(max={MAX_ID})"  # a larger id in a URL is simply not found (a 404, never a 500)


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 415/400 problem."""
    if not request.is_json:
        raise ApiError(415, "Unsupported Media Type", "Send the body as application/json.")
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # json.loads gives up on thousands of nested brackets
        raise ApiError(400, "Bad Request", "The JSON body is nested too deeply.") from None
    if data is None:
        raise ApiError(400, "Bad Request", "The body is not valid JSON.")
    if not isinstance(data, dict):
        raise ApiError(400, "Bad Request", "The body must be a JSON object.")
    return data


def config():
    return current_app.extensions["paylink.config"]


def page_args() -> tuple[int, int]:
    """(after id, limit) from ?cursor= and ?limit=; each bad one is a 422 under its name."""
    errors = Errors()
    cursor, limit = 0, PAGE_SIZE
    try:
        cursor = _int_arg("cursor", 0, 0, MAX_ID)
    except FieldError:
        errors.add("cursor", "must be the next_cursor of a previous page")
    try:
        limit = _int_arg("limit", PAGE_SIZE, 1, MAX_PAGE_SIZE)
    except FieldError:
        errors.add("limit", f"must be a whole number between 1 and {MAX_PAGE_SIZE}")
    if errors:
        raise ValidationFailed(errors.by_field)
    return cursor, limit


def _int_arg(name: str, default: int, minimum: int, maximum: int) -> int:
    raw = request.args.get(name, "").strip()
    if not raw:
        return default
    if not re.fullmatch(r"-?\d{1,20}", raw):
        raise FieldError("not a whole number")
    return validation.integer(int(raw), minimum=minimum, maximum=maximum)


# --- accounts ---------------------------------------------------------------------------


@bp.post("/accounts")
@require_api()
def create_account() -> tuple[Response, int]:
    data = json_body()
    now = utcnow()
    values, errors = accounts.clean_account(data, ssn_key=config().ssn_hash_key, today=now.date())
    if errors:
        raise ValidationFailed(errors.by_field)
    session = db_session()
    try:
        account = accounts.create_account(session, values, g.actor, now)
    except accounts.DuplicateExternalId as exc:
        raise Conflict(str(exc)) from None
    session.commit()
    response = jsonify(accounts.account_json(account))
    response.headers["Location"] = f"/api/v1/accounts/{account.id}"
    return response, 201


@bp.get(f"/accounts/<{ID}:account_id>")
@require_api()
def get_account(account_id: int) -> Response:
    account = db_session().get(Account, account_id)
    if account is None:
        raise NotFound("No account with that id.")
    return jsonify(accounts.account_json(account))


@bp.get("/accounts")
@require_api()
def list_accounts() -> Response:
    session = db_session()
    external_id = request.args.get("external_id")
    if external_id is not None:
        try:
            account = accounts.find_by_external_id(
                session, validation.text(external_id, max_length=64)
            )
        except FieldError:  # nothing that fails the check can have been stored
            account = None
        return jsonify({"items": [accounts.account_json(account)] if account else []})
    cursor, limit = page_args()
    rows = list(
        session.scalars(
            select(Account).where(Account.id > cursor).order_by(Account.id).limit(limit + 1)
        )
    )
    body: dict[str, Any] = {"items": [accounts.account_json(a) for a in rows[:limit]]}
    body["next_cursor"] = str(rows[limit - 1].id) if len(rows) > limit else None
    return jsonify(body)


@bp.post("/accounts/import")
@require_api()
def import_accounts() -> Response:
    if request.mimetype != "text/csv":
        raise ApiError(415, "Unsupported Media Type", "Send the file as text/csv.")
    try:
        text = request.get_data(cache=False).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ApiError(400, "Bad Request", "The file must be UTF-8 text.") from None
    session = db_session()
    try:
        result = accounts.import_csv(
            session, text, g.actor, utcnow(), ssn_key=config().ssn_hash_key
        )
        session.commit()
    except accounts.BadCsv as exc:
        session.rollback()
        raise ValidationFailed(
            {"file": [str(exc)]}, detail="The CSV file cannot be imported."
        ) from None
    except IntegrityError:
        session.rollback()
        raise Conflict("Another import changed the same accounts; send the file again.") from None
    return jsonify(result.as_json())


# --- settings ---------------------------------------------------------------------------


@bp.get("/settings")
@require_api()
def get_settings() -> Response:
    session = db_session()
    settings = org_settings.get_settings(session)
    session.commit()
    return jsonify(org_settings.settings_json(settings))


@bp.patch("/settings")
@require_api(Role.supervisor)
def patch_settings() -> Response:
    data = json_body()
    session = db_session()
    settings, errors = org_settings.update_settings(session, data, g.actor, g.agent.id, utcnow())
    if errors:
        session.rollback()
        raise ValidationFailed(errors.by_field)
    session.commit()
    return jsonify(org_settings.settings_json(settings))


# --- agents and API keys (admins) --------------------------------------------------------


def agent_json(agent: Agent) -> dict[str, Any]:
    return {
        "id": agent.id,
        "email": agent.email,
        "name": agent.name,
        "role": agent.role,
        "active": agent.active,
        "created_at": isoformat(agent.created_at),
        "last_login_at": isoformat(agent.last_login_at),
    }


def api_key_json(api_key: ApiKey) -> dict[str, Any]:
    return {
        "id": api_key.id,
        "agent_id": api_key.agent_id,
        "name": api_key.name,
        "prefix": api_key.prefix,
        "created_at": isoformat(api_key.created_at),
        "last_used_at": isoformat(api_key.last_used_at),
        "revoked_at": isoformat(api_key.revoked_at),
    }


@bp.get("/agents")
@require_api(Role.admin)
def list_agents() -> Response:
    rows = db_session().scalars(select(Agent).order_by(Agent.id))
    return jsonify({"items": [agent_json(a) for a in rows]})


@bp.post("/agents")
@require_api(Role.admin)
def create_agent() -> tuple[Response, int]:
    data = json_body()
    errors = Errors()
    checks: dict[str, Callable[[Any], Any]] = {
        "email": _agent_email,
        "role": _role,
        "password": _password,
        "name": lambda v: validation.text(v, max_length=200, min_length=0),
    }
    values: dict[str, Any] = {"role": Role.agent, "name": ""}
    for name in sorted(set(data) - set(checks)):
        errors.add(name, "is not a known field")
    for name in ("email", "password"):
        if data.get(name) is None:
            errors.add(name, "is required")
    for name, check in checks.items():
        if data.get(name) is not None:
            try:
                values[name] = check(data[name])
            except FieldError as exc:
                errors.add(name, str(exc))
    if errors:
        raise ValidationFailed(errors.by_field)
    session = db_session()
    try:
        agent = agents.create_agent(
            session,
            values["email"],
            values["role"],
            values["password"],
            g.actor,
            utcnow(),
            name=values["name"],
        )
    except agents.AgentExists:
        raise Conflict("An agent with that email already exists.") from None
    session.commit()
    return jsonify(agent_json(agent)), 201


def _agent_email(value: Any) -> str:
    # A sign-in name more than a mailbox: any domain will do, .test and intranet ones too.
    email = validation.text(value, max_length=254)
    if not re.fullmatch(r"[^@\s]+@[^@\s]+", email):
        raise FieldError("must be an email address")
    return email


def _role(value: Any) -> Role:
    if not isinstance(value, str) or value not in {r.value for r in Role}:
        raise FieldError("must be agent, supervisor or admin")
    return Role(value)


def _password(value: Any) -> str:
    if not isinstance(value, str):
        raise FieldError("must be a string")
    if len(value) < agents.MIN_PASSWORD_LENGTH:
        raise FieldError(f"must be at least {agents.MIN_PASSWORD_LENGTH} characters")
    if len(value) > agents.MAX_PASSWORD_LENGTH:
        raise FieldError(f"must be at most {agents.MAX_PASSWORD_LENGTH} characters")
    return value


@bp.post(f"/agents/<{ID}:agent_id>/deactivate")
@require_api(Role.admin)
def deactivate_agent(agent_id: int) -> Response:
    session = db_session()
    agent = session.get(Agent, agent_id)
    if agent is None:
        raise NotFound("No agent with that id.")
    agents.set_agent_active(session, agent, False, g.actor, utcnow())
    session.commit()
    return jsonify(agent_json(agent))


@bp.get("/api-keys")
@require_api(Role.admin)
def list_api_keys() -> Response:
    rows = db_session().scalars(select(ApiKey).order_by(ApiKey.id))
    return jsonify({"items": [api_key_json(k) for k in rows]})


@bp.post("/api-keys")
@require_api(Role.admin)
def create_api_key() -> tuple[Response, int]:
    data = json_body()
    session = db_session()
    errors = Errors()
    agent: Agent | None = None
    try:
        agent_id = validation.integer(data.get("agent_id", g.agent.id), minimum=1, maximum=MAX_ID)
        agent = session.get(Agent, agent_id)
    except FieldError:
        pass
    if agent is None or not agent.active:
        errors.add("agent_id", "must be the id of an active agent")
    name = ""
    try:
        name = validation.text(data.get("name", ""), max_length=100, min_length=0)
    except FieldError as exc:
        errors.add("name", str(exc))
    if errors or agent is None:
        raise ValidationFailed(errors.by_field)
    issued = agents.issue_api_key(session, agent, name, g.actor, utcnow())
    session.commit()
    return jsonify({**api_key_json(issued.api_key), "key": issued.key}), 201


@bp.post(f"/api-keys/<{ID}:key_id>/revoke")
@require_api(Role.admin)
def revoke_api_key(key_id: int) -> Response:
    session = db_session()
    api_key = session.get(ApiKey, key_id)
    if api_key is None:
        raise NotFound("No API key with that id.")
    agents.revoke_api_key(session, api_key, g.actor, utcnow())
    session.commit()
    return jsonify(api_key_json(api_key))
