"""The session cookie, CSRF tokens and signed tokens made with kept serializers and signers
(app/sessions.py, app/tokens.py) are the ones Flask, Flask-WTF and itsdangerous make and
read: each side reads what the other writes, across a key rotation too."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from flask import Flask, g, session
from flask.sessions import SecureCookieSessionInterface
from flask_wtf.csrf import generate_csrf, validate_csrf
from itsdangerous import BadSignature, Signer, URLSafeTimedSerializer
from wtforms import ValidationError

from app import create_app
from app.sessions import DEFLATE_FROM, CompactSerializer, KeptSessionInterface, csrf_token
from app.tokens import KeptKeySigner, KeptSignerSerializer, TokenService
from links.tokens import PAYMENT_LINK, UrlTokens

NEW_KEY = "sessions-new-key-0123456789abcdef0123"
OLD_KEY = "sessions-old-key-0123456789abcdef0123"


def flask_app(secret: str, fallbacks: list[str], interface: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY=secret, SECRET_KEY_FALLBACKS=fallbacks)
    app.session_interface = interface
    return app


def cookie_of(app: Flask, data: dict[str, Any]) -> str:
    with app.test_request_context():
        response = app.response_class()
        session.update(data)
        app.session_interface.save_session(app, session, response)
        (header,) = response.headers.getlist("Set-Cookie")
    return header.split(";", 1)[0].split("=", 1)[1]


def read_cookie(app: Flask, cookie: str) -> dict[str, Any]:
    name = app.config["SESSION_COOKIE_NAME"]
    with app.test_request_context(headers={"Cookie": f"{name}={cookie}"}) as ctx:
        return dict(app.session_interface.open_session(app, ctx.request) or {})


SMALL = {"csrf_token": "a" * 40}
LARGE = {"pay": {f"token-{n}": {"step": "amount", "amount_cents": 15_000} for n in range(8)}}


@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["small", "large"])
def test_flask_reads_our_cookie_and_we_read_flasks(data):
    ours = flask_app(NEW_KEY, [], KeptSessionInterface())
    flasks = flask_app(NEW_KEY, [], SecureCookieSessionInterface())
    assert read_cookie(flasks, cookie_of(ours, data)) == data
    assert read_cookie(ours, cookie_of(flasks, data)) == data


def test_only_a_long_payload_is_deflated():
    ours = flask_app(NEW_KEY, [], KeptSessionInterface())
    small, large = cookie_of(ours, SMALL), cookie_of(ours, LARGE)
    assert not small.startswith(".")
    assert large.startswith(".")  # deflated, as itsdangerous marks it
    assert len(large) < len(str(LARGE))
    assert len(str(LARGE)) > DEFLATE_FROM > len(str(SMALL))


def test_a_cookie_signed_with_the_previous_key_still_reads_after_a_rotation():
    before = flask_app(OLD_KEY, [], KeptSessionInterface())
    cookie = cookie_of(before, SMALL)
    interface = KeptSessionInterface()
    after = flask_app(NEW_KEY, [OLD_KEY], interface)
    assert read_cookie(after, cookie) == SMALL
    retired = flask_app(NEW_KEY, [], interface)  # the old key retired
    assert read_cookie(retired, cookie) == {}
    # Flask's own interface, after the same rotation, reads it too, and ours reads Flask's.
    assert (
        read_cookie(flask_app(NEW_KEY, [OLD_KEY], SecureCookieSessionInterface()), cookie) == SMALL
    )
    stock_before = cookie_of(flask_app(OLD_KEY, [], SecureCookieSessionInterface()), SMALL)
    assert read_cookie(flask_app(NEW_KEY, [OLD_KEY], KeptSessionInterface()), stock_before) == SMALL


def test_a_serializer_is_made_once_per_app_and_keys():
    app = flask_app(NEW_KEY, [], KeptSessionInterface())
    first = app.session_interface.get_signing_serializer(app)
    assert app.session_interface.get_signing_serializer(app) is first
    app.config["SECRET_KEY_FALLBACKS"] = [OLD_KEY]
    rotated = app.session_interface.get_signing_serializer(app)
    assert rotated is not first
    assert [bytes(k) for k in rotated.secret_keys] == [OLD_KEY.encode(), NEW_KEY.encode()]


def test_a_tampered_cookie_opens_an_empty_session():
    app = flask_app(NEW_KEY, [], KeptSessionInterface())
    cookie = cookie_of(app, SMALL)
    tampered = cookie[:-2] + ("A" if cookie[-2] != "A" else "B") + cookie[-1]
    assert read_cookie(app, tampered) == {}


# --- CSRF ---------------------------------------------------------------------------------


@pytest.fixture
def paylink(app_config) -> Flask:
    return create_app(app_config)


def test_our_csrf_token_is_flask_wtfs(paylink):
    with paylink.test_request_context():
        token = csrf_token()
        assert csrf_token() == token  # one a request
        assert generate_csrf() == token  # Flask-WTF hands out the same one
        validate_csrf(token)  # and accepts it
        raw = session["csrf_token"]
    with paylink.test_request_context():
        session["csrf_token"] = raw  # the same browser, a later request
        validate_csrf(token)
        # Flask-WTF's own token for that session, read by the same check.
        stock = URLSafeTimedSerializer(paylink.secret_key, salt="wtf-csrf-token").dumps(raw)
        validate_csrf(stock)


def test_a_csrf_token_of_another_session_is_refused(paylink):
    with paylink.test_request_context():
        token = csrf_token()
    with paylink.test_request_context():
        session["csrf_token"] = "b" * 40  # another browser
        with pytest.raises(ValidationError):
            validate_csrf(token)


def test_a_new_session_gets_a_fresh_random_csrf_value(paylink):
    values = set()
    for _ in range(3):
        with paylink.test_request_context():
            csrf_token()
            values.add(session["csrf_token"])
            assert "csrf_token" in g
    assert len(values) == 3
    assert all(len(v) == 40 and int(v, 16) >= 0 for v in values)


# --- signers --------------------------------------------------------------------------------


@pytest.mark.parametrize("digest", [None, hashlib.sha1, hashlib.sha256])
def test_a_kept_key_signer_signs_as_itsdangerous_does(digest):
    kwargs = {"salt": "purpose", "key_derivation": "hmac", "digest_method": digest}
    stock = Signer([OLD_KEY, NEW_KEY], **kwargs)
    kept = KeptKeySigner([OLD_KEY, NEW_KEY], **kwargs)
    for value in (b"abc", b"", "token-id-\u00e9".encode()):
        assert kept.sign(value) == kept.sign(value) == stock.sign(value)
        assert kept.unsign(stock.sign(value)) == value
    old_only = Signer([OLD_KEY], **kwargs).sign(b"abc")
    assert kept.unsign(old_only) == b"abc"  # every key verifies
    with pytest.raises(BadSignature):
        KeptKeySigner([NEW_KEY], **kwargs).unsign(old_only)


def test_a_kept_signer_serializer_reads_and_writes_stock_tokens():
    stock = URLSafeTimedSerializer([OLD_KEY, NEW_KEY], salt="unsubscribe")
    kept = KeptSignerSerializer([OLD_KEY, NEW_KEY], salt="unsubscribe")
    assert stock.loads(kept.dumps({"id": 7})) == {"id": 7}
    assert kept.loads(stock.dumps({"id": 7})) == {"id": 7}
    assert kept.make_signer() is kept.make_signer()  # kept per salt
    assert kept.make_signer("other") is not kept.make_signer()
    with pytest.raises(BadSignature):
        KeptSignerSerializer([NEW_KEY], salt="offer").loads(kept.dumps({"id": 7}))


def test_compact_serializer_tokens_read_with_a_stock_serializer():
    compact = CompactSerializer(NEW_KEY, salt="s")
    for payload in ("x" * 40, "y" * (DEFLATE_FROM * 2)):
        assert URLSafeTimedSerializer(NEW_KEY, salt="s").loads(compact.dumps(payload)) == payload


def test_token_service_and_url_tokens_survive_a_rotation():
    before = TokenService((OLD_KEY,), "unsubscribe")
    after = TokenService((NEW_KEY, OLD_KEY), "unsubscribe")
    assert after.loads(before.dumps({"account": 3})) == {"account": 3}
    link_before = UrlTokens((OLD_KEY,), PAYMENT_LINK)
    link_after = UrlTokens((NEW_KEY, OLD_KEY), PAYMENT_LINK)
    token, token_id = link_before.mint()
    assert link_after.verify(token) == token_id
    assert link_after.token_for(token_id) != token  # the newest key signs
