"""The open lane (links/open_lane.py) answers the commonest link opens ahead of Flask: these
tests hold its answer to the view's, header by header, check that its CSRF token and
session cookie work on the next step, and that everything else is left to the view."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event
from werkzeug.test import Client

from app import create_app
from app.logs import ENVIRON_ENDPOINT, ENVIRON_REQUEST_ID
from links.models import LinkStatus
from links.open_lane import OpenLane
from links.tokens import PAYMENT_LINK, UrlTokens
from links.views import OPEN_LIMIT, START_PAGES
from tests.links.test_flow import make_link, reload, text

CSRF_VALUE = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
# Differ between any two answers: a new session, a new request id.
OWN_VALUES = {"set-cookie", "x-request-id"}


@pytest.fixture
def lane(app) -> OpenLane:
    assert isinstance(app.wsgi_app, OpenLane)
    return app.wsgi_app


class Seen:
    """A WSGI app in front of ``wsgi_app`` that keeps each request's environ, for what the
    access log reads from it."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app
        self.environs: list[dict] = []

    def __call__(self, environ, start_response):
        self.environs.append(environ)
        return self.wsgi_app(environ, start_response)


def opened_link(app, db, account, **kwargs) -> str:
    """A link opened once (the first open is the view's: it writes), its page now kept."""
    token, _link = make_link(app, db, account, **kwargs)
    assert app.test_client().get(f"/p/{token}").status_code == 200
    return token


def csrf_value(resp) -> str:
    (value,) = CSRF_VALUE.findall(text(resp))
    return value


def cookie_attributes(resp) -> tuple[str, list[str]]:
    """The session cookie's name and its attributes (all but its value), as sent."""
    (header,) = resp.headers.getlist("Set-Cookie")
    name_value, *attributes = [part.strip() for part in header.split(";")]
    return name_value.split("=", 1)[0], attributes


def sample(status: str) -> float:
    labels = {"method": "GET", "endpoint": "pay.start", "status": status}
    return REGISTRY.get_sample_value("paylink_http_requests_total", labels) or 0.0


def test_the_lane_answers_as_the_view_does(app, db, account, settings_row, lane):
    token = opened_link(app, db, account)
    through_lane, through_view = Seen(app.wsgi_app), Seen(lane.wsgi_app)
    served, counted = lane.served, sample("200")
    by_lane = Client(through_lane).get(f"/p/{token}")
    assert lane.served == served + 1
    by_view = Client(through_view).get(f"/p/{token}")
    assert sample("200") == counted + 2  # each counted once, under the view's endpoint

    assert by_lane.status == by_view.status == "200 OK"
    assert sorted(k.lower() for k, _ in by_lane.headers) == sorted(
        k.lower() for k, _ in by_view.headers
    )
    for name, value in by_view.headers:
        if name.lower() not in OWN_VALUES:
            assert by_lane.headers.getlist(name) == [value], name
    assert cookie_attributes(by_lane) == cookie_attributes(by_view)
    assert by_lane.headers["X-Request-ID"] != by_view.headers["X-Request-ID"]
    # The same page, each with a CSRF token of its own.
    assert csrf_value(by_lane) != csrf_value(by_view)
    assert text(by_lane).replace(csrf_value(by_lane), "") == text(by_view).replace(
        csrf_value(by_view), ""
    )
    assert "Hi Maria," in text(by_lane)
    # What the access line reads.
    (lane_environ,), (view_environ,) = through_lane.environs, through_view.environs
    assert lane_environ[ENVIRON_ENDPOINT] == view_environ[ENVIRON_ENDPOINT] == "pay.start"
    assert lane_environ[ENVIRON_REQUEST_ID] == by_lane.headers["X-Request-ID"]


def test_the_lanes_cookie_and_token_take_the_customer_on(app, db, account, settings_row, lane):
    token = opened_link(app, db, account)
    customer = app.test_client()
    served = lane.served
    page = customer.get(f"/p/{token}")
    assert lane.served == served + 1
    # The session is Flask's, signed with the app's key, holding only the CSRF value.
    name, _attributes = cookie_attributes(page)
    cookie = SimpleCookie(page.headers["Set-Cookie"])[name].value
    session = app.session_interface.get_signing_serializer(app).loads(cookie)
    assert set(session) == {"csrf_token"}
    # The next open carries the cookie: the view answers it (the flow state is in it).
    assert customer.get(f"/p/{token}").status_code == 200
    assert lane.served == served + 1
    nxt = customer.post(f"/p/{token}", data={"csrf_token": csrf_value(page)})
    assert nxt.status_code == 302
    assert nxt.headers["Location"].endswith(f"/p/{token}/verify")
    # Another browser's token is no good in this one's session.
    other = app.test_client().get(f"/p/{token}")
    assert lane.served == served + 2
    crossed = customer.post(f"/p/{token}/verify", data={"csrf_token": csrf_value(other)})
    assert crossed.status_code == 400


def test_the_view_answers_everything_else(app, db, account, settings_row, lane, time_machine):
    now = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    time_machine.move_to(now, tick=False)
    token, link = make_link(app, db, account, expires_in=timedelta(hours=1))
    served = lane.served

    def get(path: str, **kwargs):
        return app.test_client().get(path, **kwargs)

    assert get(f"/p/{token}").status_code == 200  # the first open: the view writes it
    assert reload(db, link).opened_at == now
    START_PAGES.clear()  # a page this process does not keep
    assert get(f"/p/{token}").status_code == 200
    assert lane.served == served
    assert get(f"/p/{token}").status_code == 200  # kept again now
    assert lane.served == served + 1
    # A session cookie, HEAD, another path, a token that does not verify.
    cookie = {"Cookie": f"{app.config['SESSION_COOKIE_NAME']}=not-a-session"}
    assert app.test_client(use_cookies=False).get(f"/p/{token}", headers=cookie).status_code == 200
    assert app.test_client().head(f"/p/{token}").status_code == 200
    assert get(f"/p/{token}/").status_code == 404
    assert get(f"/p/{token[:-1]}{'y' if token.endswith('x') else 'x'}").status_code == 404
    assert lane.served == served + 1
    # Past its expiry; revoked.
    time_machine.move_to(now + timedelta(hours=2), tick=False)
    assert get(f"/p/{token}").status_code == 410
    time_machine.move_to(now, tick=False)
    link = db.get(type(link), link.id)
    link.status = LinkStatus.revoked
    db.commit()
    assert get(f"/p/{token}").status_code == 410
    assert lane.served == served + 1


def test_nothing_due_is_the_views(app, db, account, settings_row, lane):
    token = opened_link(app, db, account)
    account = db.get(type(account), account.id)
    account.balance_cents = 0
    db.commit()
    served = lane.served
    resp = app.test_client().get(f"/p/{token}")
    assert resp.status_code == 200
    assert "There is nothing to pay" in text(resp)
    assert lane.served == served


def test_the_lane_counts_each_open_once(app, db, account, settings_row, lane, redis_client):
    token = opened_link(app, db, account)
    env = {"REMOTE_ADDR": "203.0.113.90"}
    key = f"LIMITS:LIMITER/paylink/{env['REMOTE_ADDR']}/pay.start/120/1/minute"
    served = lane.served
    customer = app.test_client(use_cookies=False)
    assert [customer.get(f"/p/{token}", environ_base=env).status_code for _ in range(3)] == [
        200
    ] * 3
    assert lane.served == served + 3
    START_PAGES.clear()  # the lane looks, leaves it to the view: counted once
    assert customer.get(f"/p/{token}", environ_base=env).status_code == 200
    assert lane.served == served + 3
    assert app.extensions["paylink.hit_counter"].flush()
    assert redis_client.llen(key) == 4


def test_over_the_limit_the_view_answers_429(app, db, account, settings_row, lane):
    token = opened_link(app, db, account)
    env = {"REMOTE_ADDR": "203.0.113.91"}
    limit = int(OPEN_LIMIT.split()[0])
    customer = app.test_client(use_cookies=False)
    served = lane.served
    answers = [customer.get(f"/p/{token}", environ_base=env).status_code for _ in range(limit)]
    assert answers == [200] * limit
    assert lane.served == served + limit
    assert app.extensions["paylink.hit_counter"].flush()
    limited = customer.get(f"/p/{token}", environ_base=env)
    assert limited.status_code == 429
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert lane.served == served + limit


def test_the_lane_counts_nothing_with_rate_limits_off(
    app_config, db, account, settings_row, redis_client
):
    application = create_app({**app_config, "ratelimit_enabled": False})
    try:
        lane = application.wsgi_app
        token = opened_link(application, db, account)
        env = {"REMOTE_ADDR": "203.0.113.92"}
        customer = application.test_client(use_cookies=False)
        statuses = [customer.get(f"/p/{token}", environ_base=env).status_code for _ in range(3)]
        assert statuses == [200] * 3
        assert lane.served == 3
        assert application.extensions["paylink.hit_counter"].flush()
        key = f"LIMITS:LIMITER/paylink/{env['REMOTE_ADDR']}/pay.start/120/1/minute"
        assert redis_client.llen(key) == 0
    finally:
        application.extensions["paylink.queue"].close()
        application.extensions["paylink.db"].dispose()


def test_a_change_shows_on_the_next_lane_served_open(app, db, account, settings_row, lane):
    token = opened_link(app, db, account)
    customer = app.test_client(use_cookies=False)
    served = lane.served
    assert "$150.00" in text(customer.get(f"/p/{token}"))
    assert lane.served == served + 1
    account = db.get(type(account), account.id)
    account.balance_cents = 9_900
    db.commit()
    changed = customer.get(f"/p/{token}")  # a new row: the view renders and keeps it
    assert "$99.00" in text(changed)
    assert "$150.00" not in text(changed)
    assert lane.served == served + 1
    assert "$99.00" in text(customer.get(f"/p/{token}"))
    assert lane.served == served + 2


def test_a_session_cookie_however_written_goes_to_the_view(app, db, account, settings_row, lane):
    token = opened_link(app, db, account)
    customer = app.test_client()
    page = customer.get(f"/p/{token}")
    name, _attributes = cookie_attributes(page)
    value = SimpleCookie(page.headers["Set-Cookie"])[name].value
    served = lane.served
    # Spaces around "=" are read as the same cookie: the flow state in it must be kept.
    for header in (f"{name}={value}", f"{name} = {value}", f"other=1; {name}\t=\t{value}"):
        resp = app.test_client(use_cookies=False).get(f"/p/{token}", headers={"Cookie": header})
        assert resp.status_code == 200
        assert "Set-Cookie" not in resp.headers  # the view kept the session as it was
    assert lane.served == served


def test_the_lane_steps_aside_in_debug_mode(app, db, account, settings_row, lane):
    token = opened_link(app, db, account)
    served = lane.served
    app.debug = True
    try:
        assert app.test_client().get(f"/p/{token}").status_code == 200
    finally:
        app.debug = False
    assert lane.served == served
    assert app.test_client().get(f"/p/{token}").status_code == 200
    assert lane.served == served + 1


def test_the_lane_serves_an_app_mounted_under_a_prefix(app, db, account, settings_row, lane):
    token, _link = make_link(app, db, account)
    mounted = {"base_url": "http://localhost/pay"}  # SCRIPT_NAME /pay
    first = app.test_client().get(f"/p/{token}", **mounted)
    assert first.status_code == 200
    served = lane.served
    by_lane = app.test_client().get(f"/p/{token}", **mounted)
    assert lane.served == served + 1
    assert f'action="/pay/p/{token}"' in text(by_lane)
    assert text(by_lane).replace(csrf_value(by_lane), "") == text(first).replace(
        csrf_value(first), ""
    )
    # The page kept for the app at the root is another one.
    root = app.test_client().get(f"/p/{token}")
    assert lane.served == served + 1
    assert f'action="/p/{token}"' in text(root)


def test_a_database_failure_is_met_once_and_answered_by_the_view(app_config, tmp_path):
    """The lane leaves the database's failure to the view, which answers it as its own
    without waiting on the database a second time."""
    application = create_app(
        {**app_config, "database_url": f"sqlite:///{tmp_path}/no-such-folder/paylink.sqlite"}
    )
    try:
        attempts: list[object] = []
        engine = application.extensions["paylink.db"].engine
        event.listen(engine, "do_connect", lambda *args: attempts.append(args))
        token, _token_id = UrlTokens(app_config["secret_keys"], PAYMENT_LINK).mint()
        resp = application.test_client().get(f"/p/{token}")
        assert resp.status_code == 500
        assert "Something went wrong" in text(resp)
        assert len(attempts) == 1
        assert application.wsgi_app.served == 0
    finally:
        application.extensions["paylink.queue"].close()
        application.extensions["paylink.db"].dispose()
