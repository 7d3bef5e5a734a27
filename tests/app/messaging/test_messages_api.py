"""The messages API: listing with filters and cursor pagination, one message with its
events, validation and auth."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from app.clock import utcnow
from app.messaging.outbox import MessageEnv, queue_message
from app.models import Account, Message
from tests.helpers import drain

PROBLEM_JSON = "application/problem+json"
# 15:00 UTC is 10:00 in New York: inside the default 08:00-21:00 window.
NOON_NY = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def add_account(app, external_id: str, **values) -> int:
    now = utcnow()
    with app.extensions["paylink.db"].transaction() as session:
        account = Account(
            external_id=external_id, name="Maya Brooks", phone="+12025550143",
            email="maya@example.com", timezone="America/New_York", balance_cents=5000,
            created_at=now, updated_at=now, **values,
        )  # fmt: skip
        session.add(account)
        session.flush()
        return account.id


def add_messages(app, account_id: int, specs: list[dict]) -> list[int]:
    """Message rows as the outbox would leave them, in the order given (ids ascending)."""
    base = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    ids = []
    with app.extensions["paylink.db"].transaction() as session:
        for n, spec in enumerate(specs):
            at = base + timedelta(minutes=n)
            values = {
                "kind": "link", "channel": "sms", "status": "queued", "body": f"message {n}",
                "recipient": "+12025550143", "scheduled_for": at, "created_at": at,
                "updated_at": at, **spec,
            }  # fmt: skip
            message = Message(account_id=account_id, **values)
            session.add(message)
            session.flush()
            ids.append(message.id)
    return ids


@pytest.fixture
def account_id(app) -> int:
    return add_account(app, "M-1")


def get(client, agent, path="/api/v1/messages", **params):
    return client.get(path, headers=agent.headers, query_string=params)


def test_list_needs_an_api_key(app, client, account_id):
    add_messages(app, account_id, [{}])
    assert client.get("/api/v1/messages").status_code == 401
    resp = client.get("/api/v1/messages", headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 401
    assert resp.mimetype == PROBLEM_JSON
    assert client.get("/api/v1/messages/1").status_code == 401


def test_list_is_newest_first_with_every_field(app, client, agent, account_id):
    sent = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    ids = add_messages(app, account_id, [
        {"body": "first"},
        {"channel": "email", "recipient": "maya@example.com", "subject": "Your link",
         "body": "text part", "html": "<p>html</p>", "status": "delivered",
         "provider_id": "outbox-email-1", "sent_at": sent, "delivered_at": sent},
    ])  # fmt: skip
    resp = get(client, agent)
    assert resp.status_code == 200
    items = resp.json["items"]
    assert [m["id"] for m in items] == ids[::-1]
    assert resp.json["next_cursor"] is None
    email = items[0]
    assert {
        "id", "account_id", "channel", "kind", "to", "status", "body", "subject", "provider_id",
        "scheduled_for", "sent_at", "created_at", "error",
    } <= email.keys()  # fmt: skip
    assert email["account_id"] == account_id
    assert (email["channel"], email["kind"], email["to"]) == ("email", "link", "maya@example.com")
    assert (email["status"], email["subject"], email["body"]) == (
        "delivered",
        "Your link",
        "text part",
    )
    assert email["provider_id"] == "outbox-email-1"
    assert email["sent_at"] == "2026-11-02T09:30:00Z"
    assert email["created_at"] == "2026-11-01T12:01:00Z"
    assert email["scheduled_for"] == "2026-11-01T12:01:00Z"
    assert email["error"] is None
    assert "html" not in email  # the list stays light; GET /messages/{id} has it
    assert items[1]["sent_at"] is None


def test_filters_combine(app, client, agent, account_id):
    other = add_account(app, "M-2")
    ids = add_messages(app, account_id, [
        {"kind": "link", "channel": "sms", "status": "delivered"},
        {"kind": "link", "channel": "email", "status": "delivered", "recipient": "m@example.com"},
        {"kind": "reminder_1", "channel": "sms", "status": "suppressed"},
        {"kind": "reminder_1", "channel": "email", "status": "failed", "error": "500: boom"},
    ])  # fmt: skip
    others = add_messages(app, other, [{"kind": "link"}])

    def ids_for(**params):
        resp = get(client, agent, **params)
        assert resp.status_code == 200, resp.json
        return [m["id"] for m in resp.json["items"]]

    assert ids_for(account_id=account_id) == ids[::-1]
    assert ids_for(account_id=other) == others
    assert ids_for(account_id=999_999) == []
    assert ids_for(kind="reminder_1") == [ids[3], ids[2]]
    assert ids_for(channel="email") == [ids[3], ids[1]]
    assert ids_for(status="delivered") == [ids[1], ids[0]]
    assert ids_for(kind="link", channel="sms") == [others[0], ids[0]]
    assert ids_for(kind="link", channel="sms", account_id=account_id) == [ids[0]]
    assert ids_for(status="failed", channel="sms") == []
    assert ids_for(kind="offer") == []  # a well-formed kind nobody sent
    assert get(client, agent, status="failed").json["items"][0]["error"] == "500: boom"


def test_pagination_walks_every_message_once(app, client, agent, account_id):
    ids = add_messages(app, account_id, [{"channel": ("sms", "email")[n % 2]} for n in range(11)])
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        resp = get(client, agent, **params)
        assert resp.status_code == 200, resp.json
        seen += [m["id"] for m in resp.json["items"]]
        pages += 1
        cursor = resp.json["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
    assert pages == 3
    assert seen == sorted(ids, reverse=True)  # no gaps, no duplicates, newest first

    # With a filter, the cursor pages through the filtered list only.
    emails = [i for i in sorted(ids, reverse=True) if (i - ids[0]) % 2 == 1]
    first = get(client, agent, channel="email", limit=3).json
    second = get(client, agent, channel="email", limit=3, cursor=first["next_cursor"]).json
    assert [m["id"] for m in first["items"] + second["items"]] == emails
    assert second["next_cursor"] is None


def test_limit_defaults_to_50(app, client, agent, account_id):
    add_messages(app, account_id, [{} for _ in range(51)])
    body = get(client, agent).json
    assert len(body["items"]) == 50
    rest = get(client, agent, cursor=body["next_cursor"]).json
    assert len(rest["items"]) == 1
    assert rest["next_cursor"] is None


BAD_QUERIES = [
    ({"account_id": "abc"}, {"account_id"}),
    ({"account_id": "-3"}, {"account_id"}),
    ({"account_id": "1.5"}, {"account_id"}),
    ({"account_id": "99999999999999999999"}, {"account_id"}),
    ({"status": "lost"}, {"status"}),
    ({"status": ""}, {"status"}),
    ({"channel": "fax"}, {"channel"}),
    ({"kind": "Link; DROP TABLE message"}, {"kind"}),
    ({"kind": "x" * 40}, {"kind"}),
    ({"cursor": "abc"}, {"cursor"}),
    ({"limit": "0"}, {"limit"}),
    ({"limit": "201"}, {"limit"}),
    ({"status": "lost", "channel": "fax", "limit": "x"}, {"status", "channel", "limit"}),
]


def test_bad_filters_are_422_with_field_errors(client, agent):
    for params, fields in BAD_QUERIES:
        resp = get(client, agent, **params)
        assert resp.status_code == 422, params
        assert resp.mimetype == PROBLEM_JSON
        assert resp.json["status"] == 422
        assert set(resp.json["errors"]) == fields, params


def test_limit_200_is_allowed(client, agent):
    assert get(client, agent, limit=200).status_code == 200


def test_one_message_with_its_events_oldest_first(app, client, agent, account_id):
    env = MessageEnv.from_config(app.extensions["paylink.config"])
    context = {"url": "https://pay.example.test/p/abc", "amount_cents": 5000}
    context["expires_at_text"] = "Nov 30"
    with time_machine.travel(NOON_NY, tick=False):
        with app.extensions["paylink.db"].transaction() as session:
            account = session.get(Account, account_id)
            messages = queue_message(
                session, account, "link", ["sms", "email"], context, now=utcnow(), env=env
            )
            sms_id, email_id = (m.id for m in messages)
        drain(app)

    sms = get(client, agent, f"/api/v1/messages/{sms_id}").json
    assert (sms["status"], sms["to"], sms["kind"]) == ("delivered", "+12025550143", "link")
    assert "https://pay.example.test/p/abc" in sms["body"]  # exactly what the customer got
    assert sms["provider_id"].startswith("OUTBOX-")
    assert sms["sent_at"] == "2026-11-23T15:00:00Z"
    types = [e["type"] for e in sms["events"]]
    assert types[0] == "queued"
    assert types[-1] == "status"
    assert sms["events"][-1]["detail"]["status"] == "delivered"
    ats = [e["at"] for e in sms["events"]]
    assert ats == sorted(ats)
    assert all(at.endswith("Z") for at in ats)

    email = get(client, agent, f"/api/v1/messages/{email_id}").json
    assert email["subject"]
    assert "https://pay.example.test/p/abc" in email["body"]
    token = re.search(r"https://pay\.example\.test/u/(\S+)", email["body"]).group(1)
    assert env.unsubscribe_tokens.loads(token) == email_id  # the unsubscribe link
    assert "https://pay.example.test/p/abc" in email["html"]

    listed = get(client, agent, account_id=account_id).json["items"]
    assert [m["body"] for m in listed] == [email["body"], sms["body"]]


def test_unknown_message_is_404(client, agent):
    for path in ("/api/v1/messages/424242", "/api/v1/messages/99999999999999999999"):
        resp = client.get(path, headers=agent.headers)
        assert resp.status_code == 404
        assert resp.mimetype == PROBLEM_JSON
