"""The organisation's settings: GET defaults, PATCH by supervisors, validation, audit."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from app.models import AuditEvent, OrgSettings

SETTINGS = "/api/v1/settings"
PROBLEM_JSON = "application/problem+json"


@pytest.fixture
def new_session(app):
    """Short sessions for checking rows (see tests/app/test_accounts_api.py)."""
    return app.extensions["paylink.db"].Session


def settings_events(new_session) -> list[AuditEvent]:
    with new_session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == "settings.updated")))


def patch(client, who, body: Any):
    return client.patch(SETTINGS, json=body, headers=who.headers)


def test_get_returns_the_contract_defaults(client, agent):
    resp = client.get(SETTINGS, headers=agent.headers)

    assert resp.status_code == 200
    body = resp.json
    assert body["contact_verification"] is True
    assert body["virtual_collection"] is True
    assert body["allow_skip_offer"] is True
    assert body["schedule_payment"] is True
    assert body["reminder_offsets"] == ["72h", "24h", "2h"]
    assert body["expiry_notice"] is True
    assert body["first_due_horizon_days"] == 365
    assert body["quiet_hours_start"] == "08:00"
    assert body["quiet_hours_end"] == "21:00"
    assert body["updated_at"].endswith("Z")


def test_get_twice_keeps_one_row(client, agent, new_session):
    first = client.get(SETTINGS, headers=agent.headers).json
    second = client.get(SETTINGS, headers=agent.headers).json

    assert first == second
    with new_session() as s:
        assert len(s.scalars(select(OrgSettings)).all()) == 1


def test_settings_need_an_api_key(client):
    assert client.get(SETTINGS).status_code == 401
    assert client.patch(SETTINGS, json={"expiry_notice": False}).status_code == 401


def test_supervisor_patch_changes_fields_and_records_before_and_after(
    client, supervisor, new_session
):
    before = client.get(SETTINGS, headers=supervisor.headers).json

    resp = patch(
        client,
        supervisor,
        {
            "contact_verification": False,
            "reminder_offsets": ["1d", "30m", "48h"],
            "quiet_hours_start": "09:30",
            "quiet_hours_end": "20:00",
            "first_due_horizon_days": 90,
            "default_timezone": "America/Chicago",
        },
    )

    assert resp.status_code == 200, resp.json
    after = resp.json
    assert after["contact_verification"] is False
    # Earliest reminder first.
    assert after["reminder_offsets"] == ["48h", "1d", "30m"]
    assert after["quiet_hours_start"] == "09:30"
    assert after["quiet_hours_end"] == "20:00"
    assert after["first_due_horizon_days"] == 90
    assert after["default_timezone"] == "America/Chicago"
    untouched = {k for k in before if k not in after or before[k] == after[k]}
    assert {"virtual_collection", "allow_skip_offer", "expiry_notice"} <= untouched
    assert client.get(SETTINGS, headers=supervisor.headers).json == after

    (event,) = settings_events(new_session)
    assert event.actor_type == "api_key"
    assert event.object_type == "settings"
    assert event.data["before"]["contact_verification"] is True
    assert event.data["after"]["contact_verification"] is False
    assert event.data["before"]["reminder_offsets"] == ["72h", "24h", "2h"]
    assert event.data["after"]["reminder_offsets"] == ["48h", "1d", "30m"]
    assert event.data["before"]["quiet_hours_start"] == "08:00"
    assert event.data["after"]["quiet_hours_start"] == "09:30"
    assert set(event.data["after"]) == {
        "contact_verification",
        "reminder_offsets",
        "quiet_hours_start",
        "quiet_hours_end",
        "first_due_horizon_days",
        "default_timezone",
    }
    with new_session() as s:
        assert s.get(OrgSettings, 1).updated_by_agent_id == supervisor.id


def test_admin_may_patch_too(client, admin):
    resp = patch(client, admin, {"expiry_notice": False})

    assert resp.status_code == 200
    assert resp.json["expiry_notice"] is False


def test_patch_may_empty_the_reminders(client, supervisor):
    resp = patch(client, supervisor, {"reminder_offsets": []})

    assert resp.status_code == 200
    assert resp.json["reminder_offsets"] == []


def test_offsets_are_written_back_in_one_spelling(client, supervisor):
    resp = patch(client, supervisor, {"reminder_offsets": [" 72 h", "2h "]})

    assert resp.status_code == 200
    assert resp.json["reminder_offsets"] == ["72h", "2h"]


def test_quiet_hours_may_end_at_midnight(client, supervisor):
    resp = patch(client, supervisor, {"quiet_hours_end": "24:00"})

    assert resp.status_code == 200
    assert resp.json["quiet_hours_end"] == "24:00"


def test_a_patch_that_changes_nothing_records_nothing(client, supervisor, new_session):
    before = client.get(SETTINGS, headers=supervisor.headers).json

    resp = patch(client, supervisor, {"expiry_notice": True, "quiet_hours_start": "08:00"})

    assert resp.status_code == 200
    assert resp.json == before
    assert settings_events(new_session) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"reminder_offsets": ["72h", "48h", "24h", "2h"]}, "reminder_offsets"),
        ({"reminder_offsets": ["5x"]}, "reminder_offsets"),
        ({"reminder_offsets": ["0h"]}, "reminder_offsets"),
        ({"reminder_offsets": ["24h", "24h"]}, "reminder_offsets"),
        ({"reminder_offsets": ["24h", "1d"]}, "reminder_offsets"),
        ({"reminder_offsets": ["24h", "1440m"]}, "reminder_offsets"),
        ({"reminder_offsets": "72h"}, "reminder_offsets"),
        ({"reminder_offsets": [72]}, "reminder_offsets"),
        ({"quiet_hours_start": "21:00", "quiet_hours_end": "08:00"}, "quiet_hours_end"),
        ({"quiet_hours_end": "07:00"}, "quiet_hours_end"),
        ({"quiet_hours_start": "21:00"}, "quiet_hours_end"),
        ({"quiet_hours_start": "9:00"}, "quiet_hours_start"),
        ({"quiet_hours_start": "24:30"}, "quiet_hours_start"),
        ({"quiet_hours_start": 800}, "quiet_hours_start"),
        ({"colour": "blue"}, "colour"),
        ({"updated_at": "2020-01-01T00:00:00Z"}, "updated_at"),
        ({"contact_verification": "yes"}, "contact_verification"),
        ({"contact_verification": 1}, "contact_verification"),
        ({"expiry_notice": None}, "expiry_notice"),
        ({"first_due_horizon_days": "365"}, "first_due_horizon_days"),
        ({"first_due_horizon_days": 12.5}, "first_due_horizon_days"),
        ({"first_due_horizon_days": True}, "first_due_horizon_days"),
        ({"first_due_horizon_days": 0}, "first_due_horizon_days"),
        ({"default_timezone": "Europe/Atlantis"}, "default_timezone"),
        ({"default_timezone": 5}, "default_timezone"),
        ({"verification_methods": ["retina"]}, "verification_methods"),
        ({"creditor_email": "not-an-email"}, "creditor_email"),
        ({"creditor_phone": "123"}, "creditor_phone"),
    ],
)
def test_invalid_values_are_422_and_change_nothing(client, supervisor, new_session, body, field):
    before = client.get(SETTINGS, headers=supervisor.headers).json

    resp = patch(client, supervisor, body)

    assert resp.status_code == 422, resp.json
    assert resp.mimetype == PROBLEM_JSON
    assert list(resp.json["errors"]) == [field]
    assert client.get(SETTINGS, headers=supervisor.headers).json == before
    assert settings_events(new_session) == []


def test_one_bad_field_keeps_the_good_ones_from_being_applied(client, supervisor, new_session):
    before = client.get(SETTINGS, headers=supervisor.headers).json

    resp = patch(client, supervisor, {"expiry_notice": False, "reminder_offsets": ["5x"]})

    assert resp.status_code == 422
    assert client.get(SETTINGS, headers=supervisor.headers).json == before
    assert settings_events(new_session) == []


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        ("[]", "application/json", 400),
        ("{not json", "application/json", 400),
        ("null", "application/json", 400),
        ("expiry_notice=false", "application/x-www-form-urlencoded", 415),
    ],
)
def test_patch_body_must_be_a_json_object(client, supervisor, data, content_type, status):
    resp = client.patch(SETTINGS, data=data, content_type=content_type, headers=supervisor.headers)

    assert resp.status_code == status
    assert resp.mimetype == PROBLEM_JSON
