"""Rate limits, counted in Redis so every web process shares them.

The limiter object holds no connection until the app is initialised; limits are read from
the app's config when a request is checked.

``counted_behind`` limits a hot page (opening a payment link) with no Redis round trip
on the request at all: Flask-Limiter takes two (the hit, then the window's state for the
``X-RateLimit-*`` headers), and a round trip costs a link open a third of its time. The
hits are counted by a thread of each process, in batches, with Flask-Limiter's moving
window and Redis key, so both count the same entries.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from flask import Flask, Response, after_this_request, current_app, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits import RateLimitItem, parse
from redis.commands.core import Script
from werkzeug.exceptions import TooManyRequests

from app.security import hash_secret

log = logging.getLogger(__name__)
KEY_PREFIX = "paylink"


class PaylinkLimiter(Limiter):
    """Flask-Limiter, stepping aside before ``counted_behind`` views: they count their own
    hits, and its check of a request (which finds no limit for them) costs a link open
    more than its count does."""

    def _check_request_limit(
        self, callable_name: str | None = None, in_middleware: bool = True
    ) -> None:
        if in_middleware and _counted_behind():
            return
        super()._check_request_limit(callable_name, in_middleware)


limiter = PaylinkLimiter(get_remote_address, key_prefix=KEY_PREFIX, strategy="moving-window")
# limits' RedisStorage prefix: the keys are Flask-Limiter's own.
STORAGE_PREFIX = "LIMITS"


def storage_uri(redis_url: str) -> str:
    """The limits library spells a unix socket ``redis+unix://``."""
    if redis_url.startswith("unix://"):
        path, _, query = redis_url[len("unix://") :].partition("?")
        return f"redis+unix://{path}" + (f"?{query}" if query else "")
    return redis_url


def _counted_behind() -> bool:
    """Whether this request's view is a ``counted_behind`` one."""
    view = current_app.view_functions.get(request.endpoint or "")
    return getattr(view, "paylink_counted_behind", None) is not None


def init_app(app: Flask, redis_url: str, enabled: bool) -> None:
    # Connects on first use; redis-py opens new sockets in a forked worker.
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    app.extensions["paylink.hit_counter"] = HitCounter(client.register_script(_HIT_SCRIPT))
    app.config.update(
        RATELIMIT_STORAGE_URI=storage_uri(redis_url),
        RATELIMIT_ENABLED=enabled,
        # With Redis down, requests go through rather than fail; /readyz reports the outage.
        RATELIMIT_SWALLOW_ERRORS=True,
        RATELIMIT_HEADERS_ENABLED=True,
    )
    limiter.init_app(app)


def login_limit() -> str:
    return current_app.extensions["paylink.config"].login_rate_limit


def api_limit() -> str:
    return current_app.extensions["paylink.config"].api_rate_limit


def api_caller_key() -> str:
    """Count API calls per key (by its hash: no key is written to Redis), else per address."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key.strip():
        return "api-key:" + hash_secret(key.strip())
    return "api-ip:" + get_remote_address()


def login_email_key() -> str:
    return "login:" + request.form.get("email", "").strip().lower()[:254]


# --- counted behind the request ------------------------------------------------------------

# Flask-Limiter's moving window (limits' acquire_moving_window.lua: a list of hit times,
# newest first, at most ``limit`` long), for a batch of hits in one call: KEYS[i] is hit
# at ARGV[3i-2] (epoch seconds) against a limit of ARGV[3i-1] per ARGV[3i] seconds. For
# each it answers, in order, whether the hit was let in, and, when the window is now full,
# the time of its oldest hit (else 0): the next hit is refused until that one leaves.
_HIT_SCRIPT = """
local answers = {}
for i, key in ipairs(KEYS) do
    local stamp = ARGV[3 * i - 2]
    local limit = tonumber(ARGV[3 * i - 1])
    local expiry = tonumber(ARGV[3 * i])
    local floor = tonumber(stamp) - expiry
    local allowed = 0
    local last = redis.call('lindex', key, limit - 1)
    if not (last and tonumber(last) >= floor) then
        allowed = 1
        redis.call('lpush', key, stamp)
        redis.call('ltrim', key, 0, limit - 1)
        redis.call('expire', key, expiry)
        last = redis.call('lindex', key, limit - 1)
    end
    table.insert(answers, allowed)
    if last and tonumber(last) >= floor then
        table.insert(answers, last)
    else
        table.insert(answers, 0)
    end
end
return answers
"""


@dataclass(frozen=True)
class FullWindow:
    """A moving window with no room left: the figures of Flask-Limiter's headers on the
    429 it answers."""

    limit: int
    reset_at: int  # epoch seconds: when the oldest hit in the window leaves it

    def headers(self, now: float) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(self.reset_at),
            "Retry-After": str(max(1, int(self.reset_at - now))),
        }


class RateLimited(TooManyRequests):
    """Over a ``counted_behind`` limit (a 429, handled like Flask-Limiter's own)."""

    description = "Too many requests"


def storage_key(item: RateLimitItem, *identifiers: str) -> str:
    """Flask-Limiter's own Redis key for ``item`` and ``identifiers``."""
    return f"{STORAGE_PREFIX}:{item.key_for(KEY_PREFIX, *identifiers)}"


# Forks so far in this process's line, and the lock that starts counter threads: a forked
# child inherits no thread (so each counter starts its own again, seeing a new number) and
# must not inherit the lock held by a thread of its parent. Comparing a number costs a
# request less than asking for the process id.
_forks = 0
_start_lock = threading.Lock()


def _forked() -> None:
    global _forks, _start_lock
    _forks += 1
    _start_lock = threading.Lock()


os.register_at_fork(after_in_child=_forked)


Hit = tuple[str, RateLimitItem, float]  # a key, its limit, when it was hit


class HitCounter:
    """Counts one process's hits of ``counted_behind`` limits in Redis, off the request path.

    A request looks its key up among the keys this process has seen refused (a dict read)
    and leaves its hit on a queue. A thread of the process sends whatever hits are queued
    in one EVALSHA (one round trip however many requests came meanwhile) of the
    moving-window script, and notes which keys are now refused and until when. Redis holds
    the counts, so every process shares them; a process hears of a refusal from its own
    next hit, so past the limit each process lets through at most the requests that
    arrive while one batch is on its way. With Redis away, hits are dropped (logged once a
    minute) and requests go through, as Flask-Limiter's do.
    """

    BATCH = 500  # hits in one call at most
    GATHER = 0.01  # seconds a batch waits for more hits after its first
    MAX_QUEUED = 20_000  # a flood beyond this, while Redis is slow or away, is not counted
    # A hit older than this (Redis was slow or away) is not counted: pushed late, it would
    # stand before newer ones in the window's newest-first list.
    STALE_AFTER = 5.0
    MAX_REFUSED = 10_000  # refused keys kept before the expired ones are swept out
    LOG_EVERY = 60.0  # seconds between two "Redis unreachable" log lines

    def __init__(self, script: Script):
        self.script = script
        self._generation = -1  # the process generation (``_forks``) its thread runs in

    def refused(self, key: str, now: float) -> FullWindow | None:
        """The full window that refuses ``key`` now, if this process knows of one."""
        self._running()
        full = self._refused.get(key)
        if full is not None and full.reset_at <= now:
            self._refused.pop(key, None)
            return None
        return full

    def count(self, key: str, item: RateLimitItem, now: float) -> None:
        """Queue one hit of ``key``, made at ``now``, against ``item``."""
        self._running()
        if self._queue.qsize() >= self.MAX_QUEUED:
            return
        self._queue.put((key, item, now))

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every hit queued so far is counted (or dropped); False on timeout.
        A marker queued behind them is set once the batch it came in is done."""
        self._running()
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def _running(self) -> None:
        """Start this process's thread: on first use, and again in a forked child (a
        gunicorn worker), which inherits no thread."""
        if self._generation == _forks:
            return
        with _start_lock:
            if self._generation == _forks:
                return
            self._queue: queue.SimpleQueue[Hit | threading.Event] = queue.SimpleQueue()
            self._refused: dict[str, FullWindow] = {}
            self._logged_at = -self.LOG_EVERY
            threading.Thread(target=self._work, name="paylink-hits", daemon=True).start()
            self._generation = _forks

    def _work(self) -> None:
        while True:
            batch = [self._queue.get()]
            time.sleep(self.GATHER)  # let the hits of concurrent requests join this one
            while len(batch) < self.BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            fresh_from = time.time() - self.STALE_AFTER
            hits = [h for h in batch if not isinstance(h, threading.Event) and h[2] >= fresh_from]
            try:
                self._count(hits)
            except Exception:  # the thread must outlive any one batch
                now = time.monotonic()
                if now - self._logged_at >= self.LOG_EVERY:
                    self._logged_at = now
                    log.exception("rate limit storage unreachable; hits not counted")
            for marker in batch:
                if isinstance(marker, threading.Event):
                    marker.set()

    def _count(self, batch: list[Hit]) -> None:
        if not batch:
            return
        keys = [key for key, _item, _now in batch]
        args = [v for _key, item, now in batch for v in (now, item.amount, item.get_expiry())]
        answers = self.script(keys, args)  # one EVALSHA (loaded again if Redis forgot it)
        refused = self._refused
        for (key, item, _now), oldest in zip(batch, answers[1::2], strict=True):
            if float(oldest):  # full: refused until its oldest hit leaves the window
                reset_at = int(float(oldest) + item.get_expiry() + 1)  # as Flask-Limiter
                refused[key] = FullWindow(item.amount, reset_at)
            else:
                refused.pop(key, None)
        if len(refused) > self.MAX_REFUSED:
            now = time.time()
            for key in [k for k, full in list(refused.items()) if full.reset_at <= now]:
                refused.pop(key, None)


F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CountedLimit:
    """The limit of a ``counted_behind`` view (kept on it as ``paylink_counted_behind``)."""

    item: RateLimitItem
    key_func: Callable[[], str]

    def key(self, identifier: str, endpoint: str) -> str:
        """The Redis key of ``identifier``'s hits of ``endpoint``."""
        return storage_key(self.item, identifier, endpoint)


def counted_behind(
    limit: str, key_func: Callable[[], str] = get_remote_address
) -> Callable[[F], F]:
    """Limit a hot view like ``@limiter.limit(limit)`` (per address by default, the same
    moving window and Redis key), with no Redis round trip on the request: see
    ``HitCounter``. Answers 429 (``RateLimited``, with Flask-Limiter's headers) once the
    window is full."""
    counted = CountedLimit(parse(limit), key_func)

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def limited(*args: Any, **kwargs: Any) -> Any:
            if current_app.config.get("RATELIMIT_ENABLED", True):
                counter: HitCounter = current_app.extensions["paylink.hit_counter"]
                key = counted.key(key_func(), request.endpoint or "")
                now = time.time()
                full = counter.refused(key, now)
                if full is not None:
                    _refuse(full)
                counter.count(key, counted.item, now)
            return view(*args, **kwargs)

        limited.paylink_counted_behind = counted  # type: ignore[attr-defined]
        # Flask-Limiter leaves it alone: the counter counts it.
        return limiter.exempt(limited)  # type: ignore[return-value]

    return decorate


def _refuse(full: FullWindow) -> None:
    @after_this_request
    def _headers(response: Response) -> Response:
        response.headers.update(full.headers(time.time()))
        return response

    raise RateLimited()
