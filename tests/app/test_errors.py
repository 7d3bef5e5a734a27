"""Errors as clients see them: problem+json on the API, pages for people, never a
traceback; and the audit trail that nothing may rewrite."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from app.audit import AuditTampering
from app.models import Account, AuditEvent

PROBLEM_JSON = "application/problem+json"


@pytest.fixture
def new_session(app):
    """Short sessions for checking rows (see tests/app/test_accounts_api.py)."""
    return app.extensions["paylink.db"].Session


def assert_problem(resp, status: int) -> dict:
    assert resp.status_code == status
    assert resp.mimetype == PROBLEM_JSON
    body = resp.json
    assert body["type"] == "about:blank"
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert "Traceback" not in resp.get_data(as_text=True)
    return body


def test_unknown_api_route_is_404_problem(client, agent):
    body = assert_problem(client.get("/api/v1/nothing-here", headers=agent.headers), 404)

    assert body["title"] == "Not Found"


def test_unknown_api_route_is_404_even_without_a_key(client):
    assert_problem(client.get("/api/v2/accounts"), 404)


def test_wrong_method_is_405_problem_with_allow(client, agent):
    resp = client.delete("/api/v1/accounts", headers=agent.headers)

    body = assert_problem(resp, 405)
    assert body["title"] == "Method Not Allowed"
    assert set(resp.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


def test_malformed_json_is_400(client, agent):
    resp = client.post(
        "/api/v1/accounts",
        data='{"external_id": "A-1",',
        content_type="application/json",
        headers=agent.headers,
    )

    assert_problem(resp, 400)


def test_json_that_is_not_utf8_is_400(client, agent):
    resp = client.post(
        "/api/v1/accounts",
        data=b'{"name": "Zo\xeb"}',
        content_type="application/json",
        headers=agent.headers,
    )

    assert_problem(resp, 400)


@pytest.mark.parametrize("body", ["[]", '[{"external_id": "A-1"}]', '"text"', "42"])
def test_json_that_is_not_an_object_is_400(client, agent, body):
    resp = client.post(
        "/api/v1/accounts", data=body, content_type="application/json", headers=agent.headers
    )

    assert "object" in assert_problem(resp, 400)["detail"]


def test_deeply_nested_json_is_400_not_500(client, agent):
    depth = 100_000
    resp = client.post(
        "/api/v1/accounts",
        data="[" * depth + "]" * depth,
        content_type="application/json",
        headers=agent.headers,
    )

    assert_problem(resp, 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_json_is_415(client, agent, new_session, content_type):
    resp = client.post(
        "/api/v1/accounts",
        data='{"external_id": "A-1", "name": "Ann", "balance_cents": 1}',
        content_type=content_type,
        headers=agent.headers,
    )

    assert_problem(resp, 415)
    with new_session() as s:
        assert s.scalar(select(Account.id)) is None


def test_json_suffix_media_types_are_accepted(client, agent):
    resp = client.post(
        "/api/v1/accounts",
        data='{"external_id": "A-1", "name": "Ann", "balance_cents": 1}',
        content_type="application/merge-patch+json",
        headers=agent.headers,
    )

    assert resp.status_code == 201


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/api/v1/accounts", "application/json"), ("/api/v1/accounts/import", "text/csv")],
)
def test_a_ten_megabyte_body_is_413_problem(client, agent, new_session, path, content_type):
    resp = client.post(
        path, data=b" " * (10 * 1024 * 1024), content_type=content_type, headers=agent.headers
    )

    body = assert_problem(resp, 413)
    assert "too large" in body["detail"]
    with new_session() as s:
        assert s.scalar(select(Account.id)) is None


def test_a_ten_megabyte_form_is_a_413_page(client):
    resp = client.post(
        "/console/login",
        data=b"email=" + b"a" * (10 * 1024 * 1024),
        content_type="application/x-www-form-urlencoded",
    )

    assert resp.status_code == 413
    assert resp.mimetype == "text/html"


def test_unknown_page_is_a_404_html_page(client):
    resp = client.get("/no/such/page")

    assert resp.status_code == 404
    assert resp.mimetype == "text/html"
    page = resp.get_data(as_text=True)
    assert "<h1>Not Found</h1>" in page
    assert "Traceback" not in page


def test_wrong_method_on_a_page_is_a_405_html_page(client):
    resp = client.put("/console/login")

    assert resp.status_code == 405
    assert resp.mimetype == "text/html"


def test_a_crash_in_an_api_view_is_a_500_problem_without_details(app, client, caplog):
    def crash():
        raise RuntimeError("secret internal detail")

    app.add_url_rule("/api/v1/crash", "crash", crash)

    resp = client.get("/api/v1/crash")

    body = assert_problem(resp, 500)
    assert "secret internal detail" not in resp.get_data(as_text=True)
    assert body["title"] == "Internal Server Error"
    # The details go to the log instead.
    assert "secret internal detail" in caplog.text


def test_a_crash_in_a_page_is_a_500_page_without_details(app, client):
    def crash():
        raise RuntimeError("secret internal detail")

    app.add_url_rule("/crash", "crash_page", crash)

    resp = client.get("/crash")

    assert resp.status_code == 500
    assert resp.mimetype == "text/html"
    page = resp.get_data(as_text=True)
    assert "secret internal detail" not in page
    assert "Traceback" not in page


# --- the audit trail is append-only -------------------------------------------------------


@pytest.fixture
def audit_event_id(agent, new_session) -> int:
    """The id of an audit event (creating the agent wrote ``agent.created``)."""
    with new_session() as s:
        event_id = s.scalar(select(AuditEvent.id).where(AuditEvent.action == "agent.created"))
    assert event_id is not None
    return event_id


def stored_action(new_session, event_id: int) -> str | None:
    with new_session() as s:
        return s.scalar(select(AuditEvent.action).where(AuditEvent.id == event_id))


def test_orm_update_of_an_audit_event_raises(new_session, audit_event_id):
    with new_session() as s:
        event = s.get(AuditEvent, audit_event_id)
        event.action = "agent.rewritten"
        with pytest.raises(AuditTampering):
            s.flush()
        s.rollback()

    assert stored_action(new_session, audit_event_id) == "agent.created"


def test_orm_delete_of_an_audit_event_raises(new_session, audit_event_id):
    with new_session() as s:
        s.delete(s.get(AuditEvent, audit_event_id))
        with pytest.raises(AuditTampering):
            s.commit()
        s.rollback()

    assert stored_action(new_session, audit_event_id) == "agent.created"


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_event SET action = 'agent.rewritten' WHERE id = :id",
        "UPDATE audit_event SET data = '{}' WHERE id = :id",
        "DELETE FROM audit_event WHERE id = :id",
        "DELETE FROM audit_event",
    ],
)
def test_the_database_refuses_raw_update_and_delete(app, new_session, audit_event_id, statement):
    engine = app.extensions["paylink.db"].engine

    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(statement), {"id": audit_event_id})

    assert stored_action(new_session, audit_event_id) == "agent.created"


def test_new_audit_events_can_still_be_added(client, agent, new_session, audit_event_id):
    client.post(
        "/api/v1/accounts",
        json={"external_id": "A-1", "name": "Ann", "balance_cents": 1},
        headers=agent.headers,
    )

    with new_session() as s:
        actions = s.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions[-1] == "account.created"
    assert "agent.created" in actions
