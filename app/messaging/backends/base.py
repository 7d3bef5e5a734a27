"""What every backend takes and returns. Backends never touch the database."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class OutgoingSms:
    message_id: int
    to: str  # E.164
    body: str
    status_callback: str | None = None
    # Seconds the provider may hold the text before dropping it (quiet hours start then).
    validity_seconds: int | None = None


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class OutgoingEmail:
    message_id: int
    kind: str
    to: str
    subject: str
    text: str
    html: str
    headers: dict[str, str] = field(default_factory=dict)  # List-Unsubscribe and friends
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class SendError:
    transient: bool  # network, timeout, 429, 5xx: try again later
    code: str  # provider error code or HTTP status, e.g. "21211", "429", "timeout"
    detail: str


@dataclass(frozen=True)
class SendResult:
    message_id: int
    provider_id: str | None = None
    error: SendError | None = None
    delivered: bool = False  # the outbox backends deliver at once

    @property
    def ok(self) -> bool:
        return self.error is None


class SmsBackend(Protocol):
    name: str
    sender: str  # the rate-limit key: from number or messaging service

    def send(self, sms: OutgoingSms) -> SendResult: ...


class EmailBackend(Protocol):
    name: str
    sender: str
    max_batch: int  # messages one provider call may carry

    def send_batch(self, emails: list[OutgoingEmail]) -> list[SendResult]:
        """Send emails of one kind together; one result per email, in order."""
        ...
