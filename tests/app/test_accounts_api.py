"""The accounts API: create, read, look up, list; validation, conflicts and the SSN."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from sqlalchemy import select

from app import accounts
from app.models import Account, AuditEvent
from app.security import hash_ssn
from tests.conftest import TEST_SSN_KEY

PROBLEM_JSON = "application/problem+json"
SSN = "123-45-6789"
SSN_DIGITS = "123456789"


@pytest.fixture
def new_session(app):
    """Short sessions for arranging and checking rows, one ``with`` block each.

    Not the harness's ``db`` fixture: it keeps an app context pushed, which the test client
    then shares, so every request would reuse one session; and on SQLite an open
    transaction holds the write lock.
    """
    return app.extensions["paylink.db"].Session


def account_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "external_id": "A-1001",
        "name": "Ann Lee",
        "balance_cents": 125_000,
    }
    body.update(overrides)
    return body


def create(client, headers, **overrides: Any):
    return client.post("/api/v1/accounts", json=account_body(**overrides), headers=headers)


def test_create_account_normalises_and_answers_201(client, agent):
    resp = create(
        client,
        agent.headers,
        phone="(202) 555-0143",
        email="  Ann.Lee@EXAMPLE.COM ",
        timezone="America/Chicago",
        ssn=SSN,
        date_of_birth="1980-02-29",
        zip="20001",
    )

    assert resp.status_code == 201, resp.json
    body = resp.json
    assert resp.headers["Location"] == f"/api/v1/accounts/{body['id']}"
    assert body["external_id"] == "A-1001"
    assert body["name"] == "Ann Lee"
    assert body["phone"] == "+12025550143"
    assert body["email"] == "Ann.Lee@example.com"
    assert body["timezone"] == "America/Chicago"
    assert body["balance_cents"] == 125_000
    assert body["currency"] == "USD"
    assert body["ssn_last4"] == "6789"
    assert body["date_of_birth"] == "1980-02-29"
    assert body["zip"] == "20001"
    assert body["created_at"].endswith("Z")
    assert not any("ssn" in key and key != "ssn_last4" for key in body)


def test_create_account_keeps_a_given_currency_upper_cased(client, agent):
    resp = create(client, agent.headers, currency="cad")
    assert resp.status_code == 201
    assert resp.json["currency"] == "CAD"


def test_get_account_by_id(client, agent):
    created = create(client, agent.headers, phone="2025550143").json

    resp = client.get(f"/api/v1/accounts/{created['id']}", headers=agent.headers)

    assert resp.status_code == 200
    assert resp.json == created


def test_get_unknown_account_is_404_problem(client, agent):
    resp = client.get("/api/v1/accounts/999", headers=agent.headers)

    assert resp.status_code == 404
    assert resp.mimetype == PROBLEM_JSON
    assert resp.json["status"] == 404
    assert resp.json["title"] == "Not Found"
    assert resp.json["type"] == "about:blank"
    assert resp.json["detail"]


def test_get_account_with_an_id_beyond_any_integer_column_is_404(client, agent):
    resp = client.get(f"/api/v1/accounts/{2**70}", headers=agent.headers)

    assert resp.status_code == 404
    assert resp.mimetype == PROBLEM_JSON


def test_lookup_by_external_id_finds_the_account(client, agent):
    wanted = create(client, agent.headers, external_id="X-1").json
    create(client, agent.headers, external_id="X-2")

    resp = client.get(
        "/api/v1/accounts", query_string={"external_id": "X-1"}, headers=agent.headers
    )

    assert resp.status_code == 200
    assert resp.json["items"] == [wanted]


def test_lookup_by_unknown_external_id_is_an_empty_list(client, agent):
    create(client, agent.headers, external_id="X-1")

    resp = client.get(
        "/api/v1/accounts", query_string={"external_id": "nope"}, headers=agent.headers
    )

    assert resp.status_code == 200
    assert resp.json["items"] == []


@pytest.mark.parametrize("external_id", ["", "X\x00", "X" * 65, " "])
def test_lookup_by_an_impossible_external_id_is_an_empty_list(client, agent, external_id):
    create(client, agent.headers, external_id="X")

    resp = client.get(
        "/api/v1/accounts", query_string={"external_id": external_id}, headers=agent.headers
    )

    assert resp.status_code == 200
    assert resp.json["items"] == []


def test_list_pages_through_every_account_with_next_cursor(client, agent):
    ids = [create(client, agent.headers, external_id=f"P-{n}").json["id"] for n in range(5)]

    seen: list[int] = []
    cursors: list[str | None] = []
    query: dict[str, Any] = {"limit": 2}
    while True:
        resp = client.get("/api/v1/accounts", query_string=query, headers=agent.headers)
        assert resp.status_code == 200
        seen += [item["id"] for item in resp.json["items"]]
        cursors.append(resp.json["next_cursor"])
        if resp.json["next_cursor"] is None:
            break
        query["cursor"] = resp.json["next_cursor"]

    assert seen == ids
    assert len(cursors) == 3
    assert cursors[-1] is None


def test_list_without_limit_returns_everything_on_one_page(client, agent):
    ids = [create(client, agent.headers, external_id=f"P-{n}").json["id"] for n in range(3)]

    resp = client.get("/api/v1/accounts", headers=agent.headers)

    assert [item["id"] for item in resp.json["items"]] == ids
    assert resp.json["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"cursor": "abc"}, "cursor"),
        ({"cursor": "-1"}, "cursor"),
        ({"cursor": str(2**70)}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "many"}, "limit"),
    ],
)
def test_list_rejects_bad_paging_arguments(client, agent, query, field):
    resp = client.get("/api/v1/accounts", query_string=query, headers=agent.headers)

    assert resp.status_code == 422
    assert resp.mimetype == PROBLEM_JSON
    assert list(resp.json["errors"]) == [field]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"phone": "555-0100"}, "phone"),
        ({"phone": "not a phone"}, "phone"),
        ({"email": "ann@@example"}, "email"),
        ({"email": "ann.example.com"}, "email"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"balance_cents": -1}, "balance_cents"),
        ({"balance_cents": 12.5}, "balance_cents"),
        ({"balance_cents": "1250"}, "balance_cents"),
        ({"balance_cents": True}, "balance_cents"),
        ({"currency": "dollars"}, "currency"),
        ({"ssn": "123-45-678"}, "ssn"),
        ({"date_of_birth": "2999-01-01"}, "date_of_birth"),
        ({"zip": "ABCDE"}, "zip"),
        ({"name": ""}, "name"),
        ({"external_id": 42}, "external_id"),
    ],
)
def test_invalid_field_is_422_keyed_by_field(client, agent, new_session, overrides, field):
    resp = create(client, agent.headers, **overrides)

    assert resp.status_code == 422, resp.json
    assert resp.mimetype == PROBLEM_JSON
    assert resp.json["status"] == 422
    assert list(resp.json["errors"]) == [field]
    assert all(isinstance(m, str) and m for m in resp.json["errors"][field])
    with new_session() as s:
        assert s.scalar(select(Account.id)) is None


def test_missing_required_fields_are_each_reported(client, agent):
    resp = client.post("/api/v1/accounts", json={"phone": "2025550143"}, headers=agent.headers)

    assert resp.status_code == 422
    assert set(resp.json["errors"]) == {"external_id", "name", "balance_cents"}
    assert resp.json["errors"]["name"] == ["is required"]


def test_unknown_field_is_422(client, agent, new_session):
    resp = create(client, agent.headers, nickname="Annie")

    assert resp.status_code == 422
    assert list(resp.json["errors"]) == ["nickname"]
    with new_session() as s:
        assert s.scalar(select(Account.id)) is None


def test_several_bad_fields_are_reported_together(client, agent):
    resp = create(client, agent.headers, phone="12", email="x", balance_cents=-5)

    assert resp.status_code == 422
    assert set(resp.json["errors"]) == {"phone", "email", "balance_cents"}


def test_duplicate_external_id_is_409(client, agent, new_session):
    first = create(client, agent.headers, external_id="DUP-1")
    assert first.status_code == 201

    resp = create(client, agent.headers, external_id="DUP-1", name="Someone Else")

    assert resp.status_code == 409
    assert resp.mimetype == PROBLEM_JSON
    assert resp.json["status"] == 409
    assert "DUP-1" in resp.json["detail"]
    with new_session() as s:
        names = s.scalars(select(Account.name).where(Account.external_id == "DUP-1")).all()
    assert names == ["Ann Lee"]


def test_account_created_audit_event(client, agent, new_session):
    created = create(client, agent.headers, external_id="AUD-1").json

    with new_session() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "account.created")).all()

    assert len(events) == 1
    event = events[0]
    assert event.object_type == "account"
    assert event.object_id == str(created["id"])
    assert event.actor_type == "api_key"
    assert event.data == {"external_id": "AUD-1"}


# --- the SSN ------------------------------------------------------------------------------


def test_ssn_is_never_in_a_response_body(client, agent):
    created = create(client, agent.headers, ssn=SSN, external_id="S-1")
    bodies = [
        created,
        client.get(f"/api/v1/accounts/{created.json['id']}", headers=agent.headers),
        client.get("/api/v1/accounts", headers=agent.headers),
        client.get("/api/v1/accounts", query_string={"external_id": "S-1"}, headers=agent.headers),
        create(client, agent.headers, ssn=SSN, external_id="S-1"),  # 409
        create(client, agent.headers, ssn=SSN, external_id="S-2", phone="12"),  # 422
    ]

    assert [r.status_code for r in bodies] == [201, 200, 200, 200, 409, 422]
    for resp in bodies:
        text = resp.get_data(as_text=True)
        assert SSN not in text
        assert SSN_DIGITS not in text
        assert "12345" not in text


def test_ssn_is_never_logged(client, agent, caplog, capfd):
    # Everything at DEBUG, and SQLAlchemy echoing every statement with its parameters:
    # the SSN must still not appear anywhere.
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")

    created = create(client, agent.headers, ssn=SSN)
    rejected = create(client, agent.headers, ssn="123456789", external_id="A-2", email="bad")

    assert created.status_code == 201
    assert rejected.status_code == 422
    # The capture works: the INSERT of the account was logged, with its parameters.
    assert "INSERT INTO account" in caplog.text
    assert hash_ssn(TEST_SSN_KEY, SSN_DIGITS) in caplog.text
    out, err = capfd.readouterr()
    for text in (caplog.text, out, err):
        assert SSN not in text
        assert SSN_DIGITS not in text


def test_created_row_keeps_only_the_keyed_hash(client, agent, new_session):
    created = create(client, agent.headers, ssn=SSN).json

    with new_session() as s:
        row = s.get(Account, created["id"])

    assert row.ssn_hash == hash_ssn(TEST_SSN_KEY, SSN_DIGITS)
    assert row.ssn_last4 == "6789"
    stored = " ".join(str(getattr(row, c.key)) for c in Account.__table__.columns)
    assert SSN_DIGITS not in stored
    assert SSN not in stored


@pytest.mark.parametrize("query", [SSN, SSN_DIGITS, "123 45 6789"])
def test_find_by_ssn_matches_through_the_hash(client, agent, new_session, query):
    wanted = create(client, agent.headers, ssn=SSN, external_id="S-1").json
    create(client, agent.headers, ssn="234-56-7890", external_id="S-2")
    create(client, agent.headers, external_id="S-3")

    with new_session() as s:
        found = accounts.find_by_ssn(s, query, ssn_key=TEST_SSN_KEY)

    assert [a.id for a in found] == [wanted["id"]]


@pytest.mark.parametrize("query", ["123-45-6780", "987-65-4321", "12345678", "not an ssn", ""])
def test_find_by_ssn_with_a_wrong_ssn_finds_nothing(client, agent, new_session, query):
    create(client, agent.headers, ssn=SSN)

    with new_session() as s:
        assert accounts.find_by_ssn(s, query, ssn_key=TEST_SSN_KEY) == []


def test_find_by_ssn_needs_the_same_key(client, agent, new_session):
    create(client, agent.headers, ssn=SSN)

    with new_session() as s:
        assert accounts.find_by_ssn(s, SSN, ssn_key="another-key-0123456789abcdef0123") == []
