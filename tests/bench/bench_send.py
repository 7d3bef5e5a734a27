"""Messages per second through one RQ worker on the twilio and sendgrid backends, with the
local fake providers answering every request after 50 ms; and the API calls used for
10,000 reminder emails.

    .venv/bin/python tests/bench/bench_send.py

Runs on a temporary SQLite file, and also on PostgreSQL when PAYLINK_TEST_DATABASE_URL
names a server (a database of its own is created there and dropped afterwards). Every
scenario starts from a freshly migrated, empty database with quiet hours opened to the
whole day and sender rate limits set high, so the figures measure the send path:

- SMS: 300 queued texts, enqueued as batch jobs of 500 ids (``outbox.send_job``), one
  forking worker in burst mode (``build_worker(app).work(burst=True)``), timed from the
  worker's start to its exit; the dispatcher sends texts one at a time.
- email: 2,000 queued ``link`` emails, batch jobs of 500 ids, the same worker: each job is
  one SendGrid call of 500 personalizations.
- reminders: 10,000 ``reminder_1`` emails written by ``outbox.queue_message`` (not
  timed), then sent (a) as batch jobs of 1,000 ids (SendGrid's limit a call) and (b) the
  way the outbox sweep (``resend_stuck``) hands them out today.

Baseline, measured in the same run against the same fake: the same provider requests
sent raw from one thread with ``requests`` (no database, no queue, no SDK), so every
figure can be read as a ratio to what the wire alone allows.
"""

from __future__ import annotations

import base64
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
from flask import Flask  # noqa: E402
from sqlalchemy import func, insert, select  # noqa: E402

from app import create_app  # noqa: E402
from app.embedded_redis import RedisServer, free_port  # noqa: E402
from app.messaging import render  # noqa: E402
from app.messaging.outbox import MessageEnv, base_context, queue_message, send_job  # noqa: E402
from app.models import Account, Message  # noqa: E402
from app.settings import get_settings  # noqa: E402
from tests.bench.databases import PostgresDatabases, SqliteDatabases  # noqa: E402
from tests.fakes.providers import (  # noqa: E402
    SENDGRID_API_KEY,
    TWILIO_ACCOUNT_SID,
    TWILIO_AUTH_TOKEN,
    TWILIO_FROM_NUMBER,
    FakeProviders,
    slow,
)
from workers.messaging import resend_stuck  # noqa: E402
from workers.runtime import set_job_app  # noqa: E402
from workers.worker import build_worker  # noqa: E402

LATENCY = 0.05  # seconds the fake takes to answer each request
SMS_COUNT = 300
EMAIL_COUNT = 2_000
REMINDER_COUNT = 10_000
JOB_SIZE = 500
TARGET_CALLS = 10


# --- databases -----------------------------------------------------------------------------


@contextmanager
def bench_app(
    database_url: str, redis_url: str, instance: Path, fake: FakeProviders
) -> Iterator[Flask]:
    app = create_app(
        {
            "env": "test",
            "database_url": database_url,
            "redis_url": redis_url,
            "secret_keys": ("bench-secret-0123456789abcdef0123456789",),
            "ssn_hash_key": "bench-ssn-hash-key-0123456789abcdef",
            "instance_path": str(instance),
            "base_url": "https://pay.example.com",
            "log_level": "WARNING",
            **fake.config(),
            "sms_per_second": 1_000_000.0,
            "email_per_second": 1_000_000.0,
        }
    )
    redis_client = app.extensions["paylink.queue"].connection
    redis_client.flushall()
    with app.extensions["paylink.db"].transaction() as session:
        settings = get_settings(session)
        # Open the whole day, so the figures do not depend on when the bench runs.
        settings.quiet_hours_start_minute, settings.quiet_hours_end_minute = 0, 24 * 60
    set_job_app(app)
    try:
        yield app
    finally:
        set_job_app(None)
        app.extensions["paylink.queue"].close()
        app.extensions["paylink.db"].dispose()


# --- arranging messages --------------------------------------------------------------------


def create_accounts(app: Flask, count: int) -> list[Account]:
    now = datetime.now(UTC)
    rows = [
        {
            "external_id": f"BENCH-{n:06d}",
            "name": f"Customer{n} Brooks",
            "phone": f"+1202{n // 10_000 + 555:03d}{n % 10_000:04d}",
            "email": f"customer{n}@example.com",
            "timezone": "America/New_York",
            "balance_cents": 10_000 + n,
            "currency": "USD",
            "created_at": now,
            "updated_at": now,
        }
        for n in range(1, count + 1)
    ]
    with app.extensions["paylink.db"].transaction() as session:
        session.execute(insert(Account), rows)
        return list(session.scalars(select(Account).order_by(Account.id)))


def create_messages(app: Flask, channel: str, count: int, kind: str = "link") -> list[int]:
    """``count`` queued messages written straight into the outbox, each rendered for its
    own account with its own link, as ``queue_message`` would have."""
    accounts = create_accounts(app, count)
    env = MessageEnv.from_config(app.extensions["paylink.config"])
    now = datetime.now(UTC) - timedelta(seconds=1)
    rows = []
    with app.extensions["paylink.db"].transaction() as session:
        settings = get_settings(session)
        for message_id, account in enumerate(accounts, 1):
            context = {
                **base_context(account, settings, env),
                "url": f"{env.base_url}/p/{base64.urlsafe_b64encode(os.urandom(29)).decode()}",
                "amount_cents": account.balance_cents,
                "expires_at_text": "November 30, 2026 at 5:00 PM EST",
                "expires_short": "Nov 30",
            }
            row: dict[str, Any] = {
                "id": message_id, "account_id": account.id, "kind": kind, "channel": channel,
                "status": "queued", "attempts": 0, "scheduled_for": now, "created_at": now,
                "updated_at": now,
            }  # fmt: skip
            if channel == "sms":
                row.update(recipient=account.phone, body=render.render_sms(kind, context).body)
            else:
                context["unsubscribe_url"] = env.unsubscribe_url(message_id)
                email = render.render_email(kind, context)
                row.update(
                    recipient=account.email, subject=email.subject, body=email.text, html=email.html
                )
            rows.append(row)
        session.execute(insert(Message), rows)
    return [row["id"] for row in rows]


def queue_reminders(app: Flask, count: int) -> list[int]:
    """``count`` reminder emails written by the outbox itself, left for batch jobs."""
    accounts = create_accounts(app, count)
    env = MessageEnv.from_config(app.extensions["paylink.config"])
    context = {
        "url": f"{env.base_url}/o/sample",
        "expires_at_text": "November 30, 2026 at 5:00 PM EST",
        "expires_short": "Nov 30",
    }
    now = datetime.now(UTC) - timedelta(seconds=1)
    with app.extensions["paylink.db"].transaction() as session:
        ids = []
        for account in session.scalars(select(Account).order_by(Account.id)):
            ids += [
                m.id
                for m in queue_message(
                    session, account, "reminder_1", ["email"], dict(context), now=now, env=env,
                    enqueue=False,
                )
            ]  # fmt: skip
    assert len(ids) == len(accounts)
    return ids


def enqueue_batches(app: Flask, ids: list[int], size: int, label: str) -> int:
    job_queue = app.extensions["paylink.queue"]
    jobs = 0
    for start in range(0, len(ids), size):
        job_queue.enqueue(send_job(ids[start : start + size], f"bench-{label}-{start}"))
        jobs += 1
    return jobs


def run_worker(app: Flask) -> float:
    started = time.perf_counter()
    build_worker(app).work(burst=True, logging_level="WARNING")
    return time.perf_counter() - started


def check_sent(app: Flask, count: int) -> None:
    with app.extensions["paylink.db"].Session() as session:
        sent = session.scalar(
            select(func.count()).select_from(Message).where(Message.status == "sent")
        )
        providers = session.scalar(select(func.count(func.distinct(Message.provider_id))))
    if sent != count or providers != count:
        raise SystemExit(f"expected {count} sent with distinct provider ids: {sent}, {providers}")


# --- scenarios -----------------------------------------------------------------------------


@dataclass
class Figure:
    database: str
    scenario: str
    messages: int
    jobs: int
    calls: int
    seconds: float
    bodies: list[Any]  # what the provider received, for the bare baseline
    baseline: float | None = None  # messages per second the raw requests managed

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def run_scenario(
    fake: FakeProviders,
    make_app: Callable[[], Any],
    arrange: Callable[[Flask], int],
    endpoint: str,
    count: int,
) -> tuple[float, int, list[Any]]:
    """(seconds, jobs, the provider's requests) for one scenario on a fresh database."""
    with make_app() as app:
        jobs = arrange(app)
        provider = getattr(fake, endpoint)
        provider.clear()
        seconds = run_worker(app)
        requests_made = list(provider.requests)
        provider.clear()
        check_sent(app, count)
    return seconds, jobs, requests_made


def bench(
    databases: SqliteDatabases | PostgresDatabases,
    redis_url: str,
    instance: Path,
    fake: FakeProviders,
) -> list[Figure]:
    def make_app():
        return bench_app(databases.fresh(), redis_url, instance, fake)

    figures = []

    def sms(app: Flask) -> int:
        return enqueue_batches(app, create_messages(app, "sms", SMS_COUNT), JOB_SIZE, "sms")

    seconds, jobs, made = run_scenario(fake, make_app, sms, "twilio", SMS_COUNT)
    figures.append(Figure(databases.name, "SMS, twilio", SMS_COUNT, jobs, len(made), seconds, []))

    def email(app: Flask) -> int:
        ids = create_messages(app, "email", EMAIL_COUNT)
        return enqueue_batches(app, ids, JOB_SIZE, "email")

    seconds, jobs, made = run_scenario(fake, make_app, email, "sendgrid", EMAIL_COUNT)
    bodies = [r.json for r in made]
    figures.append(
        Figure(databases.name, "email, sendgrid", EMAIL_COUNT, jobs, len(made), seconds, bodies)
    )

    def reminders_batched(app: Flask) -> int:
        return enqueue_batches(app, queue_reminders(app, REMINDER_COUNT), 1000, "reminder")

    seconds, jobs, made = run_scenario(
        fake, make_app, reminders_batched, "sendgrid", REMINDER_COUNT
    )
    figures.append(
        Figure(
            databases.name, "10k reminders, 1,000/job", REMINDER_COUNT, jobs, len(made), seconds, []
        )
    )

    def reminders_swept(app: Flask) -> int:
        queue_reminders(app, REMINDER_COUNT)
        with app.app_context():
            # As the sweep sees them once STUCK_AFTER has passed.
            return resend_stuck(datetime.now(UTC) + timedelta(minutes=3))["jobs"]

    seconds, jobs, made = run_scenario(fake, make_app, reminders_swept, "sendgrid", REMINDER_COUNT)
    figures.append(
        Figure(databases.name, "10k reminders, sweep", REMINDER_COUNT, jobs, len(made), seconds, [])
    )
    return figures


# --- the bare baseline ---------------------------------------------------------------------


def baseline_twilio(fake: FakeProviders, count: int) -> float:
    """Seconds for ``count`` raw Messages.json POSTs from one thread."""
    url = f"{fake.url}/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Messages.json"
    form = {"To": "+12025550143", "From": TWILIO_FROM_NUMBER, "Body": "x" * 150}
    with requests.Session() as session:
        session.auth = (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN)
        started = time.perf_counter()
        for _ in range(count):
            session.post(url, data=form, timeout=10).raise_for_status()
        return time.perf_counter() - started


def baseline_sendgrid(fake: FakeProviders, bodies: list[Any]) -> float:
    """Seconds to POST the given Mail Send bodies raw from one thread."""
    headers = {"Authorization": f"Bearer {SENDGRID_API_KEY}"}
    with requests.Session() as session:
        started = time.perf_counter()
        for body in bodies:
            session.post(f"{fake.url}/v3/mail/send", json=body, headers=headers, timeout=30)
        return time.perf_counter() - started


def print_table(figures: list[Figure]) -> None:
    print()
    print(
        f"Fake providers answer every request after {LATENCY * 1000:.0f} ms; one forking RQ worker."
    )
    header = (
        f"{'database':<11} {'scenario':<26} {'msgs':>6} {'jobs':>5} {'calls':>6} "
        f"{'seconds':>8} {'msgs/s':>8} {'bare msgs/s':>12} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for f in figures:
        bare = f"{f.baseline:12.1f}" if f.baseline else f"{'':>12}"
        ratio = f"{f.rate / f.baseline:6.2f}" if f.baseline else f"{'':>6}"
        print(
            f"{f.database:<11} {f.scenario:<26} {f.messages:>6,} {f.jobs:>5} {f.calls:>6} "
            f"{f.seconds:8.2f} {f.rate:8.1f} {bare} {ratio}"
        )


def main() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="paylink-bench-") as tmp,
        FakeProviders() as fake,
    ):
        fake.twilio.always(slow(LATENCY))
        fake.sendgrid.always(slow(LATENCY))
        directory = Path(tmp)
        redis_server = RedisServer(directory / "redis", port=free_port(), persist=False)
        redis_server.start()
        figures: list[Figure] = []
        server_url = os.environ.get("PAYLINK_TEST_DATABASE_URL")
        try:
            instance = directory / "instance"
            figures += bench(SqliteDatabases(directory), redis_server.url, instance, fake)
            if server_url:
                postgres = PostgresDatabases(server_url)
                try:
                    figures += bench(postgres, redis_server.url, instance, fake)
                finally:
                    postgres.close()
        finally:
            redis_server.stop()

        # The bare baselines: the same requests, raw, one thread.
        sms_bare = SMS_COUNT / baseline_twilio(fake, SMS_COUNT)
        email_run = next(f for f in figures if f.scenario.startswith("email"))
        email_bare = EMAIL_COUNT / baseline_sendgrid(fake, email_run.bodies)
        first = email_run.bodies[0]
        one_per_email = [
            {**first, "personalizations": [p]} for p in first["personalizations"][:100]
        ]
        single_bare = len(one_per_email) / baseline_sendgrid(fake, one_per_email)
        for f in figures:
            f.baseline = sms_bare if f.scenario.startswith("SMS") else email_bare

    print_table(figures)
    print()
    print(
        f"bare: {SMS_COUNT} raw Twilio POSTs from one thread: {sms_bare:.1f}/s; "
        f"the email scenario's {email_run.calls} SendGrid bodies re-posted raw: "
        f"{email_bare:.1f} emails/s; one email per raw request: {single_bare:.1f}/s"
    )
    if not server_url:
        print("PostgreSQL: skipped (set PAYLINK_TEST_DATABASE_URL to include it)")
    batched = [f for f in figures if f.scenario.endswith("1,000/job")]
    for f in batched:
        verdict = "meets" if f.calls <= TARGET_CALLS else "misses"
        print(
            f"{f.database}: 10,000 reminder emails used {f.calls} SendGrid calls in "
            f"1,000-id jobs ({verdict} the target of at most {TARGET_CALLS})"
        )


if __name__ == "__main__":
    main()
