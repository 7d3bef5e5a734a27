"""Field checks shared by the API, the CSV import and the console.

Each checker takes the raw value and returns the clean value or raises ``FieldError``.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import date
from functools import cache
from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email

_CONTROL = re.compile(r"[\x00-\x1f]")


class FieldError(ValueError):
    pass


class Errors:
    """Collects messages per field, as the 422 body shows them."""

    def __init__(self) -> None:
        self.by_field: dict[str, list[str]] = {}

    def add(self, field: str, message: str) -> None:
        self.by_field.setdefault(field, []).append(message)

    def __bool__(self) -> bool:
        return bool(self.by_field)


def text(value: Any, *, max_length: int, min_length: int = 1) -> str:
    if not isinstance(value, str):
        raise FieldError("must be a string")
    value = value.strip()
    if len(value) < min_length:
        raise FieldError("must not be empty")
    if len(value) > max_length:
        raise FieldError(f"must be at most {max_length} characters")
    if _CONTROL.search(value):
        raise FieldError("must not contain control characters")
    return value


def phone(value: Any, region: str = "US") -> str:
    raw = text(value, max_length=40)
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise FieldError("is not a phone number") from exc
    if not phonenumbers.is_valid_number(number):
        raise FieldError("is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def email(value: Any) -> str:
    raw = text(value, max_length=254)
    try:
        result = validate_email(raw, check_deliverability=False)
    except EmailNotValidError as exc:
        raise FieldError(f"is not a valid email address ({exc})") from exc
    return result.normalized


@cache
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def timezone(value: Any) -> str:
    raw = text(value, max_length=64)
    if raw not in _timezones():
        raise FieldError("is not an IANA time zone such as America/Chicago")
    return raw


def cents(value: Any, *, minimum: int = 0, maximum: int = 10**12) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError("must be a whole number of cents")
    if value < minimum:
        raise FieldError(f"must be at least {minimum}")
    if value > maximum:
        raise FieldError(f"must be at most {maximum}")
    return value


def cents_text(value: str, **kwargs: Any) -> int:
    """Cents written in a CSV cell: digits only, no decimal point."""
    raw = value.strip()
    if not re.fullmatch(r"-?\d+", raw):
        raise FieldError("must be a whole number of cents")
    return cents(int(raw), **kwargs)


def currency(value: Any) -> str:
    raw = text(value, max_length=3)
    if not re.fullmatch(r"[A-Za-z]{3}", raw):
        raise FieldError("must be a three-letter ISO 4217 code")
    return raw.upper()


def iso_date(value: Any, *, past: bool = False, today: date | None = None) -> date:
    raw = text(value, max_length=10)
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        raise FieldError("must be a date as YYYY-MM-DD")
    try:
        parsed = date.fromisoformat(raw)
    except ValueError as exc:
        raise FieldError("is not a real date") from exc
    if past and today is not None and parsed >= today:
        raise FieldError("must be in the past")
    return parsed


def us_zip(value: Any) -> str:
    raw = text(value, max_length=10)
    if not re.fullmatch(r"\d{5}(-\d{4})?", raw):
        raise FieldError("must be a US ZIP code (12345 or 12345-6789)")
    return raw


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise FieldError("must be true or false")
    return value


def integer(value: Any, *, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError("must be a whole number")
    if not minimum <= value <= maximum:
        raise FieldError(f"must be between {minimum} and {maximum}")
    return value
