"""The open lane: the commonest ``GET /p/<token>`` answered without Flask's request cycle.

Opening a payment link is Paylink's busiest request, and most of what it cost was Flask's
own work around the view: a request context with its URL matching, a dozen before- and
after-request hooks, the session opened and saved, the response put together. The lane
is a WSGI middleware in front of the app that answers one case itself: a browser with no
Paylink session cookie (a customer tapping the link in a message) opening an active,
already opened link whose start page this process keeps rendered (``views.START_PAGES``).
It runs the view's own steps (``views.read_showable``, the flow, ``views.start_key``) and
builds its answer with the app's own parts: its response class, the private-page and
security headers, the metrics and request id of ``app.ops``, the CSRF token of
``app.sessions``, and the session interface's ``save_session`` for the cookie. So the
answer is the one the view gives, and ``tests/links/test_open_lane.py`` checks that
header by header.

Every other request goes on to Flask: another path or method, a session cookie (the flow
state in it must be read), debug mode, an app that checks the Host, a token that does
not verify, a link that is not active, has expired or was never opened (the first open
is written), nothing due, a page not kept yet, an address over the open limit (the view
answers 429), or any error (the view answers it as usual). What the lane read, or the
database's failure to, it leaves in the environ for the view (``views.LANE_READ``), so a
link is read once either way; the request id and start time it made are the app's too
(``ops.begin``). It counts the open against the limit last, once it answers, so no
request is counted twice.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Response
from flask_limiter.util import get_remote_address
from sqlalchemy.exc import SQLAlchemyError

from app import ops, security, sessions
from app.clock import utcnow
from app.logs import request_id_var
from app.pages import fill_csrf, private_page
from app.ratelimit import CountedLimit, HitCounter
from links import checkout, views

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# The start page's path: the view's rule, ``/p/<token>``, with a token's characters.
START_PATH = re.compile(r"/p/([A-Za-z0-9_.-]+)")
ENDPOINT = f"{views.bp.name}.{views.start.__name__}"


class OpenLane:
    """WSGI middleware answering the commonest link opens itself (see the module)."""

    def __init__(self, app: Flask, wsgi_app: WSGIApp):
        self.app = app
        self.wsgi_app = wsgi_app
        limit: CountedLimit = views.start.paylink_counted_behind  # type: ignore[attr-defined]
        if limit.key_func is not get_remote_address:
            raise TypeError("the open lane counts opens per address, as the view must")
        self.limit = limit
        # Answers the lane gave (for the tests; a thread may miss another's count).
        self.served = 0

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("REQUEST_METHOD") == "GET" and not self._steps_aside(environ):
            match = START_PATH.fullmatch(environ.get("PATH_INFO", ""))
            if match is not None:
                response = self._answer(match[1], environ)
                if response is not None:
                    self.served += 1
                    # What ``response(environ, start_response)`` sends for a GET's 200 with
                    # its length set, without copying the headers to look them over.
                    start_response(response.status, response.headers.to_wsgi_list())
                    return [response.get_data()]
        return self.wsgi_app(environ, start_response)

    def _steps_aside(self, environ: dict[str, Any]) -> bool:
        """Whether Flask must see this request whatever it asks for: in debug mode (pages
        are rendered afresh), when the app checks the Host (which only Flask does), and
        when the request may carry a session (any cookie header naming it: the flow state
        in it must be read)."""
        config = self.app.config
        return (
            self.app.debug
            or bool(config.get("SERVER_NAME") or config.get("TRUSTED_HOSTS"))
            or config["SESSION_COOKIE_NAME"] in environ.get("HTTP_COOKIE", "")
        )

    def _answer(self, token: str, environ: dict[str, Any]) -> Response | None:
        request_id, started = ops.begin(environ)  # the app's, should the view answer
        reset = request_id_var.set(request_id)
        try:
            return self._start_page(token, environ, request_id, started)
        except Exception as exc:
            dbapi = self.app.extensions["paylink.db"].engine.dialect.loaded_dbapi
            if isinstance(exc, (dbapi.Error, SQLAlchemyError)):
                # The database failed the read: the view answers (and logs) that failure as
                # its own rather than wait on the database a second time.
                environ[views.LANE_READ] = (token, None, exc)
            else:  # the view meets it again, or not, and answers as usual
                log.warning("the open lane failed; the view answers instead", exc_info=True)
            return None
        finally:
            request_id_var.reset(reset)

    def _start_page(
        self, token: str, environ: dict[str, Any], request_id: str, started: float
    ) -> Response | None:
        app = self.app
        counter: HitCounter | None = None
        if app.config.get("RATELIMIT_ENABLED", True):
            counter = app.extensions["paylink.hit_counter"]
            key = self.limit.key(environ.get("REMOTE_ADDR") or "127.0.0.1", ENDPOINT)
            if counter.refused(key, time.time()) is not None:
                return None  # the view answers 429
        now = utcnow()
        read = views.read_showable(token, now, app)
        environ[views.LANE_READ] = (token, now, read)  # should the view answer, it needs no other
        if read is None:
            return None
        link, account, settings, values = read
        if link.opened_at is None:
            return None
        flow = checkout.build_flow(link, account, settings)  # type: ignore[arg-type]
        if flow.due_cents <= 0:
            return None
        state = checkout.FlowState.load(None, link.id)
        script_root = environ.get("SCRIPT_NAME", "").rstrip("/")
        html = views.START_PAGES.kept(
            views.START_TEMPLATE, script_root, views.start_key(token, values, state)
        )
        if html is None:
            return None
        # What the view's answer gets on its way out. The open is counted last, once
        # nothing can fail any more: a request the view answers is counted by the view.
        session = app.session_interface.session_class()  # type: ignore[attr-defined]
        response = private_page(  # the blueprint's after_request
            app.response_class(fill_csrf(html, sessions.sign_csrf(app, session)))
        )
        security.add_missing(response.headers, app.extensions["paylink.security_headers"])
        app.session_interface.save_session(app, session, response)
        ops.finish(response, environ, "GET", ENDPOINT, request_id, started)
        if counter is not None:
            counter.count(key, self.limit.item, time.time())
        return response


def install(app: Flask) -> None:
    """Put the lane in front of ``app``'s WSGI callable."""
    app.wsgi_app = OpenLane(app, app.wsgi_app)  # type: ignore[method-assign]
