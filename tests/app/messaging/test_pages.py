"""Messaging's pages: the development outbox and the unsubscribe link's landing page,
form POST and RFC 8058 one-click POST."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser

import pytest
import time_machine
from sqlalchemy import func, select

from app import create_app
from app.clock import utcnow
from app.messaging.outbox import MessageEnv, queue_message
from app.messaging.pages import linkify, mask_email, outbox_csp
from app.models import Account, AuditEvent, EmailSuppression, Message
from app.tokens import TokenService
from tests.helpers import drain

# 15:00 UTC is 10:00 in New York: inside the default 08:00-21:00 window.
NOON_NY = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
LINK = "https://pay.example.test/p/abc"
CONTEXT = {"url": LINK, "amount_cents": 5000, "expires_at_text": "Nov 30"}


@pytest.fixture
def account_id(app) -> int:
    now = utcnow()
    with app.extensions["paylink.db"].transaction() as session:
        account = Account(
            external_id="M-1", name="Maya Brooks", phone="+12025550143",
            email="maya.brooks@example.com", timezone="America/New_York", balance_cents=5000,
            created_at=now, updated_at=now,
        )  # fmt: skip
        session.add(account)
        session.flush()
        return account.id


def queue(app, account_id: int, channels=("sms", "email"), kind="link") -> list[int]:
    env = MessageEnv.from_config(app.extensions["paylink.config"])
    with app.extensions["paylink.db"].transaction() as session:
        account = session.get(Account, account_id)
        messages = queue_message(session, account, kind, channels, CONTEXT, now=utcnow(), env=env)
        return [m.id for m in messages]


def add_message(app, account_id: int, **values) -> int:
    """A message row as a backend would have left it."""
    now = utcnow()
    defaults = {
        "kind": "link", "channel": "sms", "status": "delivered", "recipient": "+12025550143",
        "body": "Hello", "scheduled_for": now, "created_at": now, "updated_at": now,
    }  # fmt: skip
    with app.extensions["paylink.db"].transaction() as session:
        message = Message(account_id=account_id, **{**defaults, **values})
        session.add(message)
        session.flush()
        return message.id


class Page(HTMLParser):
    """The parts of a page the tests look at, as a browser would read them."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.iframes: list[dict[str, str | None]] = []
        self.scripts = 0
        self.style_attributes = 0
        self.stylesheets: list[str] = []
        self.inputs: dict[str, str | None] = {}
        self.buttons: list[str] = []
        self._button: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.style_attributes += "style" in values
        if tag == "a" and values.get("href"):
            self.links.append(values["href"])
        elif tag == "iframe":
            self.iframes.append(values)
        elif tag == "script":
            self.scripts += 1
        elif tag == "link" and values.get("rel") == "stylesheet":
            self.stylesheets.append(values["href"] or "")
        elif tag == "input" and values.get("name"):
            self.inputs[values["name"]] = values.get("value")
        elif tag == "button":
            self._button = []

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "button" and self._button is not None:
            self.buttons.append("".join(self._button).strip())
            self._button = None


def other_app(app_config, **overrides):
    return create_app({**app_config, **overrides})


def close(application) -> None:
    application.extensions["paylink.queue"].close()
    application.extensions["paylink.db"].dispose()


REAL_SMS = {
    "sms_backend": "twilio",
    "twilio_account_sid": "AC" + "0" * 32,
    "twilio_auth_token": "x",
    "twilio_from_number": "+15005550006",
}
REAL_EMAIL = {
    "email_backend": "sendgrid",
    "sendgrid_api_key": "SG.x",
    "sendgrid_from_email": "b@example.com",
}


# --- /dev/outbox --------------------------------------------------------------------------


def test_outbox_shows_an_sms_and_an_email_as_the_customer_sees_them(app, client, account_id):
    with time_machine.travel(NOON_NY, tick=False):
        sms_id, email_id = queue(app, account_id)
        drain(app)
    with app.extensions["paylink.db"].transaction() as session:
        sms, email = session.get(Message, sms_id), session.get(Message, email_id)
    assert (sms.status, email.status) == ("delivered", "delivered")

    resp = client.get("/dev/outbox")
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    page = Page(html)
    # The SMS: a bubble with its text, the payment link clickable.
    assert '<div class="dev-bubble">' in html
    assert LINK in page.links
    assert "Reply STOP to opt out." in html
    assert "+12025550143" in html
    # The email: subject, from, to, and the HTML part in a sandboxed frame, exactly.
    assert email.subject in html
    assert "maya.brooks@example.com" in html
    assert "Paylink Demo Creditor &lt;billing@example.com&gt;" in html
    (frame,) = page.iframes
    # A bare sandbox attribute: every restriction (no scripts, no same origin, no forms).
    assert "sandbox" in frame
    assert not frame["sandbox"]
    assert frame["srcdoc"] == email.html
    assert "<table" not in html.split("<main", 1)[1]  # the email's markup is only in srcdoc
    assert frame["title"]
    # The text part, its links clickable too (the payment link and the unsubscribe link).
    assert email.body.splitlines()[0] in html
    unsubscribe = next(u for u in page.links if "/u/" in u)
    env = MessageEnv.from_config(app.extensions["paylink.config"])
    assert env.unsubscribe_tokens.loads(unsubscribe.rsplit("/", 1)[1]) == email_id
    # Status, kind and time, and the development-only notice.
    assert "delivered" in html
    assert '<span class="dev-kind">link</span>' in html
    assert "2026-11-23T15:00:00Z" in html
    assert "Development only" in html
    assert resp.headers["Cache-Control"] == "no-store"


def test_outbox_page_keeps_the_content_security_policy(app, client, account_id):
    queue(app, account_id)
    resp = client.get("/dev/outbox")
    page = Page(resp.get_data(as_text=True))
    assert page.scripts == 0
    assert page.style_attributes == 0  # the email's styles are inside srcdoc, not markup
    assert "/static/dev-outbox.css" in page.stylesheets
    with client.get("/static/dev-outbox.css") as stylesheet:
        assert stylesheet.status_code == 200
    csp = resp.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["default-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    # The srcdoc document inherits this policy: exactly the email's own inline styles are
    # allowed, by hash, and nothing else inline.
    styles = directives["style-src"].split()
    assert styles[:2] == ["'self'", "'unsafe-hashes'"]
    assert all(s.startswith("'sha256-") for s in styles[2:])
    assert len(styles) > 2
    assert "'unsafe-inline'" not in csp
    # With no email on the page, the policy is the app's own.
    resp = client.get("/dev/outbox", query_string={"to": "nobody"})
    assert "style-src 'self';" in resp.headers["Content-Security-Policy"]


def test_outbox_escapes_what_is_in_a_message(app, client, account_id):
    add_message(
        app, account_id,
        body='<script>alert(1)</script> <img src=x onerror=alert(2)> '
        'see https://evil.test/a"onmouseover="alert(3) and javascript:alert(4) ok',
    )  # fmt: skip
    add_message(
        app, account_id, channel="email", recipient='x"><script>alert(5)</script>@example.com',
        subject="<b>Bold</b> subject", body="<i>text</i>",
        html='<p>"><script>alert(6)</script><img src=x onerror=alert(7)></p>',
    )  # fmt: skip
    resp = client.get("/dev/outbox")
    html = resp.get_data(as_text=True)
    page = Page(html)
    assert page.scripts == 0
    assert "<img" not in html
    assert "<b>" not in html
    assert "<i>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;Bold&lt;/b&gt; subject" in html
    # The URL stops at the quote; no attribute escapes the href.
    assert "https://evil.test/a" in page.links
    assert not any("onmouseover" in link or "javascript" in link for link in page.links)
    assert "onmouseover=" not in html.replace("&#34;onmouseover=&#34;", "")
    # The email's HTML reaches the frame whole, and only the frame.
    (frame,) = page.iframes
    assert frame["srcdoc"] == '<p>"><script>alert(6)</script><img src=x onerror=alert(7)></p>'


def test_outbox_filters_by_recipient_and_pages_by_50(app, client, account_id):
    ids = [add_message(app, account_id, body=f"text {n}") for n in range(51)]
    other = add_message(app, account_id, recipient="+13105550199", body="for someone else 100%_")
    first = client.get("/dev/outbox")
    html = first.get_data(as_text=True)
    assert html.count('class="dev-bubble"') == 50
    assert "for someone else" in html  # the newest first
    assert f'id="message-{ids[0]}"' not in html
    older = Page(html).links
    older = next(link for link in older if "before=" in link)
    second = client.get(older).get_data(as_text=True)
    assert second.count('class="dev-bubble"') == 2
    assert f'id="message-{ids[0]}"' in second
    assert f'id="message-{ids[1]}"' in second
    assert "Newest messages" in second

    filtered = client.get("/dev/outbox", query_string={"to": "3105550199"}).get_data(as_text=True)
    assert filtered.count('class="dev-bubble"') == 1
    assert f'id="message-{other}"' in filtered
    assert client.get("/dev/outbox", query_string={"to": "%"}).status_code == 200
    assert "No messages" in client.get("/dev/outbox?to=%25").get_data(as_text=True)
    for bad in ("abc", "-1", "99999999999999999999999"):
        assert client.get("/dev/outbox", query_string={"before": bad}).status_code == 200


def test_outbox_is_404_when_both_backends_are_real(app_config, account_id, app):
    add_message(app, account_id, body="secret sms")
    real = other_app(app_config, **REAL_SMS, **REAL_EMAIL)
    try:
        resp = real.test_client().get("/dev/outbox")
        assert resp.status_code == 404
        assert "secret sms" not in resp.get_data(as_text=True)
    finally:
        close(real)


def test_outbox_shows_only_the_channel_whose_backend_is_the_outbox(app_config, account_id, app):
    add_message(app, account_id, body="an sms body")
    add_message(
        app, account_id, channel="email", recipient="m@example.com", subject="An email subject",
        body="an email body", html="<p>hi</p>",
    )  # fmt: skip
    emails_only = other_app(app_config, **REAL_SMS)
    sms_only = other_app(app_config, **REAL_EMAIL)
    try:
        html = emails_only.test_client().get("/dev/outbox").get_data(as_text=True)
        assert "An email subject" in html
        assert "an sms body" not in html
        html = sms_only.test_client().get("/dev/outbox").get_data(as_text=True)
        assert "an sms body" in html
        assert "An email subject" not in html
    finally:
        close(emails_only)
        close(sms_only)


def test_outbox_is_never_on_in_production(app_config):
    # Production refuses the outbox backends outright, so the page cannot be reached there.
    from app.config import ConfigError

    with pytest.raises(ConfigError, match="outbox backends send nothing"):
        other_app(app_config, env="production")


def test_linkify_escapes_then_links():
    assert linkify("Pay at https://pay.example.test/p/a-b_c. Thanks") == (
        'Pay at <a href="https://pay.example.test/p/a-b_c" rel="noopener noreferrer">'
        "https://pay.example.test/p/a-b_c</a>. Thanks"
    )
    assert linkify("(http://x.test/?a=1&b=2)") == (
        '(<a href="http://x.test/?a=1&amp;b=2" rel="noopener noreferrer">'
        "http://x.test/?a=1&amp;b=2</a>)"
    )
    assert linkify("<b>&</b> ftp://x.test javascript:alert(1)") == (
        "&lt;b&gt;&amp;&lt;/b&gt; ftp://x.test javascript:alert(1)"
    )
    assert linkify("https:// and http://") == "https:// and http://"


def test_outbox_csp_allows_exactly_the_emails_inline_styles():
    def sha(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    csp = outbox_csp(
        [
            '<p style="color:#000;font-family:&quot;A&quot;">x</p><style>p{margin:0}',
            '<b style="color:#000;font-family:&quot;A&quot;">y</b>',
        ]
    )
    style_src = next(d for d in csp.split("; ") if d.startswith("style-src "))
    assert style_src.split()[1:] == ["'self'", "'unsafe-hashes'", *sorted(
        [sha('color:#000;font-family:"A"'), sha("p{margin:0}")]
    )]  # fmt: skip
    assert "style-src 'self';" in outbox_csp([])


# --- unsubscribe --------------------------------------------------------------------------


@pytest.fixture
def email_id(app, account_id) -> int:
    (message_id,) = queue(app, account_id, channels=("email",))
    return message_id


def unsubscribe_path(app, message_id: int) -> str:
    env = MessageEnv.from_config(app.extensions["paylink.config"])
    return "/u/" + env.unsubscribe_tokens.dumps(message_id)


def state(app, account_id: int):
    with app.extensions["paylink.db"].transaction() as session:
        account = session.get(Account, account_id)
        suppressions = {s.email: s.reason for s in session.scalars(select(EmailSuppression))}
        audits = list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == "account.email_unsubscribed")
            )
        )
        return account.email_opted_out_at, suppressions, audits


def test_the_link_in_the_email_is_the_landing_page(app, client, email_id):
    with app.extensions["paylink.db"].transaction() as session:
        body = session.get(Message, email_id).body
    path = re.search(r"https://pay\.example\.test(/u/\S+)", body).group(1)
    resp = client.get(path)
    assert resp.status_code == 200
    assert "m***@example.com" in resp.get_data(as_text=True)


def test_get_shows_the_creditor_and_the_masked_address_and_changes_nothing(
    app, client, account_id, email_id
):
    path = unsubscribe_path(app, email_id)
    resp = client.get(path)
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    html = resp.get_data(as_text=True)
    page = Page(html)
    assert "Paylink Demo Creditor" in html
    assert "m***@example.com" in html
    assert "maya.brooks@example.com" not in html
    assert page.buttons == ["Unsubscribe"]
    assert page.inputs["csrf_token"]
    assert page.scripts == page.style_attributes == 0
    client.get(path)
    assert state(app, account_id) == (None, {}, [])


def csrf_token(client, path: str) -> str:
    token = Page(client.get(path).get_data(as_text=True)).inputs["csrf_token"]
    assert token
    return token


def test_form_post_unsubscribes_once(app, client, account_id, email_id):
    path = unsubscribe_path(app, email_id)
    at = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    with time_machine.travel(at, tick=False):
        token = csrf_token(client, path)
        resp = client.post(path, data={"csrf_token": token})
    assert resp.status_code == 200
    assert resp.headers["Cache-Control"] == "no-store"
    html = resp.get_data(as_text=True)
    assert "You are unsubscribed" in html
    assert "m***@example.com" in html
    opted_out_at, suppressions, audits = state(app, account_id)
    assert opted_out_at == at
    assert suppressions == {"maya.brooks@example.com": "unsubscribe"}
    (event,) = audits
    assert (event.actor_type, event.object_type, event.object_id) == (
        "customer", "account", str(account_id),
    )  # fmt: skip
    assert event.data == {
        "message_id": email_id, "method": "form", "email": "maya.brooks@example.com",
    }  # fmt: skip

    # Twice (the form sent again from the browser's history) is fine: nothing new recorded.
    with time_machine.travel(at + timedelta(minutes=5), tick=False):
        again = client.post(path, data={"csrf_token": token})
    assert again.status_code == 200
    assert state(app, account_id)[:2] == (opted_out_at, suppressions)
    assert [e.id for e in state(app, account_id)[2]] == [event.id]
    assert "already unsubscribed" in client.get(path).get_data(as_text=True)


def test_one_click_post_needs_no_csrf_token(app, client, account_id, email_id):
    path = unsubscribe_path(app, email_id)
    resp = client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert resp.status_code == 200
    opted_out_at, suppressions, (event,) = state(app, account_id)
    assert opted_out_at is not None
    assert suppressions == {"maya.brooks@example.com": "unsubscribe"}
    assert event.data["method"] == "one_click"
    # Mail clients may send it as multipart/form-data, and send it again.
    resp = client.post(
        path, data={"List-Unsubscribe": "One-Click"}, content_type="multipart/form-data"
    )
    assert resp.status_code == 200
    assert len(state(app, account_id)[2]) == 1


def test_form_post_without_a_valid_csrf_token_is_refused(app, client, account_id, email_id):
    path = unsubscribe_path(app, email_id)
    client.get(path)  # a session exists; its token is just not sent
    for data in (
        {},
        {"csrf_token": "forged"},
        {"List-Unsubscribe": "one-click"},
        {"List-Unsubscribe": "One-Click-No"},
    ):
        resp = client.post(path, data=data)
        assert resp.status_code == 400, data
        assert resp.headers["Cache-Control"] == "no-store"
    assert state(app, account_id) == (None, {}, [])


def test_a_token_that_does_not_verify_is_404(app, client, account_id, email_id):
    good = unsubscribe_path(app, email_id)
    other_purpose = TokenService(app.extensions["paylink.config"].secret_keys, "link").dumps(
        email_id
    )
    for path in (
        good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
        good + "x",
        "/u/" + other_purpose,
        "/u/not-a-token",
        "/u/" + "A" * 600,
    ):
        resp = client.get(path)
        assert resp.status_code == 404, path
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 404
    assert state(app, account_id) == (None, {}, [])


def test_a_token_for_a_missing_or_non_email_message_is_404(app, client, account_id):
    (sms_id,) = queue(app, account_id, channels=("sms",))
    for message_id in (sms_id, 424242, "42", -1, 2**70):
        env = MessageEnv.from_config(app.extensions["paylink.config"])
        path = "/u/" + env.unsubscribe_tokens.dumps(message_id)
        assert client.get(path).status_code == 404
        assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 404
    assert state(app, account_id) == (None, {}, [])


def test_after_unsubscribing_queued_email_is_suppressed(app, client, account_id):
    with time_machine.travel(NOON_NY, tick=False):
        sms_id, email_id = queue(app, account_id)
        path = unsubscribe_path(app, email_id)
        assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
        (later_email,) = queue(app, account_id, channels=("email",), kind="reminder")
        drain(app)
    with app.extensions["paylink.db"].transaction() as session:
        statuses = {
            m.id: (m.status, m.status_reason)
            for m in session.scalars(select(Message).order_by(Message.id))
        }
        sent = session.scalar(select(func.count()).where(Message.provider_id.is_not(None)))
    assert statuses[sms_id] == ("delivered", None)  # texts are a separate choice
    assert statuses[email_id] == ("suppressed", "email opted out")
    assert statuses[later_email] == ("suppressed", "email opted out")
    assert sent == 1


def test_the_address_stays_suppressed_if_the_account_opts_back_in(
    app, client, account_id, email_id
):
    client.post(unsubscribe_path(app, email_id), data={"List-Unsubscribe": "One-Click"})
    with app.extensions["paylink.db"].transaction() as session:
        session.get(Account, account_id).email_opted_out_at = None
    with time_machine.travel(NOON_NY, tick=False):
        (later,) = queue(app, account_id, channels=("email",))
        drain(app)
    with app.extensions["paylink.db"].transaction() as session:
        message = session.get(Message, later)
        assert (message.status, message.status_reason) == (
            "suppressed", "address suppressed: unsubscribe",
        )  # fmt: skip


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("jane@example.com", "j***@example.com"),
        ("j@example.com", "j***@example.com"),
        ("a.b+c@mail.example.org", "a***@mail.example.org"),
        (None, "your email address"),
        ("not-an-address", "your email address"),
    ],
)
def test_mask_email(address, masked):
    assert mask_email(address) == masked
