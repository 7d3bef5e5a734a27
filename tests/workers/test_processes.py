"""The real processes: `flask worker`, `flask scheduler`, and gunicorn with several
workers sharing metrics. Each is started as a subprocess and stopped with a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from app.embedded_redis import free_port
from app.models import AuditEvent
from app.queue import JobSpec, enqueue_after_commit

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def process_env(app_config, **extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PAYLINK_")}
    environ.update(
        PAYLINK_ENV="test",
        PAYLINK_DATABASE_URL=app_config["database_url"],
        PAYLINK_REDIS_URL=app_config["redis_url"],
        PAYLINK_SECRET_KEYS=",".join(app_config["secret_keys"]),
        PAYLINK_SSN_HASH_KEY=app_config["ssn_hash_key"],
        PAYLINK_INSTANCE_PATH=app_config["instance_path"],
        PAYLINK_BASE_URL=app_config["base_url"],
        **extra,
    )
    return environ


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[int, str]:
    """Signal the process, wait for it, and return its exit code and remaining output."""
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, (out or b"").decode()


def children_of(pid: int) -> list[int]:
    """Every live descendant of ``pid``, read from /proc (RQ's work horse leaves its
    parent's process group, so a group kill alone would miss it)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process ended while we looked
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@contextmanager
def worker_to_kill(app_config, log_path: Path) -> Iterator[Callable[[], None]]:
    """A `flask worker` in a process group of its own, and a function that kills it and
    its work horse with SIGKILL, as a crash (or the OOM killer) would; killed on the way
    out anyway."""
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "worker"],
        cwd=ROOT, env=process_env(app_config), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip

    def kill() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGSTOP)  # no new horse while we look for the old
            horses = children_of(proc.pid)
            for child in horses:
                with suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
            wait_for(lambda: not any(map(alive, horses)), what="the work horse to die")
        proc.wait(timeout=20)

    try:
        yield kill
    finally:
        kill()
        log.close()


def waiting_on_a_lock(engine, table: str) -> bool:
    """Whether a PostgreSQL session of this database waits on a row lock in a query that
    names ``table``."""
    with engine.connect() as conn:
        return bool(
            conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database() AND query LIKE :pattern"
                ),
                {"pattern": f"%{table}%"},
            )
        )


def test_worker_process_runs_committed_jobs(app, app_config):
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "worker"],
        cwd=ROOT, env=process_env(app_config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        db = app.extensions["paylink.db"]
        with db.transaction() as session:
            enqueue_after_commit(
                session, JobSpec("tests.workers.sample_jobs.record_marker", ("from-process",))
            )

        def ran() -> bool:
            with db.transaction() as session:
                return bool(
                    session.scalar(
                        select(func.count()).select_from(AuditEvent)
                        .where(AuditEvent.object_id == "from-process")
                    )
                )  # fmt: skip

        wait_for(ran, what="the worker to run the job")
    finally:
        code, output = stop(proc)
    assert code == 0, output
    assert "Listening on payments, messages, default" in output
    assert '"job_id"' in output  # the job's log lines carry its id


def test_scheduler_process_starts_and_stops_cleanly(app_config):
    proc = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "app", "scheduler"],
        cwd=ROOT, env=process_env(app_config), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    lines: list[str] = []
    try:
        wait_for(
            lambda: (
                lines.append(proc.stdout.readline().decode()) or "scheduler started" in lines[-1]
            )
        )
    finally:
        code, rest = stop(proc)
    assert code == 0
    assert "scheduler stopped" in rest


def test_metrics_add_up_across_gunicorn_workers(app_config, tmp_path):
    port = free_port()
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-w", "2",
         "--max-requests", "5", "--max-requests-jitter", "0",
         "-b", f"127.0.0.1:{port}", "app:create_app()"],
        cwd=ROOT, env=process_env(app_config, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> str:
        with urllib.request.urlopen(base + path, timeout=30) as resp:  # noqa: S310 - loopback
            return resp.read().decode()

    def up() -> bool:
        try:
            return get("/healthz") != ""
        except OSError:
            return False

    try:
        wait_for(up, timeout=60, what="gunicorn to answer")
        for _ in range(30):
            get("/healthz")
        pids = {int(p.name.split("_")[-1].split(".")[0]) for p in metrics_dir.glob("counter_*.db")}
        text = get("/metrics")
    finally:
        stop(proc)
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("paylink_http_requests_total{") and 'endpoint="ops.healthz"' in line
    )
    # Workers are recycled every 5 requests, so many processes answered; the count still
    # adds up to every request (30 plus the first readiness probe).
    assert len(pids) >= 4
    assert total == 31
