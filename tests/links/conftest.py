"""Fixtures of the payment-link tests."""

from __future__ import annotations

import pytest

from app.models import Account
from app.settings import get_settings
from tests.links.test_flow import make_account


@pytest.fixture
def account(db) -> Account:
    """A customer account with a balance, a phone, an email and facts to verify."""
    return make_account(db)


@pytest.fixture
def settings_row(db) -> None:
    """The settings row exists, as it does after a deployment's first request."""
    get_settings(db)
    db.commit()
