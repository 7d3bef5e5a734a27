"""The gateway interface every adapter implements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

APPROVED = "approved"
DECLINED = "declined"
PENDING = "pending"  # bank debits: accepted, money not yet settled


@dataclass(frozen=True)
class CardToken:
    token: str
    brand: str
    last4: str
    exp_month: int
    exp_year: int


@dataclass(frozen=True)
class BankToken:
    token: str
    routing_number: str  # public: identifies the bank
    last4: str
    account_type: str  # checking or savings


@dataclass(frozen=True)
class ChargeResult:
    status: str  # approved, declined or pending
    reference: str  # the gateway's id for this charge
    decline_code: str | None = None
    decline_message: str | None = None
    settles_at: datetime | None = None  # for pending bank debits


class Gateway(Protocol):
    name: str

    def tokenize_card(
        self, number: str, exp_month: int, exp_year: int, security_code: str, zip_code: str
    ) -> CardToken: ...

    def tokenize_bank(
        self, routing_number: str, account_number: str, account_type: str
    ) -> BankToken: ...

    def charge(
        self, token: str, amount_cents: int, idempotency_key: str, now: datetime
    ) -> ChargeResult:
        """Charge once per idempotency key: a repeat returns the first result."""
        ...

    def settlement(self, reference: str, now: datetime) -> ChargeResult:
        """The current state of a pending charge."""
        ...
