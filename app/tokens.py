"""Signed tokens, one service per purpose (the salt), with key rotation.

A token carries only an opaque identifier; the database decides status and expiry.
Every key in PAYLINK_SECRET_KEYS verifies, the newest signs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from app.security import signing_keys_oldest_first


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
        self._serializer = URLSafeTimedSerializer(
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
