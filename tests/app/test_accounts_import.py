"""Bulk account import: POST /api/v1/accounts/import (text/csv) and ``import-accounts``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app.models import Account, AuditEvent
from app.security import hash_ssn
from tests.conftest import TEST_SSN_KEY

IMPORT = "/api/v1/accounts/import"
PROBLEM_JSON = "application/problem+json"


@pytest.fixture
def new_session(app):
    """Short sessions for checking rows (see tests/app/test_accounts_api.py)."""
    return app.extensions["paylink.db"].Session


def post_csv(client, headers, text: str | bytes, content_type: str = "text/csv"):
    data = text.encode() if isinstance(text, str) else text
    return client.post(IMPORT, data=data, content_type=content_type, headers=headers)


def all_accounts(new_session) -> dict[str, Account]:
    with new_session() as s:
        return {a.external_id: a for a in s.scalars(select(Account).order_by(Account.id))}


def count_accounts(new_session) -> int:
    with new_session() as s:
        return s.scalar(select(func.count()).select_from(Account)) or 0


def test_good_rows_are_created(client, agent, new_session):
    text = (
        "external_id,name,phone,email,timezone,balance_cents,currency,ssn,date_of_birth,zip\n"
        "C-1,Ann Lee,(202) 555-0143,Ann@Example.COM,America/Chicago,1000,,123-45-6789,"
        "1980-01-31,20001\n"
        "C-2,Bob Stone,,,,250,cad,,,\n"
    )

    resp = post_csv(client, agent.headers, text)

    assert resp.status_code == 200, resp.json
    assert resp.json == {"created": 2, "updated": 0, "errors": []}
    rows = all_accounts(new_session)
    assert set(rows) == {"C-1", "C-2"}
    ann, bob = rows["C-1"], rows["C-2"]
    assert ann.name == "Ann Lee"
    assert ann.phone == "+12025550143"
    assert ann.email == "Ann@example.com"
    assert ann.timezone == "America/Chicago"
    assert ann.balance_cents == 1000
    assert ann.currency == "USD"
    assert ann.ssn_hash == hash_ssn(TEST_SSN_KEY, "123456789")
    assert ann.ssn_last4 == "6789"
    assert ann.date_of_birth.isoformat() == "1980-01-31"
    assert ann.zip == "20001"
    assert (bob.phone, bob.email, bob.currency, bob.ssn_hash) == (None, None, "CAD", None)


def test_ssns_in_a_file_are_never_echoed_or_logged(client, agent, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")
    text = (
        "external_id,name,balance_cents,ssn\n"
        "S-1,Ann,1,123-45-6789\n"
        "S-2,Bob,1,234567890x\n"  # not an SSN
        "S-3,Cy,-1,345-67-8901\n"  # a good SSN on a bad row
    )

    resp = post_csv(client, agent.headers, text)

    assert resp.json["created"] == 1
    assert [(e["row"], e["field"]) for e in resp.json["errors"]] == [
        (3, "ssn"),
        (4, "balance_cents"),
    ]
    assert "INSERT INTO account" in caplog.text  # the capture works
    out, err = capfd.readouterr()
    for seen in (resp.get_data(as_text=True), caplog.text, out, err):
        for secret in ("123-45-6789", "123456789", "234567890", "345-67-8901", "345678901"):
            assert secret not in seen


def test_import_records_one_audit_event_with_the_counts(client, agent, new_session):
    client.post(
        "/api/v1/accounts",
        json={"external_id": "C-1", "name": "Ann", "balance_cents": 1},
        headers=agent.headers,
    )
    text = "external_id,name,balance_cents\nC-1,Ann Lee,5\nC-2,Bob,6\nC-3,Cy,-1\n"

    post_csv(client, agent.headers, text)

    with new_session() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "accounts.imported"))
        assert [e.data for e in events] == [{"created": 1, "updated": 1, "rejected_rows": 1}]


def test_existing_external_id_is_updated_only_in_the_columns_given(client, agent, new_session):
    created = client.post(
        "/api/v1/accounts",
        json={
            "external_id": "U-1",
            "name": "Ann Lee",
            "phone": "2025550143",
            "email": "ann@example.com",
            "timezone": "America/Denver",
            "balance_cents": 1000,
            "ssn": "123-45-6789",
        },
        headers=agent.headers,
    )
    assert created.status_code == 201
    # No phone or timezone column; the email cell is empty; name and balance are given.
    text = "external_id,name,email,balance_cents\nU-1,Ann Lee-Smith,,2500\n"

    resp = post_csv(client, agent.headers, text)

    assert resp.json == {"created": 0, "updated": 1, "errors": []}
    row = all_accounts(new_session)["U-1"]
    assert row.name == "Ann Lee-Smith"
    assert row.balance_cents == 2500
    assert row.email == "ann@example.com"
    assert row.phone == "+12025550143"
    assert row.timezone == "America/Denver"
    assert row.ssn_last4 == "6789"
    assert row.updated_at > row.created_at


def test_update_may_leave_required_cells_empty(client, agent, new_session):
    client.post(
        "/api/v1/accounts",
        json={"external_id": "U-1", "name": "Ann Lee", "balance_cents": 1000},
        headers=agent.headers,
    )
    # An empty cell keeps the old value, even for a column a new account must have.
    text = "external_id,name,balance_cents,zip\nU-1,,,20001\nN-1,,500,\n"

    resp = post_csv(client, agent.headers, text)

    assert resp.status_code == 200
    assert resp.json["updated"] == 1
    assert resp.json["created"] == 0
    assert resp.json["errors"] == [{"row": 3, "field": "name", "message": "is required"}]
    rows = all_accounts(new_session)
    assert set(rows) == {"U-1"}
    assert (rows["U-1"].name, rows["U-1"].balance_cents, rows["U-1"].zip) == (
        "Ann Lee",
        1000,
        "20001",
    )


def test_bad_rows_are_reported_by_line_and_left_out(client, agent, new_session):
    text = (
        "external_id,name,phone,email,balance_cents\n"  # line 1
        "G-1,Ann Lee,2025550143,ann@example.com,100\n"  # 2 good
        "B-1,Bad Phone,555,,100\n"  # 3 phone
        "G-2,Bob Stone,,,200\n"  # 4 good
        "B-2,Bad Money,,,12.50\n"  # 5 balance
        "B-3,,,not-an-email,-1\n"  # 6 name, email, balance
        "B-4,Short Row,,\n"  # 7 wrong number of cells
    )

    resp = post_csv(client, agent.headers, text)

    assert resp.status_code == 200
    body = resp.json
    assert body["created"] == 2
    assert body["updated"] == 0
    assert [(e["row"], e["field"]) for e in body["errors"]] == [
        (3, "phone"),
        (5, "balance_cents"),
        (6, "name"),
        (6, "email"),
        (6, "balance_cents"),
        (7, None),
    ]
    assert all(e["message"] for e in body["errors"])
    assert set(all_accounts(new_session)) == {"G-1", "G-2"}


def test_a_quoted_newline_shifts_the_line_numbers_after_it(client, agent, new_session):
    text = (
        "external_id,name,balance_cents\n"  # line 1
        'Q-1,"Ann\nLee",100\n'  # lines 2-3: a name may not hold a newline
        "Q-2,Bob,abc\n"  # line 4
        "Q-3,Cy,300\n"  # line 5
        'Q-4,"Dee, Dana",-5\n'  # line 6
    )

    resp = post_csv(client, agent.headers, text)

    assert [(e["row"], e["field"]) for e in resp.json["errors"]] == [
        (2, "name"),
        (4, "balance_cents"),
        (6, "balance_cents"),
    ]
    assert resp.json["created"] == 1
    assert set(all_accounts(new_session)) == {"Q-3"}


def test_line_numbers_count_crlf_endings_and_blank_lines(client, agent):
    text = "external_id,name,balance_cents\r\nL-1,Ann,1\r\n\r\nL-2,Bob,x\r\n"

    resp = post_csv(client, agent.headers, text)

    assert resp.json["created"] == 1
    assert [(e["row"], e["field"]) for e in resp.json["errors"]] == [(4, "balance_cents")]


def test_a_byte_order_mark_is_ignored(client, agent, new_session):
    resp = post_csv(client, agent.headers, "\ufeffexternal_id,name,balance_cents\nM-1,Ann,1\n")

    assert resp.json == {"created": 1, "updated": 0, "errors": []}
    assert set(all_accounts(new_session)) == {"M-1"}


def test_duplicate_external_id_in_one_file_keeps_the_first(client, agent, new_session):
    text = "external_id,name,balance_cents\nD-1,First,100\nD-2,Other,5\nD-1,Second,200\n"

    resp = post_csv(client, agent.headers, text)

    assert resp.json["created"] == 2
    assert resp.json["errors"] == [{"row": 4, "field": "external_id", "message": "repeats line 2"}]
    rows = all_accounts(new_session)
    assert rows["D-1"].name == "First"
    assert rows["D-1"].balance_cents == 100


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("external_id,name,balance_cents,nickname\nX-1,Ann,1,Annie\n", "nickname"),
        ("external_id,name\nX-1,Ann\n", "balance_cents"),
        ("", "empty"),
        ("external_id,name,balance_cents,name\nX-1,Ann,1,Ann\n", "twice"),
    ],
    ids=["unknown-column", "missing-column", "empty-file", "repeated-column"],
)
def test_a_file_that_cannot_be_read_is_422_and_writes_nothing(
    client, agent, new_session, text, needle
):
    resp = post_csv(client, agent.headers, text)

    assert resp.status_code == 422
    assert resp.mimetype == PROBLEM_JSON
    assert list(resp.json["errors"]) == ["file"]
    assert needle in resp.json["errors"]["file"][0]
    assert count_accounts(new_session) == 0
    with new_session() as s:
        assert (
            s.scalar(select(AuditEvent.id).where(AuditEvent.action == "accounts.imported")) is None
        )


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "multipart/form-data"])
def test_wrong_content_type_is_415(client, agent, new_session, content_type):
    resp = post_csv(
        client, agent.headers, "external_id,name,balance_cents\nX,Ann,1\n", content_type
    )

    assert resp.status_code == 415
    assert resp.mimetype == PROBLEM_JSON
    assert count_accounts(new_session) == 0


def test_csv_with_a_charset_parameter_is_accepted(client, agent):
    resp = post_csv(
        client,
        agent.headers,
        "external_id,name,balance_cents\nX-1,Zoë,1\n",
        "text/csv; charset=utf-8",
    )

    assert resp.json["created"] == 1


def test_non_utf8_file_is_400(client, agent, new_session):
    text = "external_id,name,balance_cents\nX-1,Zoë,1\n".encode("latin-1")

    resp = post_csv(client, agent.headers, text)

    assert resp.status_code == 400
    assert resp.mimetype == PROBLEM_JSON
    assert "UTF-8" in resp.json["detail"]
    assert count_accounts(new_session) == 0


def test_import_needs_an_api_key(client, new_session):
    resp = post_csv(client, {}, "external_id,name,balance_cents\nX-1,Ann,1\n")

    assert resp.status_code == 401
    assert count_accounts(new_session) == 0


def test_ten_thousand_rows_import_through_the_api(client, agent, new_session):
    client.post(
        "/api/v1/accounts",
        json={"external_id": "BULK-00042", "name": "Old Name", "balance_cents": 1},
        headers=agent.headers,
    )
    lines = ["external_id,name,phone,email,timezone,balance_cents,zip"]
    for n in range(10_000):
        lines.append(
            f"BULK-{n:05d},Customer {n},202555{n % 10_000:04d},c{n}@example.com,"
            f"America/New_York,{n * 100},{n % 90_000 + 10_000:05d}"
        )
    text = "\n".join(lines) + "\n"

    resp = post_csv(client, agent.headers, text)

    assert resp.status_code == 200
    assert resp.json == {"created": 9_999, "updated": 1, "errors": []}
    assert count_accounts(new_session) == 10_000
    with new_session() as s:
        total = s.scalar(select(func.sum(Account.balance_cents)))
        updated = s.scalar(select(Account).where(Account.external_id == "BULK-00042"))
    assert total == sum(n * 100 for n in range(10_000))
    assert updated.name == "Customer 42"
    assert updated.phone == "+12025550042"


# --- the import-accounts command ---------------------------------------------------------


def run_import(app, path: Path):
    # `flask --app app` pushes an app context before running a command; so do we.
    with app.app_context():
        return app.test_cli_runner().invoke(args=["import-accounts", str(path)])


def test_cli_imports_good_rows_and_exits_0(app, tmp_path, new_session):
    path = tmp_path / "accounts.csv"
    path.write_text("external_id,name,phone,balance_cents\nK-1,Ann,2025550143,100\nK-2,Bob,,5\n")

    result = run_import(app, path)

    assert result.exit_code == 0, result.output
    assert "created 2, updated 0, rejected 0 rows" in result.stdout
    assert set(all_accounts(new_session)) == {"K-1", "K-2"}


def test_cli_reports_bad_rows_by_line_and_exits_1(app, client, agent, tmp_path, new_session):
    client.post(
        "/api/v1/accounts",
        json={"external_id": "K-1", "name": "Ann", "balance_cents": 1},
        headers=agent.headers,
    )
    path = tmp_path / "accounts.csv"
    path.write_text(
        'external_id,name,phone,balance_cents\nK-1,"Ann\nLee",,100\nK-2,Bob,555,5\nK-3,Cy,,7\n'
        "K-1,Ann Again,,9\n"
    )

    result = run_import(app, path)

    assert result.exit_code == 1
    assert "line 2: name" in result.stderr
    assert "line 4: phone" in result.stderr
    assert "line 6" not in result.stderr  # its first K-1, on line 2, was rejected
    assert "created 1, updated 1, rejected 2 rows" in result.stdout
    rows = all_accounts(new_session)
    assert set(rows) == {"K-1", "K-3"}
    assert rows["K-1"].name == "Ann Again"


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"external_id,name\nK-1,Ann\n", "balance_cents"),
        (b"", "empty"),
        ("external_id,name,balance_cents\nK-1,Zoë,1\n".encode("latin-1"), "UTF-8"),
    ],
    ids=["missing-column", "empty-file", "not-utf8"],
)
def test_cli_refuses_an_unreadable_file(app, tmp_path, new_session, content, needle):
    path = tmp_path / "accounts.csv"
    path.write_bytes(content)

    result = run_import(app, path)

    assert result.exit_code == 1
    assert needle in result.output
    assert count_accounts(new_session) == 0
