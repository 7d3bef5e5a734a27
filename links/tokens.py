"""Tokens in customer URLs: ``<id>.<mac>``, signed with itsdangerous.

The payload is only a random 128-bit identifier (never personal data); the database row
that holds it decides status and expiry. One salt per purpose, so a payment-link token is
worthless as an offer token. Every key in PAYLINK_SECRET_KEYS verifies; the newest signs.

Size matters: the link goes in an SMS that must fit one segment. The id is 22 base64url
characters; the MAC is HMAC-SHA256 cut to 96 bits (16 characters), ample against online
guessing that the rate limits slow down. A token is 39 characters.
"""

from __future__ import annotations

import hmac
import re
import secrets

from itsdangerous import BadSignature
from itsdangerous.signer import SigningAlgorithm

from app.security import signing_keys_oldest_first
from app.tokens import KeptKeySigner, TokenInvalid

PAYMENT_LINK = "payment-link"
OFFER = "offer"
# A plan's page for a new payment method after a declined installment (its offer's id).
PLAN_METHOD = "plan-method"
ID_BYTES = 16
MAC_BYTES = 12
_TOKEN = re.compile(r"[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{16}")


class TruncatedHmacSha256(SigningAlgorithm):
    def get_signature(self, key: bytes, value: bytes) -> bytes:
        return hmac.digest(key, value, "sha256")[:MAC_BYTES]


def new_token_id() -> str:
    """128 random bits, base64url without padding: 22 characters."""
    return secrets.token_urlsafe(ID_BYTES)


class UrlTokens:
    """Mint and verify the tokens of one purpose."""

    def __init__(self, secret_keys: tuple[str, ...], purpose: str):
        self.purpose = purpose
        self._signer = KeptKeySigner(
            signing_keys_oldest_first(secret_keys),
            salt=f"paylink.{purpose}",
            key_derivation="hmac",
            algorithm=TruncatedHmacSha256(),
        )

    def token_for(self, token_id: str) -> str:
        return self._signer.sign(token_id).decode()

    def mint(self) -> tuple[str, str]:
        """A new (token, token id); store the id, send the token."""
        token_id = new_token_id()
        return self.token_for(token_id), token_id

    def verify(self, token: str) -> str:
        """The token id, or TokenInvalid for anything forged, tampered or truncated."""
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise TokenInvalid("malformed token")
        try:
            return self._signer.unsign(token).decode()
        except BadSignature:
            raise TokenInvalid("bad signature") from None
