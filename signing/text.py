"""The words a customer agrees to when signing a payment-plan offer, rendered with the
offer's amounts, dates, payment method and creditor.

Four parts, shown on two pages and frozen together when the customer signs: the E-SIGN
disclosure (the consent page), and the plan terms, the payment schedule and the recurring
payment authorization (the terms page). Rendering is deterministic: the same inputs give
the same text, byte for byte, so its SHA-256 proves what was shown. Change ``VERSION``
whenever any wording here changes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import phonenumbers

from app.messaging.render import money
from app.models import Account, OrgSettings
from app.payments.models import MethodKind, PaymentMethod
from links.checkout import account_ref, mask_email
from offers.models import Offer
from offers.plan_math import Installment
from offers.service import FREQUENCY_TEXT

VERSION = "2026-11.1"
# How long a customer has to ask before a payment date to stop it.
REVOKE_BUSINESS_DAYS = 3
# Paper copies are mailed within this many business days of the request.
PAPER_COPY_BUSINESS_DAYS = 10


@dataclass(frozen=True)
class AgreementText:
    """The rendered parts; ``full`` is what is frozen in the agreement and hashed."""

    version: str
    header: str
    disclosure: str
    terms: str
    schedule: str
    authorization: str

    @property
    def full(self) -> str:
        parts = (self.header, self.disclosure, self.terms, self.schedule, self.authorization)
        return "\n".join(parts)

    @property
    def sha256(self) -> str:
        return text_sha256(self.full)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def date_text(day: date) -> str:
    """``Dec 1, 2026``."""
    return f"{day:%b} {day.day}, {day.year}"


def hour_text(hour: int) -> str:
    """``9`` → ``9:00 AM``; ``13`` → ``1:00 PM``."""
    suffix = "AM" if hour < 12 else "PM"
    return f"{(hour % 12) or 12}:00 {suffix}"


def phone_text(e164: str | None) -> str:
    """``+18005550100`` → ``(800) 555-0100``; anything unparsable as it is."""
    try:
        number = phonenumbers.parse(e164 or "", "US")
    except phonenumbers.NumberParseException:
        return e164 or ""
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)


def contact_text(settings: OrgSettings) -> str:
    """How to reach the creditor: ``by phone at (800) 555-0100 (Mon-Fri 9am-5pm), by email
    at billing@example.com or by mail at ...``."""
    ways = []
    if settings.creditor_phone:
        hours = f" ({settings.creditor_hours})" if settings.creditor_hours else ""
        ways.append(f"by phone at {phone_text(settings.creditor_phone)}{hours}")
    if settings.creditor_email:
        ways.append(f"by email at {settings.creditor_email}")
    address = " ".join((settings.creditor_address or "").split())
    if address:
        ways.append(f"by mail at {address}")
    if not ways:
        return "through the contact details on your statements"
    if len(ways) == 1:
        return ways[0]
    return ", ".join(ways[:-1]) + " or " + ways[-1]


def _paragraphs(*paragraphs: str) -> str:
    return "\n\n".join(p for p in paragraphs if p) + "\n"


def header_text(offer: Offer, account: Account, settings: OrgSettings) -> str:
    return _paragraphs(
        f"PAYMENT PLAN AGREEMENT (version {VERSION})",
        "\n".join(
            [
                f"Creditor: {settings.creditor_name}",
                f"Customer: {account.name}",
                f"Account: {account_ref(account)}",
                f"Offer reference: {offer.id}",
            ]
        ),
    )


def disclosure_text(account: Account, settings: OrgSettings) -> str:
    """The E-SIGN disclosure: what the consent covers, paper copies, withdrawing consent,
    updating contact details, and what is needed to open and keep the records."""
    creditor = settings.creditor_name
    contact = contact_text(settings)
    email = mask_email(account.email)
    delivery = (
        f"Once you sign, we email the signed agreement, as a PDF document, to the address we "
        f"have on file for you ({email})."
        if email
        else f"We have no email address on file for you: once you sign, ask {creditor} for a "
        "copy of the signed agreement (a PDF document) or a paper copy."
    )
    return _paragraphs(
        "1. CONSENT TO ELECTRONIC RECORDS AND SIGNATURES (E-SIGN DISCLOSURE)",
        f"Please read this before you agree. {creditor} asks for your consent to give you the "
        "records of this payment plan electronically and to let you sign it electronically, "
        "as the federal Electronic Signatures in Global and National Commerce Act (E-SIGN "
        "Act) allows. You do not have to agree.",
        "What your consent covers. It covers this payment plan only: the agreement you sign, "
        "its payment schedule and recurring payment authorization, and the receipts and "
        "notices about this plan (payment receipts, declined payment notices, and notices "
        "that the plan changed or was cancelled).",
        f"How you get the records. {delivery} Receipts and notices come by email, or by text "
        "message with a link.",
        f"Paper copies. You have the right to receive any of these records on paper. To get "
        f"a paper copy, at any time and free of charge, contact {creditor} {contact}. We "
        f"mail it within {PAPER_COPY_BUSINESS_DAYS} business days. Asking for a paper copy "
        "does not withdraw your consent.",
        f"Withdrawing your consent. You may withdraw your consent at any time, free of "
        f"charge, by contacting {creditor} {contact}. If you withdraw it before you sign, "
        f"you cannot complete this agreement online; {creditor} can tell you other ways to "
        "set up a plan. If you withdraw it after you sign, the signed agreement and its "
        "payment authorization stay in effect, and we send you the records of this plan on "
        "paper from then on. Withdrawing takes effect once we have had a reasonable time to "
        "act on it.",
        f"Keeping your contact details up to date. Tell {creditor} {contact} whenever your "
        "email address, phone number or mailing address changes, so the records reach you.",
        "What you need. To open and keep these records you need: a phone, tablet or "
        "computer with internet access; a current web browser (such as a recent Chrome, "
        "Safari, Firefox or Edge) with cookies turned on; an email account; software that "
        "opens PDF files (such as Adobe Acrobat Reader, or the PDF viewer built into most "
        "phones and browsers); and storage space on your device to save the records, or a "
        "printer to print them. If these requirements change in a way that could stop you "
        "opening or keeping the records, we will tell you, and you may withdraw your "
        "consent free of charge.",
        'By checking "I agree" you confirm that you can open and keep records as described '
        "here, and that you consent to receive them electronically and to sign "
        "electronically.",
    )


def terms_text(
    offer: Offer, account: Account, settings: OrgSettings, schedule: Sequence[Installment]
) -> str:
    creditor = settings.creditor_name
    currency = account.currency
    total = money(offer.total_cents, currency)
    count = len(schedule)
    payments = f"{count} payment{'s' if count != 1 else ''}"
    how_often = f", {FREQUENCY_TEXT[offer.frequency]}," if count > 1 else ""
    if offer.kind == "settlement":
        what = (
            f"{creditor} agrees to accept {total}, paid in {payments}{how_often} as scheduled "
            f"below, in full settlement of the balance of {money(offer.balance_cents, currency)} "
            f"on account {account_ref(account)}, once every payment is made."
        )
        lost = " and the settlement no longer applies"
    else:
        toward = (
            "the balance"
            if offer.total_cents >= offer.balance_cents
            else f"the balance of {money(offer.balance_cents, currency)}"
        )
        what = (
            f"You agree to pay {total} toward {toward} on account {account_ref(account)}, in "
            f"{payments}{how_often} as scheduled below."
        )
        lost = ""
    retries = [d for d in settings.retry_after_days or () if d > 0]
    if retries:
        days = ", ".join(str(d) for d in retries[:-1])
        days = f"{days} and {retries[-1]}" if days else str(retries[-1])
        declined = (
            f"If a payment is declined, we tell you and try it again {days} days after its "
            "date. If it is still declined, the plan may end: what is left of the amount "
            f"above is then due at once{lost}."
        )
    else:
        declined = (
            "If a payment is declined, we tell you, and the plan may end: what is left of the "
            f"amount above is then due at once{lost}."
        )
    zone = account.timezone or settings.default_timezone
    return _paragraphs(
        "2. PAYMENT PLAN TERMS",
        what,
        f"Each payment is charged on its date, from {hour_text(settings.charge_hour)} in your "
        f"time zone ({zone}). A payment whose date has already passed when you sign is "
        "charged on the day you sign.",
        declined,
        f"You may pay what is left early, at any time and without a fee, by contacting "
        f"{creditor}. We email you a receipt after each payment.",
    )


def schedule_text(account: Account, schedule: Sequence[Installment]) -> str:
    currency = account.currency
    rows = [
        f"  {item.n}. {date_text(item.due_date)}  {money(item.amount_cents, currency)}"
        for item in schedule
    ]
    total = money(sum(item.amount_cents for item in schedule), currency)
    return _paragraphs("3. PAYMENT SCHEDULE", "\n".join(rows), f"Total: {total}")


def authorization_text(
    offer: Offer,
    account: Account,
    settings: OrgSettings,
    method: PaymentMethod,
    schedule: Sequence[Installment],
) -> str:
    """The recurring payment authorization: amounts, dates, method, and how to revoke it."""
    creditor = settings.creditor_name
    currency = account.currency
    count = len(schedule)
    total = money(sum(item.amount_cents for item in schedule), currency)
    first, last = schedule[0].due_date, schedule[-1].due_date
    if count == 1:
        when = f"one payment of {total} on {date_text(first)}"
    else:
        when = (
            f"{count} payments totalling {total}, {FREQUENCY_TEXT[offer.frequency]} from "
            f"{date_text(first)} to {date_text(last)}, each in the amount and on the date "
            "shown in the payment schedule"
        )
    if method.kind == MethodKind.bank:
        how = (
            f"to debit my {method.label} (routing number {method.routing_number}) by "
            "electronic funds transfer (ACH)"
        )
        extra = (
            "A debit can take a few business days to complete. If a debit is returned, "
            f"{creditor} may try it again as the terms above say."
        )
    else:
        how = f"to charge my {method.label}"
        extra = ""
    return _paragraphs(
        "4. RECURRING PAYMENT AUTHORIZATION",
        f"I, {account.name}, authorize {creditor} {how} for {when}.",
        extra,
        f"This authorization stays in effect until every payment above is made or until I "
        f"revoke it. I may revoke it by contacting {creditor} {contact_text(settings)} at "
        f"least {REVOKE_BUSINESS_DAYS} business days before the date of the next payment. "
        "Revoking it stops the payments that have not been made; it does not by itself "
        "cancel what I owe.",
        "I confirm that I am allowed to use this payment method, and I will keep this "
        "authorization (a copy is sent with the signed agreement).",
    )


def render(
    offer: Offer,
    account: Account,
    settings: OrgSettings,
    method: PaymentMethod,
    schedule: Sequence[Installment],
) -> AgreementText:
    """Every part of the agreement for this offer, paid with ``method``."""
    if not schedule:
        raise ValueError("an agreement needs at least one payment")
    return AgreementText(
        version=VERSION,
        header=header_text(offer, account, settings),
        disclosure=disclosure_text(account, settings),
        terms=terms_text(offer, account, settings, schedule),
        schedule=schedule_text(account, schedule),
        authorization=authorization_text(offer, account, settings, method, schedule),
    )
