"""The supervisors' and admins' console pages: settings, agents and API keys, operations.
Roles, audit events, bad input (4xx, errors next to fields, nothing written)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rq.job import Job
from sqlalchemy import func, select

from app import settings as org_settings
from app.console_admin import SETTING_FIELDS
from app.models import Agent, ApiKey, AuditEvent, OrgSettings
from app.security import hash_secret
from tests.app.test_console import CSRF, login
from tests.helpers import drain

SETTINGS = "/console/settings"
AGENTS = "/console/agents"
OPS = "/console/ops"


def fails_until_file(path: str) -> str:
    """A job for the operations page: fails until ``path`` exists."""
    if not Path(path).exists():
        raise RuntimeError("not yet")
    return "ran"


def noop() -> None:
    return None


def signed_in(app, person):
    client = app.test_client()
    assert login(client, person.email, person.password).status_code == 302
    return client


def token(client, path: str) -> str:
    match = CSRF.search(client.get(path).get_data(as_text=True))
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def audit_actions(app, action: str) -> list[AuditEvent]:
    with app.extensions["paylink.db"].Session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def settings_form(client) -> dict[str, object]:
    """The settings form as the page fills it in (what a browser would post)."""
    page = client.get(SETTINGS).get_data(as_text=True)
    form: dict[str, object] = {"csrf_token": CSRF.search(page).group(1)}
    for name, field in SETTING_FIELDS.items():
        if field.kind == "bool":
            if re.search(rf'id="{name}" name="{name}" checked', page):
                form[name] = "on"
        elif field.kind == "methods":
            form[name] = re.findall(rf'name="{name}" value="(\w+)" checked', page)
        elif field.kind == "choice":
            form[name] = re.search(r'<option value="(\w+)" selected', page).group(1)
        elif field.kind == "textarea":
            form[name] = re.search(rf'name="{name}"[^>]*>([^<]*)</textarea>', page).group(1)
        else:
            form[name] = re.search(rf'name="{name}" value="([^"]*)"', page).group(1)
    return form


def current_settings(app) -> dict[str, object]:
    with app.extensions["paylink.db"].Session() as s:
        values = org_settings.settings_json(org_settings.get_settings(s))
        s.commit()  # the first read writes the defaults' row
        return values


# --- roles --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "role", "status"),
    [
        (SETTINGS, "agent", 403),
        (SETTINGS, "supervisor", 200),
        (SETTINGS, "admin", 200),
        (AGENTS, "agent", 403),
        (AGENTS, "supervisor", 403),
        (AGENTS, "admin", 200),
        (OPS, "agent", 403),
        (OPS, "supervisor", 403),
        (OPS, "admin", 200),
    ],
)
def test_pages_by_role(app, make_agent, path, role, status):
    client = signed_in(app, make_agent(role))

    resp = client.get(path)

    assert resp.status_code == status
    assert resp.mimetype == "text/html"


def test_signed_out_visitors_are_sent_to_sign_in(client):
    for path in (SETTINGS, AGENTS, OPS):
        resp = client.get(path)
        assert resp.status_code == 302
        assert "/console/login" in resp.headers["Location"]


def test_an_agent_cannot_post_settings_or_manage_agents(app, agent, supervisor):
    client = signed_in(app, agent)
    csrf = token(client, "/console/")
    before = current_settings(app)

    assert (
        client.post(SETTINGS, data={"csrf_token": csrf, "link_lifetime_hours": "1"}).status_code
        == 403
    )
    assert client.post(AGENTS, data={"csrf_token": csrf, "email": "x@y.z"}).status_code == 403
    assert (
        client.post(f"{AGENTS}/{supervisor.id}/deactivate", data={"csrf_token": csrf}).status_code
        == 403
    )

    assert current_settings(app) == before
    assert audit_actions(app, "settings.updated") == []


# --- settings -----------------------------------------------------------------------------


def test_every_setting_has_a_field_on_the_page(app, supervisor):
    assert set(SETTING_FIELDS) == set(org_settings.FIELDS)
    page = signed_in(app, supervisor).get(SETTINGS).get_data(as_text=True)
    for name in SETTING_FIELDS:
        assert f'name="{name}"' in page
        assert f'for="{name}' in page  # a visible label (checkbox lists: one per option)
    assert 'value="72h, 24h, 2h"' in page
    assert 'value="08:00"' in page


def test_saving_unchanged_settings_changes_and_records_nothing(app, supervisor):
    client = signed_in(app, supervisor)
    before = current_settings(app)

    resp = client.post(SETTINGS, data=settings_form(client))

    assert resp.status_code == 302
    assert current_settings(app) == before
    assert audit_actions(app, "settings.updated") == []


def test_a_supervisor_changes_settings_with_an_audit_event(app, supervisor):
    client = signed_in(app, supervisor)
    form = settings_form(client)
    form.update(
        link_lifetime_hours="48", reminder_offsets="2h, 3d", quiet_hours_start="09:30",
        verification_methods=["zip"], retry_after_days="", failed_plan_action="cancelled",
        creditor_name="Acme Recovery",
    )  # fmt: skip
    form.pop("allow_skip_offer")  # the box unticked

    resp = client.post(SETTINGS, data=form)

    assert resp.status_code == 302
    after = current_settings(app)
    assert after["link_lifetime_hours"] == 48
    assert after["reminder_offsets"] == ["3d", "2h"]
    assert after["quiet_hours_start"] == "09:30"
    assert after["verification_methods"] == ["zip"]
    assert after["retry_after_days"] == []
    assert after["failed_plan_action"] == "cancelled"
    assert after["creditor_name"] == "Acme Recovery"
    assert after["allow_skip_offer"] is False
    (event,) = audit_actions(app, "settings.updated")
    assert (event.actor_type, event.actor_id) == ("agent", str(supervisor.id))
    assert event.data["before"]["link_lifetime_hours"] == 168
    assert event.data["after"]["link_lifetime_hours"] == 48
    assert set(event.data["after"]) == {
        "link_lifetime_hours", "reminder_offsets", "quiet_hours_start", "verification_methods",
        "retry_after_days", "failed_plan_action", "creditor_name", "allow_skip_offer",
    }  # fmt: skip
    with app.extensions["paylink.db"].Session() as s:
        assert s.get(OrgSettings, 1).updated_by_agent_id == supervisor.id
    assert "Settings saved." in client.get(SETTINGS).get_data(as_text=True)


def test_bad_settings_are_a_400_with_errors_by_the_fields_and_nothing_saved(app, supervisor):
    client = signed_in(app, supervisor)
    before = current_settings(app)
    form = settings_form(client)
    form.update(
        link_lifetime_hours="ten", reminder_offsets="72h, 5x", quiet_hours_start="22:00",
        quiet_hours_end="21:00", verification_methods=[], creditor_email="nobody",
        charge_hour="24", default_timezone="Mars/Base", offer_lifetime_hours="72",
    )  # fmt: skip

    resp = client.post(SETTINGS, data=form)

    assert resp.status_code == 400
    page = resp.get_data(as_text=True)
    assert 'value="ten"' in page  # what was typed stays
    assert 'value="72h, 5x"' in page
    assert 'value="Mars/Base"' in page
    for name in (
        "link_lifetime_hours", "reminder_offsets", "verification_methods", "creditor_email",
        "charge_hour", "default_timezone",
    ):  # fmt: skip
        assert f'id="{name}-error"' in page, name
    assert "must be a whole number" in page
    assert "is not an offset such as 72h" in page
    assert "Nothing was saved" in page
    assert current_settings(app) == before  # offer_lifetime_hours was fine, and not saved
    assert audit_actions(app, "settings.updated") == []


def test_quiet_hours_end_before_start_is_refused(app, supervisor):
    client = signed_in(app, supervisor)
    form = settings_form(client)
    form.update(quiet_hours_start="20:00", quiet_hours_end="09:00")

    resp = client.post(SETTINGS, data=form)

    assert resp.status_code == 400
    assert 'id="quiet_hours_end-error">must be later than quiet_hours_start' in resp.get_data(
        as_text=True
    )


def test_settings_post_without_csrf_is_refused(app, supervisor):
    client = signed_in(app, supervisor)
    form = settings_form(client)
    form.pop("csrf_token")
    form["link_lifetime_hours"] = "5"

    assert client.post(SETTINGS, data=form).status_code == 400
    assert current_settings(app)["link_lifetime_hours"] == 168


# --- agents and keys ----------------------------------------------------------------------


def test_an_admin_adds_an_agent_who_can_then_sign_in(app, admin):
    client = signed_in(app, admin)
    data = {
        "csrf_token": token(client, AGENTS), "email": "New.Person@Paylink.test", "name": "New",
        "role": "supervisor", "password": "a long enough password",
    }  # fmt: skip

    resp = client.post(AGENTS, data=data)

    assert resp.status_code == 302
    with app.extensions["paylink.db"].Session() as s:
        agent = s.scalar(select(Agent).where(Agent.email == "new.person@paylink.test"))
    assert (agent.role, agent.active, agent.name) == ("supervisor", True, "New")
    (event,) = [e for e in audit_actions(app, "agent.created") if e.object_id == str(agent.id)]
    assert event.actor_id == str(admin.id)
    assert (
        login(app.test_client(), "new.person@paylink.test", "a long enough password").status_code
        == 302
    )


def test_bad_agent_input_is_a_400_with_field_errors_and_no_agent(app, admin):
    client = signed_in(app, admin)
    before = count_agents(app)
    data = {
        "csrf_token": token(client, AGENTS), "email": "not-an-email", "name": "Kim",
        "role": "owner", "password": "short",
    }  # fmt: skip

    resp = client.post(AGENTS, data=data)

    assert resp.status_code == 400
    page = resp.get_data(as_text=True)
    assert 'id="email-error">Email must be an email address.' in page
    assert 'id="role-error">Choose agent, supervisor or admin.' in page
    assert 'id="password-error">A password needs at least 10 characters.' in page
    assert 'value="not-an-email"' in page
    assert 'value="Kim"' in page
    assert "short" not in page  # a password is never echoed
    assert count_agents(app) == before


def test_a_taken_email_is_an_error_on_the_email_field(app, admin, agent):
    client = signed_in(app, admin)
    data = {
        "csrf_token": token(client, AGENTS), "email": agent.email.upper(), "name": "",
        "role": "agent", "password": "a long enough password",
    }  # fmt: skip

    resp = client.post(AGENTS, data=data)

    assert resp.status_code == 400
    assert "An agent with that email already exists." in resp.get_data(as_text=True)


def count_agents(app) -> int:
    with app.extensions["paylink.db"].Session() as s:
        return s.scalar(select(func.count()).select_from(Agent)) or 0


def test_deactivate_and_activate_an_agent(app, admin, agent):
    client = signed_in(app, admin)
    agent_client = signed_in(app, agent)

    resp = client.post(
        f"{AGENTS}/{agent.id}/deactivate", data={"csrf_token": token(client, AGENTS)}
    )

    assert resp.status_code == 302
    assert agent_client.get("/console/").status_code == 302  # signed out
    assert app.test_client().get("/api/v1/settings", headers=agent.headers).status_code == 401
    assert [e.object_id for e in audit_actions(app, "agent.deactivated")] == [str(agent.id)]

    resp = client.post(f"{AGENTS}/{agent.id}/activate", data={"csrf_token": token(client, AGENTS)})

    assert resp.status_code == 302
    assert app.test_client().get("/api/v1/settings", headers=agent.headers).status_code == 200
    assert [e.object_id for e in audit_actions(app, "agent.activated")] == [str(agent.id)]


def test_an_admin_cannot_deactivate_themselves(app, admin):
    client = signed_in(app, admin)

    resp = client.post(
        f"{AGENTS}/{admin.id}/deactivate", data={"csrf_token": token(client, AGENTS)}
    )

    assert resp.status_code == 400
    assert "You cannot deactivate yourself" in resp.get_data(as_text=True)
    with app.extensions["paylink.db"].Session() as s:
        assert s.get(Agent, admin.id).active
    assert audit_actions(app, "agent.deactivated") == []
    assert client.get(AGENTS).status_code == 200  # still signed in


def role_of(app, agent_id: int) -> str:
    with app.extensions["paylink.db"].Session() as s:
        return s.get(Agent, agent_id).role


def test_an_admin_changes_an_agents_role_which_applies_at_once(app, admin, agent):
    agent_client = signed_in(app, agent)
    assert agent_client.get(SETTINGS).status_code == 403  # an agent's role
    client = signed_in(app, admin)
    page = client.get(AGENTS).get_data(as_text=True)
    assert f'<label for="role-{agent.id}">Role of {agent.email}</label>' in page
    assert f'for="role-{admin.id}"' not in page  # not their own

    resp = client.post(
        f"{AGENTS}/{agent.id}/role",
        data={"csrf_token": token(client, AGENTS), "role": "supervisor"},
    )

    assert resp.status_code == 302
    assert role_of(app, agent.id) == "supervisor"
    assert agent_client.get(SETTINGS).status_code == 200  # the same sign-in, the new role
    assert app.test_client().get("/api/v1/settings", headers=agent.headers).status_code == 200
    (event,) = audit_actions(app, "agent.role_changed")
    assert (event.object_id, event.data) == (str(agent.id), {"from": "agent", "to": "supervisor"})
    # The same role again changes and records nothing.
    again = client.post(
        f"{AGENTS}/{agent.id}/role",
        data={"csrf_token": token(client, AGENTS), "role": "supervisor"},
    )
    assert again.status_code == 302
    assert len(audit_actions(app, "agent.role_changed")) == 1


def test_a_role_change_refused_changes_nothing(app, admin, agent, supervisor):
    client = signed_in(app, admin)
    csrf = token(client, AGENTS)
    own = client.post(f"{AGENTS}/{admin.id}/role", data={"csrf_token": csrf, "role": "agent"})
    assert own.status_code == 400
    assert "You cannot change your own role" in own.get_data(as_text=True)
    bad = client.post(f"{AGENTS}/{agent.id}/role", data={"csrf_token": csrf, "role": "owner"})
    assert bad.status_code == 400
    assert "Choose agent, supervisor or admin." in bad.get_data(as_text=True)
    no_csrf = client.post(f"{AGENTS}/{agent.id}/role", data={"role": "admin"})
    assert no_csrf.status_code == 400
    missing = client.post(f"{AGENTS}/999999/role", data={"csrf_token": csrf, "role": "admin"})
    assert missing.status_code == 404
    # A supervisor may not hand out roles.
    other = signed_in(app, supervisor)
    refused = other.post(
        f"{AGENTS}/{agent.id}/role", data={"csrf_token": token(other, "/console/"), "role": "admin"}
    )
    assert refused.status_code == 403
    assert (role_of(app, admin.id), role_of(app, agent.id)) == ("admin", "agent")
    assert audit_actions(app, "agent.role_changed") == []


def test_unknown_agent_or_key_is_a_404_page(app, admin):
    client = signed_in(app, admin)
    csrf = token(client, AGENTS)
    for path in (
        f"{AGENTS}/999999/deactivate",
        f"{AGENTS}/{2**70}/keys",
        "/console/keys/999999/revoke",
    ):
        resp = client.post(path, data={"csrf_token": csrf})
        assert resp.status_code == 404, path
        assert resp.mimetype == "text/html"


def test_a_new_key_is_shown_once_stored_hashed_and_works(app, admin, agent):
    client = signed_in(app, admin)

    resp = client.post(
        f"{AGENTS}/{agent.id}/keys", data={"csrf_token": token(client, AGENTS), "name": "CRM sync"}
    )

    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    key = re.search(r'id="new-key" readonly value="([^"]+)"', resp.get_data(as_text=True)).group(1)
    with app.extensions["paylink.db"].Session() as s:
        stored = s.scalar(select(ApiKey).where(ApiKey.name == "CRM sync"))
        assert stored.key_hash == hash_secret(key)
        assert stored.agent_id == agent.id
        texts = [str(v) for row in s.execute(select(ApiKey.__table__)) for v in row]
    assert key not in texts  # only its hash
    assert key not in client.get(AGENTS).get_data(as_text=True)  # never shown again
    headers = {"Authorization": f"Bearer {key}"}
    assert app.test_client().get("/api/v1/settings", headers=headers).status_code == 200
    (event,) = [e for e in audit_actions(app, "api_key.created") if e.object_id == str(stored.id)]
    assert event.actor_id == str(admin.id)

    resp = client.post(
        f"/console/keys/{stored.id}/revoke", data={"csrf_token": token(client, AGENTS)}
    )

    assert resp.status_code == 302
    assert app.test_client().get("/api/v1/settings", headers=headers).status_code == 401
    assert [e.object_id for e in audit_actions(app, "api_key.revoked")] == [str(stored.id)]


def test_a_key_name_too_long_or_for_a_deactivated_agent_is_refused(app, admin, agent):
    client = signed_in(app, admin)
    csrf = token(client, AGENTS)
    before = count_keys(app)

    long_name = client.post(
        f"{AGENTS}/{agent.id}/keys", data={"csrf_token": csrf, "name": "k" * 101}
    )
    client.post(f"{AGENTS}/{agent.id}/deactivate", data={"csrf_token": csrf})
    inactive = client.post(f"{AGENTS}/{agent.id}/keys", data={"csrf_token": csrf, "name": "x"})

    assert long_name.status_code == 400
    assert "Key name must be at most 100 characters." in long_name.get_data(as_text=True)
    assert inactive.status_code == 400
    assert f"{agent.email} is deactivated: activate them" in inactive.get_data(as_text=True)
    assert count_keys(app) == before


def count_keys(app) -> int:
    with app.extensions["paylink.db"].Session() as s:
        return s.scalar(select(func.count()).select_from(ApiKey)) or 0


# --- operations ---------------------------------------------------------------------------


def test_ops_shows_queue_depths_and_failed_jobs_and_retries_one(app, admin, tmp_path):
    job_queue = app.extensions["paylink.queue"]
    marker = tmp_path / "ran.txt"
    failing = job_queue.queue("default").enqueue(
        fails_until_file, args=(str(marker),), job_id="sample-fails-1"
    )
    _run_allowing_failures(app)
    job_queue.queue("messages").enqueue(noop)
    client = signed_in(app, admin)

    page = client.get(OPS).get_data(as_text=True)

    assert re.search(r'<th scope="row">messages</th><td class="num">1</td>', page)
    assert re.search(
        r'<th scope="row">default</th>(<td class="num">\d+</td>){4}<td class="num">1</td>', page
    )
    assert "sample-fails-1" in page
    assert "RuntimeError: not yet" in page

    marker.write_text("now")
    resp = client.post(
        f"{OPS}/failed/default/sample-fails-1/retry", data={"csrf_token": token(client, OPS)}
    )

    assert resp.status_code == 302
    assert failing.id not in job_queue.queue("default").failed_job_registry
    drain(app)
    assert Job.fetch(failing.id, connection=job_queue.connection).get_status() == "finished"
    (event,) = audit_actions(app, "job.requeued")
    assert (event.object_id, event.actor_id, event.data) == (
        "sample-fails-1", str(admin.id), {"queue": "default"},
    )  # fmt: skip
    again = client.post(
        f"{OPS}/failed/default/sample-fails-1/retry", data={"csrf_token": token(client, OPS)}
    )
    assert again.status_code == 404


@pytest.mark.parametrize(
    "path",
    ["/failed/nope/x/retry", "/failed/default/bad%20id/retry", "/failed/default/unknown/retry"],
)
def test_retrying_an_unknown_job_is_a_404(app, admin, path):
    client = signed_in(app, admin)
    resp = client.post(OPS + path, data={"csrf_token": token(client, OPS)})
    assert resp.status_code == 404
    assert audit_actions(app, "job.requeued") == []


def _run_allowing_failures(app) -> None:
    from workers.worker import build_worker

    build_worker(app).work(burst=True, with_scheduler=False)
