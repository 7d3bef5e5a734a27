"""Every message template, rendered with one fixed sample context, against golden files.

After a deliberate template change, rewrite the golden files and review the diff:

    PAYLINK_UPDATE_GOLDEN=1 .venv/bin/pytest tests/app/messaging/test_templates.py
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from app.messaging import render
from app.messaging.outbox import MessageEnv, base_context
from app.models import Account, OrgSettings
from app.tokens import TokenService

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("PAYLINK_UPDATE_GOLDEN") == "1"
BASE_URL = "https://pay.example.com"
UNSUBSCRIBE_URL = f"{BASE_URL}/u/InVub3ZlIjo0Mn0.ZzRkYQ.sample-unsubscribe-token"
CREDITOR = {
    "creditor_name": "Paylink Demo Creditor",
    "creditor_phone": "+18005550100",
    "creditor_email": "billing@example.com",
    "creditor_hours": "Mon-Fri 9am-5pm",
    "creditor_address": "100 Main Street, Springfield, IL 62701",
}


def sample_context(name: str = "Maya Brooks") -> dict[str, Any]:
    """The context the outbox gives every template, plus every kind's own variables."""
    account = Account(name=name, currency="USD")
    settings = OrgSettings(**CREDITOR)
    env = MessageEnv(base_url=BASE_URL, unsubscribe_tokens=TokenService(("k" * 32,), "x"))
    return {
        **base_context(account, settings, env),
        "unsubscribe_url": UNSUBSCRIBE_URL,
        "url": f"{BASE_URL}/p/eyJsIjo0Mn0.ZzRkYQ.sample-link-token",
        "amount_cents": 12_345,
        "total_cents": 60_000,
        "installment_count": 6,
        "frequency_text": "every month",
        "expires_at_text": "November 30, 2026 at 5:00 PM EST",
        "expires_short": "Nov 30",
        "retry_date_text": "December 4, 2026",
        "reason_text": "requested by you",
        "schedule": [
            {"n": n, "due_date_text": f"{month} 1, 2027", "amount_cents": 10_000}
            for n, month in enumerate(("January", "February", "March", "April", "May", "June"), 1)
        ],
        "authorization_text": "You authorize Paylink Demo Creditor to charge Visa ending 4242 "
        "on each date above.",
        "receipt_number": "R-2026-000123",
        "paid_at_text": "November 23, 2026",
        "method_text": "Visa ending 4242",
    }


def renderings(context: dict[str, Any]) -> dict[str, str]:
    """Every template of every kind, as ``<kind>/<file>`` → rendered text."""
    out: dict[str, str] = {}
    for kind in render.kinds():
        if render.has_template(kind, "sms.txt"):
            out[f"{kind}/sms.txt"] = render.render_sms(kind, context).body + "\n"
        if render.has_template(kind, "subject.txt"):
            email = render.render_email(kind, context)
            out[f"{kind}/subject.txt"] = email.subject + "\n"
            out[f"{kind}/body.txt"] = email.text
            out[f"{kind}/body.html"] = email.html
    return out


RENDERED = renderings(sample_context())
EMAIL_KINDS = [k for k in render.kinds() if render.has_template(k, "subject.txt")]
SMS_KINDS = [k for k in render.kinds() if render.has_template(k, "sms.txt")]


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_template_matches_its_golden_file(name):
    golden = GOLDEN / name
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(RENDERED[name], encoding="utf-8")
    assert golden.is_file(), f"no golden file {golden}; run with PAYLINK_UPDATE_GOLDEN=1"
    assert RENDERED[name] == golden.read_text(encoding="utf-8")


def test_every_golden_file_still_has_a_template():
    stale = sorted(
        p.relative_to(GOLDEN).as_posix()
        for p in GOLDEN.rglob("*")
        if p.is_file() and p.relative_to(GOLDEN).as_posix() not in RENDERED
    )
    if UPDATE:
        for name in stale:
            (GOLDEN / name).unlink()
        stale = []
    assert stale == []


def test_every_kind_has_a_complete_email_or_an_sms():
    for kind in render.kinds():
        files = {
            f for f in ("subject.txt", "body.txt", "body.html") if render.has_template(kind, f)
        }
        assert files in (set(), {"subject.txt", "body.txt", "body.html"}), kind
        assert files or render.has_template(kind, "sms.txt"), kind


@pytest.mark.parametrize("kind", SMS_KINDS)
def test_every_sms_ends_with_the_opt_out_line(kind):
    body = RENDERED[f"{kind}/sms.txt"].rstrip("\n")
    if kind in render.SYSTEM_SMS_KINDS:
        # The answers to STOP, START and HELP say what to reply instead.
        assert "STOP" in body or "START" in body
        assert "Paylink Demo Creditor" in body
    else:
        assert body.endswith(render.OPT_OUT_LINE)
        assert body.count(render.OPT_OUT_LINE) == 1


@pytest.mark.parametrize("kind", EMAIL_KINDS)
def test_every_email_carries_unsubscribe_link_and_creditor_contact(kind):
    for part in ("body.txt", "body.html"):
        rendered = RENDERED[f"{kind}/{part}"]
        assert UNSUBSCRIBE_URL in rendered, part
        assert "Paylink Demo Creditor" in rendered, part
        assert "+18005550100" in rendered, part
    assert f'href="{UNSUBSCRIBE_URL}"' in RENDERED[f"{kind}/body.html"]


@pytest.mark.parametrize("kind", EMAIL_KINDS)
def test_html_escapes_what_customers_and_agents_typed(kind):
    context = sample_context(name="<script>alert(1)</script> Brooks")
    context["creditor"]["name"] = 'Acme & "Sons" <b>'
    email = render.render_email(kind, context)
    assert "<script>" not in email.html
    assert "<b>" not in email.html
    assert "Acme &amp; &#34;Sons&#34; &lt;b&gt;" in email.html
    if "Hi " in email.text:
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
        # Plain text is not HTML: the name stays as typed.
        assert "Hi <script>alert(1)</script>," in email.text


def test_reminder_kinds_share_the_reminder_templates():
    context = sample_context()
    for kind in ("reminder_1", "reminder_2", "reminder_3"):
        assert render.render_sms(kind, context) == render.render_sms("reminder", context)
        assert render.render_email(kind, context) == render.render_email("reminder", context)
