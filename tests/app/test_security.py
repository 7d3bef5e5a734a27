"""Secrets handling: password hashes, API keys, the SSN keyed hash, response headers."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from flask.sessions import SecureCookieSessionInterface

from app import create_app, security
from app.clock import utcnow
from app.models import Agent, ConsoleSession
from app.ratelimit import storage_uri
from app.security import (
    generate_api_key,
    hash_password,
    hash_secret,
    hash_ssn,
    signing_keys_oldest_first,
    ssn_digits,
    verify_password,
)

# --- passwords ----------------------------------------------------------------------------


def test_password_hash_verifies_the_right_password_only():
    stored = hash_password("correct horse battery")

    assert verify_password(stored, "correct horse battery")
    assert not verify_password(stored, "correct horse batterY")
    assert not verify_password(stored, "")
    assert "correct horse battery" not in stored
    assert stored.startswith("scrypt:")


def test_the_same_password_hashes_differently_each_time():
    assert hash_password("correct horse battery") != hash_password("correct horse battery")


def test_no_stored_hash_never_verifies():
    assert not verify_password(None, "paylink-not-a-password")
    assert not verify_password("", "paylink-not-a-password")


def test_generated_passwords_are_long_and_different():
    passwords = {security.generate_password() for _ in range(20)}

    assert len(passwords) == 20
    assert all(len(p) >= 16 for p in passwords)


# --- API keys ------------------------------------------------------------------------------


def test_api_key_has_a_prefix_and_is_stored_as_its_sha256():
    new = generate_api_key()

    assert new.key.startswith("pl_")
    assert len(new.key) >= 40
    assert new.prefix == new.key[:10]
    assert new.key_hash == hashlib.sha256(new.key.encode()).hexdigest()
    assert new.key_hash == hash_secret(new.key)
    assert new.key not in new.key_hash


def test_api_keys_are_unique():
    keys = [generate_api_key() for _ in range(50)]

    assert len({k.key for k in keys}) == 50
    assert len({k.key_hash for k in keys}) == 50
    assert all(re.fullmatch(r"pl_[A-Za-z0-9_-]{43}", k.key) for k in keys)


# --- SSNs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["123-45-6789", "123456789", "123 45 6789", " 123-45-6789 "])
def test_ssn_digits_accepts_the_usual_spellings(value):
    assert ssn_digits(value) == "123456789"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "12345678",  # eight digits
        "1234567890",  # ten
        "123-45-678a",
        "123.45.6789",
        "000-12-3456",  # area 000
        "666-12-3456",  # area 666
        "900-12-3456",  # area 9xx
        "123-00-4567",  # group 00
        "123-45-0000",  # serial 0000
        "".join(chr(0xFF10 + int(d)) for d in "123456789"),  # fullwidth digits
        "".join(chr(0x0660 + int(d)) for d in "123456789"),  # Arabic-Indic digits
    ],
)
def test_ssn_digits_refuses_what_is_not_an_ssn(value):
    assert ssn_digits(value) is None


def test_ssn_hash_is_keyed_and_does_not_reveal_the_digits():
    one = hash_ssn("key-one-0123456789abcdef0123456789", "123456789")

    assert one == hash_ssn("key-one-0123456789abcdef0123456789", "123456789")
    assert one != hash_ssn("key-two-0123456789abcdef0123456789", "123456789")
    assert one != hash_ssn("key-one-0123456789abcdef0123456789", "123456780")
    # Not a plain hash that anyone could compute from the nine digits.
    assert one != hashlib.sha256(b"123456789").hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", one)
    assert "123456789" not in one


def test_signing_keys_come_oldest_first_for_itsdangerous():
    assert signing_keys_oldest_first(("newest", "middle", "oldest")) == [
        "oldest",
        "middle",
        "newest",
    ]


# --- sessions and responses ----------------------------------------------------------------


def sign_session(app, secret: str, data: dict) -> str:
    """A session cookie value as Flask would sign it with ``secret``."""
    original = app.secret_key
    app.secret_key = secret
    try:
        return SecureCookieSessionInterface().get_signing_serializer(app).dumps(data)
    finally:
        app.secret_key = original


def session_stamp(app, agent_id: int) -> str:
    with app.extensions["paylink.db"].Session() as s:
        return s.get(Agent, agent_id).password_hash[-16:]


def signed_in(app, agent_id: int) -> dict:
    """What a sign-in puts in the cookie, with its console session row in the database."""
    secret = secrets.token_urlsafe(32)
    now = utcnow()
    with app.extensions["paylink.db"].transaction() as s:
        s.add(
            ConsoleSession(
                agent_id=agent_id, secret_hash=hashlib.sha256(secret.encode()).hexdigest(),
                created_at=now, expires_at=now + timedelta(hours=8),
            )
        )  # fmt: skip
    return {
        "agent_id": agent_id,
        "agent_stamp": session_stamp(app, agent_id),
        "console_session": secret,
    }


def test_a_signed_session_lets_the_agent_in(app, client, agent):
    cookie = sign_session(app, app.secret_key, signed_in(app, agent.id))
    client.set_cookie("paylink_session", cookie)

    assert client.get("/console/").status_code == 200


def test_a_signed_cookie_without_a_console_session_is_refused(app, client, agent):
    """Even with the app's key, a cookie naming no live console session lets no one in."""
    data = signed_in(app, agent.id)
    for forged in (
        {"agent_id": agent.id, "agent_stamp": data["agent_stamp"]},
        {**data, "console_session": secrets.token_urlsafe(32)},
    ):
        client.set_cookie("paylink_session", sign_session(app, app.secret_key, forged))
        assert client.get("/console/").status_code == 302


def test_a_session_cookie_signed_with_another_key_is_ignored(app, client, agent):
    cookie = sign_session(app, "not-the-paylink-secret-0123456789abcdef", signed_in(app, agent.id))
    client.set_cookie("paylink_session", cookie)

    assert client.get("/console/").status_code == 302


def test_a_session_signed_with_an_older_secret_key_still_works(app, client, agent):
    older = app.config["SECRET_KEY_FALLBACKS"][0]
    cookie = sign_session(app, older, signed_in(app, agent.id))
    client.set_cookie("paylink_session", cookie)

    assert client.get("/console/").status_code == 200


def test_changing_the_password_ends_console_sessions(app, client, agent):
    cookie = sign_session(app, app.secret_key, signed_in(app, agent.id))
    client.set_cookie("paylink_session", cookie)
    assert client.get("/console/").status_code == 200

    with app.extensions["paylink.db"].transaction() as s:
        s.get(Agent, agent.id).password_hash = hash_password("a brand new password")

    resp = client.get("/console/")
    assert resp.status_code == 302
    assert "/console/login" in resp.headers["Location"]


@pytest.mark.parametrize("path", ["/console/login", "/api/v1/accounts", "/no/such/page"])
def test_responses_carry_the_security_headers(client, path):
    resp = client.get(path)

    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]


# --- the API rate limit --------------------------------------------------------------------


@pytest.fixture
def limited_app(app_config, app):
    """The app with an API limit of 3 calls a minute (the same database and Redis)."""
    limited = create_app({**app_config, "api_rate_limit": "3 per minute"})
    yield limited
    limited.extensions["paylink.queue"].close()
    limited.extensions["paylink.db"].dispose()


def test_api_calls_are_limited_per_key(limited_app, agent, supervisor, time_machine):
    start = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    time_machine.move_to(start, tick=False)
    one, two = agent, supervisor
    client = limited_app.test_client()

    assert [client.get("/api/v1/accounts", headers=one.headers).status_code for _ in range(3)] == [
        200,
        200,
        200,
    ]
    blocked = client.get("/api/v1/accounts", headers=one.headers)

    assert blocked.status_code == 429
    assert blocked.mimetype == "application/problem+json"
    assert blocked.json["status"] == 429
    assert "Retry-After" in blocked.headers
    # Another key from the same address has its own count.
    assert client.get("/api/v1/accounts", headers=two.headers).status_code == 200
    # The window moves with the clock.
    time_machine.move_to(start + timedelta(seconds=61), tick=False)
    assert client.get("/api/v1/accounts", headers=one.headers).status_code == 200


def test_calls_without_a_key_are_limited_per_address(limited_app):
    client = limited_app.test_client()

    statuses = [client.get("/api/v1/accounts").status_code for _ in range(4)]

    assert statuses == [401, 401, 401, 429]
    other = client.get("/api/v1/accounts", environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert other.status_code == 401


def test_the_limiter_writes_no_api_key_to_redis(limited_app, agent, redis_client):
    limited_app.test_client().get("/api/v1/accounts", headers=agent.headers)

    keys = [k.decode() for k in redis_client.keys("*")]
    assert any(hash_secret(agent.key) in k for k in keys)
    assert not any(agent.key in k for k in keys)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("unix:///srv/paylink/redis.sock?db=0", "redis+unix:///srv/paylink/redis.sock?db=0"),
        ("unix:///srv/paylink/redis.sock", "redis+unix:///srv/paylink/redis.sock"),
    ],
)
def test_limiter_storage_uri(url, expected):
    assert storage_uri(url) == expected
