"""Find my account (/pay): the facts in, a fresh link to the contact on file out; the same
answer, status and timing whether anything matched; rate limits; CSRF."""

from __future__ import annotations

import random
import re
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from app import create_app
from app.models import Account, AuditEvent, Message
from app.security import hash_ssn
from links import lookup
from links.models import PaymentLink
from links.tokens import PAYMENT_LINK, UrlTokens
from tests.conftest import TEST_SECRET_KEYS, TEST_SSN_KEY
from tests.helpers import drain
from workers.runtime import set_job_app

# 15:00 UTC is 10:00 in New York: inside the default 08:00-21:00 sending window.
NOON_NY = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
PHONE = "+12025550143"
EMAIL = "ann.lee@example.com"
SSN = "123-45-6789"
DOB = "1980-02-29"
SLOT = int(NOON_NY.timestamp()) // 600  # the ten-minute slot of the lookup job ids


@pytest.fixture(autouse=True)
def _at_noon(time_machine):
    time_machine.move_to(NOON_NY, tick=False)


def make_account(app, **values: Any) -> int:
    now = datetime.now(UTC)
    ssn = values.pop("ssn", SSN)
    defaults: dict[str, Any] = {
        "external_id": "A-1001", "name": "Ann Lee", "phone": PHONE, "email": EMAIL,
        "timezone": "America/New_York", "balance_cents": 12_500,
        "date_of_birth": date.fromisoformat(DOB), "zip": "20001",
    }  # fmt: skip
    if ssn:
        digits = re.sub(r"\D", "", ssn)
        defaults |= {"ssn_hash": hash_ssn(TEST_SSN_KEY, digits), "ssn_last4": digits[-4:]}
    with app.extensions["paylink.db"].transaction() as session:
        account = Account(**{**defaults, **values}, created_at=now, updated_at=now)
        session.add(account)
        session.flush()
        return account.id


class Page(HTMLParser):
    """The parts of a page a browser (and a screen reader) works with."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.labels: dict[str, str] = {}  # for= -> text
        self.inputs: dict[str, dict[str, str | None]] = {}  # name -> attributes
        self.buttons: list[str] = []
        self.scripts = 0
        self.forms: list[dict[str, str | None]] = []
        self.text: list[str] = []
        self._label: tuple[str, list[str]] | None = None
        self._button: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "label":
            self._label = (a.get("for") or "", [])
        elif tag == "input":
            self.inputs[a.get("name") or ""] = a
        elif tag == "button":
            self._button = []
        elif tag == "script":
            self.scripts += 1
        elif tag == "form":
            self.forms.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "label" and self._label:
            self.labels[self._label[0]] = "".join(self._label[1]).strip()
            self._label = None
        elif tag == "button" and self._button is not None:
            self.buttons.append("".join(self._button).strip())
            self._button = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._label:
            self._label[1].append(data)
        if self._button is not None:
            self._button.append(data)

    def label_of(self, name: str) -> str:
        return self.labels[self.inputs[name]["id"] or ""]


def csrf_token(client) -> str:
    token = Page(client.get("/pay").get_data(as_text=True)).inputs["csrf_token"]["value"]
    assert token
    return token


def ask(client, ip: str = "203.0.113.7", **fields: str):
    """Submit the form from ``ip`` as a browser would, with the page's CSRF token."""
    data = {"csrf_token": csrf_token(client), **fields}
    return client.post("/pay", data=data, environ_base={"REMOTE_ADDR": ip})


def links_of(app, account_id: int) -> list[PaymentLink]:
    with app.extensions["paylink.db"].transaction() as session:
        return list(
            session.scalars(
                select(PaymentLink)
                .where(PaymentLink.account_id == account_id)
                .order_by(PaymentLink.id)
            )
        )


def all_links(app) -> list[PaymentLink]:
    with app.extensions["paylink.db"].transaction() as session:
        return list(session.scalars(select(PaymentLink)))


def lookup_jobs(app) -> list[str]:
    """Ids of the find-my-account jobs in Redis (queued, running or finished)."""
    connection = app.extensions["paylink.queue"].connection
    return sorted(
        key.decode().removeprefix("rq:job:")
        for key in connection.scan_iter("rq:job:lookup-link-*")
        if not key.decode().endswith(":results")
    )


# --- the page -----------------------------------------------------------------------------


def test_the_page_is_a_plain_labelled_form_with_a_csrf_token(client):
    resp = client.get("/pay")

    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    html = resp.get_data(as_text=True)
    page = Page(html)
    assert page.scripts == 0
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    [form] = page.forms
    assert (form["method"], form["action"]) == ("post", "/pay")
    assert page.inputs["csrf_token"]["type"] == "hidden"
    assert page.label_of("account_number") == "Account number"
    assert page.label_of("ssn") == "Social Security number"
    assert page.label_of("date_of_birth") == "Date of birth"
    assert page.label_of("zip") == "ZIP"
    # Every visible input has a label of its own.
    visible = [a for a in page.inputs.values() if a.get("type") != "hidden"]
    assert {a["id"] for a in visible} == set(page.labels)
    assert page.buttons == ["Send me a link"]
    assert page.inputs["ssn"]["autocomplete"] == "off"
    assert page.inputs["date_of_birth"]["type"] == "date"


# --- a match sends a fresh link -----------------------------------------------------------


def test_account_number_and_date_of_birth_send_a_link_to_the_contact_on_file(app, client):
    account_id = make_account(app)

    resp = ask(client, account_number="A-1001", date_of_birth=DOB)

    assert resp.status_code == 200
    assert links_of(app, account_id) == []  # sent by a job, not by the request
    drain(app)
    [link] = links_of(app, account_id)
    assert link.amount_cents == 12_500
    assert link.status == "active"
    assert link.created_by_agent_id is None
    assert link.expires_at == NOON_NY + timedelta(hours=168)
    with app.extensions["paylink.db"].transaction() as session:
        messages = session.scalars(select(Message).where(Message.account_id == account_id)).all()
        created = session.scalar(select(AuditEvent).where(AuditEvent.action == "link.created"))
        assert (created.actor_type, created.actor_id) == ("customer", str(account_id))
    assert [(m.channel, m.recipient, m.kind, m.status) for m in messages] == [
        ("sms", PHONE, "link", "delivered"),
        ("email", EMAIL, "link", "delivered"),
    ]
    token = UrlTokens(TEST_SECRET_KEYS, PAYMENT_LINK).token_for(link.token_id)
    assert all(f"https://pay.example.test/p/{token}" in m.body for m in messages)
    # The page shows neither the link nor where it went.
    html = resp.get_data(as_text=True)
    for secret in (token, link.token_id, PHONE, "0143", EMAIL, "ann.lee", "Ann"):
        assert secret not in html


def test_ssn_and_zip_send_a_link(app, client):
    account_id = make_account(app)

    assert ask(client, ssn="123 45 6789", zip="20001-1234").status_code == 200
    drain(app)

    assert len(links_of(app, account_id)) == 1


def test_a_date_of_birth_typed_as_mm_dd_yyyy_works(app, client):
    account_id = make_account(app)

    ask(client, account_number="A-1001", date_of_birth="02/29/1980")
    drain(app)

    assert len(links_of(app, account_id)) == 1


def test_the_link_goes_only_to_channels_that_may_be_used(app, client):
    account_id = make_account(app, email=None)
    opted_out = make_account(app, external_id="A-1002", ssn=None, sms_opted_out_at=NOON_NY)

    ask(client, account_number="A-1001", zip="20001")
    ask(client, account_number="A-1002", zip="20001")
    drain(app)

    with app.extensions["paylink.db"].transaction() as session:
        channels = {
            who: session.scalars(select(Message.channel).where(Message.account_id == who)).all()
            for who in (account_id, opted_out)
        }
    assert channels == {account_id: ["sms"], opted_out: ["email"]}


@pytest.mark.parametrize(
    "fields",
    [
        {"account_number": "A-1001", "date_of_birth": "1980-03-01"},  # wrong date of birth
        {"account_number": "A-1001", "zip": "20002"},  # wrong ZIP
        {"account_number": "A-9999", "date_of_birth": DOB},  # no such account
        {"account_number": "a-1001", "date_of_birth": DOB},  # account numbers are exact
        {"ssn": "123-45-6780", "date_of_birth": DOB},  # nobody's SSN
        {"ssn": SSN, "zip": "99999"},
        # Every fact entered must match, not just one of them.
        {"account_number": "A-1001", "date_of_birth": DOB, "zip": "20002"},
        {"account_number": "A-1001", "ssn": "123-45-6780", "date_of_birth": DOB},
    ],
)
def test_facts_that_do_not_match_send_nothing_and_answer_the_same(app, client, fields):
    make_account(app)
    reference = make_account(app, external_id="B-2", ssn=None)  # a match to compare with
    matched = ask(client, "198.51.100.1", account_number="B-2", date_of_birth=DOB)

    unmatched = ask(client, **fields)

    assert unmatched.status_code == matched.status_code == 200
    assert unmatched.get_data() == matched.get_data()
    assert unmatched.mimetype == matched.mimetype
    # The only job that can make a link is the reference account's.
    assert lookup_jobs(app) == sorted(
        [f"lookup-link-{reference}-{SLOT}", f"lookup-link-none-{SLOT}"]
    )


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ({"balance_cents": 0}, "nothing to pay"),
        ({"hold": "dispute"}, "on hold"),
        ({"phone": None, "email_opted_out_at": NOON_NY}, "no usable channel"),
    ],
)
def test_an_account_that_cannot_get_a_link_gets_none(app, client, values, why):
    make_account(app, **values)

    resp = ask(client, account_number="A-1001", date_of_birth=DOB)

    assert resp.status_code == 200, why
    assert lookup_jobs(app) == [f"lookup-link-none-{SLOT}"], why


def test_an_ssn_shared_by_two_accounts_needs_a_fact_that_tells_them_apart(app, client):
    home = make_account(app)
    make_account(app, external_id="A-1002", zip="30301")

    ask(client, ssn=SSN, date_of_birth=DOB)  # both accounts match: send nothing
    drain(app)
    assert all_links(app) == []

    ask(client, ssn=SSN, zip="20001")  # only one
    drain(app)
    assert [link.account_id for link in all_links(app)] == [home]


# --- the same answer, the same work -------------------------------------------------------


def test_both_answers_enqueue_one_job_and_only_the_match_names_the_account(app, client):
    account_id = make_account(app)

    ask(client, account_number="A-1001", date_of_birth=DOB)
    ask(client, "198.51.100.2", account_number="A-9999", date_of_birth=DOB)

    assert lookup_jobs(app) == sorted(
        [f"lookup-link-{account_id}-{SLOT}", f"lookup-link-none-{SLOT}"]
    )
    drain(app)
    assert len(all_links(app)) == 1


def test_match_account_does_the_same_lookup_and_ssn_hash_whatever_was_entered(app, monkeypatch):
    make_account(app)
    hashed: list[str] = []
    real_hash = lookup.hash_ssn
    monkeypatch.setattr(lookup, "hash_ssn", lambda key, d: hashed.append(d) or real_hash(key, d))
    statements: list[str] = []
    engine = app.extensions["paylink.db"].engine
    from sqlalchemy import event

    def count(_conn, _cursor, statement, *_args) -> None:
        if "FROM account" in statement:
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        for facts in (
            lookup.LookupFacts("A-1001", None, date.fromisoformat(DOB), None),
            lookup.LookupFacts("A-9999", None, None, "20001"),
            lookup.LookupFacts(None, "123456789", None, "20001"),
            lookup.LookupFacts(None, "123456780", None, "20001"),
        ):
            statements.clear()
            with app.extensions["paylink.db"].transaction() as session:
                lookup.match_account(session, facts, ssn_key=TEST_SSN_KEY)
            assert len(statements) == 1, facts
            assert "account.external_id =" in statements[0]
            assert "account.ssn_hash =" in statements[0]
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(hashed) == 4


@pytest.fixture
def unlimited_app(app_config: dict[str, Any], app: Flask) -> Iterator[Flask]:
    """The app without rate limits (the same database and Redis), to time many requests."""
    application = create_app({**app_config, "ratelimit_enabled": False})
    set_job_app(application)
    yield application
    set_job_app(app)
    application.extensions["paylink.queue"].close()
    application.extensions["paylink.db"].dispose()


ROUNDS = 60


def test_a_match_and_a_miss_take_the_same_time(unlimited_app, capsys):
    app = unlimited_app
    make_account(app)
    for n in range(50):  # a table of some size, so lookups do real index work
        make_account(app, external_id=f"F-{n}", ssn=f"321-54-{1000 + n}")
    client = app.test_client()
    token = csrf_token(client)
    match = {"account_number": "A-1001", "date_of_birth": DOB, "ssn": SSN}
    miss = {"account_number": "A-9999", "date_of_birth": DOB, "ssn": "123-45-6780"}

    def timed(fields: dict[str, str]) -> float:
        started = time.perf_counter()
        resp = client.post("/pay", data={"csrf_token": token, **fields})
        elapsed = time.perf_counter() - started
        assert resp.status_code == 200
        return elapsed

    for fields in (match, miss) * 3:  # warm up: templates, statement cache, job ids
        timed(fields)
    times: dict[str, list[float]] = {"match": [], "miss": []}
    order = random.Random(7)
    for _ in range(ROUNDS):
        # One of each per round, in a random order: drift in the machine's load, or a
        # rhythm in it, falls on both alike.
        pair = [("match", match), ("miss", miss)]
        order.shuffle(pair)
        for name, fields in pair:
            times[name].append(timed(fields))

    medians = {k: statistics.median(v) for k, v in times.items()}
    with capsys.disabled():
        print(
            f"\nfind-my-account medians over {ROUNDS} requests each: "
            f"match {medians['match'] * 1000:.2f} ms, miss {medians['miss'] * 1000:.2f} ms, "
            f"difference {abs(medians['match'] - medians['miss']) * 1000:.3f} ms"
        )
    # Generous, for a busy shared machine: the same work either way differs by well under a
    # millisecond, while making the link and its messages in the request would add several
    # times a whole request's time.
    assert abs(medians["match"] - medians["miss"]) <= 0.5 * min(medians.values()) + 0.001
    drain(app)
    assert len(all_links(app)) == 1  # every ask for the account, one link


# --- one link per account per ten minutes -------------------------------------------------


def test_asking_again_within_ten_minutes_sends_no_second_link(app, client, time_machine):
    account_id = make_account(app)
    first = NOON_NY + timedelta(minutes=7)  # late in a ten-minute slot
    time_machine.move_to(first, tick=False)

    ask(client, "198.51.100.1", account_number="A-1001", date_of_birth=DOB)
    ask(client, "198.51.100.2", account_number="A-1001", date_of_birth=DOB)
    drain(app)
    assert len(links_of(app, account_id)) == 1

    # The next ten-minute slot has begun, but the last link is under ten minutes old.
    time_machine.move_to(NOON_NY + timedelta(minutes=10, seconds=1), tick=False)
    ask(client, "198.51.100.3", account_number="A-1001", date_of_birth=DOB)
    drain(app)
    assert len(links_of(app, account_id)) == 1

    # That ask used up its slot too; the next slot sends again.
    time_machine.move_to(first + timedelta(minutes=10, seconds=1), tick=False)
    ask(client, "198.51.100.5", account_number="A-1001", date_of_birth=DOB)
    drain(app)
    assert len(links_of(app, account_id)) == 1
    time_machine.move_to(NOON_NY + timedelta(minutes=20, seconds=1), tick=False)
    ask(client, "198.51.100.4", account_number="A-1001", date_of_birth=DOB)
    drain(app)
    assert len(links_of(app, account_id)) == 2


def test_the_send_job_run_twice_sends_one_link(app):
    from workers.links import send_lookup_link

    account_id = make_account(app)

    outcomes = [send_lookup_link(account_id), send_lookup_link(account_id), send_lookup_link(None)]

    assert [o["outcome"] for o in outcomes] == ["sent", "sent_recently", "no_account"]
    assert len(links_of(app, account_id)) == 1


def test_an_agent_link_does_not_count_against_the_customer(app, client, agent):
    account_id = make_account(app)
    created = client.post("/api/v1/links", json={"account_id": account_id}, headers=agent.headers)
    assert created.status_code == 201

    ask(client, account_number="A-1001", date_of_birth=DOB)
    drain(app)

    assert len(links_of(app, account_id)) == 2


# --- rate limits --------------------------------------------------------------------------


def test_five_tries_per_address_then_a_friendly_429(app, client, time_machine):
    make_account(app)
    statuses = [
        ask(client, account_number=f"X-{n}", date_of_birth=DOB).status_code for n in range(5)
    ]

    blocked = ask(client, account_number="A-1001", date_of_birth=DOB)

    assert statuses == [200] * 5
    assert blocked.status_code == 429
    assert blocked.mimetype == "text/html"
    assert int(blocked.headers["Retry-After"]) > 0
    page = Page(blocked.get_data(as_text=True))
    assert "Please wait a few minutes" in "".join(page.text)
    assert blocked.headers["Cache-Control"] == "no-store"
    # Another address is not held up; the page itself still opens.
    assert ask(client, "198.51.100.9", account_number="X-9", zip="20001").status_code == 200
    assert client.get("/pay", environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code == 200
    # The window moves on.
    time_machine.move_to(NOON_NY + timedelta(minutes=15, seconds=1), tick=False)
    assert ask(client, account_number="A-1001", date_of_birth=DOB).status_code == 200
    drain(app)
    assert len(all_links(app)) == 1  # the blocked try sent nothing


def test_one_account_number_from_many_addresses_is_limited_too(app, client):
    make_account(app)
    statuses = [
        ask(client, f"198.51.100.{n}", account_number="A-1001", zip=f"{20100 + n}").status_code
        for n in range(11)
    ]

    assert statuses == [200] * 10 + [429]
    # Someone else's account number is counted on its own.
    assert ask(client, "198.51.100.99", account_number="B-1", zip="20001").status_code == 200


def test_the_ssn_is_counted_by_its_keyed_hash_and_never_reaches_redis(app, client, redis_client):
    make_account(app)
    for n in range(11):
        last = ask(client, f"198.51.100.{n}", ssn=SSN, zip=f"{20100 + n}")

    assert last.status_code == 429
    stored = b" ".join(redis_contents(redis_client))
    assert b"123456789" not in stored
    assert b"123-45-6789" not in stored
    assert b"A-1001" not in stored


def redis_contents(client) -> Iterator[bytes]:
    """Every key and every value in Redis, as bytes."""
    for key in client.scan_iter():
        yield key
        kind = client.type(key).decode()
        if kind == "string":
            yield client.get(key) or b""
        elif kind == "hash":
            for field, value in client.hgetall(key).items():
                yield field + b"=" + value
        elif kind == "list":
            yield from client.lrange(key, 0, -1)
        elif kind == "set":
            yield from client.smembers(key)
        elif kind == "zset":
            yield from client.zrange(key, 0, -1)


# --- bad input ----------------------------------------------------------------------------


def test_a_post_without_the_csrf_token_is_refused_and_sends_nothing(app, client):
    make_account(app)

    resp = client.post("/pay", data={"account_number": "A-1001", "date_of_birth": DOB})
    forged = client.post(
        "/pay", data={"account_number": "A-1001", "date_of_birth": DOB, "csrf_token": "x"}
    )

    assert (resp.status_code, forged.status_code) == (400, 400)
    assert lookup_jobs(app) == []


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"date_of_birth": DOB}, "account_number", "account number, or your Social Security"),
        ({"account_number": "A-1001"}, "date_of_birth", "date of birth, or your ZIP"),
        ({"ssn": "123-45-678", "zip": "20001"}, "ssn", "nine digits"),
        ({"ssn": "000-12-3456", "zip": "20001"}, "ssn", "nine digits"),
        ({"account_number": "A-1", "date_of_birth": "2099-01-01"}, "date_of_birth", "MM/DD/YYYY"),
        ({"account_number": "A-1", "date_of_birth": "1980-02-30"}, "date_of_birth", "MM/DD/YYYY"),
        ({"account_number": "A-1", "date_of_birth": "yesterday"}, "date_of_birth", "MM/DD/YYYY"),
        ({"account_number": "A-1", "zip": "2000"}, "zip", "5-digit ZIP"),
        ({"account_number": "A\x00-1", "zip": "20001"}, "account_number", "printed on your bill"),
        ({"account_number": "A" * 65, "zip": "20001"}, "account_number", "printed on your bill"),
    ],
)
def test_bad_input_is_explained_next_to_its_field(app, client, fields, field, message):
    resp = ask(client, **fields)

    assert resp.status_code == 422
    html = resp.get_data(as_text=True)
    page = Page(html)
    error = re.search(rf'<p class="error" id="{field}-error">([^<]*)</p>', html)
    assert error, html
    assert message in error.group(1)
    assert f"{field}-error" in (page.inputs[field]["aria-describedby"] or "")
    assert page.inputs[field]["aria-invalid"] == "true"
    assert lookup_jobs(app) == []


def test_what_was_typed_is_kept_except_the_ssn(client):
    resp = ask(client, account_number="A-1001", ssn="123-45-678", zip="20001")

    page = Page(resp.get_data(as_text=True))
    assert page.inputs["account_number"]["value"] == "A-1001"
    assert page.inputs["zip"]["value"] == "20001"
    assert page.inputs["ssn"]["value"] == ""
    assert "123-45-678" not in resp.get_data(as_text=True)


def test_read_facts_normalises():
    facts, errors = lookup.read_facts(
        {"account_number": " A-1 ", "ssn": "123 45 6789", "date_of_birth": "2/9/1980",
         "zip": "200011234"},
        date(2026, 1, 1),
    )  # fmt: skip

    assert errors == {}
    assert facts == lookup.LookupFacts("A-1", "123456789", date(1980, 2, 9), "20001")
