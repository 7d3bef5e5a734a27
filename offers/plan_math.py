"""Plan math: pure functions that split a total into installments and date them.

Nothing here touches the database, the clock or Flask. Dates are calendar dates the caller
has already decided in the account's time zone (``local_today``); money is integer cents.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.settings import MAX_REMINDERS, parse_offset

# The math refuses more installments than this whatever the configured maximum is: ten years
# of weekly payments. The API caps lower (a setting); this only keeps bad input from making
# the math build enormous lists.
MAX_INSTALLMENTS = 520

WEEKLY = "weekly"
BIWEEKLY = "biweekly"
MONTHLY = "monthly"
SEMIMONTHLY = "semimonthly"
FREQUENCIES = (WEEKLY, BIWEEKLY, MONTHLY, SEMIMONTHLY)

# Semimonthly plans pay on these two days of every month, as in "1st and 15th (Split Between)".
SEMIMONTHLY_DAYS = (1, 15)

_STEP_DAYS = {WEEKLY: 7, BIWEEKLY: 14}


@dataclass(frozen=True)
class Installment:
    """One row of a plan's schedule; ``n`` counts from 1."""

    n: int
    due_date: date
    amount_cents: int

    def as_json(self) -> dict[str, int | str]:
        """The row as the API shows it: ``{n, due_date, amount_cents}``."""
        return {
            "n": self.n,
            "due_date": self.due_date.isoformat(),
            "amount_cents": self.amount_cents,
        }


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError("the installment count must be an int")
    if count < 1:
        raise ValueError("a plan needs at least 1 installment")
    if count > MAX_INSTALLMENTS:
        raise ValueError(f"a plan has at most {MAX_INSTALLMENTS} installments")


def split_total(total_cents: int, count: int) -> list[int]:
    """``count`` amounts summing exactly to ``total_cents``, the remainder cents going to the
    first installments: ``split_total(1000, 3) == [334, 333, 333]``.

    Raises ValueError for a count outside 1..MAX_INSTALLMENTS, a total that is not positive,
    or a total smaller than the count (an installment would be 0 cents).
    """
    if isinstance(total_cents, bool) or not isinstance(total_cents, int):
        raise TypeError("the total must be an int number of cents")
    _check_count(count)
    if total_cents < 1:
        raise ValueError("the total must be at least 1 cent")
    if total_cents < count:
        raise ValueError(f"{total_cents} cents cannot be split into {count} installments of 1+")
    base, remainder = divmod(total_cents, count)
    return [base + 1] * remainder + [base] * (count - remainder)


def _add_months(first: date, months: int) -> date:
    """``first`` moved by ``months``, on the same day of the month, clamped to the month's end.

    Always counted from the first date, so a clamp never sticks: Jan 31 → Feb 28 → Mar 31.
    """
    index = first.month - 1 + months
    year, month = first.year + index // 12, index % 12 + 1
    if year > date.max.year:
        raise ValueError("the schedule runs past the last representable date")
    return date(year, month, min(first.day, calendar.monthrange(year, month)[1]))


def _semimonthly(first: date, count: int) -> list[date]:
    if first.day not in SEMIMONTHLY_DAYS:
        raise ValueError("a semimonthly plan starts on a 1st or a 15th")
    month_start = first.replace(day=1)
    # Count half-months from the 1st of the first month: even ones fall on the 1st, odd ones
    # on the 15th, so the days alternate and no month is skipped.
    start = SEMIMONTHLY_DAYS.index(first.day)
    dates = []
    for half in range(start, start + count):
        months, second = divmod(half, 2)
        dates.append(_add_months(month_start, months).replace(day=SEMIMONTHLY_DAYS[second]))
    return dates


def due_dates(first: date, count: int, frequency: str) -> list[date]:
    """``count`` due dates starting with ``first``, strictly increasing.

    weekly and biweekly add 7 and 14 days; monthly keeps the first date's day of the month,
    clamped to shorter months (Jan 31 → Feb 28/29 → Mar 31 → Apr 30); semimonthly alternates
    the 1st and the 15th and must start on one of them. ValueError for anything else.
    """
    if isinstance(first, datetime) or not isinstance(first, date):
        raise TypeError("the first due date must be a date, not a datetime")
    _check_count(count)
    if frequency in _STEP_DAYS:
        step = timedelta(days=_STEP_DAYS[frequency])
        try:
            return [first + step * k for k in range(count)]
        except OverflowError:
            raise ValueError("the schedule runs past the last representable date") from None
    if frequency == MONTHLY:
        return [_add_months(first, k) for k in range(count)]
    if frequency == SEMIMONTHLY:
        return _semimonthly(first, count)
    raise ValueError(f"frequency must be one of {', '.join(FREQUENCIES)}")


def schedule(total_cents: int, count: int, frequency: str, first: date) -> list[Installment]:
    """The plan's installments: ``split_total`` amounts on ``due_dates`` dates, n from 1."""
    amounts = split_total(total_cents, count)
    dates = due_dates(first, count, frequency)
    return [
        Installment(n=n, due_date=due, amount_cents=amount)
        for n, (due, amount) in enumerate(zip(dates, amounts, strict=True), start=1)
    ]


def local_today(now: datetime, tz_name: str) -> date:
    """The calendar date at the instant ``now`` (timezone-aware) in the IANA zone ``tz_name``.

    Due dates, "from today" checks and the first due date are decided with this, so a
    customer in Honolulu and one in New York see the day they are living in.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    try:
        zone = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{tz_name!r} is not an IANA time zone") from None
    return now.astimezone(zone).date()


def settlement_total(balance_cents: int, percent_off: Decimal | int) -> int:
    """What a settlement of ``balance_cents`` at ``percent_off`` costs: rounded to the cent,
    half up, and never below 1 cent. ``percent_off`` is 0 up to (not including) 100.

    Computed exactly (no float anywhere): 12,345 cents at 12.5 % off is 10,801.875 → 10,802.
    """
    if isinstance(balance_cents, bool) or not isinstance(balance_cents, int):
        raise TypeError("the balance must be an int number of cents")
    if isinstance(percent_off, bool) or not isinstance(percent_off, int | Decimal):
        raise TypeError("percent_off must be an int or a Decimal, never a float")
    if isinstance(percent_off, Decimal) and not percent_off.is_finite():
        raise ValueError("percent_off must be a finite number")
    if balance_cents < 1:
        raise ValueError("the balance must be at least 1 cent")
    if not 0 <= percent_off < 100:
        raise ValueError("percent_off must be at least 0 and less than 100")
    exact = Fraction(balance_cents) * (100 - Fraction(percent_off)) / 100
    half_up = math.floor(exact + Fraction(1, 2))
    return max(1, half_up)


def reminder_times(expires_at: datetime, offsets: list[str]) -> list[datetime]:
    """When to send each reminder: ``expires_at`` minus each offset (``"72h"``, ``"30m"``,
    ``"3d"``), earliest first.

    ValueError for more than MAX_REMINDERS offsets, a malformed or zero offset, two offsets
    naming the same instant (``"72h"`` and ``"3d"``), or a naive ``expires_at``.
    """
    if expires_at.tzinfo is None or expires_at.utcoffset() is None:
        raise ValueError("expires_at must be timezone-aware")
    if not isinstance(offsets, list | tuple):
        raise ValueError('offsets must be a list such as ["72h", "24h", "2h"]')
    if len(offsets) > MAX_REMINDERS:
        raise ValueError(f"at most {MAX_REMINDERS} reminders")
    times = [expires_at - parse_offset(offset) for offset in offsets]
    if len(set(times)) != len(times):
        raise ValueError("reminder offsets must name different times")
    times.sort()
    # parse_offset refuses zero, so this holds; it is the promise callers rely on.
    if times and not times[-1] < expires_at:
        raise ValueError("every reminder must come before the expiry")
    return times
