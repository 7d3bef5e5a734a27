"""Secrets handling: password hashes, API keys, the SSN keyed hash, signing keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from werkzeug.datastructures import Headers
from werkzeug.security import check_password_hash, generate_password_hash

API_KEY_PREFIX = "pl_"
# A constant hash to compare against when the email is unknown, so login takes as long
# whether or not the agent exists.
_DUMMY_HASH = generate_password_hash("paylink-not-a-password", method="scrypt")


def hash_password(password: str) -> str:
    return generate_password_hash(password, method="scrypt")


def verify_password(password_hash: str | None, password: str) -> bool:
    return check_password_hash(password_hash or _DUMMY_HASH, password) and bool(password_hash)


def generate_password() -> str:
    return secrets.token_urlsafe(12)


@dataclass(frozen=True)
class NewApiKey:
    key: str  # shown once, never stored
    prefix: str
    key_hash: str


def hash_secret(secret: str) -> str:
    """What is stored for a random secret we hand out (an API key, a console session's
    secret): at 256 random bits a fast hash is safe, and lookups stay one indexed read."""
    return hashlib.sha256(secret.encode()).hexdigest()


def generate_api_key() -> NewApiKey:
    key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return NewApiKey(key=key, prefix=key[:10], key_hash=hash_secret(key))


def ssn_digits(value: str) -> str | None:
    """The nine digits of a US SSN, or None when it is not one."""
    digits = "".join(ch for ch in value if ch.isdigit())
    if len(digits) != 9 or any(ch not in "0123456789- " for ch in value.strip()):
        return None
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area.startswith("9") or group == "00" or serial == "0000":
        return None
    return digits


def hash_ssn(key: str, digits: str) -> str:
    """HMAC-SHA256 of the SSN digits: equal SSNs match, the SSN cannot be read back."""
    return hmac.new(key.encode(), digits.encode(), hashlib.sha256).hexdigest()


def signing_keys_oldest_first(secret_keys: tuple[str, ...]) -> list[str]:
    """PAYLINK_SECRET_KEYS is newest first; itsdangerous wants oldest first."""
    return list(reversed(secret_keys))


# Every page's: no sniffing, no framing, no Referer, and a Content-Security-Policy.
_PAGE_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
)


def page_headers(*, production: bool) -> tuple[tuple[str, str], ...]:
    """The security headers every answer gets (HSTS only in production, behind TLS)."""
    if production:
        return (*_PAGE_HEADERS, ("Strict-Transport-Security", "max-age=31536000"))
    return _PAGE_HEADERS


def add_missing(headers: Headers, wanted: Sequence[tuple[str, str]]) -> None:
    """Add each of ``wanted`` that ``headers`` lacks: a page may set its own."""
    present = {name.lower() for name in headers.keys()}  # noqa: SIM118 - Headers
    for name, value in wanted:
        if name.lower() not in present:
            headers.add(name, value)
