"""Signed plans for tests: an offer made by offers.service.create_offer, a card saved by
app.payments.service.add_card, then the agreement, plan and installments as the signing
service's capture_signature makes them, with the trail events of the customer's steps."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from flask import Flask

from app import audit
from app.messaging.outbox import MessageEnv
from app.models import Account
from app.payments.sandbox import SandboxGateway
from app.payments.service import CardInput, add_card
from links.tokens import OFFER, UrlTokens
from offers import service, trail
from offers.models import Installment, OfferStatus, PaymentPlan
from signing.models import Agreement

# 15:00 UTC is 10:00 in New York: inside the default quiet hours window, so emails go.
SIGNED_AT = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
SENT_AT = SIGNED_AT - timedelta(hours=3)
IP = "203.0.113.7"
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
NAME = "Nguyễn Thị Ánh"  # outside Latin-1: the PDF must print it as written


@dataclass(frozen=True)
class SignedPlan:
    account_id: int
    offer_id: int
    plan_id: int
    agreement_id: int
    method_id: int
    text_sha256: str


def agreement_text(name: str, creditor: str, schedule: list[Any], method_label: str) -> str:
    rows = "\n".join(
        f"  {i.n}. {i.due_date:%b} {i.due_date.day}, {i.due_date.year}  "
        f"${i.amount_cents // 100:,}.{i.amount_cents % 100:02d}"
        for i in schedule
    )
    return (
        "PAYMENT PLAN AGREEMENT (version 2026-11.1)\n\n"
        f"Creditor: {creditor}\nCustomer: {name}\n\n"
        "1. CONSENT TO ELECTRONIC RECORDS AND SIGNATURES (E-SIGN DISCLOSURE)\n\n"
        "You consent to receive the records of this plan electronically — and to sign "
        "electronically. You may ask for “paper copies” at any time, free of charge.\n\n"
        "2. PAYMENT PLAN TERMS\n\n"
        "You agree to pay the amounts below.\tEach is charged on its date.\n\n"
        f"3. PAYMENT SCHEDULE\n\n{rows}\n\n"
        "4. RECURRING PAYMENT AUTHORIZATION\n\n"
        f"I, {name}, authorize {creditor} to charge my {method_label} for the payments "
        "shown in the payment schedule.\n\n"
        "I may revoke it by contacting the creditor at least 3 business days before the "
        "date of the next payment.\n"
    )


def signature_png() -> bytes:
    """A drawn signature as a canvas exports it: RGBA, black strokes on transparent."""
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (600, 200), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.line(
        [(20, 150), (120, 40), (200, 160), (320, 50), (460, 150), (580, 60)], (0, 0, 0, 255), 6
    )
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def make_signed_plan(
    app: Flask,
    *,
    n: int = 1,
    method: str = "typed",
    email: str | None = "ola@example.com",
    phone: str | None = "+12025550143",
    installments: int = 3,
    total_cents: int = 100_000,
    verified_by: str = "ssn_last4",
    signed_at: datetime = SIGNED_AT,
    name: str = NAME,
) -> SignedPlan:
    config = app.extensions["paylink.config"]
    env = MessageEnv.from_config(config)
    sent_at = signed_at - timedelta(hours=3)
    with app.extensions["paylink.db"].transaction() as session:
        account = Account(
            external_id=f"SIGN-{n}", name=name, phone=phone, email=email,
            timezone="America/Chicago", balance_cents=total_cents, currency="USD",
            ssn_last4="6789", created_at=sent_at, updated_at=sent_at,
        )  # fmt: skip
        session.add(account)
        session.flush()
        request = service.OfferRequest(
            account=account, kind="plan", total_cents=total_cents,
            installment_count=installments, frequency="monthly",
            first_due_date=date(2026, 12, 1), expires_at=signed_at + timedelta(days=5),
            channels=[c for c, to in (("sms", phone), ("email", email)) if to],
            reminder_offsets=["24h"],
        )  # fmt: skip
        offer, _url, _messages = service.create_offer(
            session, request, percent_off=None, actor=audit.Actor.system("test"), agent_id=None,
            now=sent_at, env=env, tokens=UrlTokens(config.secret_keys, OFFER),
        )  # fmt: skip
        viewed_at = sent_at + timedelta(hours=2)
        service.mark_viewed(session, offer, viewed_at, ip=IP, user_agent=UA)
        card = add_card(
            session, account, SandboxGateway(),
            CardInput(name=name, number="4242 4242 4242 4242", expiry="12/30",
                      security_code="123", zip="60601"),
            today=viewed_at.date(), now=viewed_at,
        )  # fmt: skip
        step = viewed_at
        for type_, data in (
            ("verification.passed", {"method": verified_by}),
            ("payment_method.chosen", {"method_id": card.id, "kind": "card", "label": card.label}),
            ("esign.consented", {"version": "2026-11.1"}),
        ):
            step += timedelta(minutes=1)
            trail.append(session, offer.id, type_, step, ip=IP, user_agent=UA, data=data)
        consent_at = step
        schedule = service.offer_schedule(offer)
        text = agreement_text(name, "Paylink Demo Creditor", schedule, card.label)
        text_sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        trail.append(
            session, offer.id, "terms.accepted", signed_at - timedelta(seconds=30), ip=IP,
            user_agent=UA, data={"version": "2026-11.1", "text_sha256": text_sha256},
        )  # fmt: skip
        png = signature_png() if method == "drawn" else None
        agreement = Agreement(
            offer_id=offer.id, version="2026-11.1", text=text, text_sha256=text_sha256,
            signer_name=name, signature_method=method, signature_png=png,
            consent_at=consent_at, signed_at=signed_at, ip=IP, user_agent=UA,
            verified_by=verified_by,
        )  # fmt: skip
        plan = PaymentPlan(
            offer_id=offer.id, account_id=account.id, method_id=card.id, status="active",
            total_cents=total_cents, created_at=signed_at,
        )  # fmt: skip
        session.add_all([agreement, plan])
        session.flush()
        zone = ZoneInfo(account.timezone)
        for item in schedule:
            due = datetime.combine(item.due_date, time(9), zone).astimezone(UTC)
            session.add(
                Installment(
                    plan_id=plan.id,
                    n=item.n,
                    due_date=item.due_date,
                    amount_cents=item.amount_cents,
                    status="scheduled",
                    next_attempt_at=max(due, signed_at),
                    attempts=0,
                )
            )
        offer.status = OfferStatus.accepted.value
        offer.accepted_at = signed_at
        trail.append(
            session, offer.id, "signature.captured", signed_at, ip=IP, user_agent=UA,
            data={"agreement_id": agreement.id, "signer_name": name,
                  "signature_method": method, "text_sha256": text_sha256,
                  "verified_by": verified_by},
        )  # fmt: skip
        trail.append(
            session, offer.id, "offer.accepted", signed_at, ip=IP, user_agent=UA,
            data={"plan_id": plan.id, "total_cents": total_cents},
        )  # fmt: skip
        return SignedPlan(account.id, offer.id, plan.id, agreement.id, card.id, text_sha256)
