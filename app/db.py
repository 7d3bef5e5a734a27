"""Database wiring: one DeclarativeBase, the engine, sessions per request and per job.

Services take a ``Session`` and flush; the request, job or CLI command owns the
transaction. Nothing connects at import time.
"""

from __future__ import annotations

import enum
import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from flask import current_app, g
from sqlalchemy import DateTime, MetaData, create_engine, event
from sqlalchemy.engine import Engine, Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql import Executable
from sqlalchemy.types import TypeDecorator

# Feature packages whose models live on Base; loaded by name so app/ imports no feature.
MODEL_MODULES = (
    "app.models",
    "app.payments.models",
    "links.models",
    "links.campaign_models",
    "offers.models",
    "signing.models",
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no offset of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def one_of(column: str, values: type[enum.StrEnum]) -> str:
    """A CHECK constraint's text: ``column`` holds one of the enum's values."""
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


def load_models() -> None:
    """Import every module that defines tables so ``Base.metadata`` is complete."""
    for name in MODEL_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {}).setdefault("timeout", 30)
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, decide when transactions begin.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # IMMEDIATE takes the write lock up front: writers queue instead of deadlocking.
            # A connection of ``Database.read_one`` begins nothing: its one statement
            # reads a snapshot of its own and takes no write lock.
            if not conn.get_execution_options().get(SINGLE_READ):
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    else:
        kwargs.setdefault("pool_pre_ping", True)
        kwargs.setdefault("connect_args", {}).setdefault("connect_timeout", 5)
        engine = create_engine(url, **kwargs)
    # A forked child (an RQ work horse) must not share the parent's pooled sockets.
    os.register_at_fork(after_in_child=lambda: engine.dispose(close=False))
    return engine


M = TypeVar("M")
# Ids are INTEGER columns: PostgreSQL's int4 holds at most 2**31 - 1 and refuses a larger
# number in a query.
MAX_ID = 2**31 - 1
SINGLE_READ = "paylink_single_read"
READ_POOL_NAME = "paylink-read"  # the application_name of read_one's connections


class Database:
    """The engine and session factory of one app, kept in ``app.extensions``."""

    def __init__(self, url: str, **session_info: Any):
        self.url = url
        self.engine = make_engine(url)
        self.Session = sessionmaker(self.engine, expire_on_commit=False, info=session_info)
        # For ``read_one`` on PostgreSQL (connects on first use, as every engine does).
        self._read_engine: Engine | None = None
        if self.engine.dialect.name != "sqlite":
            self._read_engine = make_engine(
                url,
                pool_pre_ping=False,
                isolation_level="AUTOCOMMIT",
                connect_args={"application_name": READ_POOL_NAME},
            )

    def read_one(self, statement: Executable, params: dict[str, Any]) -> Row[Any] | None:
        """The first row of one read-only statement, run outside any transaction, for hot
        pages: no BEGIN or COMMIT around it (on SQLite, no write lock), and on PostgreSQL
        no pool ping before it either. Its connections run in autocommit, and one found
        dropped (a restarted server) is replaced and the statement run once more, so the
        page still answers."""
        if self._read_engine is None:  # SQLite
            # pysqlite runs in autocommit until the begin listener says BEGIN; it says none.
            with self.engine.connect().execution_options(**{SINGLE_READ: True}) as conn:
                return conn.execute(statement, params).first()
        try:
            return self._read(self._read_engine, statement, params)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
        return self._read(self._read_engine, statement, params)  # on a new connection

    @staticmethod
    def _read(engine: Engine, statement: Executable, params: dict[str, Any]) -> Row[Any] | None:
        with engine.connect() as conn:
            return conn.execute(statement, params).first()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on error."""
        with self.Session() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
        if self._read_engine is not None:
            self._read_engine.dispose()


def get_by_id(session: Session, model: type[M], row_id: int, *, lock: bool = False) -> M | None:
    """The row of ``model`` whose id is ``row_id`` (its row lock taken with ``lock``), or
    None; an id no INTEGER column can hold is simply not found."""
    if not 0 < row_id <= MAX_ID:
        return None
    return session.get(model, row_id, with_for_update=lock)


def get_db() -> Database:
    return current_app.extensions["paylink.db"]


def db_session() -> Session:
    """The session of the current request or job, created on first use."""
    if "db_session" not in g:
        g.db_session = get_db().Session()
    return g.db_session


def close_session(_exc: BaseException | None = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
