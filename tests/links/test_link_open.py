"""Opening a payment link, the flow's busiest request, takes a short way (one query, no
Redis round trip: the per-address limit is counted behind the request); these tests hold
it to the general path's behaviour: the same page, the settings as they are now whoever
changed them and from where, the first open written once, and the per-address limit with
Flask-Limiter's window, key and headers, shared by every process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from limits import parse
from sqlalchemy import bindparam, select
from sqlalchemy import text as sql

from app import create_app, ratelimit
from app.db import READ_POOL_NAME
from app.models import AuditEvent, OrgSettings
from app.pages import RenderedPages
from app.ratelimit import counted_behind, limiter, storage_key
from links import forms
from links.models import PaymentLink
from links.views import OPEN_LIMIT
from tests.links.test_flow import configure, make_link, read, reload, text

CSRF_FIELD = re.compile(r'<input id="csrf_token" name="csrf_token" type="hidden" value="[^"]+">')
STEP = re.compile(r"Step 1 of (\d+)")


def without_csrf_value(html: str) -> str:
    return CSRF_FIELD.sub("<csrf>", html)


def header_names(resp) -> set[str]:
    return {name for name, _value in resp.headers}


def steps(html: str) -> int:
    match = STEP.search(html)
    assert match, "no step line on the page"
    return int(match.group(1))


# --- the same page ------------------------------------------------------------------------


def test_the_short_way_shows_the_general_paths_page(app, db, client, account):
    token, _link = make_link(app, db, account)
    # No settings row yet: the first open goes the general way and writes the row.
    general = client.get(f"/p/{token}")
    short = app.test_client().get(f"/p/{token}")
    assert general.status_code == short.status_code == 200
    assert without_csrf_value(text(short)) == without_csrf_value(text(general))
    assert "Hi Maria," in text(short)
    assert header_names(short) == header_names(general)
    assert short.headers["Content-Security-Policy"] == general.headers["Content-Security-Policy"]


def test_the_csrf_field_is_flask_wtfs_own(app, client, account, db, settings_row):
    token, _link = make_link(app, db, account)
    page = text(client.get(f"/p/{token}"))
    (field,) = CSRF_FIELD.findall(page)
    with app.test_request_context():
        rendered = str(forms.ButtonForm().csrf_token)
    assert CSRF_FIELD.fullmatch(rendered)
    # The token it carries is the session's: Next goes on to the next step.
    value = re.search(r'value="([^"]+)"', field).group(1)
    resp = client.post(f"/p/{token}", data={"csrf_token": value})
    assert resp.status_code == 302
    assert resp.headers["Location"].endswith(f"/p/{token}/verify")


# --- the kept start page ------------------------------------------------------------------


def csrf_value(html: str) -> str:
    (field,) = CSRF_FIELD.findall(html)
    return re.search(r'value="([^"]+)"', field).group(1)


def test_each_visitor_of_a_kept_page_gets_a_token_of_their_own(app, db, account, settings_row):
    token, _link = make_link(app, db, account)
    first, second = app.test_client(), app.test_client()
    first_page, second_page = text(first.get(f"/p/{token}")), text(second.get(f"/p/{token}"))
    assert without_csrf_value(first_page) == without_csrf_value(second_page)
    assert csrf_value(first_page) != csrf_value(second_page)
    assert "csrf-slot-" not in first_page + second_page
    # Each token is good in its own session only.
    crossed = second.post(f"/p/{token}", data={"csrf_token": csrf_value(first_page)})
    assert crossed.status_code == 400
    own = second.post(f"/p/{token}", data={"csrf_token": csrf_value(second_page)})
    assert own.status_code == 302


def test_an_account_change_shows_on_the_next_open(app, db, client, account, settings_row):
    token, _link = make_link(app, db, account)
    before = text(client.get(f"/p/{token}"))
    assert "Hi Maria," in before
    assert "$150.00" in before
    account = db.get(type(account), account.id)
    account.name, account.balance_cents, account.phone = "Rosa Diaz", 9_900, "+12025550177"
    db.commit()
    after = text(app.test_client().get(f"/p/{token}"))
    assert "Hi Rosa," in after
    assert "$99.00" in after
    assert "0177" in after
    assert "Hi Maria," not in after


def test_a_flashed_message_shows_on_a_kept_page(app, db, client, account, settings_row):
    token, _link = make_link(app, db, account)
    assert client.get(f"/p/{token}").status_code == 200  # kept
    with client.session_transaction() as session:
        session["_flashes"] = [("info", "We sent a new link to your phone.")]
    assert "We sent a new link to your phone." in text(client.get(f"/p/{token}"))
    assert "We sent a new link to your phone." not in text(client.get(f"/p/{token}"))


def test_kept_pages_are_bounded(app):
    pages = RenderedPages(size=3)
    with app.test_request_context("/"):
        shown = [
            pages.render(n, "pay/nothing_due.html", lambda: {"creditor": None}) for n in range(5)
        ]
    assert len(pages) == 3
    assert len(set(shown)) == 1


# --- the settings as they are now ---------------------------------------------------------


def test_a_settings_change_through_another_processes_api_shows_on_the_next_open(
    app, app_config, db, client, account, supervisor, settings_row
):
    token, _link = make_link(app, db, account)
    before = text(client.get(f"/p/{token}"))
    assert "Paylink Demo Creditor" in before
    # A second web process of the same deployment takes the PATCH.
    other = create_app(app_config)
    try:
        resp = other.test_client().patch(
            "/api/v1/settings",
            json={"creditor_name": "Acme Recovery", "contact_verification": False},
            headers=supervisor.headers,
        )
        assert resp.status_code == 200
    finally:
        other.extensions["paylink.queue"].close()
        other.extensions["paylink.db"].dispose()
    after = text(client.get(f"/p/{token}"))
    assert "Acme Recovery" in after
    assert "Paylink Demo Creditor" not in after
    assert steps(after) == steps(before) - 1  # no verification step any more


def test_a_settings_change_written_straight_to_the_database_shows_on_the_next_open(
    app, db, client, account, settings_row
):
    token, _link = make_link(app, db, account)
    before = text(client.get(f"/p/{token}"))
    configure(db, creditor_name="Direct Write Ltd", virtual_collection=False)
    after = text(client.get(f"/p/{token}"))
    assert "Direct Write Ltd" in after
    assert steps(after) == steps(before) - 1  # no settlement offer step any more
    configure(db, creditor_name="Back Again Inc", virtual_collection=True)
    again = text(client.get(f"/p/{token}"))
    assert "Back Again Inc" in again
    assert steps(again) == steps(before)


def test_a_change_of_a_json_setting_shows_on_the_next_open(app, db, client, account, settings_row):
    token, _link = make_link(app, db, account)
    configure(db, virtual_collection=True, settlement_percent_off=[10, 20])
    with_offers = steps(text(client.get(f"/p/{token}")))
    configure(db, settlement_percent_off=[])  # no offer left to make: no offer step
    assert steps(text(client.get(f"/p/{token}"))) == with_offers - 1
    configure(db, settlement_percent_off=[15])
    assert steps(text(client.get(f"/p/{token}"))) == with_offers


def test_a_settings_change_from_another_os_process_shows_on_the_next_open(
    app, app_config, db, client, account, settings_row
):
    token, _link = make_link(app, db, account)
    before = text(client.get(f"/p/{token}"))
    script = (
        "import sys\n"
        "from sqlalchemy import create_engine, text\n"
        "engine = create_engine(sys.argv[1])\n"
        "with engine.begin() as conn:\n"
        "    conn.execute(text(\"UPDATE org_settings SET creditor_name = 'Elsewhere LLC', "
        "creditor_phone = '+18885550199', schedule_payment = false WHERE id = 1\"))\n"
    )
    subprocess.run([sys.executable, "-c", script, app_config["database_url"]], check=True)
    after = text(client.get(f"/p/{token}"))
    assert "Elsewhere LLC" in after
    assert "(888) 555-0199" in after  # the formatted phone follows the new number
    assert "(800) 555-0100" not in after
    assert steps(after) == steps(before) - 1  # no scheduling step any more


# --- the first open -----------------------------------------------------------------------


def test_concurrent_first_opens_record_one_open(app, db, account, settings_row):
    token, link = make_link(app, db, account)
    ready = threading.Barrier(4)
    statuses: list[int] = []

    def open_it() -> None:
        customer = app.test_client()
        ready.wait()
        statuses.append(customer.get(f"/p/{token}").status_code)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 4
    assert reload(db, link).opened_at is not None
    opened = read(db, select(AuditEvent).where(AuditEvent.action == "link.opened"))
    assert [(e.object_id, e.actor_id) for e in opened] == [(str(link.id), str(account.id))]


def test_later_opens_write_nothing(app, db, client, account, settings_row, time_machine):
    first = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    time_machine.move_to(first, tick=False)
    token, link = make_link(app, db, account)
    assert client.get(f"/p/{token}").status_code == 200
    assert reload(db, link).opened_at == first
    time_machine.move_to(first + timedelta(minutes=5), tick=False)
    for _ in range(3):
        assert app.test_client().get(f"/p/{token}").status_code == 200
    assert reload(db, link).opened_at == first
    assert len(read(db, select(AuditEvent).where(AuditEvent.action == "link.opened"))) == 1


def test_a_later_open_does_not_wait_for_a_writer(app, db, client, account, settings_row):
    """The short way reads outside any transaction: on SQLite it takes no write lock, so
    a long write elsewhere (a sweep, an import) does not hold up customers."""
    token, _link = make_link(app, db, account)
    assert client.get(f"/p/{token}").status_code == 200  # the first open is written
    engine = app.extensions["paylink.db"].engine
    answers: list[int] = []
    with engine.begin() as writer:  # BEGIN IMMEDIATE on SQLite, a transaction on PostgreSQL
        writer.execute(select(AuditEvent.id).with_for_update()).all()
        opener = threading.Thread(
            target=lambda: answers.append(app.test_client().get(f"/p/{token}").status_code)
        )
        opener.start()
        opener.join(timeout=10)
        done_while_writing = not opener.is_alive()
    opener.join()
    assert done_while_writing, "the open waited for the writer"
    assert answers == [200]


def test_an_open_survives_a_dropped_database_connection(app, db, client, account, settings_row):
    """The open's read takes no pool ping on PostgreSQL: a connection the server dropped
    (a restart, a failover) is found by the read itself, which empties the pool (every
    connection in it went with the server) and runs again on a new one."""
    database = app.extensions["paylink.db"]
    if database.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no server to drop a connection")
    token, _link = make_link(app, db, account)
    assert client.get(f"/p/{token}").status_code == 200  # the read pool keeps a connection
    read_engine = database._read_engine
    held = [read_engine.raw_connection() for _ in range(3)]  # the pool now keeps three
    for conn in held:
        conn.close()
    with database.engine.connect() as admin:
        dropped = admin.execute(
            sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = :name"
            ),
            {"name": READ_POOL_NAME},
        ).all()
    assert dropped == [(True,)] * 3
    for _ in range(3):  # no open lands on another dead connection
        again = client.get(f"/p/{token}")
        assert again.status_code == 200
        assert "Hi Maria," in text(again)


def test_read_one_converts_as_sqlalchemy_does(app, db, account, settings_row):
    """read_one runs on the DBAPI connection: its row must hold what a SQLAlchemy query
    of the same statement gives (aware UTC datetimes, JSON as lists)."""
    _token, link = make_link(app, db, account)
    statement = (
        select(PaymentLink.id, PaymentLink.expires_at, OrgSettings.verification_methods)
        .join(OrgSettings, OrgSettings.id == 1)
        .where(PaymentLink.token_id == bindparam("token_id"))
    )
    database = app.extensions["paylink.db"]
    row = database.read_one(statement, {"token_id": link.token_id})
    expected = db.execute(statement, {"token_id": link.token_id}).one()
    assert tuple(row) == tuple(expected)
    assert row.expires_at.tzinfo is not None
    assert row.id == link.id
    assert isinstance(row.verification_methods, list)
    assert database.read_one(statement, {"token_id": "no-such-token"}) is None


def test_read_one_refuses_a_parameter_the_driver_cannot_take_as_it_is(app):
    statement = select(PaymentLink.id).where(PaymentLink.expires_at < bindparam("now"))
    with pytest.raises(TypeError, match="now"):
        app.extensions["paylink.db"].read_one(statement, {"now": datetime.now(UTC)})
    ids = bindparam("ids", expanding=True)
    listed = select(PaymentLink.id).where(PaymentLink.token_id.in_(ids))
    with pytest.raises(TypeError, match="ids"):  # an IN list is rendered at execution
        app.extensions["paylink.db"].read_one(listed, {"ids": ["a", "b"]})


def test_an_expired_or_revoked_link_still_answers_410(app, db, client, account, settings_row):
    token, link = make_link(app, db, account, expires_in=timedelta(seconds=-1))
    resp = client.get(f"/p/{token}")
    assert resp.status_code == 410
    assert reload(db, link).opened_at is None


# --- the per-address limit ----------------------------------------------------------------


def counted(app) -> None:
    """Wait until this process has counted every open so far in Redis."""
    assert app.extensions["paylink.hit_counter"].flush()


def opened(app, client, token: str, env: dict[str, str]) -> int:
    """Open the link and wait for the open to be counted: the status."""
    status = client.get(f"/p/{token}", environ_base=env).status_code
    counted(app)
    return status


def test_opens_do_not_wait_for_redis(app, db, client, account, redis_server, redis_client):
    token, _link = make_link(app, db, account)
    env = {"REMOTE_ADDR": "203.0.113.59"}
    assert opened(app, client, token, env) == 200  # the script is loaded
    answers: list[int] = []
    redis_server.process.send_signal(signal.SIGSTOP)  # Redis answers nothing
    try:
        opener = threading.Thread(
            target=lambda: answers.extend(
                client.get(f"/p/{token}", environ_base=env).status_code for _ in range(3)
            )
        )
        opener.start()
        # Less than the Redis client's 2 s socket timeout: an open that asked Redis would
        # still be waiting (three opens take milliseconds).
        opener.join(timeout=1.5)
        done_while_stopped = not opener.is_alive()
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    opener.join()
    assert done_while_stopped, "an open waited for Redis"
    assert answers == [200] * 3
    counted(app)
    key = f"LIMITS:LIMITER/paylink/{env['REMOTE_ADDR']}/pay.start/120/1/minute"
    assert redis_client.llen(key) == 4  # every open counted, once


def test_the_open_limit_answers_429_with_flask_limiters_headers(app, db, client, account):
    token, _link = make_link(app, db, account)
    env = {"REMOTE_ADDR": "203.0.113.60"}
    limit = int(OPEN_LIMIT.split()[0])
    answers = [client.get(f"/p/{token}", environ_base=env) for _ in range(limit)]
    assert {r.status_code for r in answers} == {200}
    assert "X-RateLimit-Limit" not in answers[0].headers  # counted after the answer
    counted(app)
    limited = client.get(f"/p/{token}", environ_base=env)
    assert limited.status_code == 429
    assert limited.headers["X-RateLimit-Limit"] == str(limit)
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    reset = int(limited.headers["X-RateLimit-Reset"])
    assert time.time() + 50 < reset <= time.time() + 62
    assert 0 < int(limited.headers["Retry-After"]) <= 61
    assert "Please wait a few minutes" in text(limited)
    # Another address is not held back.
    assert (
        client.get(f"/p/{token}", environ_base={"REMOTE_ADDR": "203.0.113.70"}).status_code == 200
    )


def test_the_open_limit_is_a_moving_window(app, db, client, account, time_machine):
    start = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
    time_machine.move_to(start, tick=False)
    token, _link = make_link(app, db, account)
    env = {"REMOTE_ADDR": "203.0.113.61"}
    limit = int(OPEN_LIMIT.split()[0])
    for n in range(limit):
        # Half now, half 30 s later: the window holds them all until the first half ages.
        if n == limit // 2:
            time_machine.move_to(start + timedelta(seconds=30), tick=False)
        assert opened(app, client, token, env) == 200
    time_machine.move_to(start + timedelta(seconds=59), tick=False)
    assert opened(app, client, token, env) == 429
    # A fixed window would start afresh at the minute; the moving one frees only the
    # first half's places once they are a minute old.
    time_machine.move_to(start + timedelta(seconds=61), tick=False)
    allowed = [opened(app, client, token, env) for _ in range(limit)]
    assert allowed == [200] * (limit // 2) + [429] * (limit - limit // 2)


def test_processes_share_the_count(app, app_config, db, client, account, redis_client):
    """Redis holds the count: a second process refuses an address the first filled up,
    once its own next open has told it so (one open past the limit at most)."""
    token, _link = make_link(app, db, account)
    env = {"REMOTE_ADDR": "203.0.113.63"}
    limit = int(OPEN_LIMIT.split()[0])
    assert [opened(app, client, token, env) for _ in range(limit)] == [200] * limit
    other = create_app(app_config)
    try:
        other_client = other.test_client()
        statuses = [opened(other, other_client, token, env) for _ in range(3)]
    finally:
        other.extensions["paylink.queue"].close()
        other.extensions["paylink.db"].dispose()
    assert statuses == [200, 429, 429]
    key = f"LIMITS:LIMITER/paylink/{env['REMOTE_ADDR']}/pay.start/{limit}/1/minute"
    assert redis_client.llen(key) == limit  # the open past the limit was not added


def test_a_forked_process_counts_with_a_thread_of_its_own(app, db, client, account, redis_client):
    """gunicorn forks its workers from a loaded app: a child inherits no thread."""
    token, _link = make_link(app, db, account)
    env = {"REMOTE_ADDR": "203.0.113.64"}
    assert opened(app, client, token, env) == 200  # the parent's thread runs
    key = f"LIMITS:LIMITER/paylink/{env['REMOTE_ADDR']}/pay.start/120/1/minute"
    pid = os.fork()
    if pid == 0:  # the child: open twice, wait for the count, report through the exit code
        try:
            ok = [opened(app, app.test_client(), token, env) for _ in range(2)] == [200, 200]
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert redis_client.llen(key) == 3


def test_a_child_forked_while_a_counter_starts_still_counts(app, db, client, account, redis_client):
    """Another thread of the parent held the lock that starts counter threads when the
    fork happened: the child gets a lock of its own instead of waiting forever."""
    token, _link = make_link(app, db, account)
    env = {"REMOTE_ADDR": "203.0.113.65"}
    key = f"LIMITS:LIMITER/paylink/{env['REMOTE_ADDR']}/pay.start/120/1/minute"
    held = threading.Event()
    release = threading.Event()

    def hold_the_start_lock() -> None:
        with ratelimit._start_lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_start_lock)
    holder.start()
    held.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # the child: its first open starts its counter thread
            signal.alarm(10)  # a child stuck on the inherited lock dies instead
            try:
                ok = opened(app, app.test_client(), token, env) == 200
            except BaseException:
                ok = False
            os._exit(0 if ok else 1)
        _pid, status = os.waitpid(pid, 0)
    finally:
        release.set()
        holder.join()
    assert os.waitstatus_to_exitcode(status) == 0
    assert redis_client.llen(key) == 1


def test_the_open_limit_is_off_when_rate_limits_are(app_config, db, account):
    application = create_app({**app_config, "ratelimit_enabled": False})
    try:
        token, _link = make_link(application, db, account)
        client = application.test_client()
        env = {"REMOTE_ADDR": "203.0.113.62"}
        answers = [client.get(f"/p/{token}", environ_base=env) for _ in range(125)]
        assert {r.status_code for r in answers} == {200}
        assert "X-RateLimit-Limit" not in answers[-1].headers
    finally:
        application.extensions["paylink.queue"].close()
        application.extensions["paylink.db"].dispose()


def test_links_open_with_redis_down(app_config, db, account):
    from app.embedded_redis import free_port

    application = create_app({**app_config, "redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    try:
        token, _link = make_link(application, db, account)
        resp = application.test_client().get(f"/p/{token}")
        assert resp.status_code == 200
        assert "Hi Maria," in text(resp)
        assert "X-RateLimit-Limit" not in resp.headers
    finally:
        application.extensions["paylink.queue"].close()
        application.extensions["paylink.db"].dispose()


def test_hits_left_over_from_a_redis_outage_are_not_counted(app, redis_client):
    """Pushed late, an old hit would stand before newer ones in the newest-first list."""
    counter = app.extensions["paylink.hit_counter"]
    item = parse(OPEN_LIMIT)
    key = storage_key(item, "198.51.100.80", "pay.start")
    counter.count(key, item, time.time() - counter.STALE_AFTER - 1)
    counter.count(key, item, time.time())
    assert counter.flush()
    assert redis_client.llen(key) == 1


def test_counted_behind_keeps_flask_limiters_key_and_list(app, redis_client):
    """Both count in the same Redis list, so code that moves a view between them (or a
    deployment running both versions) keeps one count per address."""

    @limiter.limit("2 per minute")
    def by_flask_limiter() -> str:
        return "ok"

    @counted_behind("2 per minute")
    def by_counter() -> str:
        return "ok"

    app.add_url_rule("/probe-a", "probe_a", by_flask_limiter)
    app.add_url_rule("/probe-b", "probe_b", by_counter)
    client = app.test_client()
    env = {"REMOTE_ADDR": "198.51.100.77"}
    for path in ("/probe-a", "/probe-b"):
        statuses = []
        for _ in range(3):
            statuses.append(client.get(path, environ_base=env).status_code)
            counted(app)
        assert statuses == [200, 200, 429], path
    keys = {k.decode() for k in redis_client.keys("LIMITS:*")}
    assert keys == {
        "LIMITS:LIMITER/paylink/198.51.100.77/probe_a/2/1/minute",
        "LIMITS:LIMITER/paylink/198.51.100.77/probe_b/2/1/minute",
    }
    for key in keys:
        assert redis_client.type(key) == b"list"
        assert redis_client.llen(key) == 2
