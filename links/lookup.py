"""Find my account: a customer's facts in, a fresh link to the contact on file out.

The page must answer the same, in the same time, whether anything matched. So
:func:`match_account` hashes and queries the same way whatever was entered, and the part
that differs (creating a link, writing its messages) runs later in a job,
``workers.links.send_lookup_link``, which the view enqueues in both cases: for the account
that matched, or for nobody. The job's id names the account (or "none") and a ten-minute
slot, so an account gets at most one link per slot however often it is asked for, and the
job itself refuses a second link within ten minutes.

Framework-free: the view reads the form and the clock and passes plain values.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app import audit
from app.messaging.outbox import MessageEnv
from app.models import Account
from app.queue import DEFAULT, JobSpec, job_id
from app.security import hash_ssn, ssn_digits
from links.models import PaymentLink
from links.service import available_channels, create_link
from links.tokens import UrlTokens

SEND_JOB = "workers.links.send_lookup_link"
# At most one self-service link per account in this long.
LOOKUP_INTERVAL = timedelta(minutes=10)
# Hashed in place of an SSN when none (or no valid one) was entered: no SSN hashes to this
# one's value in the table, since an SSN with area 000 is never stored.
_STAND_IN_SSN = "000000000"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
FIELDS = ("account_number", "ssn", "date_of_birth", "zip")


@dataclass(frozen=True)
class LookupFacts:
    """What the customer entered, checked and normalised."""

    account_number: str | None
    ssn_digits: str | None
    date_of_birth: date | None
    zip: str | None  # five digits


def read_facts(form: Mapping[str, str], today: date) -> tuple[LookupFacts | None, dict[str, str]]:
    """The facts of a submitted form, or the message to show next to each field at fault.

    Needs an account number or an SSN, and a date of birth or a ZIP."""
    errors: dict[str, str] = {}
    number = (form.get("account_number") or "").strip()
    if len(number) > 64 or _CONTROL.search(number):
        errors["account_number"] = "Check your account number: it is printed on your bill."
    raw_ssn = (form.get("ssn") or "").strip()
    digits = ssn_digits(raw_ssn) if raw_ssn else None
    if raw_ssn and digits is None:
        errors["ssn"] = "Enter the nine digits of your Social Security number."
    if not number and not raw_ssn:
        errors["account_number"] = "Enter your account number, or your Social Security number."
    raw_dob = (form.get("date_of_birth") or "").strip()
    dob = _read_date(raw_dob) if raw_dob else None
    if raw_dob and (dob is None or dob >= today or dob.year < 1900):
        errors["date_of_birth"] = "Enter your date of birth as MM/DD/YYYY."
    raw_zip = (form.get("zip") or "").strip()
    if raw_zip and not re.fullmatch(r"\d{5}(-?\d{4})?", raw_zip):
        errors["zip"] = "Enter the 5-digit ZIP code of your address on file."
    if not raw_dob and not raw_zip:
        errors["date_of_birth"] = "Enter your date of birth, or your ZIP code."
    if errors:
        return None, errors
    facts = LookupFacts(
        account_number=number or None,
        ssn_digits=digits,
        date_of_birth=dob,
        zip=raw_zip[:5] or None,
    )
    return facts, {}


def _read_date(value: str) -> date | None:
    """YYYY-MM-DD (a date input) or MM/DD/YYYY (typed where the browser has no picker)."""
    if match := re.fullmatch(r"(\d{4})-(\d{1,2})-(\d{1,2})", value):
        year, month, day = match.groups()
    elif match := re.fullmatch(r"(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})", value):
        month, day, year = match.groups()
    else:
        return None
    try:
        return date(int(year), int(month), int(day))
    except ValueError:
        return None


# What matching needs, read as plain rows: building ORM objects for the rows found would
# make a match measurably slower to answer than a miss.
_MATCH_COLUMNS = (
    Account.id, Account.external_id, Account.ssn_hash, Account.date_of_birth, Account.zip,
    Account.balance_cents, Account.hold, Account.phone, Account.email,
    Account.sms_opted_out_at, Account.email_opted_out_at,
)  # fmt: skip


def match_account(session: Session, facts: LookupFacts, *, ssn_key: str) -> int | None:
    """The id of the one account every entered fact matches and that can receive a link.

    Hashes an SSN and looks up by account number and by SSN hash (one statement, two
    indexes) whichever facts were entered, so the work, and its time, does not depend on
    what exists. Reads only."""
    ssn_hash = hash_ssn(ssn_key, facts.ssn_digits or _STAND_IN_SSN)
    rows = session.execute(
        select(*_MATCH_COLUMNS).where(
            or_(Account.external_id == (facts.account_number or ""), Account.ssn_hash == ssn_hash)
        )
    ).all()
    matched = [
        row.id
        for row in rows
        if (facts.account_number is None or row.external_id == facts.account_number)
        and (facts.ssn_digits is None or row.ssn_hash == ssn_hash)
        and _verified(row, facts)
        and can_receive_link(row)
    ]
    return matched[0] if len(matched) == 1 else None


def _verified(account: Any, facts: LookupFacts) -> bool:
    """Every verification fact entered equals the one on file (compared in constant time)."""
    ok = True
    if facts.date_of_birth is not None:
        on_file = account.date_of_birth.isoformat() if account.date_of_birth else ""
        ok &= hmac.compare_digest(on_file.encode(), facts.date_of_birth.isoformat().encode())
    if facts.zip is not None:
        ok &= hmac.compare_digest((account.zip or "")[:5].encode(), facts.zip.encode())
    return ok


def can_receive_link(account: Any) -> bool:
    """Something to pay, no hold, and a phone or email we may use (an Account or a row of
    its columns)."""
    return account.balance_cents > 0 and account.hold is None and bool(available_channels(account))


def identifier_digest(account_number: str, ssn: str, *, key: str) -> str | None:
    """A keyed digest of the identifier entered (the account number, else the SSN), to
    count attempts per account without writing either to the rate limiter's store."""
    number = account_number.strip()
    if number:
        return hmac.new(key.encode(), b"account:" + number.encode(), hashlib.sha256).hexdigest()
    digits = ssn_digits(ssn.strip()) if ssn.strip() else None
    return hash_ssn(key, digits) if digits else None


def lookup_job(account_id: int | None, now: datetime) -> JobSpec:
    """The job to enqueue after a lookup: for the account that matched, or for nobody.

    One id per account (or "none") and ten-minute slot; a second enqueue in the slot is
    refused, so both answers cost the page the same one enqueue."""
    slot = int(now.timestamp()) // int(LOOKUP_INTERVAL.total_seconds())
    who = "none" if account_id is None else account_id
    return JobSpec(
        SEND_JOB, (account_id,), job_id=job_id("lookup-link", who, slot), queue=DEFAULT,
        unique=True,
    )  # fmt: skip


def send_fresh_link(
    session: Session,
    account_id: int,
    *,
    now: datetime,
    env: MessageEnv,
    tokens: UrlTokens,
) -> str:
    """Create a link for the whole balance, sent to every usable channel with the default
    lifetime, unless the account got a self-service link in the last LOOKUP_INTERVAL.

    Takes the account's row lock, so concurrent jobs send once. Flushes; returns what it
    did: ``sent``, ``sent_recently``, ``cannot_send`` or ``no_account``."""
    account = session.get(Account, account_id, with_for_update=True)
    if account is None:
        return "no_account"
    if not can_receive_link(account):
        return "cannot_send"
    recent = session.scalar(
        select(PaymentLink.id)
        .where(
            PaymentLink.account_id == account.id,
            PaymentLink.created_by_agent_id.is_(None),
            PaymentLink.created_at > now - LOOKUP_INTERVAL,
        )
        .limit(1)
    )
    if recent is not None:
        return "sent_recently"
    create_link(
        session, account, amount_cents=None, channels=None, expires_in_hours=None,
        actor=audit.Actor("customer", str(account.id)), agent_id=None, now=now, env=env,
        tokens=tokens,
    )  # fmt: skip
    return "sent"
