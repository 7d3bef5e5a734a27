"""signing.service: the atomic acceptance (capture_signature), the typed-name rule, the
drawn-signature checks, verification with its lockout on the trail, and signing.text (the
frozen agreement text)."""

from __future__ import annotations

import base64
import hashlib
import random
import struct
import zlib
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from app.models import Account, AuditEvent
from app.payments.models import PaymentMethod
from app.queue import pending_jobs
from app.settings import get_settings
from links import checkout
from offers import trail
from offers.models import Installment, Offer, OfferEvent, OfferReminder, PaymentPlan
from offers.service import OfferGone, offer_schedule
from signing import service, text
from signing.models import Agreement
from tests.offers.test_offer_flow import make_account, make_offer, png, stroke

NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)


def add_method(db, account: Account, kind: str = "card") -> PaymentMethod:
    values: dict[str, Any] = {
        "account_id": account.id, "kind": kind, "gateway": "sandbox",
        "gateway_token": f"tok_{kind}_{random.Random(account.id).randrange(10**9)}",
        "holder_name": account.name, "last4": "4242" if kind == "card" else "6789",
        "created_at": NOW,
    }  # fmt: skip
    if kind == "card":
        values.update(brand="visa", exp_month=12, exp_year=2030, zip="20001")
    else:
        values.update(routing_number="110000000", account_type="savings")
    method = PaymentMethod(**values)
    db.add(method)
    db.commit()
    return method


@pytest.fixture
def arranged(app, db, time_machine) -> dict[str, Any]:
    time_machine.move_to(NOW, tick=False)
    account = make_account(db)
    _token, offer = make_offer(app, db, account, first_due_date=date(2026, 12, 1))
    method = add_method(db, account)
    return {"account": account, "offer": offer, "method": method}


def accepted_sha(app, offer_id: int, method_id: int) -> str:
    with app.extensions["paylink.db"].transaction() as session:
        offer = session.get(Offer, offer_id)
        method = session.get(PaymentMethod, method_id)
        assert offer is not None
        assert method is not None
        return service.agreement_text(session, offer, method).sha256


def capture(app, offer_id: int, method_id: int, **overrides: Any) -> service.Capture:
    values: dict[str, Any] = {
        "signature": service.Signature("Maria Lopez", "typed"),
        "method_id": method_id,
        "consent_at": NOW - timedelta(minutes=2),
        "verified_by": "date_of_birth",
        "ip": "203.0.113.9",
        "user_agent": "PaylinkTest/1.0",
        "now": NOW,
    }
    values.update(overrides)
    if "accepted_sha256" not in values:
        values["accepted_sha256"] = accepted_sha(app, offer_id, method_id)
    with app.extensions["paylink.db"].transaction() as session:
        result = service.capture_signature(session, offer_id, **values)
        session.expunge_all()
        return result


def fresh(db) -> None:
    """Forget what the test's session holds, so reads see what the code under test wrote."""
    db.rollback()
    db.expire_all()


# --- capture_signature -----------------------------------------------------------------------


def test_capture_accepts_the_offer_in_one_transaction(app, db, arranged):
    offer, method = arranged["offer"], arranged["method"]
    result = capture(app, offer.id, method.id)
    assert result.created
    plan, agreement = result.plan, result.agreement
    assert agreement is not None
    fresh(db)

    row = db.get(Offer, offer.id)
    assert row is not None
    assert row.status == "accepted"
    assert row.accepted_at == NOW
    assert plan.total_cents == 30000
    assert plan.method_id == method.id
    assert plan.status == "active"
    installments = list(
        db.scalars(select(Installment).where(Installment.plan_id == plan.id).order_by("n"))
    )
    assert [(i.n, i.due_date, i.amount_cents) for i in installments] == [
        (1, date(2026, 12, 1), 10000),
        (2, date(2027, 1, 1), 10000),
        (3, date(2027, 2, 1), 10000),
    ]
    # 9:00 in New York (EST, UTC-5) is 14:00 UTC.
    assert [i.next_attempt_at for i in installments] == [
        datetime(2026, 12, 1, 14, tzinfo=UTC),
        datetime(2027, 1, 1, 14, tzinfo=UTC),
        datetime(2027, 2, 1, 14, tzinfo=UTC),
    ]
    assert {i.status for i in installments} == {"scheduled"}

    stored = db.get(Agreement, agreement.id)
    assert stored is not None
    assert (
        stored.text
        == text.render(
            row,
            row.account,
            get_settings(db),
            db.get(PaymentMethod, method.id),
            offer_schedule(row),
        ).full
    )
    assert stored.text_sha256 == hashlib.sha256(stored.text.encode()).hexdigest()
    assert stored.version == text.VERSION
    assert stored.signer_name == "Maria Lopez"
    assert stored.signature_method == "typed"
    assert stored.consent_at == NOW - timedelta(minutes=2)
    assert stored.signed_at == NOW
    assert stored.ip == "203.0.113.9"
    assert stored.user_agent == "PaylinkTest/1.0"
    assert stored.verified_by == "date_of_birth"
    assert stored.sha256 is None  # set by the document job

    reminders = db.scalars(select(OfferReminder).where(OfferReminder.offer_id == offer.id))
    assert [(r.status, r.decision) for r in reminders] == [("cancelled", "offer accepted")] * 2
    events = trail.events(db, offer.id)
    assert [e.type for e in events] == ["signature.captured", "offer.accepted"]
    captured = events[0]
    assert captured.ip == "203.0.113.9"
    assert captured.user_agent == "PaylinkTest/1.0"
    assert captured.data["signer_name"] == "Maria Lopez"
    assert captured.data["signature_method"] == "typed"
    assert captured.data["text_sha256"] == stored.text_sha256
    assert captured.data["verified_by"] == "date_of_birth"
    assert events[1].data["plan_id"] == plan.id
    assert trail.verify(db, offer.id).ok
    (audit_event,) = db.scalars(select(AuditEvent).where(AuditEvent.action == "offer.accepted"))
    assert audit_event.object_id == str(offer.id)
    assert audit_event.data["agreement_id"] == agreement.id
    # The capture job was enqueued after the commit, by name and with its id.
    queue = app.extensions["paylink.queue"].queue("default")
    assert queue.job_ids == [f"agreement-{agreement.id}"]
    job = queue.fetch_job(f"agreement-{agreement.id}")
    assert job is not None
    assert job.func_name == "workers.signing.capture_agreement"
    assert job.args == [agreement.id]


def test_capture_twice_returns_the_first_plan(app, db, arranged):
    offer, method = arranged["offer"], arranged["method"]
    first = capture(app, offer.id, method.id)
    second = capture(
        app, offer.id, method.id, signature=service.Signature("Maria X Lopez", "typed")
    )
    assert first.created
    assert not second.created
    assert second.plan.id == first.plan.id
    assert second.agreement is not None
    assert first.agreement is not None
    assert second.agreement.id == first.agreement.id
    fresh(db)
    assert len(list(db.scalars(select(PaymentPlan)))) == 1
    assert len(list(db.scalars(select(Installment)))) == 3
    assert [a.signer_name for a in db.scalars(select(Agreement))] == ["Maria Lopez"]
    assert app.extensions["paylink.queue"].queue("default").count == 1


def test_nothing_is_enqueued_when_the_transaction_rolls_back(app, db, arranged):
    offer, method = arranged["offer"], arranged["method"]
    sha = accepted_sha(app, offer.id, method.id)
    session = app.extensions["paylink.db"].Session()
    try:
        service.capture_signature(
            session, offer.id, signature=service.Signature("Maria Lopez", "typed"),
            method_id=method.id, accepted_sha256=sha, consent_at=NOW, verified_by="none",
            ip=None, user_agent=None, now=NOW,
        )  # fmt: skip
        assert [spec.job_id for spec in pending_jobs(session)] == ["agreement-1"]
        session.rollback()
    finally:
        session.close()
    assert app.extensions["paylink.queue"].queue("default").count == 0
    fresh(db)
    assert list(db.scalars(select(PaymentPlan))) == []


@pytest.mark.parametrize("status", ["expired", "revoked", "declined"])
def test_an_ended_offer_is_gone(app, db, arranged, status):
    offer, method = arranged["offer"], arranged["method"]
    sha = accepted_sha(app, offer.id, method.id)
    db.execute(Offer.__table__.update().where(Offer.id == offer.id).values(status=status))
    db.commit()
    with pytest.raises(OfferGone):
        capture(app, offer.id, method.id, accepted_sha256=sha)
    fresh(db)
    assert list(db.scalars(select(PaymentPlan))) == []
    assert list(db.scalars(select(Agreement))) == []


def test_an_offer_expiring_at_the_moment_of_signing_is_gone(app, db, arranged):
    offer, method = arranged["offer"], arranged["method"]
    sha = accepted_sha(app, offer.id, method.id)
    expires_at = offer.expires_at
    with pytest.raises(OfferGone):
        capture(app, offer.id, method.id, accepted_sha256=sha, now=expires_at)
    result = capture(app, offer.id, method.id, accepted_sha256=sha, now=expires_at - timedelta(1))
    assert result.created


def test_terms_other_than_those_accepted_are_refused(app, db, arranged):
    offer, method = arranged["offer"], arranged["method"]
    bank = add_method(db, arranged["account"], "bank")
    with pytest.raises(service.TermsChanged):
        capture(app, offer.id, bank.id, accepted_sha256=accepted_sha(app, offer.id, method.id))
    with pytest.raises(service.TermsChanged):
        capture(app, offer.id, method.id, accepted_sha256="")
    fresh(db)
    assert list(db.scalars(select(PaymentPlan))) == []


def test_another_accounts_method_is_refused(app, db, arranged):
    stranger = add_method(db, make_account(db, name="Sam Stone"))
    with pytest.raises(service.MethodUnusable):
        capture(app, arranged["offer"].id, stranger.id, accepted_sha256="x")
    with pytest.raises(service.MethodUnusable):
        capture(app, arranged["offer"].id, 10**6, accepted_sha256="x")


def test_a_past_due_date_is_charged_at_once_and_dst_is_respected(app, db, time_machine):
    time_machine.move_to(datetime(2027, 2, 15, 18, 0, tzinfo=UTC), tick=False)  # 13:00 EST
    account = make_account(db)
    _token, offer = make_offer(
        app, db, account, first_due_date=date(2027, 2, 15), frequency="monthly",
        installment_count=2, total_cents=1001,
    )  # fmt: skip
    method = add_method(db, account)
    now = datetime(2027, 2, 15, 18, 0, tzinfo=UTC)
    result = capture(app, offer.id, method.id, now=now)
    fresh(db)
    installments = list(
        db.scalars(select(Installment).where(Installment.plan_id == result.plan.id).order_by("n"))
    )
    assert [i.amount_cents for i in installments] == [501, 500]
    # The first was due at 9:00 today: charged at once. The second, after the switch to
    # daylight saving time (EDT, UTC-4), at 13:00 UTC.
    assert installments[0].next_attempt_at == now
    assert installments[1].next_attempt_at == datetime(2027, 3, 15, 13, tzinfo=UTC)


def test_a_drawn_signature_is_stored_with_its_hash_on_the_trail(app, db, arranged):
    picture = png(ink=stroke())
    signature = service.Signature("Maria Lopez", "drawn", picture)
    result = capture(app, arranged["offer"].id, arranged["method"].id, signature=signature)
    assert result.agreement is not None
    fresh(db)
    stored = db.get(Agreement, result.agreement.id)
    assert stored is not None
    assert stored.signature_png == picture
    assert stored.signature_method == "drawn"
    (captured,) = [
        e for e in trail.events(db, arranged["offer"].id) if e.type == "signature.captured"
    ]
    assert captured.data["signature_png_sha256"] == hashlib.sha256(picture).hexdigest()


def test_a_signature_names_its_kind():
    with pytest.raises(ValueError, match="drawn"):
        service.Signature("Maria Lopez", "drawn")
    with pytest.raises(ValueError, match="drawn"):
        service.Signature("Maria Lopez", "typed", b"png")
    with pytest.raises(ValueError, match="drawn"):
        service.Signature("Maria Lopez", "stamped")


# --- the typed name --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("typed", "account_name"),
    [
        ("Maria Lopez", "Maria Lopez"),
        ("  maria   LOPEZ ", "Maria Lopez"),
        ("María López", "Maria Lopez"),
        ("Maria Lopez", "María López"),
        ("Maria J. Lopez", "Maria Lopez"),
        ("Maria Lopez", "Maria Josefina Lopez"),
        ("Mary-Ann O'Brien", "Mary Ann OBrien"),
        ("John Smith", "John Smith Jr."),
        ("John Smith Jr", "John Smith"),
        ("Cher", "Cher"),
        ("ßtraße Ng", "SSTRASSE NG"),
    ],
)
def test_names_that_match(typed, account_name):
    assert service.check_signer_name(typed, account_name) == " ".join(typed.split())


@pytest.mark.parametrize(
    ("typed", "account_name", "message"),
    [
        ("", "Maria Lopez", "Type your full name."),
        ("   ", "Maria Lopez", "Type your full name."),
        ("M", "Maria Lopez", "Type your full name."),
        ("M.", "Maria Lopez", "Type your full name."),
        ("12 34", "Maria Lopez", "Type your full name."),
        ("Maria", "Maria Lopez", "does not match"),
        ("Lopez", "Maria Lopez", "does not match"),
        ("Lopez Maria", "Maria Lopez", "does not match"),
        ("Maria Lopezz", "Maria Lopez", "does not match"),
        ("Mario Lopez", "Maria Lopez", "does not match"),
        ("Cher Smith", "Cher", "does not match"),
        ("X" * 201, "X" * 201, "at most 200"),
    ],
)
def test_names_that_do_not_match(typed, account_name, message):
    with pytest.raises(service.SignatureInvalid, match=message) as caught:
        service.check_signer_name(typed, account_name)
    assert caught.value.field == "full_name"


# --- the drawn signature ---------------------------------------------------------------------


def data_url(picture: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(picture).decode()


@pytest.mark.parametrize("filters", [(0,), (1,), (2,), (3,), (4,), (4, 3, 2, 1, 0)])
def test_every_png_filter_is_read(filters):
    ink = stroke(120, 40)
    picture = png(120, 40, ink, filters=filters)
    assert service.visible_pixels(picture) == len(ink)
    assert service.decode_drawn_signature(data_url(picture)) == picture


def test_grey_with_alpha_is_read():
    ink = stroke(60, 20)
    assert service.visible_pixels(png(60, 20, ink, color_type=4)) == len(ink)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(1, 24),
    height=st.integers(1, 12),
    seed=st.integers(0, 2**32),
    filters=st.lists(st.integers(0, 4), min_size=1, max_size=5),
)
def test_visible_pixels_counts_what_was_drawn(width, height, seed, filters):
    rng = random.Random(seed)
    ink = {(rng.randrange(width), rng.randrange(height)) for _ in range(rng.randrange(30))}
    picture = png(width, height, sorted(ink), filters=tuple(filters))
    assert service.visible_pixels(picture) == len(ink)


def _chunks_with_bad_crc(picture: bytes) -> bytes:
    return picture[:29] + bytes([picture[29] ^ 1]) + picture[30:]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "Draw your signature"),
        ("   ", "Draw your signature"),
        (data_url(png()), "box is empty"),
        (data_url(png(ink=stroke()[:19])), "box is empty"),
        ("data:image/svg+xml;base64,PHN2Zz4=", "could not read"),
        ("data:image/png;base64,@@@@", "could not read"),
        ("data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n").decode(), "could not"),
        (data_url(png(ink=stroke(), depth=16)), "could not read"),
        (data_url(png(ink=stroke(), interlace=1)), "could not read"),
        (data_url(png(ink=stroke(), color_type=0)), "could not read"),
        (data_url(_chunks_with_bad_crc(png(ink=stroke()))), "could not read"),
        (data_url(png(ink=stroke())[:-12]), "could not read"),  # no IEND
        (data_url(png(ink=stroke())[:8] + png(ink=stroke())[33:]), "could not read"),  # no IHDR
    ],
    ids=[
        "missing", "spaces", "blank", "a-tap", "svg", "not-base64", "magic-only", "16-bit",
        "interlaced", "grey", "bad-crc", "no-iend", "no-ihdr",
    ],
)  # fmt: skip
def test_drawn_signatures_that_are_refused(value, message):
    with pytest.raises(service.SignatureInvalid, match=message) as caught:
        service.decode_drawn_signature(value)
    assert caught.value.field == "signature_png"


def test_a_picture_over_200_kb_is_refused_before_it_is_decoded():
    noise = random.Random(1).randbytes(300 * 300 * 4)
    big = png(300, 300, noise=noise, filters=(0,))
    assert len(big) > 200 * 1024
    with pytest.raises(service.SignatureInvalid, match="over 200 KB"):
        service.decode_drawn_signature(data_url(big))
    with pytest.raises(service.SignatureInvalid, match="over 200 KB"):
        service.decode_drawn_signature("data:image/png;base64," + "A" * 5 * 1024 * 1024)


def build_png(width: int, height: int, scanlines: bytes) -> bytes:
    """An RGBA PNG whose header says ``width`` x ``height`` around any scanline bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(scanlines, 9))
        + chunk(b"IEND", b"")
    )


def rows(width: int, height: int) -> bytes:
    return (b"\x00" + b"\xff" * width * 4) * height


def test_pictures_beyond_the_bounds_are_refused_without_inflating_them():
    assert service.visible_pixels(build_png(10, 10, rows(10, 10))) == 100
    for width, height in ((3001, 1), (1, 3001), (1300, 1300)):
        # Claims of a huge picture in a tiny file: refused by the header alone.
        with pytest.raises(service.SignatureInvalid):
            service.visible_pixels(build_png(width, height, rows(1, 1)))
    # Data that inflates to more, or less, than the header promises.
    with pytest.raises(service.SignatureInvalid):
        service.visible_pixels(build_png(10, 5, rows(10, 10)))
    with pytest.raises(service.SignatureInvalid):
        service.visible_pixels(build_png(10, 10, rows(10, 5)))
    with pytest.raises(service.SignatureInvalid):
        service.visible_pixels(build_png(10, 1, b"\x07" + b"\xff" * 40))  # no filter 7


# --- verification ----------------------------------------------------------------------------


def test_five_failures_lock_the_offer_for_15_minutes(app, db, arranged):
    offer = arranged["offer"]
    db_ = app.extensions["paylink.db"]

    def attempt(value: str, now: datetime, method: str = "ssn_last4") -> bool:
        # As the view does: the failed try and a lockout are committed even when it raises.
        session = db_.Session()
        try:
            row = session.get(Offer, offer.id)
            assert row is not None
            return service.verify_contact(
                session, row, method, value, now, ip="198.51.100.7", user_agent="UA"
            )
        finally:
            session.commit()
            session.close()

    assert attempt("1111", NOW) is False
    assert attempt("6789", NOW) is True  # a success resets the count
    for _ in range(4):
        assert attempt("1111", NOW) is False
    with pytest.raises(service.OfferLocked) as caught:
        attempt("1111", NOW)
    assert caught.value.until == NOW + timedelta(minutes=15)
    with pytest.raises(service.OfferLocked):
        attempt("6789", NOW + timedelta(minutes=14))  # even the right answer waits
    with pytest.raises(checkout.InputError):
        attempt("12", NOW)  # not a fact at all: no try counted
    assert attempt("1980-04-12", NOW + timedelta(minutes=15), "date_of_birth") is True
    fresh(db)
    types = [e.type for e in trail.events(db, offer.id)]
    assert types.count("verification.failed") == 6
    assert types.count("verification.locked") == 1
    assert types.count("verification.passed") == 2
    failed = db.scalars(
        select(OfferEvent).where(OfferEvent.type == "verification.failed").limit(1)
    ).one()
    assert failed.data == {"method": "ssn_last4"}  # what was typed is never recorded
    assert failed.ip == "198.51.100.7"
    assert trail.verify(db, offer.id).ok


def test_facts_the_account_lacks_never_match(app, db, time_machine):
    time_machine.move_to(NOW, tick=False)
    account = make_account(db, zip=None, date_of_birth=None, ssn_last4=None)
    _token, offer = make_offer(app, db, account)
    with app.extensions["paylink.db"].transaction() as session:
        row = session.get(Offer, offer.id)
        assert row is not None
        for method, value in (
            ("zip", "20001"),
            ("date_of_birth", "1980-04-12"),
            ("ssn_last4", "0000"),
        ):
            assert not service.verify_contact(
                session, row, method, value, NOW, ip=None, user_agent=None
            )


# --- the text --------------------------------------------------------------------------------


def render(db, offer: Offer, method: PaymentMethod) -> text.AgreementText:
    fresh(db)
    row = db.get(Offer, offer.id)
    assert row is not None
    return text.render(
        row, row.account, get_settings(db), db.get(PaymentMethod, method.id), offer_schedule(row)
    )


def test_the_text_is_deterministic_and_complete(db, arranged):
    offer, method = arranged["offer"], arranged["method"]
    rendered = render(db, offer, method)
    assert rendered.full == render(db, offer, method).full
    assert rendered.sha256 == hashlib.sha256(rendered.full.encode()).hexdigest()
    full = rendered.full
    assert full.startswith(f"PAYMENT PLAN AGREEMENT (version {text.VERSION})\n")
    for part in (rendered.header, rendered.disclosure, rendered.terms, rendered.schedule,
                 rendered.authorization):  # fmt: skip
        assert part in full
    disclosure = rendered.disclosure
    for words in (
        "right to receive any of these records on paper",
        "free of charge",
        "withdraw your consent at any time",
        "What your consent covers",
        "Keeping your contact details up to date",
        "software that opens PDF files",
        "(m***@example.com)",
    ):
        assert words in disclosure
    assert "maria@example.com" not in full
    assert "  1. Dec 1, 2026  $100.00\n  2. Jan 1, 2027  $100.00\n  3. Feb 1, 2027  $100.00" in full
    assert "Total: $300.00" in full
    authorization = rendered.authorization
    assert "I, Maria Lopez, authorize Paylink Demo Creditor to charge my Visa ending 4242" in (
        authorization
    )
    assert "3 payments totalling $300.00, every month from Dec 1, 2026 to Feb 1, 2027" in (
        authorization
    )
    assert "at least 3 business days before the date of the next payment" in authorization
    assert "(800) 555-0100" in authorization
    assert "from 9:00 AM in your time zone (America/New_York)" in rendered.terms


def test_the_text_for_a_bank_account_a_settlement_and_no_email(app, db, time_machine):
    time_machine.move_to(NOW, tick=False)
    account = make_account(db, email=None, balance_cents=50000)
    _token, offer = make_offer(
        app, db, account, kind="settlement", total_cents=40000, installment_count=1,
        first_due_date=date(2026, 12, 15),
    )  # fmt: skip
    offer_row = db.get(Offer, offer.id)
    assert offer_row is not None
    offer_row.percent_off = 20
    db.commit()
    configure = get_settings(db)
    configure.creditor_address = "1 Main St,\n  Springfield IL 62701"
    configure.retry_after_days = []
    db.commit()
    rendered = render(db, offer, add_method(db, account, "bank"))
    assert "We have no email address on file for you" in rendered.disclosure
    assert "by mail at 1 Main St, Springfield IL 62701" in rendered.disclosure
    assert "in full settlement of the balance of $500.00" in rendered.terms
    assert "and the settlement no longer applies" in rendered.terms
    assert "try it again" not in rendered.terms
    assert "one payment of $400.00 on Dec 15, 2026" in rendered.authorization
    assert "debit my Savings account ending 6789 (routing number 110000000)" in (
        rendered.authorization
    )


def test_hours_and_contact_helpers():
    assert [text.hour_text(h) for h in (0, 9, 12, 13, 23)] == [
        "12:00 AM", "9:00 AM", "12:00 PM", "1:00 PM", "11:00 PM",
    ]  # fmt: skip
    assert text.phone_text("+18005550100") == "(800) 555-0100"
    assert text.phone_text("not a phone") == "not a phone"
