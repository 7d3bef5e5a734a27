"""Email through SendGrid's v3 Mail Send API, with the official sendgrid SDK.

A batch of same-kind emails goes out as ONE API call: each email is its own
personalization (its own recipient, subject, List-Unsubscribe headers, ``custom_args``
carrying our message id) and its rendered text and HTML travel as that personalization's
substitutions for the placeholders the shared content consists of. An email that cannot
ride along -- it has attachments, its substitutions would pass SendGrid's 10,000-byte
limit per personalization, or its text contains our placeholder prefix -- goes in a call of
its own with real content. SendGrid refuses a request that names an address twice, so
a second email to an address already in a call goes into another call.

Provider ids: SendGrid answers a call with one ``X-Message-Id`` for all its
personalizations, and ``message.provider_id`` is unique, so each email's provider id is
``"<X-Message-Id>.<our message id>"``. (SendGrid's event ``sg_message_id`` starts with the
X-Message-Id; events are matched to messages by the ``paylink_message_id`` custom arg.)

Errors: 429 and 5xx, network failures and timeouts are transient for every email of the
call (the dispatcher retries them); any other 4xx is permanent. A 400 that names
particular personalizations (``personalizations.3.to.0.email``) fails only those emails
and the others are sent again in one more call.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import urllib.error
import uuid
from collections.abc import Sequence

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    ApiKeyIncludedException,
    Attachment,
    Category,
    Content,
    CustomArg,
    Disposition,
    FileContent,
    FileName,
    FileType,
    From,
    Header,
    Mail,
    Personalization,
    Substitution,
    To,
)

from app.config import Config
from app.messaging.backends.base import OutgoingEmail, SendError, SendResult

log = logging.getLogger(__name__)

DEFAULT_HOST = "https://api.sendgrid.com"
DEFAULT_TIMEOUT = 10.0  # seconds; the SDK has no timeout of its own
MAX_PERSONALIZATIONS = 1000  # per Mail Send request (also the recipient limit)
MAX_SUBSTITUTION_BYTES = 10_000  # per personalization, keys and values together
MESSAGE_ID_ARG = "paylink_message_id"
TAG_PREFIX = "-paylink_"
TEXT_TAG = "-paylink_text-"
HTML_TAG = "-paylink_html-"
MAX_DETAIL = 300
_PERSONALIZATION_FIELD = re.compile(r"^personalizations(?:\.|\[)(\d+)")


def substitution_bytes(email: OutgoingEmail) -> int:
    """Size SendGrid counts against its per-personalization substitution limit."""
    return sum(
        len(key.encode()) + len(value.encode())
        for key, value in ((TEXT_TAG, email.text), (HTML_TAG, email.html))
    )


def rides_in_batch(email: OutgoingEmail) -> bool:
    """Whether ``email`` can share a call's placeholder content."""
    return (
        not email.attachments
        and bool(email.html)
        and substitution_bytes(email) <= MAX_SUBSTITUTION_BYTES
        and TAG_PREFIX not in email.text
        and TAG_PREFIX not in email.html
    )


def plan_calls(emails: Sequence[OutgoingEmail], limit: int = MAX_PERSONALIZATIONS):
    """Split ``emails`` into (shared content?, emails) calls: batchable emails of a kind
    share calls of at most ``limit``, each address at most once a call; the rest go alone."""
    calls: list[tuple[bool, list[OutgoingEmail]]] = []
    shared: list[tuple[str, set[str], list[OutgoingEmail]]] = []
    for email in emails:
        if not rides_in_batch(email):
            calls.append((False, [email]))
            continue
        address = email.to.strip().lower()
        for kind, seen, members in shared:
            if kind == email.kind and address not in seen and len(members) < limit:
                seen.add(address)
                members.append(email)
                break
        else:
            shared.append((email.kind, {address}, [email]))
    return [(True, members) for _kind, _seen, members in shared] + calls


def _error_detail(exc: HTTPError) -> tuple[str, dict[int, str]]:
    """SendGrid's first error message, and the message for each personalization index
    its errors name."""
    fallback = str(exc.reason or exc.status_code)[:MAX_DETAIL]
    try:
        errors = json.loads(exc.body or b"{}").get("errors") or []
    except (ValueError, AttributeError):
        return fallback, {}
    named: dict[int, str] = {}
    for error in errors:
        match = _PERSONALIZATION_FIELD.match(str(error.get("field") or ""))
        if match:
            named.setdefault(int(match.group(1)), str(error.get("message") or "")[:MAX_DETAIL])
    first = errors[0].get("message") if errors else None
    return (str(first)[:MAX_DETAIL] if first else fallback), named


class SendgridEmail:
    """The ``sendgrid`` email backend. ``sender`` (the rate-limit key) is the from
    address."""

    name = "sendgrid"
    max_batch = MAX_PERSONALIZATIONS

    def __init__(
        self,
        api_key: str,
        from_email: str,
        *,
        host: str = DEFAULT_HOST,
        timeout: float = DEFAULT_TIMEOUT,
    ):
        self.from_email = from_email
        self.sender = from_email
        # The host is fixed when the client is built; the timeout is copied to each call.
        self.client = SendGridAPIClient(api_key=api_key, host=host.rstrip("/"))
        self.client.client.timeout = timeout

    @classmethod
    def from_config(cls, config: Config, *, timeout: float = DEFAULT_TIMEOUT) -> SendgridEmail:
        return cls(
            config.sendgrid_api_key,
            config.sendgrid_from_email,
            host=config.sendgrid_api_host or DEFAULT_HOST,
            timeout=timeout,
        )

    # --- sending ------------------------------------------------------------------------

    def send_batch(self, emails: list[OutgoingEmail]) -> list[SendResult]:
        """Send emails of one kind in as few calls as SendGrid allows; one result per
        email, in order."""
        results: dict[int, SendResult] = {}
        for shared, members in plan_calls(emails):
            for result in self._send_call(members, shared):
                results[result.message_id] = result
        return [results[e.message_id] for e in emails]

    def _send_call(self, emails: list[OutgoingEmail], shared: bool) -> list[SendResult]:
        try:
            mail = self.build_mail(emails, shared=shared)
        except ApiKeyIncludedException:
            # The SDK refuses content that starts like a SendGrid API key; so would retries.
            detail = "content looks like a SendGrid API key"
            return self._all_failed(emails, SendError(False, "content", detail))
        try:
            response = self.client.send(mail)
        except HTTPError as exc:
            status = int(exc.status_code)
            detail, named = _error_detail(exc)
            transient = status == 429 or status >= 500
            log.warning("sendgrid answered %s for %d emails: %s", status, len(emails), detail)
            bad = {i: message for i, message in named.items() if 0 <= i < len(emails)}
            if status == 400 and bad and len(bad) < len(emails):
                # Only some personalizations are at fault: fail those, send the rest.
                failed = [
                    SendResult(e.message_id, error=SendError(False, "400", bad[i] or detail))
                    for i, e in enumerate(emails)
                    if i in bad
                ]
                rest = [e for i, e in enumerate(emails) if i not in bad]
                return failed + self._send_call(rest, shared)
            error = SendError(transient, str(status), detail)
            return [SendResult(e.message_id, error=error) for e in emails]
        except (urllib.error.URLError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            code = "timeout" if isinstance(reason, TimeoutError) else "network"
            return self._all_failed(emails, SendError(True, code, str(reason)[:MAX_DETAIL]))
        except (http.client.HTTPException, OSError) as exc:
            return self._all_failed(
                emails, SendError(True, "network", f"{type(exc).__name__}: {exc}"[:MAX_DETAIL])
            )
        batch_id = response.headers.get("X-Message-Id") or f"paylink-{uuid.uuid4().hex}"
        return [SendResult(e.message_id, provider_id=f"{batch_id}.{e.message_id}") for e in emails]

    def _all_failed(self, emails: list[OutgoingEmail], error: SendError) -> list[SendResult]:
        log.warning("sendgrid call for %d emails failed: %s", len(emails), error.code)
        return [SendResult(e.message_id, error=error) for e in emails]

    # --- the request body ---------------------------------------------------------------

    def build_mail(self, emails: list[OutgoingEmail], *, shared: bool) -> Mail:
        """The Mail Send body for one call. ``shared``: placeholder content replaced per
        personalization; otherwise exactly one email with its real content."""
        if not shared and len(emails) != 1:
            raise ValueError("an email with its own content goes in a call of its own")
        mail = Mail(from_email=From(self.from_email))
        for index, email in enumerate(emails):
            mail.add_personalization(self._personalization(email, shared), index=index)
        first = emails[0]
        if shared:
            mail.add_content(Content("text/plain", TEXT_TAG))
            mail.add_content(Content("text/html", HTML_TAG))
        else:
            mail.add_content(Content("text/plain", first.text))
            if first.html:
                mail.add_content(Content("text/html", first.html))
            for attachment in first.attachments:
                mail.add_attachment(
                    Attachment(
                        FileContent(base64.b64encode(attachment.content).decode("ascii")),
                        FileName(attachment.filename),
                        FileType(attachment.content_type),
                        Disposition("attachment"),
                    )
                )
        mail.add_category(Category(first.kind))
        return mail

    @staticmethod
    def _personalization(email: OutgoingEmail, shared: bool) -> Personalization:
        p = Personalization()
        p.add_to(To(email.to))
        p.subject = email.subject
        for key, value in email.headers.items():
            p.add_header(Header(key, value))
        p.add_custom_arg(CustomArg(MESSAGE_ID_ARG, str(email.message_id)))
        if shared:
            p.add_substitution(Substitution(TEXT_TAG, email.text))
            p.add_substitution(Substitution(HTML_TAG, email.html))
        return p
