"""What offers' views and jobs need from the app."""

from __future__ import annotations

from flask import current_app

from links.tokens import OFFER, UrlTokens


def offer_tokens() -> UrlTokens:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if "paylink.offer_tokens" not in app.extensions:
        app.extensions["paylink.offer_tokens"] = UrlTokens(
            app.extensions["paylink.config"].secret_keys, OFFER
        )
    return app.extensions["paylink.offer_tokens"]
