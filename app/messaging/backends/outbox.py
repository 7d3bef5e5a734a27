"""Development backends: nothing leaves the machine. The message row already holds
exactly what the customer would receive; /dev/outbox shows it."""

from __future__ import annotations

import uuid

from app.messaging.backends.base import OutgoingEmail, OutgoingSms, SendResult


class OutboxSms:
    name = "outbox"
    sender = "outbox-sms"

    def send(self, sms: OutgoingSms) -> SendResult:
        return SendResult(
            sms.message_id, provider_id=f"OUTBOX-SM{uuid.uuid4().hex}", delivered=True
        )


class OutboxEmail:
    name = "outbox"
    sender = "outbox-email"
    max_batch = 1000

    def send_batch(self, emails: list[OutgoingEmail]) -> list[SendResult]:
        return [
            SendResult(e.message_id, provider_id=f"outbox-email-{uuid.uuid4().hex}", delivered=True)
            for e in emails
        ]
