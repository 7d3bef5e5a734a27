"""Messaging fixtures: the fake Twilio and SendGrid, and an app that sends through them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from app import create_app
from tests.fakes.providers import FakeProviders
from tests.fakes.providers import provider_server as provider_server
from workers.runtime import set_job_app


@pytest.fixture
def provider_config(app_config: dict[str, Any], provider_server: FakeProviders) -> dict[str, Any]:
    """The test app's configuration with the twilio and sendgrid backends pointed at the
    fake, and sender rate limits high enough never to wait."""
    return {
        **app_config,
        **provider_server.config(),
        "sms_per_second": 10_000.0,
        "email_per_second": 1_000_000.0,
    }


@pytest.fixture
def provider_app(provider_config: dict[str, Any]) -> Iterator[Flask]:
    application = create_app(provider_config)
    set_job_app(application)
    yield application
    set_job_app(None)
    application.extensions["paylink.queue"].close()
    application.extensions["paylink.db"].dispose()
