"""SMS through Twilio's Programmable Messaging API, with the official twilio SDK.

One ``messages.create`` per text. Errors become a :class:`SendError`: 429, 5xx, network
failures and timeouts are transient (the dispatcher retries them with backoff); any other
4xx is permanent and carries Twilio's error code (21211 invalid number, 21610 the
recipient replied STOP, which the dispatcher turns into an SMS opt-out).
"""

from __future__ import annotations

import logging
from typing import Any

import requests
from twilio.base import values
from twilio.base.exceptions import TwilioException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from app.config import Config
from app.messaging.backends.base import OutgoingSms, SendError, SendResult

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0  # seconds; the SDK has no timeout of its own
MAX_DETAIL = 300


def _transient_status(status: int | None) -> bool:
    return status is not None and (status == 429 or status >= 500)


def error_for(exc: TwilioException | requests.exceptions.RequestException) -> SendError:
    """What a failed ``messages.create`` means for the message."""
    if isinstance(exc, TwilioException):
        status = getattr(exc, "status", None)
        code = getattr(exc, "code", None)
        # TwilioRestException has ``msg``; the RFC 9457 TwilioServiceException has
        # ``title`` and ``detail``. str() of the former is coloured when stderr is a tty.
        detail = (
            getattr(exc, "msg", None)
            or getattr(exc, "detail", None)
            or getattr(exc, "title", None)
            or type(exc).__name__
        )
        label = str(code if code is not None else status if status is not None else "twilio")
        return SendError(_transient_status(status), label, str(detail)[:MAX_DETAIL])
    # Timeout before the rest: ConnectTimeout is both a Timeout and a ConnectionError.
    if isinstance(exc, requests.exceptions.Timeout):
        return SendError(True, "timeout", str(exc)[:MAX_DETAIL])
    return SendError(True, "network", str(exc)[:MAX_DETAIL])


class TwilioSms:
    """The ``twilio`` SMS backend. ``sender`` (the rate-limit key) is the Messaging
    Service SID when one is configured, else the from number."""

    name = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        from_number: str = "",
        messaging_service_sid: str = "",
        api_base: str = "",
        timeout: float = DEFAULT_TIMEOUT,
    ):
        if not (from_number or messaging_service_sid):
            raise ValueError("a from number or a messaging service SID is required")
        self.from_number = from_number
        self.messaging_service_sid = messaging_service_sid
        self.sender = messaging_service_sid or from_number
        self.client = Client(account_sid, auth_token, http_client=TwilioHttpClient(timeout=timeout))
        if api_base:
            # Read on every request; tests point it at a local fake of the API.
            self.client.api.base_url = api_base.rstrip("/")

    @classmethod
    def from_config(cls, config: Config, *, timeout: float = DEFAULT_TIMEOUT) -> TwilioSms:
        return cls(
            config.twilio_account_sid,
            config.twilio_auth_token,
            from_number=config.twilio_from_number,
            messaging_service_sid=config.twilio_messaging_service_sid,
            api_base=config.twilio_api_base,
            timeout=timeout,
        )

    def send(self, sms: OutgoingSms) -> SendResult:
        params: dict[str, Any] = {
            "to": sms.to,
            "body": sms.body,
            "status_callback": sms.status_callback or values.unset,
            "validity_period": sms.validity_seconds or values.unset,
        }
        # A messaging service picks the sending number itself; giving both would pin it.
        if self.messaging_service_sid:
            params["messaging_service_sid"] = self.messaging_service_sid
        else:
            params["from_"] = self.from_number
        try:
            instance = self.client.messages.create(**params)
        except (TwilioException, requests.exceptions.RequestException) as exc:
            error = error_for(exc)
            log.warning(
                "twilio refused message %s: %s (%s)",
                sms.message_id,
                error.code,
                "transient" if error.transient else "permanent",
            )
            return SendResult(sms.message_id, error=error)
        return SendResult(sms.message_id, provider_id=instance.sid)
