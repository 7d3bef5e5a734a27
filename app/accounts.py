"""Accounts: validation, creation, lookup and bulk CSV import.

Service functions take the session, plain values and ``now``; they flush, never commit.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import audit, validation
from app.clock import isoformat
from app.models import Account
from app.security import hash_ssn, ssn_digits
from app.validation import Errors, FieldError

FIELDS = (
    "external_id",
    "name",
    "phone",
    "email",
    "timezone",
    "balance_cents",
    "currency",
    "ssn",
    "date_of_birth",
    "zip",
)
REQUIRED = ("external_id", "name", "balance_cents")
IMPORT_CHUNK = 500


class DuplicateExternalId(Exception):
    def __init__(self, external_id: str):
        super().__init__(f"an account with external_id {external_id!r} already exists")
        self.external_id = external_id


def _ssn(value: Any) -> str:
    raw = validation.text(value, max_length=11)
    digits = ssn_digits(raw)
    if digits is None:
        raise FieldError("is not a valid SSN (nine digits)")
    return digits


def clean_account(
    data: Mapping[str, Any],
    *,
    ssn_key: str,
    today: date,
    from_text: bool = False,
    required: Iterable[str] = REQUIRED,
) -> tuple[dict[str, Any], Errors]:
    """Check an account's fields; returns column values and the errors found.

    ``from_text`` reads CSV cells: empty cells are absent and cents are digits.
    """
    errors = Errors()
    values: dict[str, Any] = {}
    unknown = sorted(set(data) - set(FIELDS))
    for name in unknown:
        errors.add(name, "is not a known field")
    present = {
        k: v
        for k, v in data.items()
        if k in FIELDS and v is not None and not (from_text and v == "")
    }
    for name in required:
        if name not in present:
            errors.add(name, "is required")
    checks: dict[str, Callable[[Any], Any]] = {
        "external_id": lambda v: validation.text(v, max_length=64),
        "name": lambda v: validation.text(v, max_length=200),
        "phone": validation.phone,
        "email": validation.email,
        "timezone": validation.timezone,
        "balance_cents": validation.cents_text if from_text else validation.cents,
        "currency": validation.currency,
        "ssn": _ssn,
        "date_of_birth": lambda v: validation.iso_date(v, past=True, today=today),
        "zip": validation.us_zip,
    }
    for name, value in present.items():
        try:
            values[name] = checks[name](value)
        except FieldError as exc:
            errors.add(name, str(exc))
    if "ssn" in values:
        digits = values.pop("ssn")
        values["ssn_hash"] = hash_ssn(ssn_key, digits)
        values["ssn_last4"] = digits[-4:]
    return values, errors


def create_account(
    session: Session, values: dict[str, Any], actor: audit.Actor, now: datetime
) -> Account:
    """Insert a checked account (see :func:`clean_account`) and its audit event; flushes."""
    account = Account(**values, created_at=now, updated_at=now)
    try:
        with session.begin_nested():
            session.add(account)
            session.flush()
    except IntegrityError as exc:
        if find_by_external_id(session, values["external_id"]) is not None:
            raise DuplicateExternalId(values["external_id"]) from exc
        raise
    audit.record(
        session, actor, "account.created", "account", account.id, now,
        {"external_id": account.external_id},
    )  # fmt: skip
    return account


def find_by_external_id(session: Session, external_id: str) -> Account | None:
    return session.scalar(select(Account).where(Account.external_id == external_id))


def find_by_ssn(session: Session, ssn: str, *, ssn_key: str) -> list[Account]:
    """Accounts whose SSN matches, found through the keyed hash."""
    digits = ssn_digits(ssn)
    if digits is None:
        return []
    return list(
        session.scalars(
            select(Account)
            .where(Account.ssn_hash == hash_ssn(ssn_key, digits))
            .order_by(Account.id)
        )
    )


def account_json(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "external_id": account.external_id,
        "name": account.name,
        "phone": account.phone,
        "email": account.email,
        "timezone": account.timezone,
        "balance_cents": account.balance_cents,
        "currency": account.currency,
        "ssn_last4": account.ssn_last4,
        "date_of_birth": account.date_of_birth.isoformat() if account.date_of_birth else None,
        "zip": account.zip,
        "opted_out": {
            "sms": account.sms_opted_out_at is not None,
            "email": account.email_opted_out_at is not None,
        },
        "hold": account.hold,
        "created_at": isoformat(account.created_at),
        "updated_at": isoformat(account.updated_at),
    }


@dataclass
class ImportResult:
    created: int = 0
    updated: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        """How many rows were left out (a row may have several errors)."""
        return len({e["row"] for e in self.errors})

    def as_json(self) -> dict[str, Any]:
        return {"created": self.created, "updated": self.updated, "errors": self.errors}


class BadCsv(Exception):
    """The file as a whole cannot be read (no header, unknown columns, not CSV)."""


def _records(text: str) -> Iterator[tuple[int, dict[str, str]]]:
    """(first line number, row) for each record; the header is line 1."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise BadCsv("the file is empty") from None
    except csv.Error as exc:
        raise BadCsv(f"the header row cannot be read: {exc}") from exc
    header = [h.strip().lstrip("\ufeff") for h in header]
    unknown = [h for h in header if h not in FIELDS]
    if unknown:
        raise BadCsv(f"unknown column(s): {', '.join(unknown)}; expected {', '.join(FIELDS)}")
    missing = [h for h in REQUIRED if h not in header]
    if missing:
        raise BadCsv(f"missing column(s): {', '.join(missing)}")
    if len(set(header)) != len(header):
        raise BadCsv("a column name appears twice")
    line = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise BadCsv(f"line {line}: {exc}") from exc
        start, line = line, reader.line_num + 1
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield start, {"__shape__": f"has {len(row)} cells, the header has {len(header)}"}
            continue
        yield start, dict(zip(header, row, strict=True))


def import_csv(
    session: Session, text: str, actor: audit.Actor, now: datetime, *, ssn_key: str
) -> ImportResult:
    """Create or update accounts by external_id; bad rows are reported and left out.

    An update changes only the cells given: a missing column or an empty cell keeps the
    account's value.
    Runs in the caller's transaction: the good rows land together or not at all.
    """
    result = ImportResult()
    parsed: list[tuple[int, dict[str, Any], Errors]] = []
    for line, row in _records(text):
        if "__shape__" in row:
            result.errors.append({"row": line, "field": None, "message": row["__shape__"]})
            continue
        values, errors = clean_account(
            row, ssn_key=ssn_key, today=now.date(), from_text=True, required=("external_id",)
        )
        parsed.append((line, values, errors))
    existing = _ids_by_external_id(
        session,
        list(dict.fromkeys(v["external_id"] for _line, v, _errors in parsed if "external_id" in v)),
    )

    clean_rows: dict[str, tuple[int, dict[str, Any]]] = {}
    for line, values, errors in parsed:
        external_id = values.get("external_id")
        if external_id is not None and external_id not in existing:
            # A new account needs every required field; an update keeps the old value
            # wherever a cell is empty.
            for name in REQUIRED:
                if name not in values and name not in errors.by_field:
                    errors.add(name, "is required")
        if errors:
            for name in sorted(errors.by_field, key=FIELDS.index):
                for message in errors.by_field[name]:
                    result.errors.append({"row": line, "field": name, "message": message})
            continue
        if external_id in clean_rows:
            first = clean_rows[external_id][0]
            result.errors.append(
                {"row": line, "field": "external_id", "message": f"repeats line {first}"}
            )
            continue
        clean_rows[external_id] = (line, values)
    result.errors.sort(key=lambda e: e["row"])  # stable: a row's errors keep column order

    new_rows: list[dict[str, Any]] = []
    changed_rows: dict[frozenset[str], list[dict[str, Any]]] = {}
    for external_id, (_line, values) in clean_rows.items():
        if external_id in existing:
            row = {**values, "id": existing[external_id], "updated_at": now}
            # executemany needs the same keys in every row: group rows by their columns.
            changed_rows.setdefault(frozenset(row), []).append(row)
        else:
            new_rows.append({"currency": "USD", **values, "created_at": now, "updated_at": now})
    session.flush()
    for start in range(0, len(new_rows), IMPORT_CHUNK):
        batch = new_rows[start : start + IMPORT_CHUNK]
        for rows in _group_by_keys(batch).values():
            session.execute(insert(Account), rows)
    for rows in changed_rows.values():
        session.execute(update(Account), rows)
    result.created = len(new_rows)
    result.updated = sum(len(rows) for rows in changed_rows.values())
    counts = {
        "created": result.created,
        "updated": result.updated,
        "rejected_rows": result.rejected,
    }
    audit.record(session, actor, "accounts.imported", "account", None, now, counts)
    return result


def _ids_by_external_id(session: Session, external_ids: list[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for start in range(0, len(external_ids), IMPORT_CHUNK):
        chunk = external_ids[start : start + IMPORT_CHUNK]
        rows = session.execute(
            select(Account.external_id, Account.id).where(Account.external_id.in_(chunk))
        )
        found.update((external_id, account_id) for external_id, account_id in rows)
    return found


def _group_by_keys(rows: list[dict[str, Any]]) -> dict[frozenset[str], list[dict[str, Any]]]:
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(frozenset(row), []).append(row)
    return groups
