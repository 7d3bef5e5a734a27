"""Customer and developer pages of messaging: unsubscribe links and the dev outbox."""

from __future__ import annotations

import base64
import hashlib
import re
from datetime import datetime
from html.parser import HTMLParser
from typing import Any

from flask import Blueprint, Response, current_app, g, render_template, request
from flask_wtf.csrf import CSRFError, validate_csrf
from markupsafe import Markup, escape
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug import exceptions
from wtforms import ValidationError

from app import audit
from app.api import MAX_ID
from app.clock import isoformat, utcnow
from app.config import Config
from app.db import db_session, get_by_id
from app.messaging.outbox import MessageEnv
from app.models import Account, Channel, EmailSuppression, Message
from app.pages import private_page
from app.settings import get_settings
from app.tokens import TokenExpired, TokenInvalid

bp = Blueprint("messaging_pages", __name__)
# View functions that must accept POSTs without a CSRF token (RFC 8058 one-click
# unsubscribe comes from the mail client, which has no form token). The factory exempts them.
CSRF_EXEMPT: tuple[str, ...] = ("unsubscribe",)

ONE_CLICK = ("List-Unsubscribe", "One-Click")  # RFC 8058: the body a mail client POSTs
OUTBOX_PAGE_SIZE = 50


bp.after_request(private_page)


def _config() -> Config:
    return current_app.extensions["paylink.config"]


# --- unsubscribe --------------------------------------------------------------------------


def mask_email(address: str | None) -> str:
    """``jane@example.com`` → ``j***@example.com``: enough to recognise, not to harvest."""
    local, at, domain = (address or "").rpartition("@")
    if not at or not local or not domain:
        return "your email address"
    return f"{local[0]}***@{domain}"


def unsubscribe_email(
    session: Session, message: Message, actor: audit.Actor, now: datetime, method: str
) -> bool:
    """Opt the message's account out of email and suppress the address it was sent to.

    Idempotent: a second call changes nothing and records nothing. Returns whether
    anything changed. Flushes; never commits.
    """
    account = session.get(Account, message.account_id, with_for_update=True)
    assert account is not None  # a message always has its account
    changed = False
    if account.email_opted_out_at is None:
        account.email_opted_out_at = now
        changed = True
    address = (message.recipient or "").strip().lower()
    if address and session.get(EmailSuppression, address) is None:
        try:
            with session.begin_nested():
                session.add(EmailSuppression(email=address, reason="unsubscribe", created_at=now))
        except IntegrityError:
            pass  # suppressed a moment ago by another request or a provider event
        else:
            changed = True
    if changed:
        audit.record(
            session, actor, "account.email_unsubscribed", "account", account.id, now,
            {"message_id": message.id, "method": method, "email": address or None},
        )  # fmt: skip
    session.flush()
    return changed


def _message_for(token: str) -> Message:
    """The email an unsubscribe token was minted for, or a 404 page."""
    env = MessageEnv.from_config(_config())
    try:
        message_id = env.unsubscribe_tokens.loads(token)
    except (TokenInvalid, TokenExpired):
        raise exceptions.NotFound("This unsubscribe link is not valid.") from None
    if not isinstance(message_id, int) or isinstance(message_id, bool):
        raise exceptions.NotFound("This unsubscribe link is not valid.")
    message = get_by_id(db_session(), Message, message_id)
    if message is None or message.channel != Channel.email:
        raise exceptions.NotFound("This unsubscribe link is not valid.")
    return message


def _unsubscribe_context(message: Message) -> dict[str, Any]:
    return {
        "creditor": get_settings(db_session()),
        "address": mask_email(message.recipient),
        "already": message.account.email_opted_out_at is not None,
    }


@bp.get("/u/<token>")
def unsubscribe_page(token: str) -> str:
    """The landing page of an email's unsubscribe link. Changes nothing."""
    message = _message_for(token)
    return render_template("unsubscribe/confirm.html", token=token, **_unsubscribe_context(message))


@bp.post("/u/<token>")
def unsubscribe(token: str) -> str:
    """The form's POST (CSRF-checked here) or a mail client's RFC 8058 one-click POST."""
    message = _message_for(token)
    one_click = request.form.get(ONE_CLICK[0]) == ONE_CLICK[1]
    if not one_click:
        try:
            validate_csrf(request.form.get("csrf_token"))
        except ValidationError as exc:
            raise CSRFError(exc.args[0] if exc.args else "The CSRF token is invalid.") from None
    session = db_session()
    actor = audit.Actor(
        "customer", str(message.account_id), ip=request.remote_addr,
        request_id=g.get("request_id"),
    )  # fmt: skip
    unsubscribe_email(session, message, actor, utcnow(), "one_click" if one_click else "form")
    context = _unsubscribe_context(message)
    session.commit()
    return render_template("unsubscribe/done.html", **context)


# --- the development outbox ---------------------------------------------------------------

URL = re.compile(r"https?://[^\s<>\"'`]+", re.IGNORECASE)
TRAILING_PUNCTUATION = ".,;:!?)]}"


def linkify(text: str) -> Markup:
    """``text`` escaped, with each http(s) URL in it made a link (itself escaped)."""
    parts: list[Markup] = []
    last = 0
    for match in URL.finditer(text):
        url = match.group(0).rstrip(TRAILING_PUNCTUATION)  # "... at https://x.test/p/a."
        if "//" not in url or url.endswith("//"):
            continue
        start = match.start()
        parts.append(escape(text[last:start]))
        parts.append(Markup('<a href="{0}" rel="noopener noreferrer">{0}</a>').format(url))
        last = start + len(url)
    parts.append(escape(text[last:]))
    return Markup("").join(parts)


def outbox_channels(config: Config) -> tuple[str, ...]:
    """The channels whose backend is the outbox; none at all in production, where a
    page without login must not show customers' messages whatever the backends."""
    if config.is_production:
        return ()
    channels = []
    if config.sms_backend == "outbox":
        channels.append(Channel.sms.value)
    if config.email_backend == "outbox":
        channels.append(Channel.email.value)
    return tuple(channels)


class _InlineStyles(HTMLParser):
    """Collects the style attributes and <style> elements of an HTML document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: set[str] = set()
        self._style: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.update(value for name, value in attrs if name == "style" and value)
        if tag == "style":
            self._style = []

    def handle_data(self, data: str) -> None:
        if self._style is not None:
            self._style.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "style" and self._style is not None:
            self.found.add("".join(self._style))
            self._style = None

    def close(self) -> None:
        # A browser applies an unclosed <style> up to the end of the document; the parser
        # would hold that text back for good, waiting for </style>.
        if self._style is not None:
            self._style.append(self.rawdata)
            self.rawdata = ""
        super().close()
        self.handle_endtag("style")


def outbox_csp(html_documents: list[str]) -> str:
    """The app's policy, plus the hashes of the inline styles of the emails shown.

    A srcdoc iframe inherits the page's policy, so without these an email would be shown
    unstyled, not as the customer sees it. Only those exact styles are allowed: the page's
    own markup has none, and scripts stay refused (the iframe is sandboxed besides).
    """
    found: set[str] = set()
    for document in html_documents:
        parser = _InlineStyles()
        parser.feed(document)
        parser.close()
        found |= parser.found
    hashes = sorted(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in found
    )
    styles = " ".join(["'self'", *(["'unsafe-hashes'", *hashes] if hashes else [])])
    return (
        f"default-src 'self'; img-src 'self' data:; style-src {styles}; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    )


@bp.get("/dev/outbox")
def dev_outbox() -> Response:
    """What the outbox backends "sent", as the customer would see it. Only while an
    outbox backend is active, and only the channels it handles."""
    config = _config()
    channels = outbox_channels(config)
    if not channels:
        raise exceptions.NotFound()
    to = request.args.get("to", "").strip()[:254]
    before = request.args.get("before", type=int)
    stmt = select(Message).where(Message.channel.in_(channels))
    if to:
        stmt = stmt.where(func.lower(Message.recipient).contains(to.lower(), autoescape=True))
    if before is not None and 0 < before <= MAX_ID:
        stmt = stmt.where(Message.id < before)
    session = db_session()
    rows = list(session.scalars(stmt.order_by(Message.id.desc()).limit(OUTBOX_PAGE_SIZE + 1)))
    messages = rows[:OUTBOX_PAGE_SIZE]
    settings = get_settings(session)
    from_address = config.sendgrid_from_email or settings.creditor_email
    html = render_template(
        "dev/outbox.html",
        messages=messages,
        channels=channels,
        to=to,
        older=messages[-1].id if len(rows) > OUTBOX_PAGE_SIZE else None,
        first_page=before is None,
        sender=f"{settings.creditor_name} <{from_address}>",
        unsubscribe_url=MessageEnv.from_config(config).unsubscribe_url,
        linkify=linkify,
        isoformat=isoformat,
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = outbox_csp(
        [m.html for m in messages if m.channel == Channel.email and m.html]
    )
    return response


@bp.get("/dev/outbox/<int:message_id>/attachments/<int:index>")
def dev_outbox_attachment(message_id: int, index: int) -> Response:
    """An email's attachment as the customer would receive it, loaded from document
    storage by its key. Only while the email outbox backend is active."""
    if Channel.email.value not in outbox_channels(_config()):
        raise exceptions.NotFound()
    load = current_app.extensions.get("paylink.load_document")
    message = get_by_id(db_session(), Message, message_id)
    if load is None or message is None or message.channel != Channel.email:
        raise exceptions.NotFound()
    attachments = message.attachments or []
    if not 0 <= index < len(attachments):
        raise exceptions.NotFound()
    attachment = attachments[index]
    # The loader reads in a transaction of its own; end this one first (on SQLite a second
    # open transaction would wait for this one's lock).
    db_session().rollback()
    try:
        content = load(attachment["key"])
    except LookupError:
        raise exceptions.NotFound("The attachment is no longer in document storage.") from None
    response = Response(content, mimetype=attachment["content_type"])
    filename = re.sub(r"[^A-Za-z0-9._-]", "_", attachment["filename"]) or "attachment"
    # Downloaded, never shown inline: the page's origin must not render stored content.
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
