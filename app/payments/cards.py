"""Checks on payment details as typed: card numbers (Luhn, brand), expiry, security
codes, US bank routing numbers (ABA checksum). Nothing here stores or logs a number."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

# Brand by leading digits, with the lengths each brand issues.
_BRANDS: tuple[tuple[str, re.Pattern[str], tuple[int, ...]], ...] = (
    ("amex", re.compile(r"3[47]"), (15,)),
    ("visa", re.compile(r"4"), (13, 16, 19)),
    ("mastercard", re.compile(r"5[1-5]|2(2[2-9]|[3-6]\d|7[01]|720)"), (16,)),
    ("discover", re.compile(r"6011|65|64[4-9]|622"), (16, 19)),
    ("diners", re.compile(r"3(0[0-5]|[68])"), (14, 16)),
    ("jcb", re.compile(r"35(2[89]|[3-8])"), (16, 17, 18, 19)),
)


class InvalidPaymentDetail(ValueError):
    """A typed payment detail is wrong; the message says how, without echoing it."""


def digits_only(value: str) -> str:
    """Digits of a number typed with spaces or dashes; anything else is refused."""
    # [0-9], not \d: other scripts' digits are not card or bank digits.
    if not re.fullmatch(r"[0-9 -]*", value or ""):
        raise InvalidPaymentDetail("use digits only")
    return re.sub(r"[^0-9]", "", value)


def luhn_valid(number: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(number)):
        n = int(char)
        if index % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def card_brand(number: str) -> str | None:
    for brand, prefix, lengths in _BRANDS:
        if prefix.match(number) and len(number) in lengths:
            return brand
    return None


def check_card_number(value: str) -> tuple[str, str]:
    """(digits, brand) of a card number, or InvalidPaymentDetail."""
    number = digits_only(value)
    if not 12 <= len(number) <= 19:
        raise InvalidPaymentDetail("enter the whole card number")
    if not luhn_valid(number):
        raise InvalidPaymentDetail("this card number is not valid; check the digits")
    brand = card_brand(number)
    if brand is None:
        raise InvalidPaymentDetail(
            "we accept Visa, Mastercard, American Express, Discover, Diners Club and JCB"
        )
    return number, brand


def check_expiry(value: str, today: date) -> tuple[int, int]:
    """(month, year) from MM/YY or MM/YYYY, not in the past."""
    match = re.fullmatch(r"\s*(\d{1,2})\s*/\s*(\d{2}|\d{4})\s*", value or "")
    if not match:
        raise InvalidPaymentDetail("enter the expiration date as MM/YY")
    month, year = int(match.group(1)), int(match.group(2))
    if year < 100:
        year += 2000
    if not 1 <= month <= 12:
        raise InvalidPaymentDetail("the month must be 01 to 12")
    if (year, month) < (today.year, today.month):
        raise InvalidPaymentDetail("this card has expired")
    if year > today.year + 20:
        raise InvalidPaymentDetail("check the expiration year")
    return month, year


def check_security_code(value: str, brand: str) -> str:
    code = (value or "").strip()
    length = 4 if brand == "amex" else 3
    if not re.fullmatch(rf"\d{{{length}}}", code):
        raise InvalidPaymentDetail(f"enter the {length}-digit security code")
    return code


def aba_valid(routing: str) -> bool:
    if not re.fullmatch(r"\d{9}", routing):
        return False
    d = [int(c) for c in routing]
    checksum = 3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + (d[2] + d[5] + d[8])
    return checksum % 10 == 0


def check_routing_number(value: str) -> str:
    routing = digits_only(value)
    if len(routing) != 9:
        raise InvalidPaymentDetail("a routing number has 9 digits")
    if not aba_valid(routing):
        raise InvalidPaymentDetail("this routing number is not valid; check the digits")
    return routing


def check_bank_account_number(value: str) -> str:
    number = digits_only(value)
    if not 4 <= len(number) <= 17:
        raise InvalidPaymentDetail("an account number has 4 to 17 digits")
    return number


@dataclass(frozen=True)
class MaskedCard:
    brand: str
    last4: str
    exp_month: int
    exp_year: int

    @property
    def label(self) -> str:
        names = {"amex": "American Express", "mastercard": "Mastercard", "visa": "Visa"}
        return f"{names.get(self.brand, self.brand.title())} ending {self.last4}"
