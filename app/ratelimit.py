"""Rate limits, counted in Redis so every web process shares them.

The limiter object holds no connection until the app is initialised; limits are read from
the app's config when a request is checked.
"""

from __future__ import annotations

from flask import Flask, current_app, request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from app.security import hash_api_key

limiter = Limiter(get_remote_address, key_prefix="paylink", strategy="moving-window")


def storage_uri(redis_url: str) -> str:
    """The limits library spells a unix socket ``redis+unix://``."""
    if redis_url.startswith("unix://"):
        path, _, query = redis_url[len("unix://") :].partition("?")
        return f"redis+unix://{path}" + (f"?{query}" if query else "")
    return redis_url


def init_app(app: Flask, redis_url: str, enabled: bool) -> None:
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
