"""Signing an offer: confirm who the customer is, record consent and the terms they read,
check a typed or drawn signature, and capture it — the atomic acceptance.

Functions take the session, plain values and ``now``; they flush, never commit. Every
step the customer takes is appended to the offer's hash-chained trail (``offers.trail``)
with the IP address and user agent the view passes in.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
import unicodedata
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, time
from itertools import accumulate
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import audit
from app.clock import isoformat, parse_instant
from app.models import Account
from app.payments.models import PaymentMethod
from app.queue import JobSpec, enqueue_after_commit
from app.settings import get_settings
from links import checkout
from links.service import LOCKOUT, MAX_FAILED_VERIFICATIONS
from offers import reminders, trail
from offers import service as offers
from offers.models import (
    Installment,
    InstallmentStatus,
    Offer,
    OfferEvent,
    OfferStatus,
    PaymentPlan,
    PlanStatus,
)
from signing import text
from signing.models import Agreement

CAPTURE_JOB = "workers.signing.capture_agreement"
# A drawn signature arrives as a PNG data URL from the signature pad.
PNG_DATA_URL = "data:image/png;base64,"
MAX_SIGNATURE_BYTES = 200 * 1024
# Bounds on the decoded picture, so checking it stays cheap whatever is posted.
MAX_SIGNATURE_SIDE = 3000
MAX_SIGNATURE_PIXELS = 1_500_000
# Fewer visible pixels than this is an empty pad or a single tap, not a signature.
MIN_INK_PIXELS = 20
# Name suffixes a customer may add or leave out.
NAME_SUFFIXES = frozenset({"jr", "sr", "ii", "iii", "iv"})

VERIFICATION_EVENTS = ("verification.passed", "verification.failed", "verification.locked")


class SignatureInvalid(ValueError):
    """The signature cannot be used; ``field`` is the form field the message belongs to."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


class TermsChanged(Exception):
    """The agreement text no longer matches the one the customer accepted."""


class MethodUnusable(Exception):
    """The chosen payment method is gone or belongs to another account."""


class OfferLocked(Exception):
    """Too many failed verification tries: the offer's page is paused until ``until``."""

    def __init__(self, until: datetime):
        super().__init__("locked")
        self.until = until


# --- the agreement text ----------------------------------------------------------------------


def agreement_text(session: Session, offer: Offer, method: PaymentMethod) -> text.AgreementText:
    """The agreement as the customer sees it now, with ``method`` paying."""
    settings = get_settings(session)
    return text.render(offer, offer.account, settings, method, offers.offer_schedule(offer))


# --- who is signing --------------------------------------------------------------------------


def verification_lock(
    session: Session, offer_id: int, now: datetime
) -> tuple[datetime | None, int]:
    """(locked until, failures since the last success or lockout), read from the offer's
    trail: the failed tries are part of the record, and no cookie can reset them."""
    rows = session.execute(
        select(OfferEvent.type, OfferEvent.data)
        .where(OfferEvent.offer_id == offer_id, OfferEvent.type.in_(VERIFICATION_EVENTS))
        .order_by(OfferEvent.seq)
    )
    failures, until = 0, None
    for type_, data in rows:
        if type_ == "verification.failed":
            failures += 1
        else:
            failures = 0
            if type_ == "verification.locked":
                until = parse_instant(str((data or {}).get("until")))
    return (until if until is not None and until > now else None), failures


def verify_contact(
    session: Session,
    offer: Offer,
    method: str,
    value: str | None,
    now: datetime,
    *,
    ip: str | None,
    user_agent: str | None,
) -> bool:
    """Check one fact (``ssn_last4``, ``date_of_birth`` or ``zip``) against the account, as
    the link flow does: five failures pause the offer for 15 minutes (OfferLocked). A value
    that cannot be such a fact raises checkout.InputError and counts as no try. Flushes."""
    given = checkout.normalize_verification(method, value)
    # Take the offer's row lock first, so two tries at once count as two.
    session.execute(select(Offer.id).where(Offer.id == offer.id).with_for_update())
    until, failures = verification_lock(session, offer.id, now)
    if until is not None:
        raise OfferLocked(until)
    expected = _fact(offer.account, method)
    ok = expected is not None and hmac.compare_digest(given.encode(), expected.encode())
    kind = "verification.passed" if ok else "verification.failed"
    trail.append(
        session, offer.id, kind, now, ip=ip, user_agent=user_agent, data={"method": method}
    )
    if ok:
        return True
    if failures + 1 >= MAX_FAILED_VERIFICATIONS:
        until = now + LOCKOUT
        trail.append(
            session, offer.id, "verification.locked", now, ip=ip, user_agent=user_agent,
            data={"until": isoformat(until)},
        )  # fmt: skip
        audit.record(
            session, audit.Actor("customer", str(offer.account_id), ip=ip), "offer.locked",
            "offer", offer.id, now, {"until": isoformat(until)},
        )  # fmt: skip
        session.flush()
        raise OfferLocked(until)
    return False


def _fact(account: Account, method: str) -> str | None:
    if method == "ssn_last4":
        return account.ssn_last4 if account.ssn_last4 and len(account.ssn_last4) == 4 else None
    if method == "date_of_birth":
        return account.date_of_birth.isoformat() if account.date_of_birth else None
    if method == "zip":
        return (account.zip or "").strip()[:5] or None
    return None


# --- the steps before signing ----------------------------------------------------------------


def record_method(
    session: Session,
    offer: Offer,
    method: PaymentMethod,
    now: datetime,
    *,
    ip: str | None,
    user_agent: str | None,
) -> None:
    """The customer chose how to pay (only the method's label is recorded). Flushes."""
    trail.append(
        session, offer.id, "payment_method.chosen", now, ip=ip, user_agent=user_agent,
        data={"method_id": method.id, "kind": method.kind, "label": method.label},
    )  # fmt: skip


def record_consent(
    session: Session, offer: Offer, now: datetime, *, ip: str | None, user_agent: str | None
) -> None:
    """The customer ticked "I agree" under the E-SIGN disclosure. Flushes."""
    trail.append(
        session, offer.id, "esign.consented", now, ip=ip, user_agent=user_agent,
        data={"version": text.VERSION,
              "disclosure_sha256": text.text_sha256(_disclosure(session, offer))},
    )  # fmt: skip


def _disclosure(session: Session, offer: Offer) -> str:
    return text.disclosure_text(offer.account, get_settings(session))


def record_terms(
    session: Session,
    offer: Offer,
    event: str,
    sha256: str,
    now: datetime,
    *,
    ip: str | None,
    user_agent: str | None,
) -> None:
    """``terms.viewed`` or ``terms.accepted``, naming the text by its SHA-256. Flushes."""
    if event not in ("terms.viewed", "terms.accepted"):
        raise ValueError(f"not a terms event: {event}")
    trail.append(
        session, offer.id, event, now, ip=ip, user_agent=user_agent,
        data={"version": text.VERSION, "text_sha256": sha256},
    )  # fmt: skip


# --- the signature ---------------------------------------------------------------------------


def name_words(name: str) -> list[str]:
    """The words of a name, compared without case, accents, punctuation or a suffix."""
    plain = unicodedata.normalize("NFKD", name)
    plain = "".join(ch for ch in plain if not unicodedata.combining(ch)).casefold()
    plain = plain.replace("'", "").replace("\u2019", "")
    words = re.findall(r"[^\W\d_]+", plain)
    while len(words) > 1 and words[-1] in NAME_SUFFIXES:
        words.pop()
    return words


def check_signer_name(typed: str | None, account_name: str) -> str:
    """The typed full name, tidied, if it names the account holder; SignatureInvalid if not.

    The rule: it has at least two letters, and compared without case, accents, punctuation
    or a suffix (Jr, Sr, II-IV) it is the account's name, or it keeps the account name's
    first and last words with middle names or initials added or left out ("Maria J. Lopez"
    signs for "Maria Lopez"). A one-word account name must be typed as it is.
    """
    tidy = " ".join((typed or "").split())
    if sum(ch.isalpha() for ch in tidy) < 2:
        raise SignatureInvalid("full_name", "Type your full name.")
    if len(tidy) > 200:
        raise SignatureInvalid("full_name", "Type your name in at most 200 characters.")
    given, expected = name_words(tidy), name_words(account_name)
    if given == expected:
        return tidy
    if (
        len(given) >= 2
        and len(expected) >= 2
        and (given[0], given[-1])
        == (
            expected[0],
            expected[-1],
        )
    ):
        return tidy
    raise SignatureInvalid(
        "full_name",
        "This does not match the name on the account. Type your first and last name as "
        "they appear on your account.",
    )


def decode_drawn_signature(data_url: str | None) -> bytes:
    """The PNG bytes of a drawn signature posted as a data URL; SignatureInvalid when it is
    missing, not a PNG, over 200 KB, or (nearly) empty."""
    value = (data_url or "").strip()
    if not value:
        raise SignatureInvalid(
            "signature_png", "Draw your signature in the box, or choose to type your name."
        )
    if not value.startswith(PNG_DATA_URL):
        raise _unreadable()
    encoded = value[len(PNG_DATA_URL) :]
    if len(encoded) > (MAX_SIGNATURE_BYTES + 2) // 3 * 4:
        raise _too_large()
    try:
        png = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise _unreadable() from None
    if len(png) > MAX_SIGNATURE_BYTES:
        raise _too_large()
    if visible_pixels(png) < MIN_INK_PIXELS:
        raise SignatureInvalid(
            "signature_png",
            "The signature box is empty. Draw your signature, or choose to type your name.",
        )
    return png


def _too_large() -> SignatureInvalid:
    return SignatureInvalid(
        "signature_png",
        "The drawn signature is too large (over 200 KB). Clear the box and sign again, or "
        "choose to type your name.",
    )


def _unreadable() -> SignatureInvalid:
    return SignatureInvalid(
        "signature_png",
        "We could not read the drawn signature. Clear the box and sign again, or choose to "
        "type your name.",
    )


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def visible_pixels(png: bytes) -> int:
    """How many pixels of an 8-bit RGBA or grey+alpha PNG (what a canvas exports) are not
    fully transparent. SignatureInvalid for anything else, a bad checksum, or a picture
    over the size bounds. Only the alpha channel is unfiltered: PNG filters predict each
    byte from bytes of the same channel, so it can be rebuilt alone."""
    if not png.startswith(PNG_MAGIC):
        raise _unreadable()
    header, data = _png_chunks(png)
    width, height, depth, color, compression, filtering, interlace = header
    if depth != 8 or color not in (4, 6) or (compression, filtering, interlace) != (0, 0, 0):
        raise _unreadable()
    if not (0 < width <= MAX_SIGNATURE_SIDE and 0 < height <= MAX_SIGNATURE_SIDE):
        raise _unreadable()
    if width * height > MAX_SIGNATURE_PIXELS:
        raise _unreadable()
    bpp = 4 if color == 6 else 2
    stride = width * bpp
    expected = height * (stride + 1)
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, expected + 1)
    except zlib.error:
        raise _unreadable() from None
    if len(raw) != expected or not inflater.eof:
        raise _unreadable()
    above = bytes(width)
    visible = 0
    for row in range(height):
        start = row * (stride + 1)
        kind = raw[start]
        line = raw[start + 1 + bpp - 1 : start + 1 + stride : bpp]  # the alpha bytes
        alpha = _unfilter(kind, line, above)
        visible += width - alpha.count(0)
        above = alpha
    return visible


def _png_chunks(png: bytes) -> tuple[tuple[int, ...], bytes]:
    pos, header, idat, ended = len(PNG_MAGIC), None, [], False
    while pos + 12 <= len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind = png[pos + 4 : pos + 8]
        body = png[pos + 8 : pos + 8 + length]
        crc = png[pos + 8 + length : pos + 12 + length]
        if len(body) != length or len(crc) != 4:
            raise _unreadable()
        if zlib.crc32(kind + body) != struct.unpack(">I", crc)[0]:
            raise _unreadable()
        if header is None and kind != b"IHDR":
            raise _unreadable()
        if kind == b"IHDR":
            if length != 13:
                raise _unreadable()
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            ended = True
            break
        pos += 12 + length
    if header is None or not idat or not ended:
        raise _unreadable()
    return header, b"".join(idat)


def _unfilter(kind: int, line: bytes, above: bytes) -> bytes:
    if kind == 0:
        return bytes(line)
    if kind == 1:
        return bytes(accumulate(line, lambda left, x: (left + x) & 255))
    if kind == 2:
        return bytes((x + b) & 255 for x, b in zip(line, above, strict=True))
    out = bytearray(len(line))
    left = upper_left = 0
    if kind == 3:
        for i, x in enumerate(line):
            left = out[i] = (x + ((left + above[i]) >> 1)) & 255
        return bytes(out)
    if kind == 4:
        for i, x in enumerate(line):
            up = above[i]
            p = left + up - upper_left
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
            guess = left if pa <= pb and pa <= pc else (up if pb <= pc else upper_left)
            left = out[i] = (x + guess) & 255
            upper_left = up
        return bytes(out)
    raise _unreadable()


@dataclass(frozen=True)
class Signature:
    """A checked signature: the signer's typed name, and a PNG when drawn."""

    signer_name: str
    method: str  # typed or drawn
    png: bytes | None = None

    def __post_init__(self) -> None:
        if self.method not in ("typed", "drawn") or (self.method == "drawn") != bool(self.png):
            raise ValueError("a drawn signature has a PNG; a typed one has none")


# --- the acceptance --------------------------------------------------------------------------


@dataclass(frozen=True)
class Capture:
    plan: PaymentPlan
    agreement: Agreement | None
    created: bool  # this call accepted the offer; False: it had been accepted before


def capture_signature(
    session: Session,
    offer_id: int,
    *,
    signature: Signature,
    method_id: int,
    accepted_sha256: str,
    consent_at: datetime,
    verified_by: str,
    ip: str | None,
    user_agent: str | None,
    now: datetime,
) -> Capture:
    """Accept the offer in the caller's transaction: lock the offer row, re-check that it is
    open, freeze the agreement text the customer accepted (its SHA-256 must still be
    ``accepted_sha256``, else TermsChanged), create the agreement, the plan and its
    installments, mark the offer accepted, cancel its reminders, append the trail and an
    audit event, and enqueue the capture job for after the commit. Flushes.

    Idempotent: an offer accepted before (a double-submitted Sign) returns its plan with
    ``created`` False and changes nothing. OfferGone for an expired, revoked or declined
    offer; MethodUnusable for a method that is not the account's."""
    offer = session.get(Offer, offer_id, with_for_update=True, populate_existing=True)
    if offer is None:
        raise LookupError(f"no offer {offer_id}")
    if offer.status == OfferStatus.accepted:
        plan = session.scalar(select(PaymentPlan).where(PaymentPlan.offer_id == offer.id))
        if plan is None:  # accepted without a plan cannot happen; refuse to guess
            raise offers.OfferEnded("the offer is accepted but has no plan")
        agreement = session.scalar(select(Agreement).where(Agreement.offer_id == offer.id))
        return Capture(plan, agreement, False)
    offers.refresh_status(offer, now)
    if offer.status not in (OfferStatus.sent, OfferStatus.viewed):
        raise offers.OfferGone(offer)
    method = session.get(PaymentMethod, method_id)
    if method is None or method.account_id != offer.account_id:
        raise MethodUnusable(method_id)
    account = offer.account
    settings = get_settings(session)
    schedule = offers.offer_schedule(offer)
    rendered = text.render(offer, account, settings, method, schedule)
    if not hmac.compare_digest(rendered.sha256, accepted_sha256 or ""):
        raise TermsChanged

    agreement = Agreement(
        offer_id=offer.id, version=rendered.version, text=rendered.full,
        text_sha256=rendered.sha256, signer_name=signature.signer_name,
        signature_method=signature.method, signature_png=signature.png,
        consent_at=consent_at, signed_at=now, ip=(ip or None) and ip[:45],
        user_agent=(user_agent or "")[:400] or None, verified_by=verified_by[:64],
    )  # fmt: skip
    plan = PaymentPlan(
        offer_id=offer.id, account_id=offer.account_id, method_id=method.id,
        status=PlanStatus.active.value, total_cents=offer.total_cents, created_at=now,
    )  # fmt: skip
    session.add_all([agreement, plan])
    session.flush()
    zone = ZoneInfo(account.timezone or settings.default_timezone)
    for item in schedule:
        local = datetime.combine(item.due_date, time(settings.charge_hour), zone)
        due_at = local.astimezone(UTC)
        session.add(
            Installment(
                plan_id=plan.id,
                n=item.n,
                due_date=item.due_date,
                amount_cents=item.amount_cents,
                status=InstallmentStatus.scheduled.value,
                # A date already passed when the customer signs is charged at once.
                next_attempt_at=max(due_at, now),
                attempts=0,
            )
        )
    offer.status = OfferStatus.accepted.value
    offer.accepted_at = now
    reminders.cancel_reminders(session, offer, "offer accepted", now)
    captured = {
        "agreement_id": agreement.id,
        "signer_name": signature.signer_name,
        "signature_method": signature.method,
        "text_sha256": rendered.sha256,
        "version": rendered.version,
        "verified_by": verified_by,
        "consent_at": isoformat(consent_at),
        "payment_method": method.label,
    }
    if signature.png:
        captured["signature_png_sha256"] = hashlib.sha256(signature.png).hexdigest()
    trail.append(
        session, offer.id, "signature.captured", now, ip=ip, user_agent=user_agent, data=captured
    )
    trail.append(
        session, offer.id, "offer.accepted", now, ip=ip, user_agent=user_agent,
        data={"plan_id": plan.id, "total_cents": plan.total_cents,
              "schedule": [i.as_json() for i in schedule]},
    )  # fmt: skip
    audit.record(
        session, audit.Actor("customer", str(offer.account_id), ip=ip), "offer.accepted",
        "offer", offer.id, now,
        {"agreement_id": agreement.id, "plan_id": plan.id, "text_sha256": rendered.sha256,
         "signature_method": signature.method, "verified_by": verified_by},
    )  # fmt: skip
    enqueue_after_commit(
        session,
        JobSpec(CAPTURE_JOB, (agreement.id,), job_id=f"agreement-{agreement.id}", queue="default"),
    )
    session.flush()
    return Capture(plan, agreement, True)
