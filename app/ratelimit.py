"""Rate limits, counted in Redis so every web process shares them.

The limiter object holds no connection until the app is initialised; limits are read from
the app's config when a request is checked.

``one_trip`` limits a hot page (opening a payment link) with a single Redis round trip:
Flask-Limiter takes two (the hit, then the window's state for the ``X-RateLimit-*``
headers). It keeps Flask-Limiter's moving window, its Redis key and its headers, so both
count the same entries.
"""

from __future__ import annotations

import functools
import logging
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

from app.security import hash_api_key

log = logging.getLogger(__name__)
KEY_PREFIX = "paylink"
limiter = Limiter(get_remote_address, key_prefix=KEY_PREFIX, strategy="moving-window")
# limits' RedisStorage prefix: the keys are Flask-Limiter's own.
STORAGE_PREFIX = "LIMITS"


def storage_uri(redis_url: str) -> str:
    """The limits library spells a unix socket ``redis+unix://``."""
    if redis_url.startswith("unix://"):
        path, _, query = redis_url[len("unix://") :].partition("?")
        return f"redis+unix://{path}" + (f"?{query}" if query else "")
    return redis_url


@limiter.request_filter
def _counted_in_one_trip() -> bool:
    """Flask-Limiter skips its work (before and after the view) for ``one_trip`` views."""
    view = current_app.view_functions.get(request.endpoint or "")
    return getattr(view, "paylink_one_trip", False)


def init_app(app: Flask, redis_url: str, enabled: bool) -> None:
    # Connects on first use; redis-py opens new sockets in a forked worker.
    client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
    app.extensions["paylink.ratelimit_hit"] = client.register_script(_HIT_SCRIPT)
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
        return "api-key:" + hash_api_key(key.strip())
    return "api-ip:" + get_remote_address()


def login_email_key() -> str:
    return "login:" + request.form.get("email", "").strip().lower()[:254]


# --- one round trip a check -----------------------------------------------------------------

# Flask-Limiter's moving window (limits' acquire_moving_window.lua: a list of hit times,
# newest first, at most ``limit`` long), with the window's state in the same call: how
# many hits it holds and when its oldest one was made.
_HIT_SCRIPT = """
local key = KEYS[1]
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local expiry = tonumber(ARGV[3])
local floor = now - expiry
local allowed = 1
local last = redis.call('lindex', key, limit - 1)
if last and tonumber(last) >= floor then
    allowed = 0
else
    redis.call('lpush', key, ARGV[1])
    redis.call('ltrim', key, 0, limit - 1)
    redis.call('expire', key, expiry)
end
-- The entries are newest first: find the oldest one still in the window.
local low, high, found = 0, tonumber(redis.call('llen', key)) - 1, -1
while low <= high do
    local mid = math.floor((low + high) / 2)
    local value = tonumber(redis.call('lindex', key, mid))
    if value and value >= floor then
        found = mid
        low = mid + 1
    else
        high = mid - 1
    end
end
if found < 0 then
    return {allowed, 0, ARGV[1]}
end
return {allowed, found + 1, redis.call('lindex', key, found)}
"""


@dataclass(frozen=True)
class WindowState:
    """One check of a moving-window limit: whether it let the request through, and the
    figures of Flask-Limiter's headers."""

    allowed: bool
    limit: int
    remaining: int
    reset_at: int  # epoch seconds: when the oldest hit in the window leaves it

    def headers(self, now: float) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
            "Retry-After": str(int(self.reset_at - now)),
        }


class RateLimited(TooManyRequests):
    """Over a ``one_trip`` limit (a 429, handled like Flask-Limiter's own)."""

    description = "Too many requests"


def hit(script: Script, item: RateLimitItem, *identifiers: str) -> WindowState:
    """Count one request against ``item`` for ``identifiers``, in one round trip (EVALSHA
    of the script registered by ``init_app``)."""
    key = f"{STORAGE_PREFIX}:{item.key_for(KEY_PREFIX, *identifiers)}"
    expiry = item.get_expiry()
    allowed, count, oldest = script([key], [time.time(), item.amount, expiry])
    return WindowState(
        allowed=bool(allowed),
        limit=item.amount,
        remaining=max(0, item.amount - int(count)),
        reset_at=int(float(oldest) + expiry + 1),  # as Flask-Limiter rounds it
    )


F = TypeVar("F", bound=Callable[..., Any])


def one_trip(limit: str, key_func: Callable[[], str] = get_remote_address) -> Callable[[F], F]:
    """Limit a view like ``@limiter.limit(limit)`` (per address by default), in one Redis
    round trip. Answers 429 (``RateLimited``) past the limit; with Redis down the request
    goes through, as Flask-Limiter's are set to."""
    item = parse(limit)

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def limited(*args: Any, **kwargs: Any) -> Any:
            if current_app.config.get("RATELIMIT_ENABLED", True):
                _check(item, key_func(), request.endpoint or "")
            return view(*args, **kwargs)

        limited.paylink_one_trip = True  # type: ignore[attr-defined]
        # Flask-Limiter leaves it alone: this one counts it.
        return limiter.exempt(limited)  # type: ignore[return-value]

    return decorate


def _check(item: RateLimitItem, key: str, scope: str) -> None:
    script = current_app.extensions["paylink.ratelimit_hit"]
    try:
        state = hit(script, item, key, scope)
    except (redis.RedisError, OSError):
        log.exception("rate limit storage unreachable; letting the request through")
        return

    @after_this_request
    def _headers(response: Response) -> Response:
        response.headers.update(state.headers(time.time()))
        return response

    if not state.allowed:
        raise RateLimited()
