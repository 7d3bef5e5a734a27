"""API authentication and roles: bearer keys, revocation, deactivation, key storage, CLI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from app.models import Agent, ApiKey, AuditEvent
from app.security import hash_secret

PROBLEM_JSON = "application/problem+json"


@pytest.fixture
def new_session(app):
    """Short sessions for checking rows (see tests/app/test_accounts_api.py)."""
    return app.extensions["paylink.db"].Session


def assert_401(resp) -> None:
    assert resp.status_code == 401
    assert resp.mimetype == PROBLEM_JSON
    assert resp.json["status"] == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def key_id_of(client, admin, agent_id: int) -> int:
    items = client.get("/api/v1/api-keys", headers=admin.headers).json["items"]
    (key_id,) = [k["id"] for k in items if k["agent_id"] == agent_id]
    return key_id


def test_a_valid_key_is_let_in(client, agent):
    assert client.get("/api/v1/accounts", headers=agent.headers).status_code == 200


def test_missing_authorization_header_is_401(client):
    assert_401(client.get("/api/v1/accounts"))


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Token {key}", "{key}", "Bearer", "Bearer ", "Bearer{key}"],
)
def test_wrong_scheme_is_401(client, agent, header):
    resp = client.get("/api/v1/accounts", headers={"Authorization": header.format(key=agent.key)})

    assert_401(resp)


def test_the_scheme_is_case_insensitive(client, agent):
    resp = client.get("/api/v1/accounts", headers={"Authorization": f"bearer {agent.key}"})

    assert resp.status_code == 200


@pytest.mark.parametrize("key", ["pl_unknown", "pl_" + "x" * 43, "{key}x", "{key_upper}"])
def test_unknown_key_is_401(client, agent, key):
    key = key.format(key=agent.key, key_upper=agent.key.upper())

    assert_401(client.get("/api/v1/accounts", headers={"Authorization": f"Bearer {key}"}))


def test_revoked_key_is_401(client, agent, admin):
    key_id = key_id_of(client, admin, agent.id)

    resp = client.post(f"/api/v1/api-keys/{key_id}/revoke", headers=admin.headers)

    assert resp.status_code == 200
    assert resp.json["revoked_at"] is not None
    assert_401(client.get("/api/v1/accounts", headers=agent.headers))
    # The admin's own key still works.
    assert client.get("/api/v1/accounts", headers=admin.headers).status_code == 200


def test_revoking_twice_keeps_the_first_time_and_one_audit_event(client, agent, admin, new_session):
    key_id = key_id_of(client, admin, agent.id)

    first = client.post(f"/api/v1/api-keys/{key_id}/revoke", headers=admin.headers).json
    second = client.post(f"/api/v1/api-keys/{key_id}/revoke", headers=admin.headers).json

    assert second["revoked_at"] == first["revoked_at"]
    with new_session() as s:
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "api_key.revoked"))
        assert [e.object_id for e in events] == [str(key_id)]


def test_revoking_an_unknown_key_is_404(client, admin):
    resp = client.post("/api/v1/api-keys/999/revoke", headers=admin.headers)

    assert resp.status_code == 404
    assert resp.mimetype == PROBLEM_JSON


def test_key_of_a_deactivated_agent_is_401(client, agent, admin):
    resp = client.post(f"/api/v1/agents/{agent.id}/deactivate", headers=admin.headers)

    assert resp.status_code == 200
    assert resp.json["active"] is False
    assert_401(client.get("/api/v1/accounts", headers=agent.headers))


def test_agent_may_read_but_not_change_settings(client, agent, new_session):
    assert client.get("/api/v1/settings", headers=agent.headers).status_code == 200

    resp = client.patch("/api/v1/settings", json={"expiry_notice": False}, headers=agent.headers)

    assert resp.status_code == 403
    assert resp.mimetype == PROBLEM_JSON
    assert resp.json["status"] == 403
    assert client.get("/api/v1/settings", headers=agent.headers).json["expiry_notice"] is True


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("get", "/api/v1/agents", None),
        ("post", "/api/v1/agents", {"email": "new@paylink.test", "password": "long enough pw"}),
        ("post", "/api/v1/agents/{agent_id}/deactivate", None),
        ("get", "/api/v1/api-keys", None),
        ("post", "/api/v1/api-keys", {}),
        ("post", "/api/v1/api-keys/1/revoke", None),
    ],
)
@pytest.mark.parametrize("role", ["agent", "supervisor"])
def test_admin_endpoints_are_403_below_admin(
    client, make_agent, new_session, method, path, body, role
):
    caller = make_agent(role)
    other = make_agent("agent")

    resp = getattr(client, method)(
        path.format(agent_id=other.id), json=body, headers=caller.headers
    )

    assert resp.status_code == 403
    assert resp.mimetype == PROBLEM_JSON
    with new_session() as s:
        assert s.scalar(select(Agent).where(Agent.id == other.id)).active is True
        assert s.scalar(select(Agent).where(Agent.email == "new@paylink.test")) is None
        assert s.scalar(select(ApiKey).where(ApiKey.revoked_at.is_not(None))) is None
        assert len(s.scalars(select(ApiKey)).all()) == 2


def test_admin_may_use_admin_endpoints(client, admin):
    created = client.post(
        "/api/v1/agents",
        json={"email": "New.Agent@Paylink.test", "password": "long enough pw", "role": "agent"},
        headers=admin.headers,
    )
    assert created.status_code == 201
    assert created.json["email"] == "new.agent@paylink.test"
    assert "long enough pw" not in created.get_data(as_text=True)
    assert "password_hash" not in created.json

    listed = client.get("/api/v1/agents", headers=admin.headers).json["items"]

    assert {a["email"] for a in listed} == {"new.agent@paylink.test", admin.email}


def test_creating_an_agent_with_a_taken_email_is_409(client, admin, agent):
    resp = client.post(
        "/api/v1/agents",
        json={"email": agent.email.upper(), "password": "long enough pw"},
        headers=admin.headers,
    )

    assert resp.status_code == 409


# --- API keys: hashed, shown once, last_used_at ------------------------------------------


def test_new_key_is_shown_once_and_stored_only_as_a_hash(client, admin, agent, new_session):
    resp = client.post(
        "/api/v1/api-keys", json={"agent_id": agent.id, "name": "ci"}, headers=admin.headers
    )

    assert resp.status_code == 201
    key = resp.json["key"]
    assert key.startswith("pl_")
    assert resp.json["prefix"] == key[:10]
    listed = client.get("/api/v1/api-keys", headers=admin.headers)
    assert key not in listed.get_data(as_text=True)
    assert all("key" not in item and "key_hash" not in item for item in listed.json["items"])
    # The key works, for the agent it was made for.
    assert (
        client.get("/api/v1/accounts", headers={"Authorization": f"Bearer {key}"}).status_code
        == 200
    )
    assert (
        client.get("/api/v1/agents", headers={"Authorization": f"Bearer {key}"}).status_code == 403
    )
    with new_session() as s:
        table = s.execute(text("SELECT * FROM api_key")).all()
        audit = s.execute(text("SELECT * FROM audit_event")).all()
        row = s.scalar(select(ApiKey).where(ApiKey.id == resp.json["id"]))
    dumped = repr(table) + repr(audit)
    assert key not in dumped
    assert key[10:] not in dumped
    assert row.key_hash == hash_secret(key)
    assert row.agent_id == agent.id


def test_a_key_for_an_inactive_agent_cannot_be_issued(client, admin, agent):
    client.post(f"/api/v1/agents/{agent.id}/deactivate", headers=admin.headers)

    resp = client.post("/api/v1/api-keys", json={"agent_id": agent.id}, headers=admin.headers)

    assert resp.status_code == 422
    assert list(resp.json["errors"]) == ["agent_id"]


def last_used(new_session, agent_id: int) -> datetime | None:
    with new_session() as s:
        return s.scalar(select(ApiKey.last_used_at).where(ApiKey.agent_id == agent_id))


def test_last_used_at_is_set_on_use_and_not_rewritten_within_a_minute(
    client, agent, new_session, time_machine
):
    assert last_used(new_session, agent.id) is None
    start = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    time_machine.move_to(start, tick=False)

    client.get("/api/v1/accounts", headers=agent.headers)
    assert last_used(new_session, agent.id) == start

    time_machine.move_to(start + timedelta(seconds=59), tick=False)
    client.get("/api/v1/accounts", headers=agent.headers)
    assert last_used(new_session, agent.id) == start

    time_machine.move_to(start + timedelta(seconds=60), tick=False)
    client.get("/api/v1/accounts", headers=agent.headers)
    assert last_used(new_session, agent.id) == start + timedelta(seconds=60)


def test_a_failed_request_still_counts_as_a_use(client, agent, new_session):
    client.get("/api/v1/accounts/12345", headers=agent.headers)  # 404

    assert last_used(new_session, agent.id) is not None


def test_an_unknown_key_touches_no_key(client, agent, new_session):
    client.get("/api/v1/accounts", headers={"Authorization": "Bearer pl_nope"})

    assert last_used(new_session, agent.id) is None


# --- the create-agent command -------------------------------------------------------------


def run_cli(app, *args: str):
    # `flask --app app` pushes an app context before running a command; so do we.
    with app.app_context():
        return app.test_cli_runner().invoke(args=list(args))


def test_create_agent_prints_a_working_key_on_its_last_line(app, client, new_session):
    result = run_cli(
        app, "create-agent", "Sup@Paylink.test", "--role", "supervisor", "--password", "s3cret pw!!"
    )

    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/v1/accounts", headers=headers).status_code == 200
    # A supervisor: may change settings, may not manage agents.
    assert (
        client.patch("/api/v1/settings", json={"expiry_notice": False}, headers=headers).status_code
        == 200
    )
    assert client.get("/api/v1/agents", headers=headers).status_code == 403
    with new_session() as s:
        agent = s.scalar(select(Agent).where(Agent.email == "sup@paylink.test"))
    assert agent.role == "supervisor"
    assert "s3cret pw!!" not in result.output


def test_create_agent_without_password_prints_a_generated_one(app):
    result = run_cli(app, "create-agent", "a@paylink.test")

    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("pl_")
    assert any(line.startswith("password: ") for line in lines)


def test_create_agent_with_a_taken_email_fails(app, agent, new_session):
    result = run_cli(app, "create-agent", agent.email.upper(), "--password", "another pw 123")

    assert result.exit_code == 1
    assert "already exists" in result.output
    with new_session() as s:
        assert len(s.scalars(select(Agent)).all()) == 1
        assert len(s.scalars(select(ApiKey)).all()) == 1


def test_create_agent_with_a_short_password_fails(app, new_session):
    result = run_cli(app, "create-agent", "b@paylink.test", "--password", "short")

    assert result.exit_code == 1
    with new_session() as s:
        assert s.scalar(select(Agent.id)) is None


def test_create_agent_with_an_unknown_role_is_a_usage_error(app):
    result = run_cli(app, "create-agent", "c@paylink.test", "--role", "owner")

    assert result.exit_code == 2


# --- admin input checks --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"password": "long enough pw"}, "email"),
        ({"email": "not-an-email", "password": "long enough pw"}, "email"),
        ({"email": "a" * 300 + "@paylink.test", "password": "long enough pw"}, "email"),
        ({"email": "nul\x00@paylink.test", "password": "long enough pw"}, "email"),
        ({"email": "a@paylink.test"}, "password"),
        ({"email": "a@paylink.test", "password": "short"}, "password"),
        ({"email": "a@paylink.test", "password": "x" * 201}, "password"),
        ({"email": "a@paylink.test", "password": 1234567890123}, "password"),
        ({"email": "a@paylink.test", "password": "long enough pw", "role": "owner"}, "role"),
        ({"email": "a@paylink.test", "password": "long enough pw", "role": ["admin"]}, "role"),
        ({"email": "a@paylink.test", "password": "long enough pw", "name": "a\x00b"}, "name"),
        ({"email": "a@paylink.test", "password": "long enough pw", "name": {"x": 1}}, "name"),
        ({"email": "a@paylink.test", "password": "long enough pw", "admin": True}, "admin"),
    ],
)
def test_creating_an_agent_checks_every_field(client, admin, new_session, body, field):
    resp = client.post("/api/v1/agents", json=body, headers=admin.headers)

    assert resp.status_code == 422, resp.json
    assert list(resp.json["errors"]) == [field]
    with new_session() as s:
        assert s.scalars(select(Agent.email)).all() == [admin.email]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"agent_id": True}, "agent_id"),
        ({"agent_id": 2**70}, "agent_id"),
        ({"agent_id": "1"}, "agent_id"),
        ({"agent_id": 999}, "agent_id"),
        ({"name": "a\x00b"}, "name"),
        ({"name": "x" * 101}, "name"),
    ],
)
def test_issuing_a_key_checks_its_fields(client, admin, new_session, body, field):
    resp = client.post("/api/v1/api-keys", json=body, headers=admin.headers)

    assert resp.status_code == 422, resp.json
    assert list(resp.json["errors"]) == [field]
    with new_session() as s:
        assert len(s.scalars(select(ApiKey)).all()) == 1


def test_issuing_a_key_without_agent_id_is_for_the_caller(client, admin):
    resp = client.post("/api/v1/api-keys", json={"name": "laptop"}, headers=admin.headers)

    assert resp.status_code == 201
    assert resp.json["agent_id"] == admin.id
    assert resp.json["name"] == "laptop"
