"""``python -m app.devrun``: the whole of Paylink on one machine, behind ``make run``.

It checks the configuration, migrates the database, seeds the demo data, starts the
embedded Redis when ``PAYLINK_REDIS_URL`` is unset, then runs the web, worker and scheduler
processes, each in a session of its own so that a terminal's Ctrl-C reaches only this
supervisor, which then stops them in order. When any of them dies, it stops the rest: a
half-running Paylink would only mislead. Nothing is left behind, RQ work horses (which
put themselves in a process group of their own) included.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from app import migrate
from app.config import Config, ConfigError, load_config
from app.embedded_redis import RedisServer, ensure_embedded, stop_owned

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT = 5000
READY_TIMEOUT = 90.0  # seconds for the first 200 from /readyz
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
POLL = 0.2

log = logging.getLogger("paylink.devrun")
_print_lock = threading.Lock()


class StopRequested(Exception):
    """SIGINT or SIGTERM reached the supervisor."""


class StartupFailed(Exception):
    """Paylink could not be brought up; the message says why."""


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = None
    # Every process seen under this child, so that none outlives the supervisor.
    seen: set[int] = field(default_factory=set)

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
            self.args,
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pump = threading.Thread(
            target=_pump, args=(self.name, self.process.stdout), daemon=True
        )
        self.pump.start()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def remember_descendants(self) -> None:
        if self.process is None:
            return
        self.seen.add(self.pid)
        with contextlib.suppress(psutil.Error):
            self.seen.update(p.pid for p in psutil.Process(self.pid).children(recursive=True))

    def signal_group(self, signum: int) -> None:
        # The child leads its own session, so its pid is its process group id.
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signum)

    def alive(self) -> list[int]:
        self.exited()  # reaps our direct child once it has ended
        return [pid for pid in sorted(self.seen) if _is_running(pid)]


def _is_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _write(data: bytes) -> None:
    """Write to our stdout; if nobody reads it any more (a closed pipe), drop the output
    rather than fail: the clean-up must go on, and the children must never block."""
    with _print_lock:
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        except (OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)


def say(text: str = "") -> None:
    _write(text.encode() + b"\n")


def _pump(name: str, stream: IO[bytes] | None) -> None:
    """Copy a child's output to ours, each line tagged with the process name."""
    if stream is None:
        return
    prefix = f"{name:<9} | ".encode()
    with stream:
        for line in iter(stream.readline, b""):
            _write(prefix + line)


def _raise_stop(signum: int, _frame: object) -> None:
    raise StopRequested(signal.Signals(signum).name)


def _port() -> int:
    raw = os.environ.get("PORT", str(DEFAULT_PORT)).strip()
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError([f"PORT must be a TCP port number, got {raw!r}"])
    return int(raw)


def _check_port_free(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise StartupFailed(
                f"port {port} is already in use; pick another one, e.g. PORT={port + 1} make run"
            ) from None


_demo_urls: list[str] = []  # "demo link: URL" lines from seed-demo, for the banner


def _flask(*command: str) -> list[str]:
    return [sys.executable, "-m", "flask", "--app", "app", *command]


def _seed_demo(env: dict[str, str]) -> None:
    result = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
        _flask("seed-demo"), cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise StartupFailed(f"seed-demo failed:\n{result.stdout}{result.stderr}")
    say("Demo data (a new password and API key on every start):")
    for line in result.stdout.splitlines():
        say(f"  {line}")
        if line.startswith(("demo link: ", "demo offer: ")):
            _demo_urls.append(line)


def _start_redis(cfg: Config) -> tuple[str, bool]:
    """The Redis URL for every child, and whether this process started the server."""
    if cfg.redis_url:
        return cfg.redis_url, False
    server = RedisServer(Path(cfg.instance_path) / "redis", persist=True)
    if server.ping():
        say(f"Using the embedded Redis already running at {server.url}")
        return server.url, False
    url = ensure_embedded(cfg.instance_path)
    say(f"Started the embedded Redis at {url}")
    return url, True


def _fresh_folder(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _first_exited(children: list[Child]) -> Child | None:
    return next((c for c in children if c.exited() is not None), None)


def _wait_until_ready(port: int, children: list[Child]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        dead = _first_exited(children)
        if dead is not None:
            raise StartupFailed(f"{dead.name} exited with code {dead.exited()} while starting")
        if _ready(port):
            return
        time.sleep(POLL)
    raise StartupFailed(f"/readyz did not answer 200 within {READY_TIMEOUT:.0f} s")


def stop_children(children: list[Child], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM every child's process group, then SIGKILL whatever is left after ``timeout``."""
    started = [c for c in children if c.process is not None]
    for child in started:
        child.remember_descendants()
        child.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in started:
            child.remember_descendants()
        if not any(child.alive() for child in started):
            break
        time.sleep(0.05)
    for child in started:
        leftovers = child.alive()
        if leftovers:
            say(f"{child.name} did not stop within {timeout:.0f} s; killing it")
            child.signal_group(signal.SIGKILL)
        for pid in leftovers:  # a process that left the group, such as an RQ work horse
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5  # SIGKILL cannot be refused; this is only the kernel
    while any(child.alive() for child in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    for child in started:
        if child.pump is not None:
            child.pump.join(timeout=2)


def _children(cfg: Config, port: int, env: dict[str, str]) -> list[Child]:
    web_env = dict(env)
    web_env["PROMETHEUS_MULTIPROC_DIR"] = str(_fresh_folder(Path(cfg.instance_path) / "prometheus"))
    web = [
        sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
        "-b", f"127.0.0.1:{port}", "app:create_app()",
    ]  # fmt: skip
    return [
        Child("web", web, web_env),
        Child("worker", _flask("worker"), dict(env)),
        Child("scheduler", _flask("scheduler"), dict(env)),
    ]


def _banner(port: int, cfg: Config) -> None:
    local = f"http://localhost:{port}"
    say("")
    say("Paylink is running.")
    say(f"  App:      {local}/")
    say(f"  Console:  {local}/console/login   (the demo email and password are above)")
    say(f"  Outbox:   {local}/dev/outbox   (what the SMS and email outboxes sent)")
    say(f"  Ready:    {local}/readyz")
    for line in _demo_urls:
        name, _, url = line.partition(": ")  # "demo link" or "demo offer"
        label = name.split()[-1].title() + ":"
        say(f"  {label:<10}{url}   (a demo to try)")
    if cfg.base_url.rstrip("/") != local:
        say(f"  Links in messages point at {cfg.base_url}")
    say("Press Ctrl-C to stop.")
    say("")


def run() -> int:
    """Bring Paylink up, wait for a signal or a dead child, bring it all down."""
    try:
        cfg = load_config()
        port = _port()
    except ConfigError as exc:
        print("Paylink cannot start: the configuration has problems:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2

    children: list[Child] = []
    started_redis = False
    status = 0
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_stop)
    try:
        _check_port_free(port)
        say(f"Migrating the database at {cfg.database_url}")
        migrate.upgrade(cfg.database_url)
        redis_url, started_redis = _start_redis(cfg)
        env = dict(os.environ)
        env.update(
            PAYLINK_REDIS_URL=redis_url,
            PAYLINK_INSTANCE_PATH=cfg.instance_path,
            PORT=str(port),
            PYTHONUNBUFFERED="1",
        )
        _seed_demo(env)
        children = _children(cfg, port, env)
        for child in children:
            child.start()
            say(f"Started {child.name} (pid {child.pid})")
        _wait_until_ready(port, children)
        _banner(port, cfg)
        while (dead := _first_exited(children)) is None:
            time.sleep(POLL)
        say(f"{dead.name} exited with code {dead.exited()}; stopping Paylink")
        status = 1
    except StopRequested as exc:
        say(f"\nGot {exc}; stopping Paylink")
    except StartupFailed as exc:
        say(f"Paylink could not start: {exc}")
        status = 1
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave processes behind.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        stop_children(children)
        if started_redis:
            stop_owned()
            say("Stopped the embedded Redis")
    say("Paylink stopped.")
    return status


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.exit(run())


if __name__ == "__main__":
    main()
