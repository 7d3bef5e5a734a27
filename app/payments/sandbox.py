"""The sandbox gateway: no money moves. Test numbers decide the outcome (contract.md):
card 4242 4242 4242 4242 approves, 4000 0000 0000 0002 declines, 4000 0000 0000 9995
declines for insufficient funds; bank routing 110000000 with any account number is
approved (pending, then settled after a delay), account 000111111116 is declined.

The token carries the outcome class, never the number; charge references derive from the
idempotency key, so a repeated charge returns the same result without any stored state."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from app.payments.gateway import APPROVED, DECLINED, PENDING, BankToken, CardToken, ChargeResult

CARD_OUTCOMES = {
    "4000000000000002": ("card_declined", "Your card was declined."),
    "4000000000009995": ("insufficient_funds", "Your card has insufficient funds."),
}
BANK_DECLINED_ACCOUNT = "000111111116"
SANDBOX_ROUTING = "110000000"


class SandboxGateway:
    name = "sandbox"

    def __init__(self, settle_after: timedelta = timedelta(minutes=5)):
        self.settle_after = settle_after

    def tokenize_card(
        self, number: str, exp_month: int, exp_year: int, security_code: str, zip_code: str
    ) -> CardToken:
        from app.payments.cards import card_brand

        outcome = CARD_OUTCOMES.get(number, ("ok", ""))[0]
        return CardToken(
            token=f"tok_sbx_card_{outcome}_{secrets.token_hex(8)}",
            brand=card_brand(number) or "card",
            last4=number[-4:],
            exp_month=exp_month,
            exp_year=exp_year,
        )

    def tokenize_bank(
        self, routing_number: str, account_number: str, account_type: str
    ) -> BankToken:
        if routing_number != SANDBOX_ROUTING:
            outcome = "unknown_bank"
        elif account_number == BANK_DECLINED_ACCOUNT:
            outcome = "account_closed"
        else:
            outcome = "ok"
        return BankToken(
            token=f"tok_sbx_bank_{outcome}_{secrets.token_hex(8)}",
            routing_number=routing_number,
            last4=account_number[-4:],
            account_type=account_type,
        )

    def charge(
        self, token: str, amount_cents: int, idempotency_key: str, now: datetime
    ) -> ChargeResult:
        if amount_cents <= 0:
            raise ValueError("amount must be positive")
        reference = "ch_sbx_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]
        parts = token.split("_")
        if len(parts) < 5 or parts[:2] != ["tok", "sbx"]:
            return ChargeResult(
                DECLINED, reference, "invalid_token", "This payment method cannot be used."
            )
        kind, outcome = parts[2], "_".join(parts[3:-1])
        if kind == "card":
            if outcome == "ok":
                return ChargeResult(APPROVED, reference)
            message = dict(CARD_OUTCOMES.values()).get(outcome, "Your card was declined.")
            return ChargeResult(DECLINED, reference, outcome, message)
        if outcome == "ok":
            # Reference carries when it settles, so settlement() needs no stored state.
            settles = now + self.settle_after
            return ChargeResult(
                PENDING, f"{reference}_{int(settles.timestamp())}", settles_at=settles
            )
        if outcome == "account_closed":
            return ChargeResult(
                DECLINED, reference, "account_closed", "The bank account was declined."
            )
        return ChargeResult(
            DECLINED, reference, "unknown_bank", "We cannot debit this bank account."
        )

    def settlement(self, reference: str, now: datetime) -> ChargeResult:
        settles = reference.rpartition("_")[2]
        if not settles.isdigit():
            return ChargeResult(APPROVED, reference)
        settles_at = datetime.fromtimestamp(int(settles), now.tzinfo)
        if now >= settles_at:
            return ChargeResult(APPROVED, reference)
        return ChargeResult(PENDING, reference, settles_at=settles_at)
