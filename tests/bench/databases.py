"""Databases for the benchmarks: a migrated SQLite template copied per run, or a
PostgreSQL database of the bench's own, emptied per run and dropped at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import make_url

from app import migrate
from app.embedded_redis import RedisServer, free_port


class SqliteDatabases:
    """A migrated template file, copied for every run."""

    name = "SQLite"

    def __init__(self, directory: Path):
        self.directory = directory
        self.template = directory / "template.sqlite3"
        migrate.upgrade(f"sqlite:///{self.template}")
        self.count = 0

    def fresh(self) -> str:
        self.count += 1
        target = self.directory / f"run-{self.count}.sqlite3"
        shutil.copyfile(self.template, target)
        return f"sqlite:///{target}"

    def close(self) -> None:
        pass


class PostgresDatabases:
    """A database of the bench's own on the server, emptied before every run."""

    name = "PostgreSQL"

    def __init__(self, server_url: str):
        self.admin = make_url(server_url).set(drivername="postgresql")
        self.db_name = f"paylink_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self._conninfo(self.admin), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.url = (
            make_url(server_url).set(database=self.db_name).render_as_string(hide_password=False)
        )
        migrate.upgrade(self.url)

    @staticmethod
    def _conninfo(url: Any) -> str:
        return url.render_as_string(hide_password=False)

    def fresh(self) -> str:
        conninfo = self._conninfo(make_url(self.url).set(drivername="postgresql"))
        with psycopg.connect(conninfo, autocommit=True) as conn:
            tables = [
                row[0]
                for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'alembic_version'"
                )
            ]
            conn.execute(
                "TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"
            )
        return self.url

    def close(self) -> None:
        with psycopg.connect(self._conninfo(self.admin), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')


Databases = SqliteDatabases | PostgresDatabases


def on_each_database(bench: Callable[[Databases, str, Path], None]) -> None:
    """Run ``bench(databases, redis_url, instance_path)`` on SQLite, then on PostgreSQL when
    PAYLINK_TEST_DATABASE_URL names a server, with one embedded Redis for both."""
    with tempfile.TemporaryDirectory(prefix="paylink-bench-") as tmp:
        directory = Path(tmp)
        redis_server = RedisServer(directory / "redis", port=free_port(), persist=False)
        redis_server.start()
        try:
            instance = directory / "instance"
            bench(SqliteDatabases(directory), redis_server.url, instance)
            server_url = os.environ.get("PAYLINK_TEST_DATABASE_URL")
            if server_url:
                postgres = PostgresDatabases(server_url)
                try:
                    bench(postgres, redis_server.url, instance)
                finally:
                    postgres.close()
            else:
                print("PostgreSQL: skipped (set PAYLINK_TEST_DATABASE_URL to include it)")
        finally:
            redis_server.stop()
