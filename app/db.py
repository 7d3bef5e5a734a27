"""Database wiring: one DeclarativeBase, the engine, sessions per request and per job.

Services take a ``Session`` and flush; the request, job or CLI command owns the
transaction. Nothing connects at import time.
"""

from __future__ import annotations

import enum
import importlib
import os
from collections import namedtuple
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from flask import current_app, g
from sqlalchemy import DateTime, MetaData, create_engine, event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.sql import Select
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
READ_POOL_NAME = "paylink-read"  # the application_name of read_one's connections


class _PreparedRead:
    """A statement of ``Database.read_one`` compiled for one dialect: its SQL, how its
    parameters are passed, and how its row is made (the columns' result conversions, a
    named tuple of their keys)."""

    def __init__(self, statement: Select[Any], dialect: Dialect):
        compiled = statement.compile(dialect=dialect)
        for bind, name in compiled.bind_names.items():
            if bind.expanding or bind.literal_execute:
                raise TypeError(f"read_one cannot send {name!r}: it is rendered at execution")
            if bind.type.dialect_impl(dialect).bind_processor(dialect) is not None:
                raise TypeError(f"read_one passes {name!r} as it is: it needs conversion")
        self.dialect = dialect
        self.sql = str(compiled)
        # Values the statement itself holds (a literal id, say), then the caller's.
        self.fixed = {
            name: b.effective_value for b, name in compiled.bind_names.items() if not b.required
        }
        self.positions = compiled.positiontup  # None for a named paramstyle
        self.columns = statement.selected_columns
        # Made from the first result's description: some conversions depend on the type
        # the driver reports (PostgreSQL's numerics, say).
        self.processors: list[tuple[int, Any]] | None = None
        self.row_type = namedtuple("Row", [c.key for c in self.columns], rename=True)  # type: ignore[misc]

    def parameters(self, params: dict[str, Any]) -> dict[str, Any] | tuple[Any, ...]:
        values = {**self.fixed, **params}
        if self.positions is None:
            return values
        return tuple(values[name] for name in self.positions)

    def describe(self, description: Sequence[Any]) -> None:
        """Make the columns' result conversions from the first result's description (some
        depend on the type the driver reports); psycopg builds a description anew, column
        by column, each time it is asked, so it is asked once."""
        dialect = self.dialect
        self.processors = [
            (i, proc)
            for i, (column, described) in enumerate(zip(self.columns, description, strict=True))
            if (proc := column.type.dialect_impl(dialect).result_processor(dialect, described[1]))
        ]

    def make_row(self, row: Sequence[Any]) -> tuple[Any, ...]:
        processors = self.processors
        if processors:
            row = list(row)
            for i, proc in processors:
                row[i] = proc(row[i])
        return self.row_type._make(row)


_READ_CURSOR = "paylink.read_cursor"


def _read_cursor(conn: Any) -> Any:
    """The cursor ``read_one`` keeps with a pooled DBAPI connection (making a psycopg cursor
    is some work), made anew for a new connection or after an error."""
    dbapi_connection = conn.dbapi_connection
    kept = conn.info.get(_READ_CURSOR)
    if kept is None or kept[0] is not dbapi_connection:
        kept = conn.info[_READ_CURSOR] = (dbapi_connection, dbapi_connection.cursor())
    return kept[1]


class Database:
    """The engine and session factory of one app, kept in ``app.extensions``."""

    def __init__(self, url: str, **session_info: Any):
        self.url = url
        self.engine = make_engine(url)
        self.Session = sessionmaker(self.engine, expire_on_commit=False, info=session_info)
        # For ``read_one`` on PostgreSQL (connects on first use, as every engine does).
        self._read_engine: Engine | None = None
        self._prepared: dict[Select[Any], _PreparedRead] = {}
        if self.engine.dialect.name != "sqlite":
            self._read_engine = make_engine(
                url,
                pool_pre_ping=False,
                pool_reset_on_return=None,
                isolation_level="AUTOCOMMIT",
                connect_args={"application_name": READ_POOL_NAME},
            )

    def read_one(self, statement: Select[Any], params: dict[str, Any]) -> tuple[Any, ...] | None:
        """The first row of one read-only statement, for hot pages: a named tuple of the
        statement's columns, values converted as SQLAlchemy converts them, or None.

        It runs straight on a pooled DBAPI connection, outside any transaction: no BEGIN
        or COMMIT around it (on SQLite, no write lock), no pool ping before it on
        PostgreSQL, and none of the per-call work of a SQLAlchemy ``Connection`` (the
        statement is compiled once per ``Database``). ``params`` are passed to the driver
        as they are, so the statement's parameters must be of types that need no
        conversion (strings, integers). When a PostgreSQL connection is found dropped (a
        restarted server), the pool is emptied (its other connections are as dead) and the
        statement runs once more on a new connection, so the page still answers."""
        prepared = self._prepared.get(statement)
        if prepared is None:
            engine = self._read_engine or self.engine
            prepared = self._prepared[statement] = _PreparedRead(statement, engine.dialect)
        engine = self._read_engine
        if engine is None:  # SQLite
            # pysqlite runs in autocommit (make_engine): one SELECT is one snapshot.
            return self._read(self.engine, prepared, params)
        try:
            return self._read(engine, prepared, params)
        except engine.dialect.loaded_dbapi.Error as exc:
            if not getattr(exc, "paylink_disconnect", False):
                raise
        return self._read(engine, prepared, params)  # on a new connection

    @staticmethod
    def _read(engine: Engine, prepared: _PreparedRead, params: dict[str, Any]) -> Any:
        conn = engine.raw_connection()
        try:
            cursor = _read_cursor(conn)
            cursor.execute(prepared.sql, prepared.parameters(params))
            row = cursor.fetchone()
            if row is not None and prepared.processors is None:
                prepared.describe(cursor.description)
        except engine.dialect.loaded_dbapi.Error as exc:
            conn.info.pop(_READ_CURSOR, None)
            if engine.dialect.is_disconnect(exc, conn.dbapi_connection, None):
                conn.invalidate(exc)
                engine.dispose()  # the pool's other connections went with the server
                exc.paylink_disconnect = True  # type: ignore[attr-defined]
            raise
        except BaseException:
            # Interrupted mid-statement: the connection may still be busy with it.
            conn.info.pop(_READ_CURSOR, None)
            conn.invalidate()
            raise
        finally:
            conn.close()  # back to the pool (an invalidated one is discarded)
        return None if row is None else prepared.make_row(row)

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
