"""Plan math: worked examples, bad input, and hypothesis properties for the invariants."""

from __future__ import annotations

import calendar
import itertools
import os
import tempfile
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from offers.plan_math import (
    FREQUENCIES,
    MAX_INSTALLMENTS,
    Installment,
    due_dates,
    local_today,
    reminder_times,
    schedule,
    settlement_total,
    split_total,
)

# Hypothesis keeps a cache under ./.hypothesis by default, and the suite's norecursedirs makes
# pytest warn (an error here) about that folder on the next run: keep the cache in /tmp.
if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "paylink-hypothesis")

# Quick enough for every run; no example database written into the working tree.
PROPERTY = settings(max_examples=150, deadline=None, database=None)

counts = st.integers(min_value=1, max_value=60)
firsts = st.dates(min_value=date(2000, 1, 1), max_value=date(2100, 12, 31))
semimonthly_firsts = st.builds(
    date,
    year=st.integers(min_value=2000, max_value=2100),
    month=st.integers(min_value=1, max_value=12),
    day=st.sampled_from([1, 15]),
)


@st.composite
def totals_and_counts(draw: st.DrawFn) -> tuple[int, int]:
    count = draw(counts)
    total = draw(st.integers(min_value=count, max_value=10**10))
    return total, count


def month_index(day: date) -> int:
    return day.year * 12 + day.month - 1


# --- split_total ---------------------------------------------------------------------------


def test_1000_in_3_gives_the_extra_cent_to_the_first():
    assert split_total(1000, 3) == [334, 333, 333]


def test_a_total_that_does_not_divide_evenly():
    assert split_total(1002, 4) == [251, 251, 250, 250]
    assert split_total(99_999, 12) == [8334, 8334, 8334] + [8333] * 9


def test_one_installment_is_the_whole_total():
    assert split_total(12_345, 1) == [12_345]
    assert schedule(12_345, 1, "monthly", date(2026, 3, 31)) == [
        Installment(n=1, due_date=date(2026, 3, 31), amount_cents=12_345)
    ]


def test_every_installment_can_be_one_cent():
    assert split_total(5, 5) == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("count", [0, -1, MAX_INSTALLMENTS + 1, 10_000])
def test_installment_counts_outside_the_hard_cap_are_refused(count):
    with pytest.raises(ValueError, match="installment"):
        split_total(10**9, count)
    with pytest.raises(ValueError, match="installment"):
        due_dates(date(2026, 1, 1), count, "weekly")


def test_the_hard_cap_itself_works():
    assert len(split_total(10**6, MAX_INSTALLMENTS)) == MAX_INSTALLMENTS
    dates = due_dates(date(2026, 1, 1), MAX_INSTALLMENTS, "monthly")
    assert dates[-1] == date(2069, 4, 1)


@pytest.mark.parametrize("total", [0, -1, -1000])
def test_zero_or_negative_totals_are_refused(total):
    with pytest.raises(ValueError, match="at least 1 cent"):
        split_total(total, 1)


def test_a_total_too_small_for_the_count_is_refused():
    with pytest.raises(ValueError, match="cannot be split"):
        split_total(2, 3)


@pytest.mark.parametrize(("total", "count"), [(10.0, 1), (True, 1), (100, 2.0), (100, True)])
def test_money_and_counts_are_ints(total, count):
    with pytest.raises(TypeError):
        split_total(total, count)


@PROPERTY
@given(totals_and_counts())
def test_split_invariants(total_and_count):
    total, count = total_and_count
    amounts = split_total(total, count)
    assert len(amounts) == count
    assert sum(amounts) == total
    assert min(amounts) >= 1
    assert amounts == sorted(amounts, reverse=True)
    assert max(amounts) - min(amounts) <= 1
    # The remainder cents are on the first installments, one each.
    assert amounts.count(amounts[0]) >= total % count


# --- due_dates -----------------------------------------------------------------------------


def test_monthly_from_jan_31_in_a_leap_year_clamps_and_comes_back():
    assert due_dates(date(2028, 1, 31), 5, "monthly") == [
        date(2028, 1, 31),
        date(2028, 2, 29),
        date(2028, 3, 31),
        date(2028, 4, 30),
        date(2028, 5, 31),
    ]


def test_monthly_from_jan_31_in_a_normal_year():
    assert due_dates(date(2027, 1, 31), 5, "monthly") == [
        date(2027, 1, 31),
        date(2027, 2, 28),
        date(2027, 3, 31),
        date(2027, 4, 30),
        date(2027, 5, 31),
    ]


def test_monthly_across_a_year_end_into_a_leap_february():
    assert due_dates(date(2027, 11, 30), 5, "monthly") == [
        date(2027, 11, 30),
        date(2027, 12, 30),
        date(2028, 1, 30),
        date(2028, 2, 29),
        date(2028, 3, 30),
    ]


def test_semimonthly_from_the_15th_crosses_a_month_and_a_year():
    assert due_dates(date(2026, 12, 15), 5, "semimonthly") == [
        date(2026, 12, 15),
        date(2027, 1, 1),
        date(2027, 1, 15),
        date(2027, 2, 1),
        date(2027, 2, 15),
    ]


def test_semimonthly_from_the_1st():
    assert due_dates(date(2026, 2, 1), 4, "semimonthly") == [
        date(2026, 2, 1),
        date(2026, 2, 15),
        date(2026, 3, 1),
        date(2026, 3, 15),
    ]


@pytest.mark.parametrize("day", [2, 14, 16, 28, 31])
def test_semimonthly_must_start_on_a_1st_or_15th(day):
    with pytest.raises(ValueError, match="1st or a 15th"):
        due_dates(date(2026, 1, day), 3, "semimonthly")


def test_weekly_and_biweekly_examples():
    assert due_dates(date(2026, 12, 24), 3, "weekly") == [
        date(2026, 12, 24),
        date(2026, 12, 31),
        date(2027, 1, 7),
    ]
    assert due_dates(date(2028, 2, 15), 3, "biweekly") == [
        date(2028, 2, 15),
        date(2028, 2, 29),
        date(2028, 3, 14),
    ]


def test_february_30th_is_not_a_date():
    # The API parses first_due_date with date.fromisoformat; the math never sees this.
    with pytest.raises(ValueError, match="day is out of range"):
        date.fromisoformat("2026-02-30")


@pytest.mark.parametrize("frequency", ["daily", "Monthly", "", "quarterly"])
def test_unknown_frequencies_are_refused(frequency):
    with pytest.raises(ValueError, match="frequency"):
        due_dates(date(2026, 1, 1), 2, frequency)


def test_a_datetime_is_not_a_due_date():
    with pytest.raises(TypeError):
        due_dates(datetime(2026, 1, 1, tzinfo=UTC), 2, "weekly")


@pytest.mark.parametrize("frequency", FREQUENCIES)
def test_schedules_running_past_year_9999_are_refused(frequency):
    with pytest.raises(ValueError, match="last representable date"):
        due_dates(date(9999, 12, 1), 10, frequency)


@PROPERTY
@given(first=firsts, count=counts, frequency=st.sampled_from(["weekly", "biweekly", "monthly"]))
def test_dates_start_on_the_first_and_strictly_increase(first, count, frequency):
    dates = due_dates(first, count, frequency)
    assert len(dates) == count
    assert dates[0] == first
    assert all(a < b for a, b in itertools.pairwise(dates))


@PROPERTY
@given(first=firsts, count=counts, frequency=st.sampled_from(["weekly", "biweekly"]))
def test_weekly_and_biweekly_spacing_is_exact(first, count, frequency):
    step = timedelta(days=7 if frequency == "weekly" else 14)
    dates = due_dates(first, count, frequency)
    assert all(b - a == step for a, b in itertools.pairwise(dates))


@PROPERTY
@given(first=firsts, count=counts)
def test_monthly_never_skips_or_repeats_a_month_and_keeps_the_day(first, count):
    dates = due_dates(first, count, "monthly")
    assert [month_index(d) for d in dates] == list(
        range(month_index(first), month_index(first) + count)
    )
    for due in dates:
        month_length = calendar.monthrange(due.year, due.month)[1]
        # The first date's day whenever the month has it, else the month's last day.
        assert due.day == min(first.day, month_length)


@PROPERTY
@given(first=semimonthly_firsts, count=counts)
def test_semimonthly_alternates_the_1st_and_15th(first, count):
    dates = due_dates(first, count, "semimonthly")
    assert len(dates) == count
    assert dates[0] == first
    assert {d.day for d in dates} <= {1, 15}
    for a, b in itertools.pairwise(dates):
        assert a.day != b.day
        # 1st → 15th of the same month; 15th → 1st of the next: no month skipped.
        assert month_index(b) - month_index(a) == (1 if a.day == 15 else 0)


@PROPERTY
@given(totals_and_counts(), st.sampled_from(FREQUENCIES), semimonthly_firsts)
def test_schedule_numbers_from_1_and_pairs_amounts_with_dates(total_and_count, frequency, first):
    total, count = total_and_count
    rows = schedule(total, count, frequency, first)
    assert [row.n for row in rows] == list(range(1, count + 1))
    assert [row.amount_cents for row in rows] == split_total(total, count)
    assert [row.due_date for row in rows] == due_dates(first, count, frequency)
    assert sum(row.amount_cents for row in rows) == total


def test_an_installment_as_the_api_shows_it():
    row = schedule(1000, 3, "semimonthly", date(2026, 1, 15))[1]
    assert row.as_json() == {"n": 2, "due_date": "2026-02-01", "amount_cents": 333}
    with pytest.raises(AttributeError):
        row.amount_cents = 1  # type: ignore[misc]


# --- local_today ---------------------------------------------------------------------------


def test_local_today_is_the_customers_calendar_day():
    now = datetime(2026, 3, 1, 3, 30, tzinfo=UTC)
    assert local_today(now, "UTC") == date(2026, 3, 1)
    assert local_today(now, "America/Los_Angeles") == date(2026, 2, 28)
    assert local_today(now, "Pacific/Honolulu") == date(2026, 2, 28)
    assert local_today(datetime(2026, 2, 28, 14, 0, tzinfo=UTC), "Pacific/Kiritimati") == date(
        2026, 3, 1
    )


def test_local_today_refuses_naive_times_and_unknown_zones():
    with pytest.raises(ValueError, match="aware"):
        local_today(datetime(2026, 3, 1, 3, 30), "UTC")
    for zone in ("Mars/Olympus", "", "../etc/passwd"):
        with pytest.raises(ValueError, match="IANA"):
            local_today(datetime(2026, 3, 1, tzinfo=UTC), zone)


# --- settlement_total ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("balance", "percent", "expected"),
    [
        (10_000, 20, 8_000),
        (10_000, 0, 10_000),
        (12_345, Decimal("12.5"), 10_802),  # 10,801.875
        (1_001, 50, 501),  # 500.5, half up
        (999, 50, 500),  # 499.5, half up
        (1_003, Decimal("33.3"), 669),  # 669.001
        (1, 50, 1),  # 0.5 → 1
        (1, 90, 1),  # 0.1 would round to 0: never below 1 cent
        (3, Decimal("99.99"), 1),
    ],
)
def test_settlement_totals(balance, percent, expected):
    assert settlement_total(balance, percent) == expected


@pytest.mark.parametrize("percent", [-1, 100, 101, Decimal("-0.01"), Decimal("100")])
def test_settlement_percent_out_of_range(percent):
    with pytest.raises(ValueError, match="percent_off"):
        settlement_total(10_000, percent)


@pytest.mark.parametrize("percent", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_settlement_percent_must_be_finite(percent):
    with pytest.raises(ValueError, match="finite"):
        settlement_total(10_000, percent)


def test_settlement_refuses_floats_and_empty_balances():
    with pytest.raises(TypeError, match="float"):
        settlement_total(10_000, 12.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        settlement_total(100.0, 10)  # type: ignore[arg-type]
    for balance in (0, -100):
        with pytest.raises(ValueError, match="balance"):
            settlement_total(balance, 10)


@PROPERTY
@given(
    balance=st.integers(min_value=1, max_value=10**12),
    percent=st.decimals(min_value=0, max_value=Decimal("99.99"), places=2),
)
def test_settlement_matches_decimal_half_up_and_stays_in_range(balance, percent):
    result = settlement_total(balance, percent)
    with localcontext() as ctx:
        ctx.prec = 60
        expected = (Decimal(balance) * (100 - percent) / 100).quantize(
            Decimal(1), rounding=ROUND_HALF_UP
        )
    assert result == max(1, int(expected))
    assert 1 <= result <= balance


# --- reminder_times ------------------------------------------------------------------------

EXPIRES = datetime(2026, 5, 10, 12, 0, tzinfo=UTC)


def test_reminders_earliest_first():
    assert reminder_times(EXPIRES, ["2h", "72h", "24h"]) == [
        datetime(2026, 5, 7, 12, 0, tzinfo=UTC),
        datetime(2026, 5, 9, 12, 0, tzinfo=UTC),
        datetime(2026, 5, 10, 10, 0, tzinfo=UTC),
    ]
    assert reminder_times(EXPIRES, ["30m", "1d"]) == [
        datetime(2026, 5, 9, 12, 0, tzinfo=UTC),
        datetime(2026, 5, 10, 11, 30, tzinfo=UTC),
    ]
    assert reminder_times(EXPIRES, []) == []


@pytest.mark.parametrize(
    ("offsets", "message"),
    [
        (["72h", "3d"], "different times"),  # the same instant spelt twice
        (["24h", "24h"], "different times"),
        (["0h"], "greater than zero"),
        (["-2h"], "not an offset"),
        (["2 hours"], "not an offset"),
        (["72h", "24h", "2h", "1h"], "at most 3"),
        ("72h", "must be a list"),
    ],
)
def test_bad_reminder_offsets(offsets, message):
    with pytest.raises(ValueError, match=message):
        reminder_times(EXPIRES, offsets)


def test_reminders_need_an_aware_expiry():
    with pytest.raises(ValueError, match="aware"):
        reminder_times(datetime(2026, 5, 10, 12, 0), ["2h"])


@PROPERTY
@given(
    st.lists(
        st.tuples(st.integers(min_value=1, max_value=9999), st.sampled_from("mhd")),
        max_size=3,
        unique_by=lambda pair: pair[0] * {"m": 1, "h": 60, "d": 1440}[pair[1]],
    )
)
def test_reminders_are_distinct_increasing_and_before_expiry(pairs):
    times = reminder_times(EXPIRES, [f"{amount}{unit}" for amount, unit in pairs])
    assert len(times) == len(pairs)
    assert all(a < b for a, b in itertools.pairwise(times))
    assert all(t < EXPIRES for t in times)
