"""How long importing 10,000 accounts takes, against a bare insert of the same rows.

    .venv/bin/python tests/bench/bench_import.py

Runs on a temporary SQLite file, and also on PostgreSQL when PAYLINK_TEST_DATABASE_URL
names a server (a database of its own is created there and dropped afterwards). Each
figure is the median of three runs, each on a freshly migrated, empty database:

- import: ``accounts.import_csv`` on the generated CSV text, with its commit: parsing,
  validating (phone, email, time zone, ...), looking up existing ids, inserting;
- baseline: the same 10,000 rows as plain values, one SQLAlchemy Core executemany, no
  validation.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flask import Flask  # noqa: E402
from sqlalchemy import func, insert, select  # noqa: E402

from app import accounts, create_app  # noqa: E402
from app.audit import Actor  # noqa: E402
from app.models import Account  # noqa: E402
from tests.bench.databases import (  # noqa: E402
    PostgresDatabases,
    SqliteDatabases,
    on_each_database,
)

ROWS = 10_000
RUNS = 3
COLUMNS = ("external_id", "name", "phone", "email", "timezone", "balance_cents", "zip")
SSN_KEY = "bench-ssn-hash-key-0123456789abcdef"


def generate_rows(count: int = ROWS) -> list[dict[str, str]]:
    return [
        {
            "external_id": f"BENCH-{n:06d}",
            "name": f"Customer {n}",
            "phone": f"+1202555{n % 10_000:04d}",
            "email": f"customer{n}@example.com",
            "timezone": "America/New_York",
            "balance_cents": str(1_000 + n),
            "zip": f"{10_000 + n % 90_000:05d}",
        }
        for n in range(count)
    ]


def to_csv(rows: list[dict[str, str]]) -> str:
    lines = [",".join(COLUMNS)]
    lines += [",".join(row[c] for c in COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"


def baseline_values(rows: list[dict[str, str]], now: datetime) -> list[dict[str, Any]]:
    """The same rows as column values, converted only as far as the columns need."""
    return [
        {**row, "balance_cents": int(row["balance_cents"]), "currency": "USD",
         "created_at": now, "updated_at": now}
        for row in rows
    ]  # fmt: skip


# --- databases -----------------------------------------------------------------------------


@contextmanager
def bench_app(database_url: str, redis_url: str, instance: Path) -> Iterator[Flask]:
    app = create_app(
        {
            "env": "test",
            "database_url": database_url,
            "redis_url": redis_url,
            "secret_keys": ("bench-secret-0123456789abcdef0123456789",),
            "ssn_hash_key": SSN_KEY,
            "instance_path": str(instance),
            "log_level": "WARNING",
        }
    )
    try:
        yield app
    finally:
        app.extensions["paylink.queue"].close()
        app.extensions["paylink.db"].dispose()


# --- the two timed operations --------------------------------------------------------------


def time_import(app: Flask, text: str) -> float:
    db = app.extensions["paylink.db"]
    now = datetime.now(UTC)
    started = time.perf_counter()
    with db.transaction() as session:
        result = accounts.import_csv(session, text, Actor.system("bench"), now, ssn_key=SSN_KEY)
    elapsed = time.perf_counter() - started
    if result.created != ROWS or result.errors:
        raise SystemExit(f"import went wrong: {result.created} created, {result.errors[:3]}")
    return elapsed


def time_baseline(app: Flask, rows: list[dict[str, str]]) -> float:
    engine = app.extensions["paylink.db"].engine
    values = baseline_values(rows, datetime.now(UTC))
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(insert(Account.__table__), values)
    return time.perf_counter() - started


def check_count(app: Flask) -> None:
    with app.extensions["paylink.db"].Session() as session:
        count = session.scalar(select(func.count()).select_from(Account))
    if count != ROWS:
        raise SystemExit(f"expected {ROWS} accounts, found {count}")


def median_of_runs(
    databases: SqliteDatabases | PostgresDatabases,
    redis_url: str,
    instance: Path,
    operation: Callable[[Flask], float],
) -> tuple[float, list[float]]:
    times = []
    for _ in range(RUNS):
        with bench_app(databases.fresh(), redis_url, instance) as app:
            times.append(operation(app))
            check_count(app)
    return statistics.median(times), times


def bench(databases: SqliteDatabases | PostgresDatabases, redis_url: str, instance: Path) -> None:
    rows = generate_rows()
    text = to_csv(rows)
    imported, import_runs = median_of_runs(
        databases, redis_url, instance, lambda app: time_import(app, text)
    )
    bare, bare_runs = median_of_runs(
        databases, redis_url, instance, lambda app: time_baseline(app, rows)
    )

    def runs(values: list[float]) -> str:
        return ", ".join(f"{v:.3f}" for v in values)

    print(f"{databases.name}: {ROWS:,} rows, median of {RUNS} runs on fresh databases")
    print(f"  import_csv:          {imported:7.3f} s   (runs: {runs(import_runs)})")
    print(f"  Core executemany:    {bare:7.3f} s   (runs: {runs(bare_runs)})")
    print(f"  ratio import/bare:   {imported / bare:7.1f}x")
    print(f"  import rate:         {ROWS / imported:7.0f} rows/s")


def main() -> None:
    on_each_database(bench)


if __name__ == "__main__":
    main()
