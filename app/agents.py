"""Agents and their API keys. Service functions flush, never commit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from app import audit
from app.models import Agent, ApiKey, ConsoleSession, Role
from app.security import generate_api_key, hash_password, hash_secret, verify_password

# last_used_at is written at most this often per key, so reads stay reads.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# Ended and expired console sessions are kept this long (to look into afterwards).
SESSIONS_KEPT_FOR = timedelta(days=30)
MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 200  # the console's sign-in form takes no more


class AgentExists(Exception):
    pass


class WeakPassword(ValueError):
    pass


@dataclass(frozen=True)
class IssuedKey:
    api_key: ApiKey
    key: str  # the secret, shown once


def normalize_email(email: str) -> str:
    return email.strip().lower()


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPassword(f"a password may have at most {MAX_PASSWORD_LENGTH} characters")


def create_agent(
    session: Session,
    email: str,
    role: Role,
    password: str,
    actor: audit.Actor,
    now: datetime,
    name: str = "",
) -> Agent:
    """Add an agent; raises AgentExists for a taken email. Flushes."""
    email = normalize_email(email)
    check_password_strength(password)
    if session.scalar(select(Agent.id).where(Agent.email == email)) is not None:
        raise AgentExists(email)
    agent = Agent(
        email=email, name=name, role=role.value, password_hash=hash_password(password),
        active=True, created_at=now,
    )  # fmt: skip
    session.add(agent)
    session.flush()
    audit.record(session, actor, "agent.created", "agent", agent.id, now, {"role": role.value})
    return agent


def issue_api_key(
    session: Session, agent: Agent, name: str, actor: audit.Actor, now: datetime
) -> IssuedKey:
    """A new API key for ``agent``; only its hash is stored. Flushes."""
    new = generate_api_key()
    api_key = ApiKey(
        agent_id=agent.id, name=name, prefix=new.prefix, key_hash=new.key_hash, created_at=now
    )
    session.add(api_key)
    session.flush()
    audit.record(
        session, actor, "api_key.created", "api_key", api_key.id, now, {"agent_id": agent.id}
    )
    return IssuedKey(api_key=api_key, key=new.key)


def revoke_api_key(session: Session, api_key: ApiKey, actor: audit.Actor, now: datetime) -> None:
    """Revoke once; revoking again changes nothing. Flushes."""
    if api_key.revoked_at is None:
        api_key.revoked_at = now
        session.flush()
        audit.record(session, actor, "api_key.revoked", "api_key", api_key.id, now)


def set_agent_active(
    session: Session, agent: Agent, active: bool, actor: audit.Actor, now: datetime
) -> None:
    if agent.active != active:
        agent.active = active
        session.flush()
        action = "agent.activated" if active else "agent.deactivated"
        audit.record(session, actor, action, "agent", agent.id, now)


def set_agent_role(
    session: Session, agent: Agent, role: Role, actor: audit.Actor, now: datetime
) -> bool:
    """Give ``agent`` another role, at once for their sessions and API keys (both read the
    agent on every request). Audited; False when it was their role already."""
    if agent.role == role:
        return False
    before = agent.role
    agent.role = role.value
    session.flush()
    audit.record(
        session, actor, "agent.role_changed", "agent", agent.id, now,
        {"from": str(before), "to": role.value},
    )  # fmt: skip
    return True


def authenticate_key(session: Session, key: str, now: datetime) -> ApiKey | None:
    """The live key matching ``key`` (its agent active), touching last_used_at."""
    api_key = session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_secret(key)).join(ApiKey.agent)
    )
    if api_key is None or api_key.revoked_at is not None or not api_key.agent.active:
        return None
    if api_key.last_used_at is None or now - api_key.last_used_at >= LAST_USED_RESOLUTION:
        api_key.last_used_at = now
    return api_key


def authenticate_password(session: Session, email: str, password: str) -> Agent | None:
    """The active agent with this email and password; same work whether or not it exists."""
    email = normalize_email(email)
    # PostgreSQL refuses a NUL in a query string; no stored email holds one anyway.
    agent = None if "\x00" in email else session.scalar(select(Agent).where(Agent.email == email))
    ok = verify_password(agent.password_hash if agent else None, password)
    if agent is None or not ok or not agent.active:
        return None
    return agent


def drop_old_sessions(session: Session, now: datetime) -> int:
    """Delete the console sessions that ended or expired over SESSIONS_KEPT_FOR ago."""
    before = now - SESSIONS_KEPT_FOR
    result = session.execute(
        delete(ConsoleSession).where(
            or_(ConsoleSession.ended_at < before, ConsoleSession.expires_at < before)
        )
    )
    return result.rowcount
