"""What links' views and jobs need from the app: its token service, gateway, message env."""

from __future__ import annotations

from flask import Flask, current_app

from app.messaging.outbox import MessageEnv
from app.payments import build_gateway
from app.payments.gateway import Gateway
from links.tokens import PAYMENT_LINK, UrlTokens


def _app() -> Flask:
    return current_app._get_current_object()  # type: ignore[attr-defined]


def link_tokens(app: Flask | None = None) -> UrlTokens:
    """The payment links' token service of ``app`` (the current app by default)."""
    app = app or _app()
    if "paylink.link_tokens" not in app.extensions:
        app.extensions["paylink.link_tokens"] = UrlTokens(
            app.extensions["paylink.config"].secret_keys, PAYMENT_LINK
        )
    return app.extensions["paylink.link_tokens"]


def gateway() -> Gateway:
    app = _app()
    if "paylink.gateway" not in app.extensions:
        app.extensions["paylink.gateway"] = build_gateway(app.extensions["paylink.config"])
    return app.extensions["paylink.gateway"]


def message_env() -> MessageEnv:
    return MessageEnv.from_config(_app().extensions["paylink.config"])
