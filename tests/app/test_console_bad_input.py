"""Bad input never answers 500: every route of the agents' console and of the customer's
plan page (/m/<token>), walked from the app's URL map, signed in as each role in turn,
with bad ids and tokens in the path, hostile query strings and hostile form bodies (with
a valid CSRF token), each answered below 500.

A form's fields come from the pages themselves: each route's own page, or the page whose
form posts to it; each field is then spoiled in turn, the others left as the page filled
them. Each (route, input) is a subtest, so a failure names both.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.datastructures import MultiDict
from werkzeug.routing import Rule

from app.models import ApiKey
from links.campaign_models import Campaign
from links.models import PaymentLink
from links.tokens import OFFER, PLAN_METHOD, UrlTokens
from offers.models import Offer
from tests.app.test_console import CSRF, login
from tests.app.test_console_account import make_account, token_on
from tests.conftest import TEST_SECRET_KEYS
from tests.offers.test_offer_console import fields as offer_fields
from tests.signing.plan_factory import make_signed_plan

CONSOLE = frozenset(
    {"console", "link_console", "offer_console", "agreement_console", "campaigns",
     "dashboard", "console_admin"}
)  # fmt: skip
CUSTOMER = frozenset({"plan_method"})
# Routes that end the session: walked last, and the role signs in again after each.
SESSION_ENDERS = ("console.logout", "console.login")

LONG = "x" * 5000
HUGE = "9" * 30
BAD_IDS = (0, -1, 2**31, 2**63 - 1, 2**63, 987_654)  # 2**31: past PostgreSQL's int4
# Each value is put in every field at once (the light sweep: the first few only).
BAD_VALUES = (
    "", "abc", "-1", HUGE, "1.005", "1e400", "NaN", "a\x00b", LONG,
    "\u202e\ufffd\U0001f600", "2026-13-45", "%s{0}<script>",
)  # fmt: skip
# Then in one field at a time, the others as the page filled them.
ONE_FIELD_VALUES = ("", "abc", "-1", HUGE, "1.005", "a\x00b", LONG, "2026-13-45")
# Grouped so that each parameter meets each kind of bad value once.
HOSTILE_QUERIES: tuple[dict[str, Any], ...] = (
    {"page": "-5", "q": "a\x00b", "days": "-7", "kind": "\x00", "method": "nope",
     "next": "//evil.example/", "unknown": "1", "x" * 300: "y"},
    {"page": "99999999999999999999", "q": "q" * 10_000, "start": "2026-13-45",
     "end": "2026-02-30", "kind": "bank", "method": "dob"},
    {"page": "abc", "q": "%_\\'\"", "start": "0001-01-01", "end": "9999-12-31",
     "days": HUGE, "next": "\x00"},
    {"page": ["1", "2"], "q": ["a", "b"], "start": "2026-01-01", "days": "abc"},
    {"page": "0", "q": "\x00", "start": "2026-02-01", "end": "2026-01-01",
     "cursor": "-1", "before": HUGE, "limit": "-1", "offset": HUGE},
)  # fmt: skip
# Names tried on every POST besides those a page's form shows.
KNOWN_FIELDS = (
    "amount", "total", "installment_count", "frequency", "first_due_date",
    "expires_in_hours", "reminder_offsets", "channels", "kind", "action", "percent_off",
    "email", "name", "role", "accounts", "confirm", "hold", "note", "reason", "days",
    "start", "end", "password", "method", "ssn_last4", "date_of_birth", "zip", "number",
    "expiry", "security_code", "holder_name", "routing_number", "account_number",
    "account_type",
)  # fmt: skip


@dataclass
class Form:
    action: str
    method: str
    fields: list[tuple[str, str]] = field(default_factory=list)


class _Forms(HTMLParser):
    """Every <form> of a page, with its fields as the page fills them."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._select: str | None = None
        self._select_value: str | None = None
        self._textarea: str | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
        elif not self.forms or "name" not in a:
            if tag == "option" and self._select is not None and self._select_value is None:
                self._select_value = a.get("value", "")
        elif tag == "input" and a.get("type") not in ("submit", "button", "file"):
            if a.get("type") in ("checkbox", "radio") and "checked" not in a:
                if a.get("type") == "radio" and all(n != a["name"] for n, _ in self._fields):
                    self._fields.append((a["name"], a.get("value", "")))
                return
            self._fields.append((a["name"], a.get("value", "")))
        elif tag == "select":
            self._select, self._select_value = a["name"], None
        elif tag == "textarea":
            self._textarea, self._text = a["name"], ""
        if tag == "option" and self._select is not None and "selected" in a:
            self._select_value = a.get("value", "")

    @property
    def _fields(self) -> list[tuple[str, str]]:
        return self.forms[-1].fields

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "select" and self._select is not None:
            self._fields.append((self._select, self._select_value or ""))
            self._select = None
        elif tag == "textarea" and self._textarea is not None:
            self._fields.append((self._textarea, self._text))
            self._textarea = None


def forms_on(html: str) -> list[Form]:
    parser = _Forms()
    parser.feed(html)
    return parser.forms


# --- arranging ---------------------------------------------------------------------------


@dataclass
class Data:
    ids: dict[str, int]  # URL argument name → an id that exists
    method_token: str
    offer_token: str  # an offer's own token: right signature, wrong purpose


def arrange(app: Flask, client: FlaskClient, admin, spare) -> Data:
    """An account with a link and an offer, a signed plan with its agreement, a campaign;
    made through the console as the admin, as the console tests make them."""
    account_id = make_account(app)
    signed = make_signed_plan(app)
    assert login(client, admin.email, admin.password).status_code == 302
    path = f"/console/accounts/{account_id}/links/new"
    resp = client.post(
        path, data={"csrf_token": token_on(client, path), "amount": "20", "channels": "sms"}
    )
    assert resp.status_code == 303, resp.get_data(as_text=True)
    path = f"/console/accounts/{account_id}/offers/new"
    resp = client.post(
        path, data={"csrf_token": token_on(client, path), "action": "create", **offer_fields()}
    )
    assert resp.status_code == 303, resp.get_data(as_text=True)
    token = token_on(client, "/console/campaigns")
    resp = client.post(
        "/console/campaigns",
        data={"csrf_token": token, "name": "Spring", "accounts": "ACC-7001", "channels": "sms"},
    )
    assert resp.status_code in (302, 303), resp.get_data(as_text=True)
    client.post("/console/logout", data={"csrf_token": token_on(client, "/console/")})
    with app.extensions["paylink.db"].transaction() as session:
        offer = session.get(Offer, signed.offer_id)
        ids = {
            "account_id": account_id,
            "link_id": session.scalar(select(PaymentLink.id)),
            "offer_id": session.scalar(select(Offer.id).where(Offer.account_id == account_id)),
            "plan_id": signed.plan_id,
            "agreement_id": signed.agreement_id,
            "campaign_id": session.scalar(select(Campaign.id)),
            "agent_id": spare.id,
            "key_id": session.scalar(select(ApiKey.id).where(ApiKey.agent_id == spare.id)),
        }
        token_id = offer.token_id
    return Data(
        ids,
        UrlTokens(TEST_SECRET_KEYS, PLAN_METHOD).token_for(token_id),
        UrlTokens(TEST_SECRET_KEYS, OFFER).token_for(token_id),
    )


# --- the sweep ---------------------------------------------------------------------------


def swept_rules(app: Flask, blueprints: frozenset[str]) -> list[Rule]:
    rules = [r for r in app.url_map.iter_rules() if r.endpoint.split(".")[0] in blueprints]
    return sorted(rules, key=lambda r: (r.endpoint in SESSION_ENDERS, r.rule))


def bad_values_for(name: str, data: Data) -> list[Any]:
    if name in data.ids:
        return list(BAD_IDS)
    if name == "token":
        return [
            "not-a-token", "a.b.c", data.offer_token, data.method_token[:-2] + "AA",
            UrlTokens(TEST_SECRET_KEYS, PLAN_METHOD).token_for("no-such-offer"), LONG,
            "%00", "\u00fc\U0001f600",
        ]  # fmt: skip
    if name == "name":  # the console's assets
        return ["nope.css"]
    return ["nope", "%2E%2E%2Fetc", "%00", LONG]  # queue names, job ids


def good_value_for(name: str, data: Data) -> Any:
    if name in data.ids:
        return data.ids[name]
    if name == "token":
        return data.method_token
    if name == "name":
        return "console.css"
    return {"queue_name": "default", "job_id": "no-such-job"}[name]


def build(rule: Rule, values: dict[str, Any]) -> str:
    path = rule.rule
    for arg in rule.arguments:
        raw = str(values[arg])
        text = raw if raw.startswith("%") else quote(raw, safe="")
        path = re.sub(rf"<(?:[^<>:]+:)?{arg}>", lambda _m, t=text: t, path)
    assert "<" not in path, path
    return path


@dataclass
class Sweep:
    app: Flask
    client: FlaskClient
    subtests: Any
    data: Data
    who: str
    full: bool = True  # else: bad paths, hostile queries and a few bodies only
    sign_in: Any = None
    pages: dict[str, str] = field(default_factory=dict)  # path → HTML of a GET's 200
    sent: int = 0

    def request(self, method: str, path: str, label: str, **kwargs: Any) -> None:
        self.sent += 1  # a new address each time: the sweep is no rate-limit test
        n = self.sent
        kwargs["environ_base"] = {"REMOTE_ADDR": f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"}
        for key in ("data", "query_string"):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = MultiDict(kwargs[key])
        with self.subtests.test(msg=f"{self.who} {method} {path[:100]} {label[:160]}"):
            resp = self.client.open(path, method=method, **kwargs)
            assert resp.status_code < 500, resp.get_data(as_text=True)[-3000:]
            if method == "GET" and resp.status_code == 200 and "html" in resp.content_type:
                self.pages[path] = resp.get_data(as_text=True)

    def csrf(self) -> str:
        for html in reversed(self.pages.values()):
            match = CSRF.search(html)
            if match:
                return match.group(1)
        for path in ("/console/", "/console/login"):
            match = CSRF.search(self.client.get(path).get_data(as_text=True))
            if match:
                return match.group(1)
        raise AssertionError("no CSRF token on the console's pages")

    def form_for(self, path: str, method: str) -> list[tuple[str, str]]:
        """The fields of the form that sends ``method`` to ``path``, as a page showed it
        (the route's own page first)."""
        own = self.pages.get(path)
        for html in ([own] if own else []) + list(self.pages.values()):
            for form in forms_on(html):
                action = urlsplit(form.action).path or (path if html is own else "")
                if action == path and form.method == method.lower():
                    return [(n, v) for n, v in form.fields if n != "csrf_token"]
        return []

    def walk(self, rule: Rule) -> None:
        methods = sorted(rule.methods - {"HEAD", "OPTIONS"})
        good = {arg: good_value_for(arg, self.data) for arg in rule.arguments}
        path = build(rule, good)
        for arg in sorted(rule.arguments):  # bad values in the path, one at a time
            for bad in bad_values_for(arg, self.data):
                bad_path = build(rule, {**good, arg: bad})
                for method in methods:
                    body = {"csrf_token": self.csrf()} if method == "POST" else None
                    self.request(method, bad_path, f"{arg}={str(bad)[:40]}", data=body)
        if "GET" in methods:
            self.request("GET", path, "plain")
            for query in HOSTILE_QUERIES:
                self.request("GET", path, f"query {query!r}", query_string=query)
            shown = self.form_for(path, "GET") if self.full else []
            for name in dict.fromkeys(n for n, _ in shown):
                for value in ONE_FIELD_VALUES:
                    query = [*((n, v) for n, v in shown if n != name), (name, value)]
                    self.request("GET", path, f"query {name}={value[:40]!r}", query_string=query)
        if "POST" in methods:
            self.posts(path)
        if rule.endpoint in SESSION_ENDERS and self.sign_in is not None:
            self.client = self.sign_in()

    def posts(self, path: str) -> None:
        shown = self.form_for(path, "POST")
        names = list(dict.fromkeys([n for n, _ in shown] + list(KNOWN_FIELDS)))
        token = self.csrf()
        self.request("POST", path, "no CSRF token")
        self.request("POST", path, "CSRF token only", data={"csrf_token": token})
        self.request("POST", path, "the page's form", data=[("csrf_token", token), *shown])
        for value in BAD_VALUES if self.full else BAD_VALUES[:4]:
            body = [("csrf_token", token), *((n, value) for n in names)]
            self.request("POST", path, f"every field {value[:40]!r}", data=body)
        if not self.full:
            return
        lists = [("csrf_token", token), *((n, v) for n in names for v in ("1", "2", "abc"))]
        self.request("POST", path, "every field a list", data=lists)
        raw = "&".join([f"csrf_token={token}"] + [f"{n}=%FF%FE%C0%AF%ED%A0%80" for n in names])
        self.request(
            "POST", path, "bytes that are not UTF-8", data=raw.encode(),
            content_type="application/x-www-form-urlencoded",
        )  # fmt: skip
        headers = {"X-CSRFToken": token}  # a form reads a JSON body when no form is sent
        for value in (5, 1e308, True, None, ["a", "b"], {"a": 1}):
            body = dict.fromkeys(names, value)
            self.request("POST", path, f"JSON {value!r}", json=body, headers=headers)
        for body in ([1, 2], "x", 5):
            self.request("POST", path, f"JSON body {body!r}", json=body, headers=headers)
        files = {n: (io.BytesIO(b"\xff\xfe\x00garbage"), "x.csv") for n in ["file", *names[:5]]}
        self.request(
            "POST", path, "files where text goes", data={"csrf_token": token, **files},
            content_type="multipart/form-data",
        )  # fmt: skip
        for name in dict.fromkeys(n for n, _ in shown):
            for value in ONE_FIELD_VALUES:
                body = [("csrf_token", token), *((n, v) for n, v in shown if n != name)]
                self.request("POST", path, f"{name}={value[:40]!r}", data=[*body, (name, value)])


def as_customer(app: Flask, subtests: Any, data: Data) -> Sweep:
    """The plan page as the customer, confirmed (to reach the method form) when the
    settings ask it."""
    client = app.test_client()
    path = f"/m/{data.method_token}/verify"
    match = CSRF.search(client.get(path).get_data(as_text=True))
    if match:
        resp = client.post(
            path, data={"csrf_token": match.group(1), "method": "ssn_last4", "ssn_last4": "6789"}
        )
        assert resp.status_code == 302, resp.get_data(as_text=True)
    return Sweep(app, client, subtests, data, "customer")


@pytest.mark.parametrize("who", ["customer", "agent", "supervisor", "admin"])
def test_no_route_answers_500_to_bad_input(app, client, make_agent, subtests, who):
    """The admin, who may do everything, meets every input; the agent and the supervisor
    (mostly refused) meet bad paths and queries and a few bodies. The customer's page
    needs no console session: the customer meets it, and the signed-out login form."""
    admin = make_agent("admin")
    data = arrange(app, client, admin, spare=make_agent("agent"))
    if who == "customer":
        sweep = as_customer(app, subtests, data)
        rules = swept_rules(app, CUSTOMER)
        for rule in sorted(rules, key=lambda r: r.endpoint == "plan_method.verify"):
            if rule.endpoint == "plan_method.verify":
                sweep.client = app.test_client()  # not confirmed yet: the form shows
            sweep.walk(rule)
        sweep.client = app.test_client()
        sweep.walk(next(r for r in swept_rules(app, CONSOLE) if r.endpoint == "console.login"))
        assert sweep.sent > 150
        return
    role = admin if who == "admin" else make_agent(who)

    def sign_in() -> FlaskClient:
        fresh = app.test_client()
        assert login(fresh, role.email, role.password).status_code == 302
        return fresh

    sweep = Sweep(app, sign_in(), subtests, data, who, full=who == "admin", sign_in=sign_in)
    rules = swept_rules(app, CONSOLE)
    assert {r.endpoint.split(".")[0] for r in rules} == CONSOLE
    for rule in rules:
        sweep.walk(rule)
    assert sweep.sent > 300


def test_a_file_or_json_where_a_form_field_goes_is_an_empty_form(client, agent):
    """Forms read the posted fields only: a file (multipart) or a JSON body in their place
    is a form with nothing typed, 400 with the fields' messages."""
    token = CSRF.search(client.get("/console/login").get_data(as_text=True)).group(1)

    upload = client.post(
        "/console/login",
        data={"csrf_token": token, "email": (io.BytesIO(b"x"), "email.txt"),
              "password": (io.BytesIO(b"x"), "password.txt")},
        content_type="multipart/form-data",
    )  # fmt: skip
    as_json = client.post(
        "/console/login",
        json={"email": 5, "password": ["a", "b"]},
        headers={"X-CSRFToken": token},
    )
    not_an_object = client.post("/console/login", json=[1, 2], headers={"X-CSRFToken": token})

    for resp in (upload, as_json, not_an_object):
        assert resp.status_code == 400
        assert '<label for="email">Email</label>' in resp.get_data(as_text=True)
    assert login(client, agent.email, agent.password).status_code == 302  # forms still work
