"""CSV import and link campaigns in the console: the pages, bad input, and the real job
run by a real worker (each account gets one link and one message, even run twice)."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text

from app.models import Account, AuditEvent, Message
from links.campaign_models import Campaign, CampaignItem
from links.models import PaymentLink
from tests.app.test_console import CSRF, login
from tests.helpers import drain
from workers import campaigns as campaign_jobs

# 15:00 UTC is 10:00 in New York: inside the default 08:00-21:00 sending window.
NOON_NY = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
INDEX = "/console/campaigns"


@pytest.fixture(autouse=True)
def _at_noon(time_machine):
    time_machine.move_to(NOON_NY, tick=False)


@pytest.fixture
def console(client, agent):
    assert login(client, agent.email, agent.password).status_code == 302
    return client


def token(client, path: str = INDEX) -> str:
    match = CSRF.search(client.get(path).get_data(as_text=True))
    assert match
    return match.group(1)


def upload(client, content: bytes, filename: str = "accounts.csv"):
    return client.post(
        f"{INDEX}/import",
        data={"csrf_token": token(client), "file": (io.BytesIO(content), filename)},
        content_type="multipart/form-data",
    )


def start(client, **form: Any):
    data = {"csrf_token": token(client), "name": "November", "channels": ["sms"], **form}
    return client.post(INDEX, data=data)


def add_accounts(app, *rows: dict[str, Any]) -> dict[str, int]:
    ids = {}
    with app.extensions["paylink.db"].transaction() as s:
        for row in rows:
            values = {
                "name": "Dee Moss", "phone": "+12025550143", "email": "dee@example.com",
                "timezone": "America/New_York", "balance_cents": 10_000, **row,
            }  # fmt: skip
            account = Account(**values)
            s.add(account)
            s.flush()
            ids[account.external_id] = account.id
    return ids


def count(app, model, *where) -> int:
    with app.extensions["paylink.db"].Session() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


def campaign_row(app, campaign_id: int) -> tuple[Campaign, dict[str, str]]:
    with app.extensions["paylink.db"].Session() as s:
        campaign = s.get(Campaign, campaign_id)
        items = s.execute(
            select(Account.external_id, CampaignItem.status)
            .join(Account, Account.id == CampaignItem.account_id)
            .where(CampaignItem.campaign_id == campaign_id)
        ).all()
        return campaign, dict(items)


def only_campaign_id(app) -> int:
    with app.extensions["paylink.db"].Session() as s:
        ids = s.scalars(select(Campaign.id)).all()
    assert len(ids) == 1
    return ids[0]


# --- import -------------------------------------------------------------------------------


def test_signed_out_people_are_sent_to_sign_in(client):
    resp = client.get(INDEX)
    assert resp.status_code == 302
    assert "/console/login" in resp.headers["Location"]


def test_any_agent_sees_the_import_form_and_campaign_list(console):
    page = console.get(INDEX).get_data(as_text=True)
    assert '<label for="file">CSV file</label>' in page
    assert '<label for="accounts">Account numbers, one per line</label>' in page
    assert "No campaigns yet." in page


def test_import_lists_each_bad_row_and_fills_the_campaign_with_the_good_ones(console, app):
    csv_text = (
        "external_id,name,phone,balance_cents\n"
        "IMP-1,Ann Lee,(202) 555-0143,1000\n"
        "IMP-2,Bob Stone,not a phone,2500\n"
        "IMP-3,,,\n"
        "IMP-4,Cy Park,,300\n"
    )

    resp = upload(console, csv_text.encode())

    assert resp.status_code == 200
    page = resp.get_data(as_text=True)
    assert "2 created, 0 updated, 2 rows left out." in page
    assert "<tr><td>3</td><td>phone</td><td>is not a phone number</td></tr>" in page
    assert "<td>4</td><td>name</td><td>is required</td>" in page
    textarea = page.split('name="accounts"', 1)[1].split("</textarea>", 1)[0]
    assert textarea.split(">", 1)[1].split() == ["IMP-1", "IMP-4"]
    assert count(app, Account) == 2
    assert count(app, AuditEvent, AuditEvent.action == "accounts.imported") == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"external_id,name,colour\nX,Y,red\n", "unknown column(s): colour"),
        ("external_id,name,balance_cents\nÅ,Ann,1\n".encode("latin-1"), "must be UTF-8"),
    ],
)
def test_a_file_that_cannot_be_read_is_a_400_next_to_the_field(console, app, content, message):
    resp = upload(console, content)

    assert resp.status_code == 400
    page = resp.get_data(as_text=True)
    assert 'id="file-error"' in page
    assert message in page
    assert 'aria-invalid="true"' in page
    assert count(app, Account) == 0


def test_an_import_without_a_file_is_a_400(console):
    resp = console.post(f"{INDEX}/import", data={"csrf_token": token(console)})
    assert resp.status_code == 400
    assert "Choose a CSV file to upload." in resp.get_data(as_text=True)


def test_import_without_csrf_token_is_refused(console, app):
    resp = console.post(
        f"{INDEX}/import",
        data={"file": (io.BytesIO(b"external_id,name,balance_cents\nA,B,1\n"), "a.csv")},
        content_type="multipart/form-data",
    )
    assert resp.status_code == 400
    assert count(app, Account) == 0


# --- starting a campaign ------------------------------------------------------------------


def test_bad_campaign_input_is_a_400_that_keeps_what_was_typed(console, app):
    add_accounts(app, {"external_id": "K-1"})

    resp = start(console, name="  ", accounts="K-1\nK-404", channels=[], expires_in_hours="0")

    assert resp.status_code == 400
    page = resp.get_data(as_text=True)
    assert "Name must not be empty." in page
    assert "No account has the number K-404." in page
    assert "Choose SMS, Email or both." in page
    assert "Enter whole hours from 1 to 2160." in page
    assert "K-1\nK-404</textarea>" in page
    assert 'value="0"' in page
    assert count(app, Campaign) == 0
    assert count(app, CampaignItem) == 0


def test_a_campaign_sends_one_link_and_message_per_account_even_when_run_twice(console, app):
    ids = add_accounts(
        app,
        {"external_id": "C-1"},
        {"external_id": "C-2"},
        {"external_id": "C-3", "balance_cents": 0},
        {"external_id": "C-4", "phone": None},
        {"external_id": "C-5", "hold": "dispute"},
    )

    resp = start(console, accounts="C-1\nC-2, C-3\nC-4 C-5 C-1")

    assert resp.status_code == 302
    campaign_id = only_campaign_id(app)
    assert resp.headers["Location"].endswith(f"/console/campaigns/{campaign_id}")
    # Run a second job for the same campaign in the same drain: a retry or a duplicate.
    app.extensions["paylink.queue"].enqueue(campaign_jobs_spec(campaign_id))
    drain(app)
    campaign_jobs.run_campaign(campaign_id)  # and once more, in this process

    campaign, items = campaign_row(app, campaign_id)
    assert campaign.status == "completed"
    assert campaign.total == 5
    assert items == {
        "C-1": "sent", "C-2": "sent", "C-3": "skipped", "C-4": "skipped", "C-5": "skipped",
    }  # fmt: skip
    for external_id in ("C-1", "C-2"):
        account_id = ids[external_id]
        assert count(app, PaymentLink, PaymentLink.account_id == account_id) == 1
        assert count(app, Message, Message.account_id == account_id) == 1
        with app.extensions["paylink.db"].Session() as s:
            message = s.scalar(select(Message).where(Message.account_id == account_id))
            link = s.scalar(select(PaymentLink).where(PaymentLink.account_id == account_id))
        assert (message.channel, message.status, message.kind) == ("sms", "delivered", "link")
        assert link.amount_cents == 10_000
        assert "/p/" in message.body
    for external_id in ("C-3", "C-4", "C-5"):
        assert count(app, PaymentLink, PaymentLink.account_id == ids[external_id]) == 0
    assert count(app, AuditEvent, AuditEvent.action == "campaign.created") == 1
    assert count(app, AuditEvent, AuditEvent.action == "campaign.completed") == 1

    page = console.get(f"{INDEX}/{campaign_id}").get_data(as_text=True)
    assert "5 of 5 accounts done" in page
    assert "no balance to pay" in page
    assert "no usable phone" in page
    assert "account on hold (dispute)" in page
    assert "<td>SMS</td><td>delivered</td><td>2</td>" in page


def campaign_jobs_spec(campaign_id: int):
    from links.campaigns import run_job

    return run_job(campaign_id, "duplicate")


def test_a_batch_that_fails_writes_nothing_and_a_rerun_sends_each_link_once(console, app):
    ids = add_accounts(app, {"external_id": "F-1"}, {"external_id": "F-2"}, {"external_id": "F-3"})
    assert start(console, accounts="F-1 F-2 F-3", channels=["sms", "email"]).status_code == 302
    campaign_id = only_campaign_id(app)
    # The database refuses the third link, as a crash mid-batch would stop the job there.
    engine = app.extensions["paylink.db"].engine
    if engine.dialect.name == "postgresql":
        create = [
            "CREATE FUNCTION refuse_link() RETURNS trigger AS $$ BEGIN "
            "RAISE EXCEPTION 'refused'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_link BEFORE INSERT ON payment_link FOR EACH ROW "
            f"WHEN (NEW.account_id = {ids['F-3']}) EXECUTE FUNCTION refuse_link()",
        ]
        drop = ["DROP TRIGGER refuse_link ON payment_link", "DROP FUNCTION refuse_link()"]
    else:
        create = [
            "CREATE TRIGGER refuse_link BEFORE INSERT ON payment_link "
            f"WHEN NEW.account_id = {ids['F-3']} BEGIN SELECT RAISE(ABORT, 'refused'); END"
        ]
        drop = ["DROP TRIGGER refuse_link"]
    with engine.begin() as conn:
        for statement in create:
            conn.execute(text(statement))

    with pytest.raises(Exception, match="refused"):
        campaign_jobs.run_campaign(campaign_id)

    _campaign, items = campaign_row(app, campaign_id)
    assert set(items.values()) == {"pending"}
    assert count(app, PaymentLink) == 0
    assert count(app, Message) == 0
    with engine.begin() as conn:
        for statement in drop:
            conn.execute(text(statement))
    app.extensions["paylink.queue"].connection.flushall()  # the start job, never run

    campaign_jobs.run_campaign(campaign_id)
    campaign_jobs.run_campaign(campaign_id)
    drain(app)

    campaign, items = campaign_row(app, campaign_id)
    assert campaign.status == "completed"
    assert set(items.values()) == {"sent"}
    for account_id in ids.values():
        assert count(app, PaymentLink, PaymentLink.account_id == account_id) == 1
        assert count(app, Message, Message.account_id == account_id) == 2  # SMS and email
    assert count(app, Message, Message.status != "delivered") == 0


def test_cancel_stops_the_accounts_not_yet_sent(console, app):
    add_accounts(app, {"external_id": "X-1"}, {"external_id": "X-2"})
    start(console, accounts="X-1 X-2")
    campaign_id = only_campaign_id(app)
    detail = f"{INDEX}/{campaign_id}"

    resp = console.post(f"{detail}/cancel", data={"csrf_token": token(console, detail)})

    assert resp.status_code == 302
    drain(app)  # the start job finds a cancelled campaign and does nothing
    campaign, items = campaign_row(app, campaign_id)
    assert campaign.status == "cancelled"
    assert set(items.values()) == {"cancelled"}
    assert count(app, PaymentLink) == 0
    assert count(app, AuditEvent, AuditEvent.action == "campaign.cancelled") == 1
    again = console.post(f"{detail}/cancel", data={"csrf_token": token(console, detail)})
    assert again.status_code == 409
    resume = console.post(f"{detail}/resume", data={"csrf_token": token(console, detail)})
    assert resume.status_code == 409


def test_resume_starts_a_lost_job_again(console, app):
    add_accounts(app, {"external_id": "R-1"})
    start(console, accounts="R-1")
    campaign_id = only_campaign_id(app)
    app.extensions["paylink.queue"].connection.flushall()  # the job is lost
    detail = f"{INDEX}/{campaign_id}"
    assert "Resume sending" in console.get(detail).get_data(as_text=True)

    resp = console.post(f"{detail}/resume", data={"csrf_token": token(console, detail)})

    assert resp.status_code == 302
    drain(app)
    campaign, items = campaign_row(app, campaign_id)
    assert (campaign.status, items) == ("completed", {"R-1": "sent"})
    assert count(app, AuditEvent, AuditEvent.action == "campaign.resumed") == 1


def test_the_sweep_restarts_a_campaign_whose_job_was_lost(console, app, time_machine):
    add_accounts(app, {"external_id": "S-1"}, {"external_id": "S-2"})
    start(console, accounts="S-1,S-2")
    campaign_id = only_campaign_id(app)
    app.extensions["paylink.queue"].connection.flushall()  # the job is lost
    with app.app_context():
        soon = campaign_jobs.resume_stalled_campaigns(NOON_NY + timedelta(minutes=1))
        later = NOON_NY + campaign_jobs.STALLED_AFTER
        found = campaign_jobs.resume_stalled_campaigns(later)
        again = campaign_jobs.resume_stalled_campaigns(later + timedelta(seconds=30))
    assert soon == {"stalled_campaigns": 0, "enqueued": 0}  # not stalled yet
    assert found == {"stalled_campaigns": 1, "enqueued": 1}
    assert again == {"stalled_campaigns": 1, "enqueued": 0}  # the same minute's job
    drain(app)
    campaign, items = campaign_row(app, campaign_id)
    assert (campaign.status, items) == ("completed", {"S-1": "sent", "S-2": "sent"})
    assert count(app, Message, Message.kind == "link") == 2
    with app.app_context():
        done = campaign_jobs.resume_stalled_campaigns(later + timedelta(minutes=10))
    assert done == {"stalled_campaigns": 0, "enqueued": 0}


def test_campaign_list_shows_progress_and_unknown_campaign_is_404(console, app):
    add_accounts(app, {"external_id": "L-1"})
    start(console, name="Spring letters", accounts="L-1")
    drain(app)

    page = console.get(INDEX).get_data(as_text=True)
    assert "Spring letters" in page
    assert "<td>completed</td><td>1</td><td>1</td><td>0</td><td>0</td>" in page
    missing = console.get(f"{INDEX}/999999")
    assert missing.status_code == 404
    assert missing.mimetype == "text/html"
    assert console.get(f"{INDEX}/{2**70}").status_code == 404


def test_a_large_campaign_goes_in_batches_each_job_handing_on_to_the_next(
    console, app, monkeypatch
):
    # Two accounts a batch and no time budget: every job does one batch and hands on.
    monkeypatch.setattr(campaign_jobs, "BATCH", 2)
    monkeypatch.setattr(campaign_jobs, "TIME_BUDGET", -1.0)
    ids = add_accounts(app, *({"external_id": f"B-{n}"} for n in range(5)))
    start(console, accounts=" ".join(ids))
    campaign_id = only_campaign_id(app)

    drain(app)

    campaign, items = campaign_row(app, campaign_id)
    assert campaign.status == "completed"
    assert set(items.values()) == {"sent"}
    assert count(app, PaymentLink) == 5
    assert count(app, Message) == 5
    job_queue = app.extensions["paylink.queue"]
    finished = job_queue.queue("default").finished_job_registry.get_job_ids()
    handed_on = sorted(j for j in finished if j.startswith(f"campaign-{campaign_id}-after-"))
    assert len(handed_on) == 2  # after items 2 and 4; the third job found one left
