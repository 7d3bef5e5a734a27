"""SMS segment counting (GSM-7 with its extension table, or UCS-2), and every standard
SMS template fitting one segment with long but realistic values."""

from __future__ import annotations

from typing import Any

import pytest

from app.messaging import render, segments

# --- the calculator -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "count"),
    [(0, 0), (1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_gsm7_takes_160_septets_then_153_per_segment(length, count):
    info = segments.count("a" * length)
    assert (info.encoding, info.units, info.segments) == ("GSM-7", length, count)
    assert info.per_segment == (160 if length <= 160 else 153)


@pytest.mark.parametrize(
    ("length", "count"), [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)]
)
def test_ucs2_takes_70_units_then_67_per_segment(length, count):
    info = segments.count("ж" * length)  # Cyrillic: not in GSM-7
    assert (info.encoding, info.units, info.segments) == ("UCS-2", length, count)
    assert info.per_segment == (70 if length <= 70 else 67)


def test_gsm7_basic_set_includes_some_accented_latin_and_symbols():
    text = "Café à Ñandu: £5, ¥6, $7 @home ¿si? ÄÖÜäöüß é è ù ì ò Ç Ø Å Æ Δ"
    assert segments.is_gsm7(text)
    assert segments.count(text).encoding == "GSM-7"
    # ...but not all: í, ú, ë and the like are UCS-2.
    for char in "íúëÁ":
        assert not segments.is_gsm7(char)


@pytest.mark.parametrize("char", list("^{}\\[~]|€"))
def test_extension_characters_count_double(char):
    assert segments.count(char).units == 2
    assert segments.count(char * 80).segments == 1  # 160 septets
    info = segments.count(char * 80 + "a")  # 161 septets
    assert (info.encoding, info.units, info.segments) == ("GSM-7", 161, 2)


def test_one_character_outside_gsm7_makes_the_whole_text_ucs2():
    text = "a" * 70
    assert segments.count(text).encoding == "GSM-7"
    info = segments.count(text[:-1] + "ł")
    assert (info.encoding, info.units, info.segments) == ("UCS-2", 70, 1)
    assert segments.count(text + "ł").segments == 2


def test_an_emoji_forces_ucs2_and_takes_two_units():
    info = segments.count("Thanks 👍")
    assert (info.encoding, info.units) == ("UCS-2", 9)  # a surrogate pair
    assert segments.count("a" * 68 + "👍").segments == 1  # 70 units
    assert segments.count("a" * 69 + "👍").segments == 2  # 71 units


def test_remaining_is_what_is_left_in_the_last_segment():
    assert segments.count("a" * 150).remaining == 10
    assert segments.count("a" * 200).remaining == 2 * 153 - 200
    assert segments.count("€").remaining == 158


# --- every standard template fits one segment ------------------------------------------------

BASE_URL = "https://pay.example-lender.com"  # 30 characters
TOKEN = "eyJsIjoxMjM0NTY3ODl9.ZzRkYQ.Xk3-q_9ZpLw"  # 39 characters
FIRST_NAME = "Maximiliana-Josefina"  # 20 characters
MAX_AMOUNT_CENTS = 999_999  # $9,999.99


def worst_case_context() -> dict[str, Any]:
    """The longest values a standard SMS should meet. Dates are short forms such as
    the reminder's "Sep 30" and the plan's "Sep 30, 2026"; the creditor is the default."""
    return {
        "first_name": FIRST_NAME,
        "name": f"{FIRST_NAME} Brooks",
        "currency": "USD",
        "base_url": BASE_URL,
        "creditor": {
            "name": "Paylink Demo Creditor",
            "phone": "+18005550100",
            "email": "billing@example.com",
            "hours": "Mon-Fri 9am-5pm",
            "address": "",
        },
        "url": f"{BASE_URL}/p/{TOKEN}",
        "amount_cents": MAX_AMOUNT_CENTS,
        "total_cents": MAX_AMOUNT_CENTS,
        "installment_count": 12,
        "frequency_text": "every month",
        "expires_at_text": "September 30, 2026 at 11:59 PM EDT",
        "expires_short": "Sep 30",
        "retry_date_text": "September 30, 2026",
        "reason_text": "requested by you",
        "schedule": [{"n": 1, "due_date_text": "Sep 30, 2026", "amount_cents": MAX_AMOUNT_CENTS}],
        "authorization_text": "",
        "receipt_number": "R-2026-000123",
        "paid_at_text": "September 30, 2026",
        "method_text": "Visa ending 4242",
    }


def test_the_worst_case_values_have_the_promised_lengths():
    assert (len(BASE_URL), len(TOKEN), len(FIRST_NAME)) == (30, 39, 20)
    assert render.money(MAX_AMOUNT_CENTS) == "$9,999.99"


@pytest.mark.parametrize("kind", [k for k in render.kinds() if render.has_template(k, "sms.txt")])
def test_every_standard_sms_fits_one_gsm7_segment(kind):
    body = render.render_sms(kind, worst_case_context()).body
    info = segments.count(body)
    assert info.encoding == "GSM-7", body
    assert info.segments == 1, f"{info.units} septets: {body}"
    if "{{ url }}" in (render.TEMPLATES / render.template_dir(kind) / "sms.txt").read_text():
        assert f"{BASE_URL}/p/{TOKEN}" in body  # the link is whole


def test_accented_names_keep_a_text_in_gsm7():
    from app.messaging.render import gsm_friendly

    assert gsm_friendly("María, Zoë, Łukasz, Chloé \u2013 ok") == "Maria, Zoe, Lukasz, Chloé - ok"
    assert segments.count(gsm_friendly("Hi Ștefan and Nguyễn")).encoding == "GSM-7"
    assert gsm_friendly("Hi 王芳") == "Hi 王芳"  # no plain form: left as it is
