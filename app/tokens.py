"""Signed tokens, one service per purpose (the salt), with key rotation.

A token carries only an opaque identifier; the database decides status and expiry.
Every key in PAYLINK_SECRET_KEYS verifies, the newest signs.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from itsdangerous import (
    BadSignature,
    SignatureExpired,
    Signer,
    TimestampSigner,
    URLSafeTimedSerializer,
)
from itsdangerous.encoding import want_bytes
from itsdangerous.signer import HMACAlgorithm

from app.security import signing_keys_oldest_first

# --- itsdangerous, with the per-token work done once -------------------------------------
#
# itsdangerous makes a Signer for each token a serializer signs or reads, derives the key
# from the secret and the salt (an HMAC) each time, and computes HMACs with the hmac
# module's Python object. The same keys and signatures come out of these, for less: a
# signer kept per salt, each key derived once, each HMAC one OpenSSL call. Every signed
# thing a page makes or reads goes through them (the session cookie, CSRF tokens, link
# tokens), so they are on the path of every customer page.


class OneShotHmac(HMACAlgorithm):
    """itsdangerous' HMAC, computed by ``hmac.digest``."""

    def __init__(self, digest_method: Any = None):
        super().__init__(digest_method)
        self.digest_name = self.digest_method().name

    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return hmac.digest(key, value, self.digest_name)


class KeptKeySigner(Signer):
    """A Signer that derives each secret key once, and HMACs with ``OneShotHmac``."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if type(self.algorithm) is HMACAlgorithm:
            self.algorithm = OneShotHmac(self.digest_method)
        self._derived: dict[bytes, bytes] = {}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        secret = self.secret_keys[-1] if secret_key is None else want_bytes(secret_key)
        key = self._derived.get(secret)
        if key is None:
            key = self._derived[secret] = super().derive_key(secret)
        return key


class KeptKeyTimestampSigner(KeptKeySigner, TimestampSigner):
    """``TimestampSigner`` (what timed serializers sign with), deriving keys once."""


class KeptSignerSerializer(URLSafeTimedSerializer):
    """itsdangerous' URL-safe timed serializer with one ``KeptKeyTimestampSigner`` per salt,
    made on first use and shared (a signer holds no per-token state)."""

    default_signer = KeptKeyTimestampSigner

    def make_signer(self, salt: str | bytes | None = None) -> Signer:
        signers: dict[Any, Signer] = self.__dict__.setdefault("_signers", {})
        signer = signers.get(salt)
        if signer is None:
            signer = signers[salt] = super().make_signer(salt)
        return signer


class TokenInvalid(Exception):
    """Forged, tampered, truncated, or signed for another purpose."""


class TokenExpired(Exception):
    """Genuine but older than the service allows; ``payload`` says what it was for."""

    def __init__(self, payload: Any):
        super().__init__("token expired")
        self.payload = payload


@dataclass
class TokenService:
    secret_keys: tuple[str, ...]  # newest first, as configured
    purpose: str
    max_age: int | None = None  # seconds; None: the signature never expires

    def __post_init__(self) -> None:
        self._serializer = KeptSignerSerializer(
            signing_keys_oldest_first(self.secret_keys), salt=self.purpose
        )

    def dumps(self, payload: Any) -> str:
        return self._serializer.dumps(payload)

    def loads(self, token: str) -> Any:
        if not isinstance(token, str) or len(token) > 512:
            raise TokenInvalid("not a token")
        try:
            return self._serializer.loads(token, max_age=self.max_age)
        except SignatureExpired as exc:
            try:
                payload = self._serializer.load_payload(exc.payload) if exc.payload else None
            except BadSignature:
                payload = None
            raise TokenExpired(payload) from None
        except (BadSignature, ValueError, UnicodeError) as exc:
            raise TokenInvalid(str(exc)) from None
