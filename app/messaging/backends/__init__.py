"""SMS and email backends behind two small interfaces, chosen by configuration."""

from __future__ import annotations

from app.config import Config
from app.messaging.backends.base import EmailBackend, SmsBackend


def build_sms_backend(config: Config) -> SmsBackend:
    if config.sms_backend == "twilio":
        from app.messaging.backends.twilio import TwilioSms

        return TwilioSms.from_config(config)
    from app.messaging.backends.outbox import OutboxSms

    return OutboxSms()


def build_email_backend(config: Config) -> EmailBackend:
    if config.email_backend == "sendgrid":
        from app.messaging.backends.sendgrid import SendgridEmail

        return SendgridEmail.from_config(config)
    from app.messaging.backends.outbox import OutboxEmail

    return OutboxEmail()
