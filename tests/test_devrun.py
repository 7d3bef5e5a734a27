"""``python -m app.devrun`` (what ``make run`` runs) comes up, answers /readyz, and on
Ctrl-C stops every process it started: web, worker, scheduler, their children and the
embedded Redis."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from app.embedded_redis import free_port
from tests.conftest import TEST_SECRET_KEYS

ROOT = Path(__file__).resolve().parent.parent
READY_WITHIN = 60.0
STOPPED_WITHIN = 20.0


def _ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
def test_devrun_serves_and_stops_every_process(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAYLINK_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        PORT=str(port),
        PAYLINK_INSTANCE_PATH=str(tmp_path / "instance"),
        PAYLINK_SECRET_KEYS=",".join(TEST_SECRET_KEYS),
        PAYLINK_LOG_FORMAT="text",
        WEB_CONCURRENCY="2",
        PYTHONUNBUFFERED="1",
    )
    log_path = tmp_path / "devrun.log"
    with log_path.open("wb") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "app.devrun"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    recorded: set[int] = set()
    try:
        deadline = time.monotonic() + READY_WITHIN
        # Ready means /readyz answers 200 and devrun has printed its URLs (it polls too).
        while not (_ready(port) and "Press Ctrl-C to stop" in log_path.read_text()):
            assert supervisor.poll() is None, "devrun exited early:\n" + log_path.read_text()
            assert time.monotonic() < deadline, "not ready in time:\n" + log_path.read_text()
            time.sleep(0.2)

        tree = psutil.Process(supervisor.pid).children(recursive=True)
        recorded = {p.pid for p in tree}
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        for expected in ("gunicorn", "worker", "scheduler", "redis-server"):
            assert expected in names, f"no {expected} process under devrun: {names}"
        output = log_path.read_text()
        for url in ("/console/login", "/dev/outbox", "/readyz", "api key: pl_"):
            assert url in output

        supervisor.send_signal(signal.SIGINT)
        try:
            supervisor.wait(timeout=STOPPED_WITHIN)
        except subprocess.TimeoutExpired:
            pytest.fail("devrun did not stop within 20 s of SIGINT:\n" + log_path.read_text())
        assert supervisor.returncode == 0, log_path.read_text()
        left = sorted(pid for pid in recorded if _running(pid))
        assert not left, f"still running after devrun stopped: {left}"
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
        for pid in recorded:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
