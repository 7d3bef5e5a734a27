"""Render a message kind's templates: ``templates/messages/<kind>/{sms.txt, subject.txt,
body.txt, body.html}``. HTML is autoescaped; text is not. Missing variables are errors."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from app.messaging import segments

TEMPLATES = Path(__file__).resolve().parents[2] / "templates" / "messages"
OPT_OUT_LINE = "Reply STOP to opt out."
# Replies to STOP/START/HELP are themselves the compliance message: no opt-out line added.
SYSTEM_SMS_KINDS = ("sms_opted_out", "sms_opted_in", "sms_help")


@dataclass(frozen=True)
class RenderedSms:
    body: str


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


def money(cents: int, currency: str = "USD") -> str:
    symbol = {"USD": "$", "CAD": "$", "EUR": "€", "GBP": "£"}.get(currency)
    amount = f"{cents // 100:,}.{cents % 100:02d}"
    return f"{symbol}{amount}" if symbol else f"{amount} {currency}"


@cache
def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["money"] = money
    return env


# Message kinds that share another kind's templates.
ALIASES = {"reminder_1": "reminder", "reminder_2": "reminder", "reminder_3": "reminder"}


def template_dir(kind: str) -> str:
    return ALIASES.get(kind, kind)


def kinds() -> list[str]:
    return sorted(p.name for p in TEMPLATES.iterdir() if p.is_dir() and not p.name.startswith("_"))


def has_template(kind: str, name: str) -> bool:
    return (TEMPLATES / template_dir(kind) / name).is_file()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def gsm_friendly(text: str) -> str:
    """Replace letters outside GSM-7 with their plain forms (María → Maria, Łukasz →
    Lukasz), so one accented name does not turn a text into three UCS-2 segments."""
    if segments.is_gsm7(text):
        return text
    out = []
    for ch in text:
        if segments.is_gsm7(ch):
            out.append(ch)
            continue
        plain = "".join(
            c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)
        )
        plain = _EXTRA.get(ch, plain)
        out.append(plain if plain and segments.is_gsm7(plain) else ch)
    return "".join(out)


# Letters NFKD leaves alone, and typographic marks with a plain GSM-7 twin.
_EXTRA = {
    "\u0141": "L", "\u0142": "l", "\u0110": "D", "\u0111": "d", "\u0153": "oe", "\u0152": "OE",
    "\u0131": "i", "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
    "\u2014": "-", "\u2026": "...", "\u00a0": " ",
}  # fmt: skip


def render_sms(kind: str, context: dict[str, Any]) -> RenderedSms:
    body = _one_line(environment().get_template(f"{template_dir(kind)}/sms.txt").render(context))
    body = gsm_friendly(body)
    if kind not in SYSTEM_SMS_KINDS and not body.endswith(OPT_OUT_LINE):
        body = f"{body} {OPT_OUT_LINE}"
    return RenderedSms(body=body)


def render_email(kind: str, context: dict[str, Any]) -> RenderedEmail:
    env, folder = environment(), template_dir(kind)
    return RenderedEmail(
        subject=_one_line(env.get_template(f"{folder}/subject.txt").render(context)),
        text=env.get_template(f"{folder}/body.txt").render(context).strip() + "\n",
        html=env.get_template(f"{folder}/body.html").render(context).strip() + "\n",
    )
