"""What every customer page with a secret in its URL sends, and the pages a process keeps
rendered for the busiest of them."""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from flask import Response, current_app, render_template, request, session

from app.sessions import csrf_token

# Stands in for the CSRF token in a kept page; made of characters HTML escaping leaves as
# they are, and random, so no page text can contain it.
CSRF_SLOT = f"csrf-slot-{secrets.token_hex(16)}"


def private_page(response: Response) -> Response:
    """``after_request`` for pages reached by a token in the URL, or showing what a customer
    typed about themselves: nothing may be cached, nor leak the URL in a Referer. (Frame
    denial and the Content-Security-Policy are set for every page by the app.)"""
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def fill_csrf(html: str, token: str) -> str:
    """A kept page with its CSRF token in place."""
    return html.replace(CSRF_SLOT, token)


class RenderedPages:
    """Pages rendered once for their inputs and kept in this process (the least recently
    shown go first), with only the session's CSRF token filled in per request."""

    def __init__(self, size: int = 1024):
        self.size = size
        self._pages: OrderedDict[Hashable, str] = OrderedDict()
        self._lock = threading.Lock()

    def render(self, key: Hashable, template: str, context: Callable[[], dict[str, Any]]) -> str:
        """``render_template(template, **context())``, kept under ``key``, which must stand
        for everything the page shows: the rows and the flow state the context is made
        from (``context`` is called only when the page is not kept yet). The page may
        take the session's CSRF token from ``csrf_token()``, and nothing else from the
        request or the session. A page with flashed messages to show, and any page of an
        app in debug mode (its templates reload), is rendered afresh."""
        if current_app.debug or "_flashes" in session:
            return render_template(template, **context())
        html = self.kept(template, request.script_root, key)
        if html is None:
            html = render_template(template, **context(), csrf_token=lambda: CSRF_SLOT)
            with self._lock:
                self._pages[(template, request.script_root, key)] = html
                while len(self._pages) > self.size:
                    self._pages.popitem(last=False)
        return fill_csrf(html, csrf_token())

    def kept(self, template: str, script_root: str, key: Hashable) -> str | None:
        """The page of ``template`` kept for ``key`` (see ``render``) under the app's
        ``script_root``, with its CSRF token still to fill in (``fill_csrf``); None when
        none is kept."""
        full_key = (template, script_root, key)
        with self._lock:
            html = self._pages.get(full_key)
            if html is not None:
                self._pages.move_to_end(full_key)
        return html

    def clear(self) -> None:
        """Forget every kept page."""
        with self._lock:
            self._pages.clear()

    def __len__(self) -> int:
        return len(self._pages)
