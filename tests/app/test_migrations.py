"""The migrations build exactly the models' schema, on SQLite and on PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from app import migrate
from app.db import Base, load_models, make_engine


def schema_diff(url: str) -> list:
    load_models()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "render_as_batch": True}
            )
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_migrations_match_models(database_url):
    assert schema_diff(database_url) == []


def test_downgrade_to_nothing_and_back(database_url):
    migrate.downgrade(database_url, "base")
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    migrate.upgrade(database_url)
    assert schema_diff(database_url) == []


def test_sqlite_runs_with_wal_and_foreign_keys(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.sqlite3'}"
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        engine.dispose()


def test_db_upgrade_cli(app_config, tmp_path):
    from app import create_app

    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    fresh = create_app({**app_config, "database_url": url})
    result = fresh.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert schema_diff(url) == []
    fresh.extensions["paylink.db"].dispose()
