"""A local HTTP server that answers like Twilio's Messages API and SendGrid's Mail Send API,
so the real SDKs run end to end without leaving the machine.

Every request is recorded with its parsed body. Each provider answers from a script a test
sets (``fake.twilio.reply(SERVER_ERROR, OK)``), then with its default reply (success
unless told otherwise). The fake also refuses what the real services refuse (bad
credentials, a missing sender, more than 1,000 personalizations, an address twice in one
request, substitutions over 10,000 bytes), so a backend that breaks those rules fails here.

Use the ``provider_server`` fixture, or ``with FakeProviders() as fake:`` outside pytest.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import secrets
import select
import socket
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest
from requests.structures import CaseInsensitiveDict

TWILIO_ACCOUNT_SID = "AC" + "5a" * 16
TWILIO_AUTH_TOKEN = "paylink-fake-twilio-auth-token"
TWILIO_FROM_NUMBER = "+15005550006"
SENDGRID_API_KEY = "SG.paylink-fake.sendgrid-api-key"
SENDGRID_FROM_EMAIL = "billing@example.com"

TWILIO_MESSAGES = re.compile(r"^/2010-04-01/Accounts/(?P<sid>[^/]+)/Messages\.json$")
SENDGRID_SEND = "/v3/mail/send"
MAX_PERSONALIZATIONS = 1000
MAX_SUBSTITUTION_BYTES = 10_000


# --- what to answer -----------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One answer. ``status`` 0 is the provider's success (Twilio 201, SendGrid 202)."""

    status: int = 0
    code: int | None = None  # Twilio's error code
    message: str = ""
    delay: float = 0.0  # seconds to wait before answering (timeouts, latency)
    field: str | None = None  # SendGrid: the request field an error names
    problem: bool = False  # Twilio: the newer RFC 9457 error body (type, title, ...)

    @property
    def ok(self) -> bool:
        return self.status == 0

    def after(self, seconds: float) -> Reply:
        return replace(self, delay=seconds)


OK = Reply()
INVALID_NUMBER = Reply(400, 21211, "The 'To' number is not a valid phone number.")
UNSUBSCRIBED = Reply(400, 21610, "Attempt to send to unsubscribed recipient")
RATE_LIMITED = Reply(429, 20429, "Too Many Requests")
SERVER_ERROR = Reply(500, 20500, "Internal Server Error")


def slow(seconds: float, reply: Reply = OK) -> Reply:
    """``reply`` after ``seconds``: longer than the client's timeout makes a timeout."""
    return reply.after(seconds)


@dataclass
class Recorded:
    """One request as the fake saw it."""

    provider: str  # twilio or sendgrid
    method: str
    path: str
    headers: CaseInsensitiveDict[str]
    form: dict[str, Any] = field(default_factory=dict)  # Twilio's form fields
    json: Any = None  # SendGrid's body
    status: int = 0  # what the fake answered (0: no answer, the client had gone)
    provider_id: str | None = None  # the Twilio SID or SendGrid X-Message-Id answered

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Endpoint:
    """One provider: a script of replies and the requests it received."""

    def __init__(self, name: str):
        self.name = name
        self.requests: list[Recorded] = []
        self._script: deque[Reply] = deque()
        self._default = OK
        self._lock = threading.Lock()

    def reply(self, *replies: Reply, then: Reply = OK) -> None:
        """Answer the next requests with ``replies`` in order, and ``then`` after that."""
        with self._lock:
            self._script = deque(replies)
            self._default = then

    def always(self, reply: Reply) -> None:
        self.reply(then=reply)

    def next_reply(self) -> Reply:
        with self._lock:
            return self._script.popleft() if self._script else self._default

    def record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)

    @property
    def succeeded(self) -> list[Recorded]:
        return [r for r in list(self.requests) if r.ok]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()


# --- the server ---------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeProviders):
        self.fake = fake
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        with self.connections_lock:
            self.open_connections.add(conn)
        return conn, address

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        """Wake handlers waiting on kept-alive connections so their threads end."""
        with self.connections_lock:
            conns = list(self.open_connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real APIs
    # Headers and body go out in separate writes; without this, Nagle's algorithm and the
    # client's delayed ACK add ~40 ms to every kept-alive request.
    disable_nagle_algorithm = True
    timeout = 30
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests read the record instead

    def do_POST(self) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = CaseInsensitiveDict(self.headers.items())
        if TWILIO_MESSAGES.match(self.path):
            fake.handle_twilio(self, headers, raw)
        elif self.path == SENDGRID_SEND:
            fake.handle_sendgrid(self, headers, raw)
        else:
            self.answer(404, {"message": f"no fake for {self.path}"})

    def client_gone(self) -> bool:
        """Whether the client closed the connection (it gave up waiting)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> bool:
        """Send a response; False if the client has already gone (it timed out)."""
        if self.client_gone():
            self.close_connection = True
            return False
        data = b"" if body is None else json.dumps(body).encode()
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            self.close_connection = True
            return False
        return True


class FakeProviders:
    """Twilio and SendGrid on one loopback port: ``url`` is the base for both."""

    def __init__(
        self,
        *,
        twilio_account_sid: str = TWILIO_ACCOUNT_SID,
        twilio_auth_token: str = TWILIO_AUTH_TOKEN,
        sendgrid_api_key: str = SENDGRID_API_KEY,
    ):
        self.twilio_account_sid = twilio_account_sid
        # Called with a new message's sid before Twilio's answer goes out: a status
        # callback sent from here overtakes the answer, as real ones sometimes do.
        self.twilio_before_answer: Callable[[str], None] | None = None
        self.twilio_auth_token = twilio_auth_token
        self.sendgrid_api_key = sendgrid_api_key
        self.twilio = Endpoint("twilio")
        self.sendgrid = Endpoint("sendgrid")
        self.stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> FakeProviders:
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-providers",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._server is None:
            return
        self.stopping.set()  # cut short any delayed answer
        self._server.shutdown()
        self._server.drop_connections()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> FakeProviders:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        assert self._server is not None, "the fake is not running"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def config(self) -> dict[str, Any]:
        """Paylink configuration overrides that send through this fake."""
        return {
            "sms_backend": "twilio",
            "email_backend": "sendgrid",
            "twilio_account_sid": self.twilio_account_sid,
            "twilio_auth_token": self.twilio_auth_token,
            "twilio_from_number": TWILIO_FROM_NUMBER,
            "twilio_api_base": self.url,
            "sendgrid_api_key": self.sendgrid_api_key,
            "sendgrid_api_host": self.url,
            "sendgrid_from_email": SENDGRID_FROM_EMAIL,
        }

    def _wait(self, reply: Reply) -> bool:
        """Hold the answer for ``reply.delay``; False if the fake is shutting down."""
        if reply.delay > 0:
            return not self.stopping.wait(reply.delay)
        return True

    @staticmethod
    def _respond(
        handler: _Handler,
        recorded: Recorded,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        *,
        provider_id: str | None = None,
    ) -> None:
        # Record first: the client may look at the record as soon as it has the answer.
        recorded.status, recorded.provider_id = status, provider_id
        if not handler.answer(status, body, headers):
            recorded.status, recorded.provider_id = 0, None

    # --- Twilio -------------------------------------------------------------------------

    def handle_twilio(
        self, handler: _Handler, headers: CaseInsensitiveDict[str], raw: bytes
    ) -> None:
        parsed = parse_qs(raw.decode(), keep_blank_values=True)
        form = {k: v[0] if len(v) == 1 else v for k, v in parsed.items()}
        recorded = Recorded("twilio", "POST", handler.path, headers, form=form)
        self.twilio.record(recorded)
        match = TWILIO_MESSAGES.match(handler.path)
        assert match is not None
        expected = "Basic " + base64.b64encode(
            f"{self.twilio_account_sid}:{self.twilio_auth_token}".encode()
        ).decode("ascii")
        if headers.get("Authorization") != expected or match["sid"] != self.twilio_account_sid:
            self._respond(handler, recorded, 401, _twilio_error(401, 20003, "Authenticate"))
            return
        problem = _twilio_invalid(form)
        if problem is not None:
            self._respond(handler, recorded, 400, _twilio_error(400, *problem))
            return
        reply = self.twilio.next_reply()
        if not self._wait(reply):
            return
        if not reply.ok:
            body = (
                _twilio_problem(reply.status, reply.code, reply.message)
                if reply.problem
                else _twilio_error(reply.status, reply.code, reply.message)
            )
            self._respond(handler, recorded, reply.status, body)
            return
        sid = "SM" + uuid.uuid4().hex
        if self.twilio_before_answer is not None:
            self.twilio_before_answer(sid)
        body = {
            "sid": sid,
            "account_sid": self.twilio_account_sid,
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "from": form.get("From"),
            "to": form.get("To"),
            "body": form.get("Body"),
            "status": "queued",
            "num_segments": "1",
            "num_media": "0",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "price": None,
            "price_unit": "USD",
            "error_code": None,
            "error_message": None,
            "date_created": formatdate(usegmt=True),
            "date_updated": formatdate(usegmt=True),
            "date_sent": None,
            "uri": f"/2010-04-01/Accounts/{self.twilio_account_sid}/Messages/{sid}.json",
            "subresource_uris": {},
        }
        self._respond(handler, recorded, 201, body, provider_id=sid)

    # --- SendGrid -----------------------------------------------------------------------

    def handle_sendgrid(
        self, handler: _Handler, headers: CaseInsensitiveDict[str], raw: bytes
    ) -> None:
        recorded = Recorded("sendgrid", "POST", handler.path, headers)
        self.sendgrid.record(recorded)
        if headers.get("Authorization") != f"Bearer {self.sendgrid_api_key}":
            message = "The provided authorization grant is invalid, expired, or revoked"
            self._respond(handler, recorded, 401, _sendgrid_error(message))
            return
        try:
            recorded.json = json.loads(raw)
        except ValueError:
            self._respond(handler, recorded, 400, _sendgrid_error("Bad Request"))
            return
        problem = _sendgrid_invalid(recorded.json)
        if problem is not None:
            self._respond(handler, recorded, 400, _sendgrid_error(*problem))
            return
        reply = self.sendgrid.next_reply()
        if not self._wait(reply):
            return
        if not reply.ok:
            body = _sendgrid_error(reply.message or "error", reply.field)
            self._respond(handler, recorded, reply.status, body)
            return
        message_id = secrets.token_urlsafe(16)[:22]
        self._respond(
            handler, recorded, 202, None, {"X-Message-Id": message_id}, provider_id=message_id
        )


def _twilio_error(status: int, code: int | None, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _twilio_problem(status: int, code: int | None, message: str) -> dict[str, Any]:
    return {
        "type": f"https://www.twilio.com/docs/errors/{code}",
        "title": message,
        "status": status,
        "code": code,
        "detail": message,
    }


def _twilio_invalid(form: dict[str, Any]) -> tuple[int, str] | None:
    if not form.get("To"):
        return 21604, "A 'To' phone number is required."
    if not form.get("Body"):
        return 21602, "Message body is required."
    if not (form.get("From") or form.get("MessagingServiceSid")):
        return 21603, "A 'From' phone number is required."
    return None


def _sendgrid_error(message: str, field: str | None = None) -> dict[str, Any]:
    return {"errors": [{"message": message, "field": field, "help": None}]}


def _sendgrid_invalid(body: Any) -> tuple[str, str] | None:
    """The first rule of the Mail Send API that ``body`` breaks, as (message, field)."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object.", ""
    if not (body.get("from") or {}).get("email"):
        return "The from email does not contain a valid address.", "from.email"
    personalizations = body.get("personalizations") or []
    if not personalizations:
        return "You must have at least one personalization.", "personalizations"
    if len(personalizations) > MAX_PERSONALIZATIONS:
        return (
            "The personalization block is limited to 1000 personalizations per API request.",
            "personalizations",
        )
    seen: set[str] = set()
    recipients = 0
    for i, p in enumerate(personalizations):
        tos = p.get("to") or []
        if not tos:
            return "The to array is required for all personalization objects.", (
                f"personalizations.{i}.to"
            )
        for j, to in enumerate(tos):
            address = str(to.get("email") or "").lower()
            if "@" not in address:
                return "Does not contain a valid address.", f"personalizations.{i}.to.{j}.email"
            if address in seen:
                return (
                    "Each unique email address in the personalizations array should only be "
                    "included once.",
                    f"personalizations.{i}.to.{j}.email",
                )
            seen.add(address)
            recipients += 1
        if not (p.get("subject") or body.get("subject")):
            return "The subject is required.", f"personalizations.{i}.subject"
        subs = p.get("substitutions") or {}
        size = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in subs.items())
        if size > MAX_SUBSTITUTION_BYTES:
            return (
                "The total size of substitutions may not exceed 10,000 bytes.",
                f"personalizations.{i}.substitutions",
            )
        for value in (p.get("custom_args") or {}).values():
            if not isinstance(value, str):
                return "Custom argument values must be strings.", (
                    f"personalizations.{i}.custom_args"
                )
    if recipients > MAX_PERSONALIZATIONS:
        return "There is a limit of 1000 total recipients per request.", "personalizations"
    content = body.get("content") or []
    if not content or any(not c.get("value") for c in content):
        return "Unless a valid template_id is provided, content is required.", "content"
    types = [c.get("type") for c in content]
    if "text/plain" in types and types.index("text/plain") != 0:
        return "The text/plain content type must be first.", "content"
    for k, attachment in enumerate(body.get("attachments") or []):
        if not attachment.get("filename"):
            return "The attachment filename is required.", f"attachments.{k}.filename"
        try:
            base64.b64decode(attachment.get("content") or "", validate=True)
        except (binascii.Error, ValueError):
            return "The attachment content must be base64 encoded.", f"attachments.{k}.content"
    return None


@pytest.fixture
def provider_server() -> Iterator[FakeProviders]:
    """The fake Twilio and SendGrid, running for one test."""
    with FakeProviders() as fake:
        yield fake
