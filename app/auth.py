"""Who is calling: bearer API keys on /api/v1, the signed session cookie on the console."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from flask import g, redirect, request, session, url_for
from sqlalchemy import select
from werkzeug.exceptions import Forbidden

from app import agents
from app.audit import Actor
from app.clock import utcnow
from app.db import db_session
from app.errors import ApiError
from app.models import Agent, ConsoleSession, Role
from app.security import hash_secret

F = TypeVar("F", bound=Callable[..., Any])
SESSION_AGENT = "agent_id"
SESSION_STAMP = "agent_stamp"
SESSION_SECRET = "console_session"  # noqa: S105 - the cookie key, not a secret
CONSOLE_SESSION_LIFETIME = timedelta(hours=8)  # from the last request, as the cookie


def _unauthorized(detail: str) -> ApiError:
    return ApiError(
        401, "Unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="paylink"'}
    )


def current_actor() -> Actor:
    return g.get("actor") or Actor(
        "anonymous", ip=request.remote_addr, request_id=g.get("request_id")
    )


def require_api(role: Role = Role.agent) -> Callable[[F], F]:
    """Bearer API key with at least ``role``: 401 without a valid key, 403 below the role."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            header = request.headers.get("Authorization", "")
            scheme, _, key = header.partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                raise _unauthorized("Send an API key as 'Authorization: Bearer <key>'.")
            api_key = agents.authenticate_key(db_session(), key.strip(), utcnow())
            if api_key is None:
                raise _unauthorized("The API key is not valid, or has been revoked.")
            db_session().commit()  # keeps last_used_at even if the view fails
            agent = api_key.agent
            g.agent, g.api_key = agent, api_key
            g.actor = Actor(
                "api_key", str(api_key.id), ip=request.remote_addr, request_id=g.get("request_id")
            )
            if not agent.has_role(role):
                raise ApiError(403, "Forbidden", f"This needs the {role.value} role or higher.")
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator


def login_agent(agent: Agent) -> None:
    """Sign ``agent`` in: a new console session, its secret in the cookie. Adds the
    session's row; the caller commits."""
    now = utcnow()
    secret = secrets.token_urlsafe(32)
    db_session().add(
        ConsoleSession(
            agent_id=agent.id, secret_hash=hash_secret(secret), created_at=now,
            expires_at=now + CONSOLE_SESSION_LIFETIME,
        )
    )  # fmt: skip
    session.clear()
    session[SESSION_AGENT] = agent.id
    session[SESSION_SECRET] = secret
    # Changing the password hash ends every session that was signed in with the old one.
    session[SESSION_STAMP] = agent.password_hash[-16:]
    session.permanent = True


def logout_agent() -> None:
    """End this console session: its row for good, then the cookie. The caller commits."""
    found = _console_session()
    if found is not None:
        found.ended_at = utcnow()
    session.clear()


def _console_session() -> ConsoleSession | None:
    secret = session.get(SESSION_SECRET)
    if not isinstance(secret, str):
        return None
    found = db_session().scalar(
        select(ConsoleSession).where(ConsoleSession.secret_hash == hash_secret(secret))
    )
    if found is None or found.ended_at is not None or found.expires_at <= utcnow():
        return None
    return found


def console_agent() -> Agent | None:
    """The agent of this request's console session, if it is signed in and still may be:
    the session not ended or expired, the agent active, the password unchanged since."""
    agent_id = session.get(SESSION_AGENT)
    if agent_id is None:
        return None
    found = _console_session()
    agent = db_session().get(Agent, agent_id) if found is not None else None
    if (
        agent is None
        or found is None
        or found.agent_id != agent.id
        or not agent.active
        or session.get(SESSION_STAMP) != agent.password_hash[-16:]
    ):
        session.clear()
        return None
    _keep_alive(found)
    return agent


def _keep_alive(found: ConsoleSession) -> None:
    """Eight hours from the last request, as the cookie: moved on at most once a minute,
    and committed at once (this runs before the view has written anything)."""
    now = utcnow()
    if found.expires_at < now + CONSOLE_SESSION_LIFETIME - timedelta(minutes=1):
        found.expires_at = now + CONSOLE_SESSION_LIFETIME
        db_session().commit()


def require_console(role: Role = Role.agent) -> Callable[[F], F]:
    """A signed-in, active agent with at least ``role``; else the login page or 403."""

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            agent = console_agent()
            if agent is None:
                return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
            g.agent = agent
            g.actor = Actor(
                "agent", str(agent.id), ip=request.remote_addr, request_id=g.get("request_id")
            )
            if not agent.has_role(role):
                raise Forbidden("Your role does not allow this page.")
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorator
