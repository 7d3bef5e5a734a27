"""How long one pass of the reminder sweep takes, against a bare baseline, and how that
grows with the reminders due rather than with the offers that exist.

    .venv/bin/python tests/bench/bench_sweep.py

Runs on a temporary SQLite file, and also on PostgreSQL when PAYLINK_TEST_DATABASE_URL
names a server (a database of its own is created there and dropped afterwards). Two
populations, each on a freshly migrated database, written with Core bulk inserts:

- 100,000 open offers, three reminders each, 10,000 of them due;
- 10,000 open offers, three reminders each, 1,000 of them due.

Timed, median of five passes (Redis emptied before each, so every pass enqueues):

- reminders: ``workers.offers.send_due_reminders``: the due reminders read through the
  partial index page by page, one job per page enqueued through one Redis pipeline;
- full sweep: every duty of the table once (``run_sweep``), as ``flask sweep`` runs it;
- baseline: the bare work underneath: one Core SELECT of the due ids, and the same number
  of Redis list pushes (one per page) in one pipeline;
- idle: the reminder pass when nothing is due (all 300,000 reminders in the future).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from flask import Flask  # noqa: E402
from sqlalchemy import insert, select, text  # noqa: E402

from app.models import Account  # noqa: E402
from offers.models import Offer, OfferReminder  # noqa: E402
from tests.bench.bench_import import bench_app  # noqa: E402
from tests.bench.databases import (  # noqa: E402
    on_each_database,
)
from workers import offers as offer_jobs  # noqa: E402
from workers.sweep import run_sweep  # noqa: E402

RUNS = 5
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # 10:00 in New York
CHUNK = 5_000
POPULATIONS = ((100_000, 10_000), (10_000, 1_000))


def populate(app: Flask, offers: int, due: int) -> None:
    """``offers`` open offers of 10 each per account, three reminders each; the first
    reminder of ``due`` of them is due now, everything else later."""
    engine = app.extensions["paylink.db"].engine
    accounts = offers // 10
    with engine.begin() as conn:
        for start in range(0, accounts, CHUNK):
            conn.execute(
                insert(Account.__table__),
                [
                    {"external_id": f"B-{n}", "name": f"Customer {n}",
                     "email": f"c{n}@example.com", "phone": f"+1202555{n % 10_000:04d}",
                     "timezone": "America/New_York", "balance_cents": 100_000,
                     "currency": "USD", "created_at": NOW, "updated_at": NOW}
                    for n in range(start, min(start + CHUNK, accounts))
                ],
            )  # fmt: skip
        for start in range(0, offers, CHUNK):
            ids = range(start, min(start + CHUNK, offers))
            conn.execute(
                insert(Offer.__table__),
                [
                    {"id": n + 1, "token_id": f"{n:032x}", "account_id": n // 10 + 1,
                     "kind": "plan", "total_cents": 90_000, "balance_cents": 100_000,
                     "installment_count": 3, "frequency": "monthly",
                     "first_due_date": date(2026, 12, 1), "status": "sent",
                     "expires_at": NOW + timedelta(days=4), "created_at": NOW - timedelta(days=1)}
                    for n in ids
                ],
            )  # fmt: skip
            conn.execute(
                insert(OfferReminder.__table__),
                [
                    {"offer_id": n + 1, "n": k, "offset": offset, "status": "pending",
                     "due_at": NOW - timedelta(minutes=5) if k == 1 and n < due else later}
                    for n in ids
                    for k, offset, later in (
                        (1, "72h", NOW + timedelta(days=1)),
                        (2, "24h", NOW + timedelta(days=3)),
                        (3, "2h", NOW + timedelta(days=4, hours=-2)),
                    )
                ],
            )  # fmt: skip
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE"))


def timed(app: Flask, work: Callable[[], object]) -> tuple[float, list[float]]:
    redis = app.extensions["paylink.queue"].connection
    times = []
    for _ in range(RUNS):
        redis.flushall()
        with app.app_context():
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
    return statistics.median(times), times


def baseline(app: Flask, due: int) -> Callable[[], object]:
    engine = app.extensions["paylink.db"].engine
    redis = app.extensions["paylink.queue"].connection
    table = OfferReminder.__table__

    def work() -> None:
        with engine.connect() as conn:
            ids = conn.execute(
                select(table.c.id)
                .where(table.c.status == "pending", table.c.due_at <= NOW)
                .order_by(table.c.due_at, table.c.id)
            ).scalars().all()  # fmt: skip
        if len(ids) != due:
            raise SystemExit(f"baseline read {len(ids)} due reminders, expected {due}")
        with redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(ids), offer_jobs.REMINDER_BATCH):
                pipe.rpush("bench:pages", ",".join(map(str, ids[start : start + 1000])))
            pipe.execute()

    return work


def reminder_pass(due: int, now: datetime = NOW) -> Callable[[], object]:
    def work() -> None:
        counts = offer_jobs.send_due_reminders(now)
        if counts["reminders_due"] != due:
            raise SystemExit(f"the sweep found {counts}, expected {due} due")

    return work


def bench(databases, redis_url: str, instance: Path) -> None:
    for offers, due in POPULATIONS:
        with bench_app(databases.fresh(), redis_url, instance) as app:
            started = time.perf_counter()
            populate(app, offers, due)
            filled = time.perf_counter() - started
            swept, swept_runs = timed(app, reminder_pass(due))
            full, _ = timed(app, lambda: run_sweep(NOW))
            bare, bare_runs = timed(app, baseline(app, due))
            idle, _ = timed(app, reminder_pass(0, NOW - timedelta(hours=1)))

        def runs(values: list[float]) -> str:
            return ", ".join(f"{v * 1000:.0f}" for v in values)

        print(f"{databases.name}: {offers:,} open offers, {due:,} reminders due "
              f"(populated in {filled:.0f} s); median of {RUNS} passes")  # fmt: skip
        print(f"  reminder pass:   {swept * 1000:8.1f} ms  (runs: {runs(swept_runs)})")
        print(f"  full sweep pass: {full * 1000:8.1f} ms")
        print(f"  bare baseline:   {bare * 1000:8.1f} ms  (runs: {runs(bare_runs)})")
        print(f"  ratio reminder pass / bare: {swept / bare:5.2f}x")
        print(f"  nothing due:     {idle * 1000:8.1f} ms")
        print(f"  per due reminder: {swept / due * 1e6:6.1f} us")


def main() -> None:
    on_each_database(bench)


if __name__ == "__main__":
    main()
