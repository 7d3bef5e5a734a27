"""The signed session cookie and the CSRF token of a page, made with serializers kept per app.

Flask builds the session's ``URLSafeTimedSerializer`` twice a request (to read the cookie,
then to write it) and Flask-WTF builds one more for the CSRF token; each build tests its
JSON serializer with a dump. Both also deflate every payload, even the 60 bytes of a new
session. Here the serializers are made once per app and its keys (with the kept signers
of ``app.tokens``), and only payloads long enough to gain from it are deflated. The
cookie and the token are the ones Flask and Flask-WTF make and read (tests check both
read ours): a compressed payload starts with ".", a plain one does not, and itsdangerous
reads either.
"""

from __future__ import annotations

import secrets
import zlib
from collections.abc import Callable, MutableMapping
from typing import Any

from flask import Flask, current_app, g, session
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode
from itsdangerous.url_safe import URLSafeSerializerMixin

from app.tokens import KeptSignerSerializer

# Payloads shorter than this go as they are: deflating them saves nothing.
DEFLATE_FROM = 200
# Flask-WTF's names: the raw token's session key and ``g`` attribute, and its salt.
CSRF_FIELD = "csrf_token"
CSRF_SALT = "wtf-csrf-token"


class CompactSerializer(KeptSignerSerializer):
    """A kept-signer serializer (``app.tokens``) that deflates only longer payloads."""

    def dump_payload(self, obj: Any) -> bytes:
        json = super(URLSafeSerializerMixin, self).dump_payload(obj)
        if len(json) >= DEFLATE_FROM:
            compressed = zlib.compress(json)
            if len(compressed) < len(json) - 1:
                return b"." + base64_encode(compressed)
        return base64_encode(json)


def _kept(
    app: Flask, name: str, keys: Any, make: Callable[[], URLSafeTimedSerializer]
) -> URLSafeTimedSerializer:
    """The serializer kept in ``app`` under ``name`` for these ``keys``, made anew (by
    ``make``) only when the keys change."""
    kept = app.extensions.get(name)
    if kept is None or kept[0] != keys:
        kept = app.extensions[name] = (keys, make())
    return kept[1]


class KeptSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie session, with its serializer made once per app and keys."""

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        if not app.secret_key:
            return None
        keys = (*(app.config.get("SECRET_KEY_FALLBACKS") or ()), app.secret_key)  # newest last
        return _kept(
            app,
            "paylink.session_serializer",
            keys,
            lambda: CompactSerializer(
                list(keys),  # type: ignore[arg-type]
                salt=self.salt,
                serializer=self.serializer,
                signer_kwargs={
                    "key_derivation": self.key_derivation,
                    "digest_method": self.digest_method,
                },
            ),
        )


def csrf_token() -> str:
    """This request's CSRF token: Flask-WTF's ``generate_csrf``, with a kept serializer.

    Flask-WTF keeps a random value in the session and signs it, with a timestamp, for the
    form; ``validate_csrf`` checks a posted token against the session's value. The token
    is stored on ``g`` where ``generate_csrf`` looks first, so both give the same token."""
    token = g.get(CSRF_FIELD)
    if token is None:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        token = sign_csrf(app, session)
        setattr(g, CSRF_FIELD, token)
    return token


def sign_csrf(app: Flask, session: MutableMapping[str, Any]) -> str:
    """A new CSRF token for ``session``, whose random value it keeps (made and stored in
    it when it has none yet)."""
    raw = session.get(CSRF_FIELD)
    if not isinstance(raw, str):
        raw = session[CSRF_FIELD] = secrets.token_hex(20)  # as long as Flask-WTF's
    key = app.config.get("WTF_CSRF_SECRET_KEY") or app.secret_key
    serializer = _kept(
        app, "paylink.csrf_serializer", key, lambda: CompactSerializer(key, CSRF_SALT)
    )
    return serializer.dumps(raw)
