"""The organisation's settings: one row, read by every feature, edited by supervisors."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app import audit, validation
from app.models import OrgSettings
from app.validation import Errors, FieldError

OFFSET_UNITS = {"m": 60, "h": 3600, "d": 86400}
MAX_REMINDERS = 3


def get_settings(session: Session) -> OrgSettings:
    """The settings row, created with the defaults the first time it is asked for."""
    settings = session.get(OrgSettings, 1)
    if settings is None:
        # Two first requests at once must not both insert: whoever comes second does nothing.
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        session.execute(
            dialect.insert(OrgSettings).values(id=1, **_defaults()).on_conflict_do_nothing()
        )
        settings = session.get(OrgSettings, 1)
        if settings is None:  # pragma: no cover - the row was just written
            raise RuntimeError("settings row missing after insert")
    return settings


def _defaults() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for column in OrgSettings.__table__.columns:
        default = column.default
        if column.name == "id" or default is None:
            continue
        arg = default.arg  # type: ignore[attr-defined]
        values[column.name] = arg(None) if callable(arg) else arg
    return values


def _offset_parts(text: Any) -> tuple[int, str]:
    match = re.fullmatch(r"\s*(\d{1,5})\s*([mhd])\s*", text) if isinstance(text, str) else None
    if not match:
        raise FieldError(f"{text!r} is not an offset such as 72h, 30m or 3d")
    amount = int(match.group(1))
    if amount == 0:
        raise FieldError("an offset must be greater than zero")
    return amount, match.group(2)


def parse_offset(text: str) -> timedelta:
    """``"72h"`` → 72 hours; units m, h, d."""
    amount, unit = _offset_parts(text)
    return timedelta(seconds=amount * OFFSET_UNITS[unit])


def reminder_offsets(value: Any) -> list[str]:
    """Up to three different offsets, spelt ``<number><unit>``, earliest reminder first."""
    if not isinstance(value, list):
        raise FieldError('must be a list such as ["72h", "24h", "2h"]')
    if len(value) > MAX_REMINDERS:
        raise FieldError(f"at most {MAX_REMINDERS} reminders")
    offsets: dict[timedelta, str] = {}
    for item in value:
        amount, unit = _offset_parts(item)
        delta = timedelta(seconds=amount * OFFSET_UNITS[unit])
        if delta in offsets:
            raise FieldError("offsets must be different from each other")
        offsets[delta] = f"{amount}{unit}"
    # Earliest reminder (largest offset) first.
    return [offsets[delta] for delta in sorted(offsets, reverse=True)]


def _clock_time(value: Any) -> int:
    raw = validation.text(value, max_length=5)
    match = re.fullmatch(r"([01]\d|2[0-4]):([0-5]\d)", raw)
    if not match or (match.group(1) == "24" and match.group(2) != "00"):
        raise FieldError("must be a time as HH:MM")
    return int(match.group(1)) * 60 + int(match.group(2))


def _minutes_text(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


VERIFICATION_METHODS = ("ssn_last4", "date_of_birth", "zip")


def _verification_methods(value: Any) -> list[str]:
    if not isinstance(value, list) or not value:
        raise FieldError(f"must be a non-empty list drawn from {', '.join(VERIFICATION_METHODS)}")
    if any(item not in VERIFICATION_METHODS for item in value) or len(set(value)) != len(value):
        raise FieldError(f"must be drawn from {', '.join(VERIFICATION_METHODS)}, each once")
    return list(value)


def _percent_list(value: Any) -> list[int]:
    if not isinstance(value, list) or len(value) > 3:
        raise FieldError("must be a list of up to 3 whole percentages, such as [20, 10]")
    for item in value:
        validation.integer(item, minimum=1, maximum=90)
    if len(set(value)) != len(value):
        raise FieldError("percentages must differ")
    return sorted(value, reverse=True)


def _retry_days(value: Any) -> list[int]:
    if not isinstance(value, list) or len(value) > 5:
        raise FieldError("must be a list of up to 5 day counts, such as [3, 7]")
    days = [validation.integer(item, minimum=1, maximum=60) for item in value]
    if days != sorted(set(days)):
        raise FieldError("days must increase, each once")
    return days


def _failed_plan_action(value: Any) -> str:
    if value not in ("defaulted", "cancelled"):
        raise FieldError('must be "defaulted" or "cancelled"')
    return value


def _hours(value: Any) -> int:
    return validation.integer(value, minimum=1, maximum=24 * 90)


# JSON field -> (column, checker). Quiet hours are written as "HH:MM".
FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "contact_verification": ("contact_verification", validation.boolean),
    "verification_methods": ("verification_methods", _verification_methods),
    "virtual_collection": ("virtual_collection", validation.boolean),
    "allow_skip_offer": ("allow_skip_offer", validation.boolean),
    "schedule_payment": ("schedule_payment", validation.boolean),
    "reminder_offsets": ("reminder_offsets", reminder_offsets),
    "link_lifetime_hours": ("link_lifetime_hours", _hours),
    "offer_lifetime_hours": ("offer_lifetime_hours", _hours),
    "quiet_hours_start": ("quiet_hours_start_minute", _clock_time),
    "quiet_hours_end": ("quiet_hours_end_minute", _clock_time),
    "expiry_notice": ("expiry_notice", validation.boolean),
    "settlement_percent_off": ("settlement_percent_off", _percent_list),
    "schedule_horizon_days": (
        "schedule_horizon_days",
        lambda v: validation.integer(v, minimum=1, maximum=365),
    ),
    "max_scheduled_payments": (
        "max_scheduled_payments",
        lambda v: validation.integer(v, minimum=1, maximum=12),
    ),
    "max_installments": (
        "max_installments",
        lambda v: validation.integer(v, minimum=1, maximum=120),
    ),
    "settlement_max_percent_off": (
        "settlement_max_percent_off",
        lambda v: validation.integer(v, minimum=1, maximum=90),
    ),
    "settlement_supervisor_percent_off": (
        "settlement_supervisor_percent_off",
        lambda v: validation.integer(v, minimum=1, maximum=90),
    ),
    "charge_hour": ("charge_hour", lambda v: validation.integer(v, minimum=0, maximum=23)),
    "retry_after_days": ("retry_after_days", _retry_days),
    "failed_plan_action": ("failed_plan_action", _failed_plan_action),
    "first_due_horizon_days": (
        "first_due_horizon_days",
        lambda v: validation.integer(v, minimum=1, maximum=3650),
    ),
    "default_timezone": ("default_timezone", validation.timezone),
    "creditor_name": ("creditor_name", lambda v: validation.text(v, max_length=200)),
    "creditor_phone": ("creditor_phone", validation.phone),
    "creditor_email": ("creditor_email", validation.email),
    "creditor_address": (
        "creditor_address",
        lambda v: validation.text(v, max_length=500, min_length=0),
    ),
    "creditor_hours": (
        "creditor_hours",
        lambda v: validation.text(v, max_length=200, min_length=0),
    ),
}


def _public(column: str, value: Any) -> Any:
    """A column's value as the API shows it (quiet hours as "HH:MM")."""
    return _minutes_text(value) if column.endswith("_minute") else value


def settings_json(settings: OrgSettings) -> dict[str, Any]:
    out: dict[str, Any] = {
        name: _public(column, getattr(settings, column))
        for name, (column, _check) in FIELDS.items()
    }
    out["updated_at"] = settings.updated_at.isoformat().replace("+00:00", "Z")
    return out


def update_settings(
    session: Session,
    patch: Mapping[str, Any],
    actor: audit.Actor,
    agent_id: int | None,
    now: datetime,
) -> tuple[OrgSettings, Errors]:
    """Apply a partial update; nothing changes when any field is invalid, and a patch
    that changes no value records nothing. Flushes."""
    errors = Errors()
    changes: dict[str, Any] = {}
    for name, value in patch.items():
        if name not in FIELDS:
            errors.add(name, "is not a setting that can be changed")
            continue
        column, check = FIELDS[name]
        try:
            changes[name] = check(value)
        except FieldError as exc:
            errors.add(name, str(exc))
    settings = get_settings(session)
    start = changes.get("quiet_hours_start", settings.quiet_hours_start_minute)
    end = changes.get("quiet_hours_end", settings.quiet_hours_end_minute)
    if not errors and end <= start:
        errors.add("quiet_hours_end", "must be later than quiet_hours_start")
    if errors:
        return settings, errors
    changes = {
        name: value
        for name, value in changes.items()
        if getattr(settings, FIELDS[name][0]) != value
    }
    if not changes:
        return settings, errors
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    for name, value in changes.items():
        column = FIELDS[name][0]
        before[name] = _public(column, getattr(settings, column))
        after[name] = _public(column, value)
        setattr(settings, column, value)
    settings.updated_at = now
    settings.updated_by_agent_id = agent_id
    session.flush()
    audit.record(
        session, actor, "settings.updated", "settings", 1, now, {"before": before, "after": after}
    )
    return settings, errors
