"""Offer reminders and expiry: planned around quiet hours, sent by the sweep through real
workers once each, never after the offer ends; expired offers with their notice, once."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from app import audit
from app.messaging.compliance import QuietHours
from app.messaging.outbox import MessageEnv
from app.models import Account, AuditEvent, Message
from links.tokens import OFFER, UrlTokens
from offers import service
from offers.models import Offer, OfferEvent, OfferReminder
from offers.reminders import plan_reminders
from tests.conftest import TEST_SECRET_KEYS
from tests.helpers import drain, index_plans
from tests.links.test_link_duties import run_together, sweep
from workers import offers as offer_jobs

NY = ZoneInfo("America/New_York")
HOURS = QuietHours(8 * 60, 21 * 60)
# 15:00 UTC is 10:00 in New York.
SENT = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
EXPIRES = SENT + timedelta(days=5)  # Nov 28, 10:00 in New York
TOKENS = UrlTokens(TEST_SECRET_KEYS, OFFER)


def ny(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=NY).astimezone(UTC)


# --- planning ------------------------------------------------------------------------------


def plan(nominal: list[datetime], sent_at: datetime, expires_at: datetime):
    return plan_reminders(nominal, sent_at=sent_at, expires_at=expires_at, tz=NY, hours=HOURS)


def test_reminders_inside_the_window_keep_their_times():
    nominal = [EXPIRES - timedelta(hours=h) for h in (72, 24, 2)]
    assert [(p.at, p.decision) for p in plan(nominal, SENT, EXPIRES)] == [
        (t, None) for t in nominal
    ]


def test_a_reminder_in_quiet_hours_goes_at_the_last_allowed_time_before():
    [moved] = plan([ny(25, 6)], SENT, EXPIRES)
    assert moved.at == ny(24, 20, 45)  # 15 minutes before quiet hours, not the last minute
    assert "moved earlier to Tue Nov 24 20:45" in moved.decision


def test_it_goes_at_the_next_allowed_time_when_the_one_before_is_not_after_the_offer():
    sent = ny(24, 21, 30)  # the offer itself went out in quiet hours
    [moved] = plan([ny(24, 23)], sent, ny(25, 12))
    assert moved.at == ny(25, 8)
    assert "moved later to Wed Nov 25 08:00" in moved.decision


def test_it_is_skipped_when_neither_fits_before_expiry():
    [skipped] = plan([ny(25, 5, 30)], ny(24, 21, 30), ny(25, 7, 30))
    assert skipped.at is None
    assert "skipped" in skipped.decision


def test_reminders_that_all_fall_in_quiet_hours_never_collide():
    # Both would move later to 08:00; the second has no time of its own left: skipped.
    first, second = plan([ny(24, 23), ny(25, 2)], ny(24, 21, 30), ny(25, 12))
    assert first.at == ny(25, 8)
    assert second.at is None
    assert "skipped" in second.decision


def test_a_reminder_moved_earlier_must_be_after_the_previous_one():
    # The first keeps its nominal 20:50; the second (22:00) cannot go earlier (20:45 is
    # before it), and 08:00 next day is after it and before expiry.
    first, second = plan([ny(24, 20, 50), ny(24, 22)], SENT, ny(25, 12))
    assert first.at == ny(24, 20, 50)
    assert second.at == ny(25, 8)


# --- arranging -----------------------------------------------------------------------------

_ids = iter(range(1, 1_000_000))


def make_account(app, **values: Any) -> int:
    defaults: dict[str, Any] = {
        "external_id": f"R-{next(_ids)}", "name": "Rosa Diaz", "phone": "+12025550143",
        "email": "rosa@example.com", "timezone": "America/New_York", "balance_cents": 90_000,
        "currency": "USD",
    }  # fmt: skip
    with app.extensions["paylink.db"].transaction() as session:
        account = Account(**{**defaults, **values}, created_at=SENT, updated_at=SENT)
        session.add(account)
        session.flush()
        return account.id


def make_offer(
    app,
    account_id: int | None = None,
    *,
    offsets: tuple[str, ...] = ("72h", "24h", "2h"),
    expires_at: datetime = EXPIRES,
    channels: tuple[str, ...] = ("sms", "email"),
    now: datetime = SENT,
) -> int:
    """An offer made as the API makes one, as of ``now``."""
    account_id = account_id or make_account(app)
    env = MessageEnv.from_config(app.extensions["paylink.config"])
    with app.extensions["paylink.db"].transaction() as session:
        request = service.OfferRequest(
            account=session.get(Account, account_id), kind="plan", total_cents=90_000,
            installment_count=3, frequency="monthly", first_due_date=date(2026, 12, 1),
            expires_at=expires_at, channels=list(channels), reminder_offsets=list(offsets),
        )  # fmt: skip
        offer, _url, _messages = service.create_offer(
            session, request, percent_off=None, actor=audit.Actor.system("test"), agent_id=None,
            now=now, env=env, tokens=TOKENS,
        )  # fmt: skip
        return offer.id


def reminders(app, offer_id: int) -> list[tuple[int, str, str | None]]:
    with app.extensions["paylink.db"].transaction() as session:
        rows = session.scalars(
            select(OfferReminder).where(OfferReminder.offer_id == offer_id).order_by("n")
        )
        return [(r.n, r.status, r.decision) for r in rows]


def sent_kinds(app, account_id: int | None = None) -> list[tuple[str, str, str]]:
    """(kind, channel, status) of every message, in the order written."""
    with app.extensions["paylink.db"].transaction() as session:
        stmt = select(Message.kind, Message.channel, Message.status).order_by(Message.id)
        if account_id is not None:
            stmt = stmt.where(Message.account_id == account_id)
        return [tuple(r) for r in session.execute(stmt)]


def offer_status(app, offer_id: int) -> str:
    with app.extensions["paylink.db"].transaction() as session:
        return session.get(Offer, offer_id).status


def trail_types(app, offer_id: int) -> list[str]:
    with app.extensions["paylink.db"].transaction() as session:
        return list(
            session.scalars(
                select(OfferEvent.type).where(OfferEvent.offer_id == offer_id).order_by("seq")
            )
        )


def sweep_and_drain(app, time_machine, instant: datetime) -> dict[str, dict[str, int]]:
    time_machine.move_to(instant, tick=False)
    counts = sweep(app, instant)
    drain(app)
    return counts


@pytest.fixture(autouse=True)
def _at_sent(time_machine):
    time_machine.move_to(SENT, tick=False)


# --- sending --------------------------------------------------------------------------------


def test_each_reminder_goes_once_at_its_time_then_the_offer_expires_with_its_notice(
    app, client, agent, time_machine
):
    offer_id = make_offer(app)
    drain(app)
    assert sent_kinds(app) == [("offer", "sms", "delivered"), ("offer", "email", "delivered")]

    for n, hours in enumerate((72, 24, 2), start=1):
        due = EXPIRES - timedelta(hours=hours)
        early = sweep_and_drain(app, time_machine, due - timedelta(minutes=1))
        assert early["reminders"]["reminders_due"] == 0
        sweep_and_drain(app, time_machine, due)
        again = sweep_and_drain(app, time_machine, due + timedelta(minutes=3))
        assert again["reminders"]["reminders_due"] == 0
        kinds = [k for k, _, _ in sent_kinds(app)]
        assert kinds.count(f"reminder_{n}") == 2  # one SMS, one email

    assert [s for _, s, _ in reminders(app, offer_id)] == ["sent", "sent", "sent"]
    assert offer_status(app, offer_id) == "sent"
    counts = sweep_and_drain(app, time_machine, EXPIRES)
    assert counts["expire-offers"] == {"offers_expired": 1, "expiry_notices": 2}
    sweep_and_drain(app, time_machine, EXPIRES + timedelta(minutes=5))
    assert offer_status(app, offer_id) == "expired"
    assert sent_kinds(app)[-2:] == [
        ("offer_expired", "email", "delivered"),
        ("offer_expired", "sms", "delivered"),
    ]
    assert len(sent_kinds(app)) == 10
    assert trail_types(app, offer_id) == [
        "offer.sent", "offer.reminder_sent", "offer.reminder_sent", "offer.reminder_sent",
        "offer.expired",
    ]  # fmt: skip
    # The offer's own API shows the whole story.
    body = client.get(f"/api/v1/offers/{offer_id}", headers=agent.headers).json
    assert [e["type"] for e in body["events"]][-1] == "offer.expired"
    assert [m["kind"] for m in body["messages"]].count("offer_expired") == 2
    assert body["status"] == "expired"


def test_an_offers_messages_are_its_own_not_those_of_offer_10(app, client, agent):
    first = make_offer(app, offsets=())
    for _ in range(9):
        make_offer(app, offsets=())  # offer 10 is the last of these
    body = client.get(f"/api/v1/offers/{first}", headers=agent.headers).json
    assert first == 1
    with app.extensions["paylink.db"].transaction() as session:
        own = session.scalars(
            select(Message.id).where(Message.dedupe_key.in_(["offer-1-sms", "offer-1-email"]))
        ).all()
    assert sorted(m["id"] for m in body["messages"]) == sorted(own)


def test_the_expired_offers_link_answers_410(app, client, time_machine):
    offer_id = make_offer(app)
    with app.extensions["paylink.db"].transaction() as session:
        token = TOKENS.token_for(session.get(Offer, offer_id).token_id)
    sweep_and_drain(app, time_machine, EXPIRES + timedelta(minutes=1))
    resp = client.get(f"/o/{token}")
    assert resp.status_code == 410
    assert "expired" in resp.get_data(as_text=True).lower()


def test_no_expiry_notice_when_the_setting_is_off(app, db, time_machine):
    from app.settings import get_settings

    get_settings(db).expiry_notice = False
    db.commit()
    offer_id = make_offer(app, offsets=())
    drain(app)
    sweep_and_drain(app, time_machine, EXPIRES)
    assert offer_status(app, offer_id) == "expired"
    assert [k for k, _, _ in sent_kinds(app)] == ["offer", "offer"]


def test_the_notice_goes_only_on_the_channels_the_offer_went_on(app, time_machine):
    offer_id = make_offer(app, offsets=(), channels=("email",))
    sweep_and_drain(app, time_machine, EXPIRES)
    assert offer_status(app, offer_id) == "expired"
    assert [(k, c) for k, c, _ in sent_kinds(app)] == [
        ("offer", "email"),
        ("offer_expired", "email"),
    ]


def test_a_clock_jumping_a_week_expires_the_offer_and_sends_no_moot_reminder(app, time_machine):
    offer_id = make_offer(app)
    drain(app)
    counts = sweep_and_drain(app, time_machine, SENT + timedelta(days=7))
    assert counts["expire-offers"]["offers_expired"] == 1
    assert counts["reminders"]["reminders_due"] == 0  # cancelled by the expiry first
    kinds = [k for k, _, _ in sent_kinds(app)]
    assert kinds == ["offer", "offer", "offer_expired", "offer_expired"]
    assert [(s, d) for _, s, d in reminders(app, offer_id)] == [("cancelled", "offer expired")] * 3


def test_sweep_at_an_instant_ahead_of_the_clock_decides_as_of_that_instant(app, time_machine):
    offer_id = make_offer(app, offsets=("24h",))
    drain(app)
    due = EXPIRES - timedelta(hours=24)
    counts = sweep(app, due)  # the clock still reads SENT
    assert counts["reminders"] == {"reminders_due": 1, "reminder_jobs": 1}
    drain(app)
    assert reminders(app, offer_id)[0][1] == "sent"
    with app.extensions["paylink.db"].transaction() as session:
        waiting = session.execute(
            select(Message.status, Message.scheduled_for).where(Message.kind == "reminder_1")
        ).all()
    # Written as of that instant, they go out when it comes.
    assert [tuple(w) for w in waiting] == [("queued", due), ("queued", due)]


def test_a_sweep_that_fell_behind_sends_only_the_latest_due_reminder(app, time_machine):
    offer_id = make_offer(app)
    drain(app)
    sweep_and_drain(app, time_machine, EXPIRES - timedelta(hours=1))
    assert [(s, d) for _, s, d in reminders(app, offer_id)] == [
        ("skipped", "superseded by reminder 3"),
        ("skipped", "superseded by reminder 3"),
        ("sent", "sent 60 min late"),
    ]
    assert [k for k, _, _ in sent_kinds(app)][2:] == ["reminder_3", "reminder_3"]


def test_quiet_hour_reminders_are_planned_and_sent_at_the_planned_time(app, time_machine):
    # Expiry at 09:00 New York: the 2h reminder (07:00) moves to 20:45 the evening before.
    offer_id = make_offer(app, offsets=("2h",), expires_at=ny(26, 9))
    [(_n, status, decision)] = reminders(app, offer_id)
    assert status == "pending"
    assert "moved earlier to Wed Nov 25 20:45" in decision
    drain(app)
    assert sweep_and_drain(app, time_machine, ny(25, 20, 44))["reminders"]["reminders_due"] == 0
    sweep_and_drain(app, time_machine, ny(25, 20, 45))
    assert sent_kinds(app)[2:] == [
        ("reminder_1", "email", "delivered"),
        ("reminder_1", "sms", "delivered"),
    ]


def test_an_offer_revoked_after_the_sweep_read_it_gets_no_reminder(app, time_machine):
    offer_id = make_offer(app, offsets=("24h",))
    drain(app)
    due = EXPIRES - timedelta(hours=24)
    time_machine.move_to(due, tick=False)
    assert sweep(app, due)["reminders"]["reminder_jobs"] == 1  # the job waits in the queue
    with app.extensions["paylink.db"].transaction() as session:
        service.revoke_offer(session, session.get(Offer, offer_id), audit.Actor.system("t"), due)
    drain(app)
    assert [k for k, _, _ in sent_kinds(app)] == ["offer", "offer"]
    assert reminders(app, offer_id) == [(1, "cancelled", "offer revoked")]


def test_reminder_messages_still_waiting_are_suppressed_when_the_offer_ends(app, time_machine):
    offer_id = make_offer(app, offsets=("24h",))
    drain(app)
    due = EXPIRES - timedelta(hours=24)
    time_machine.move_to(due, tick=False)
    with app.app_context():
        [page] = [s.args[0] for s in _due_pages(app, due)]
        assert offer_jobs.send_reminders(page)["messages"] == 2  # written, not yet sent
        with app.extensions["paylink.db"].transaction() as session:
            offer = session.get(Offer, offer_id)
            service.decline_offer(session, offer, due, ip=None, user_agent=None)
    drain(app)
    assert sent_kinds(app)[2:] == [
        ("reminder_1", "email", "suppressed"),
        ("reminder_1", "sms", "suppressed"),
    ]


def test_a_reminder_claimed_but_not_yet_sent_when_the_offer_ends_is_not_sent(app, time_machine):
    from workers.messaging import dispatcher

    offer_id = make_offer(app, offsets=("24h",), channels=("sms",))
    drain(app)
    due = EXPIRES - timedelta(hours=24)
    time_machine.move_to(due, tick=False)
    with app.app_context():
        [page] = [s.args[0] for s in _due_pages(app, due)]
        offer_jobs.send_reminders(page)
        with app.extensions["paylink.db"].transaction() as session:
            ids = session.scalars(select(Message.id).where(Message.kind == "reminder_1")).all()
        sender = dispatcher()
        claimed = sender.claim(ids)  # a send job has it: status sending
        assert [m.status for m, _a, _w in claimed] == ["sending"]
        with app.extensions["paylink.db"].transaction() as session:
            offer = session.get(Offer, offer_id)
            service.decline_offer(session, offer, due, ip=None, user_agent=None)
        sender._release(claimed)  # its time budget ran out before this text
    drain(app)
    assert sent_kinds(app)[1:] == [("reminder_1", "sms", "suppressed")]


def _due_pages(app, now: datetime):
    from sqlalchemy import select as sel

    with app.extensions["paylink.db"].transaction() as session:
        ids = sorted(
            session.scalars(sel(OfferReminder.id).where(OfferReminder.due_at <= now)).all()
        )
    return [offer_jobs.reminders_job(ids, now)]


def test_a_reminder_that_cannot_go_before_expiry_is_suppressed_not_sent_late(app, time_machine):
    # Planned for 20:45; a backlog delays the send past 21:00, and the next allowed time
    # (08:00) is after the expiry (07:30): the message is moot.
    offer_id = make_offer(app, offsets=("10h",), expires_at=ny(26, 7, 30))
    drain(app)
    [(_, status, decision)] = reminders(app, offer_id)
    assert status == "pending"
    assert "20:45" in decision
    time_machine.move_to(ny(25, 20, 45), tick=False)
    sweep(app, ny(25, 20, 45))
    # The worker only gets to it at 21:05: quiet hours until 08:00, after the expiry.
    time_machine.move_to(ny(25, 21, 5), tick=False)
    drain(app)
    assert sent_kinds(app)[2:] == [
        ("reminder_1", "email", "suppressed"),
        ("reminder_1", "sms", "suppressed"),
    ]


def test_an_account_that_opted_out_of_everything_gets_no_reminder(app, time_machine):
    account_id = make_account(app)
    offer_id = make_offer(app, account_id, offsets=("24h",))
    drain(app)
    with app.extensions["paylink.db"].transaction() as session:
        account = session.get(Account, account_id)
        account.sms_opted_out_at = account.email_opted_out_at = SENT
    sweep_and_drain(app, time_machine, EXPIRES - timedelta(hours=24))
    assert reminders(app, offer_id)[0][1:] == (
        "skipped",
        "no channel left: opted out or no address",
    )


def test_every_reminder_sent_is_an_audit_event(app, time_machine):
    offer_id = make_offer(app, offsets=("24h",))
    sweep_and_drain(app, time_machine, EXPIRES - timedelta(hours=24))
    sweep_and_drain(app, time_machine, EXPIRES)
    with app.extensions["paylink.db"].transaction() as session:
        actions = session.execute(
            select(AuditEvent.action, AuditEvent.object_id)
            .where(AuditEvent.action.like("offer.%"))
            .order_by(AuditEvent.id)
        ).all()
    assert [tuple(a) for a in actions] == [
        ("offer.created", str(offer_id)),
        ("offer.reminder_sent", str(offer_id)),
        ("offer.expired", str(offer_id)),
    ]


# --- concurrency and scale ------------------------------------------------------------------


def test_two_sweeps_and_two_jobs_at_once_send_each_reminder_once(app, time_machine, monkeypatch):
    monkeypatch.setattr(offer_jobs, "REMINDER_BATCH", 4)
    offer_ids = [make_offer(app, offsets=("24h",)) for _ in range(10)]
    drain(app)
    due = EXPIRES - timedelta(hours=24)
    time_machine.move_to(due, tick=False)

    results = run_together(app, lambda: offer_jobs.send_due_reminders(due), threads=2)
    assert sum(r["reminder_jobs"] for r in results) >= 3  # 10 reminders in pages of 4
    pages = [s.args[0] for s in _pages(app, due)]
    sent = run_together(app, lambda: [offer_jobs.send_reminders(p) for p in pages], threads=2)
    assert sum(c["sent"] for run in sent for c in run) == 10
    drain(app)

    with app.extensions["paylink.db"].transaction() as session:
        per_offer = session.execute(
            select(Message.dedupe_key, func.count())
            .where(Message.kind == "reminder_1")
            .group_by(Message.dedupe_key)
        ).all()
    assert len(per_offer) == 20
    assert {count for _, count in per_offer} == {1}
    assert all(reminders(app, o)[0][1] == "sent" for o in offer_ids)


def _pages(app, now: datetime):
    with app.extensions["paylink.db"].transaction() as session:
        ids = sorted(
            session.scalars(
                select(OfferReminder.id).where(
                    OfferReminder.status == "pending", OfferReminder.due_at <= now
                )
            ).all()
        )
    size = offer_jobs.REMINDER_BATCH
    return [offer_jobs.reminders_job(ids[i : i + size], now) for i in range(0, len(ids), size)]


def test_concurrent_expiry_sweeps_expire_each_offer_once(app, time_machine, monkeypatch):
    monkeypatch.setattr(offer_jobs, "EXPIRY_BATCH", 3)
    offer_ids = [make_offer(app, offsets=()) for _ in range(8)]
    time_machine.move_to(EXPIRES, tick=False)
    results = run_together(app, lambda: offer_jobs.expire_offers(EXPIRES), threads=2)
    assert sum(r["offers_expired"] for r in results) == 8
    assert sum(r["expiry_notices"] for r in results) == 16
    drain(app)
    assert {offer_status(app, o) for o in offer_ids} == {"expired"}
    assert [k for k, _, _ in sent_kinds(app)].count("offer_expired") == 16
    with app.extensions["paylink.db"].transaction() as session:
        assert (
            session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == "offer.expired")
            )
            == 8
        )


def test_one_sweep_enqueues_one_job_per_page_through_a_pipeline(app, time_machine, monkeypatch):
    monkeypatch.setattr(offer_jobs, "REMINDER_BATCH", 5)
    for _ in range(12):
        make_offer(app, offsets=("24h",), channels=("email",))
    due = EXPIRES - timedelta(hours=24)
    time_machine.move_to(due, tick=False)
    with app.app_context():
        first = offer_jobs.send_due_reminders(due)
        again = offer_jobs.send_due_reminders(due + timedelta(seconds=20))
    assert first == {"reminders_due": 12, "reminder_jobs": 3}
    assert again == {"reminders_due": 12, "reminder_jobs": 0}  # same minute, same pages
    drain(app)
    kinds = [k for k, _, _ in sent_kinds(app)]
    assert kinds.count("reminder_1") == 12


def test_the_duties_read_due_rows_through_the_partial_indexes(app):
    def work() -> None:
        offer_jobs.send_due_reminders(EXPIRES)
        offer_jobs.expire_offers(EXPIRES)

    expected = {
        "offer_reminder.due_at <=": "ix_offer_reminder_due",
        "offer.expires_at <=": "ix_offer_open_expiry",
    }
    plans = index_plans(app, work, expected)
    assert set(plans) == set(expected.values())
    for index, found in plans.items():
        assert index in found, found
