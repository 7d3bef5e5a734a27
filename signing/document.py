"""The signed agreement as a PDF: render it, store it, record it, and check it later.

The PDF holds the frozen agreement text exactly as the customer saw it, the payment
schedule, the payment authorization, the signature (the drawn image, or the typed name),
the signer's name and the signing time (UTC and the account's local time), then a
**certificate page**: the SHA-256 of the agreement text, how the customer was verified,
the offer and link ids, and every trail event up to and including signing, each with its
time, IP, user agent, data and hashes, so anyone can recompute the chain from the paper.

The certificate covers the trail **up to signing**: the events at or before
``Agreement.signed_at``. Whatever is appended later (``document.rendered`` itself, which
records this PDF's SHA-256 and the last event the certificate covers; a cancellation) is
in the trail and the audit endpoint, not in the PDF, which is why a re-render gives the
same bytes.

Rendering is deterministic: the same inputs give the same bytes (the creation date is the
signing time, the fonts ship with Paylink, nothing random goes in). The inputs beyond the
agreement row are the creditor's details in the settings and the plan's payment method.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import FontFace
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.clock import parse_instant
from app.messaging.outbox import MessageEnv
from app.messaging.render import money
from app.models import Account, Message, OrgSettings
from app.payments.models import PaymentMethod
from app.settings import get_settings
from links.checkout import account_ref
from offers import chain, plans, trail
from offers.models import Installment, Offer, PaymentPlan
from signing.models import Agreement
from signing.storage import DocumentNotFound, DocumentStore, sha256_hex

PDF_CONTENT_TYPE = "application/pdf"
ATTACHMENT_FILENAME = "payment-plan-agreement.pdf"
RENDERED_EVENT = "document.rendered"
FONTS = Path(__file__).resolve().parent / "fonts"
SANS = "DejaVuSans"
SCRIPT = "DejaVuSerif"  # its italic stands in for a typed signature
# fpdf2 subsets the fonts with fontTools, which reports every table it touches at INFO.
logging.getLogger("fontTools").setLevel(logging.WARNING)


@dataclass(frozen=True)
class Creditor:
    name: str
    phone: str
    email: str
    address: str

    @classmethod
    def from_settings(cls, settings: OrgSettings) -> Creditor:
        return cls(
            settings.creditor_name,
            settings.creditor_phone,
            settings.creditor_email,
            settings.creditor_address,
        )


def document_key(agreement_id: int, sha256: str) -> str:
    """Where an agreement's PDF is stored: named by its own hash, so a retry that renders
    the same bytes writes the same key."""
    return f"agreements/{agreement_id}/{sha256}.pdf"


# The numbered section headings of the frozen text (signing.text): "4. RECURRING PAYMENT
# AUTHORIZATION".
_SECTION = re.compile(r"^\d+\. [A-Z][A-Z0-9 ,()/&'-]*$")
_AUTHORIZATION = "RECURRING PAYMENT AUTHORIZATION"


def authorization_from_text(text: str) -> str | None:
    """The recurring payment authorization section of the frozen agreement text, without
    its heading, exactly as the customer signed it; None when the text has none."""
    lines = text.replace("\r\n", "\n").split("\n")
    start = next(
        (k for k, line in enumerate(lines) if _SECTION.match(line) and _AUTHORIZATION in line),
        None,
    )
    if start is None:
        return None
    body = []
    for line in lines[start + 1 :]:
        if _SECTION.match(line):
            break
        body.append(line)
    found = "\n".join(body).strip()
    return found or None


def certificate_events(
    events: Sequence[dict[str, Any]], signed_at: datetime, upto_seq: int | None = None
) -> list[dict[str, Any]]:
    """The events the certificate lists: oldest first, up to seq ``upto_seq`` when the
    trail says what an earlier render covered, else those at or before ``signed_at``."""
    covered = []
    for event in events:
        if upto_seq is not None:
            if event["seq"] > upto_seq:
                break
        elif parse_instant(event["at"]) > signed_at:
            break
        covered.append(event)
    return covered


# --- the PDF -------------------------------------------------------------------------------


def _utc_text(value: datetime) -> str:
    return value.astimezone(ZoneInfo("UTC")).strftime("%Y-%m-%d %H:%M:%S UTC")


def _local_text(value: datetime, timezone: str) -> str:
    return value.astimezone(ZoneInfo(timezone)).strftime(f"%b %-d, %Y %-I:%M:%S %p %Z ({timezone})")


def _shown(text: str) -> str:
    # Tabs and carriage returns have no glyph; everything else is printed as written (the
    # exact text is also embedded in the PDF as a file, byte for byte).
    return text.replace("\r\n", "\n").replace("\r", "\n").expandtabs(4)


class _AgreementPdf(FPDF):
    def __init__(self, footer_text: str):
        super().__init__(orientation="portrait", unit="mm", format="letter")
        self.footer_text = footer_text
        self.set_margins(20, 18, 20)
        self.set_auto_page_break(auto=True, margin=18)
        self.add_font(SANS, "", FONTS / "DejaVuSans.ttf")
        self.add_font(SANS, "B", FONTS / "DejaVuSans-Bold.ttf")
        self.add_font(SCRIPT, "I", FONTS / "DejaVuSerif-Italic.ttf")

    def footer(self) -> None:
        self.set_y(-13)
        self.set_font(SANS, "", 7)
        self.set_text_color(90, 90, 90)
        self.cell(0, 4, self.footer_text, align="L")
        self.set_x(self.l_margin)
        self.cell(0, 4, f"Page {self.page_no()} of {{nb}}", align="R")
        self.set_text_color(0, 0, 0)

    # Small building blocks ---------------------------------------------------------------

    def heading(self, text: str, size: float = 12) -> None:
        self.ln(3)
        self.set_font(SANS, "B", size)
        self.multi_cell(0, size * 0.5, text, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        self.ln(1.5)

    def para(self, text: str, size: float = 9.5, height: float = 4.6) -> None:
        self.set_font(SANS, "", size)
        self.multi_cell(0, height, text, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def field(self, label: str, value: str, size: float = 9) -> None:
        self.set_font(SANS, "B", size)
        self.cell(48, size * 0.5, label, new_x=XPos.RIGHT, new_y=YPos.TOP)
        self.set_font(SANS, "", size)
        self.multi_cell(0, size * 0.5, value, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)


@dataclass(frozen=True)
class AgreementInputs:
    """Everything a render reads, gathered from the database once."""

    agreement: Agreement
    offer: Offer
    plan: PaymentPlan
    installments: list[Installment]
    events: list[dict[str, Any]]  # the certificate's events (certificate_events)
    creditor: Creditor
    timezone: str
    method_text: str
    authorization: str
    account: Account = field(repr=False)


def render_agreement_pdf(
    agreement: Agreement,
    offer: Offer,
    plan: PaymentPlan,
    installments: Sequence[Installment],
    events: Sequence[dict[str, Any]],
    creditor: Creditor,
    *,
    account: Account,
    timezone: str,
    method_text: str,
    authorization: str,
) -> bytes:
    """The agreement PDF's bytes. Pure: the same arguments give the same bytes.

    ``events`` are the trail events (as ``offers.trail.event_json`` gives them) the
    certificate lists: pass ``certificate_events(...)``, the trail up to signing.
    """
    currency = account.currency
    pdf = _AgreementPdf(f"{creditor.name} · Payment plan agreement {agreement.id}")
    pdf.set_creation_date(agreement.signed_at)
    pdf.set_title(f"Payment plan agreement {agreement.id}")
    pdf.set_subject(f"Payment plan between {creditor.name} and {agreement.signer_name}")
    pdf.set_author(creditor.name)
    pdf.set_creator("Paylink")
    pdf.set_lang("en-US")
    # The frozen text byte for byte, for anyone who wants to check its SHA-256.
    pdf.embed_file(
        bytes=agreement.text.encode("utf-8"),
        basename="agreement-text.txt",
        mime_type="text/plain",
        modification_date=agreement.signed_at,
        creation_date=agreement.signed_at,
        desc="The agreement text exactly as the customer saw it (UTF-8)",
    )

    # Page 1: who, the agreement text ---------------------------------------------------
    pdf.add_page()
    pdf.set_font(SANS, "B", 17)
    pdf.cell(0, 9, "Payment Plan Agreement", align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font(SANS, "", 9)
    creditor_lines = [creditor.name]
    if creditor.address:
        creditor_lines.append(creditor.address.replace("\n", ", "))
    creditor_lines.append(" · ".join(x for x in (creditor.phone, creditor.email) if x))
    pdf.multi_cell(
        0, 4.5, "\n".join(creditor_lines), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT
    )
    pdf.ln(2)
    pdf.field("Customer", f"{account.name} (account {account_ref(account)})")
    pdf.field("Agreement", f"{agreement.id} (terms version {agreement.version})")
    pdf.field("Offer", f"{offer.id} (link id {offer.token_id})")
    pdf.field("Signed", f"{_utc_text(agreement.signed_at)}")

    pdf.heading("Agreement")
    pdf.set_font(SANS, "", 7.5)
    pdf.set_text_color(90, 90, 90)
    pdf.multi_cell(
        0, 3.8, "The text below is exactly what the customer was shown and agreed to.",
        align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT,
    )  # fmt: skip
    pdf.set_text_color(0, 0, 0)
    pdf.ln(1)
    pdf.para(_shown(agreement.text))

    # The schedule and the authorization --------------------------------------------------
    pdf.heading("Payment schedule")
    pdf.set_font(SANS, "", 9.5)
    with pdf.table(
        col_widths=(14, 60, 40),
        width=114,
        align="LEFT",
        text_align=("LEFT", "LEFT", "RIGHT"),
        line_height=5.5,
        first_row_as_headings=True,
        headings_style=FontFace(emphasis="BOLD"),
    ) as table:
        for cells in [("#", "Due date", "Amount")] + [
            (str(i.n), plans.due_date_text(i.due_date), money(i.amount_cents, currency))
            for i in installments
        ]:
            row = table.row()
            for cell in cells:
                row.cell(cell)
        total = table.row()
        total.cell("")
        total.cell("Total")
        total.cell(money(sum(i.amount_cents for i in installments), currency))
    pdf.ln(2)
    pdf.field("Payment method", method_text, size=9.5)

    pdf.heading("Payment authorization")
    pdf.para(authorization)

    # The signature ---------------------------------------------------------------------------
    pdf.heading("Signature")
    if pdf.will_page_break(48):
        pdf.add_page()
    if agreement.signature_method == "drawn" and agreement.signature_png:
        pdf.image(
            io.BytesIO(agreement.signature_png), w=80, h=28, keep_aspect_ratio=True,
            alt_text=f"Signature drawn by {agreement.signer_name}",
        )  # fmt: skip
    else:
        pdf.set_font(SCRIPT, "I", 24)
        pdf.cell(0, 14, agreement.signer_name, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_draw_color(120, 120, 120)
    pdf.line(pdf.l_margin, pdf.get_y() + 1, pdf.l_margin + 90, pdf.get_y() + 1)
    pdf.ln(3)
    how = "typed name" if agreement.signature_method == "typed" else "drawn signature"
    pdf.set_font(SANS, "B", 10)
    pdf.multi_cell(
        0, 5, f"Signed electronically by {agreement.signer_name}",
        align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT,
    )  # fmt: skip
    pdf.ln(1)
    pdf.field("Signature", how)
    pdf.field("Signed at (UTC)", _utc_text(agreement.signed_at))
    pdf.field("Signed at (local)", _local_text(agreement.signed_at, timezone))
    pdf.field("E-SIGN consent given", _utc_text(agreement.consent_at))

    # The certificate -------------------------------------------------------------------------
    pdf.add_page()
    pdf.set_font(SANS, "B", 15)
    pdf.cell(0, 8, "Certificate of completion", align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(1)
    pdf.field("Agreement", str(agreement.id))
    pdf.field("Terms version", agreement.version)
    pdf.field("Offer", str(offer.id))
    pdf.field("Link id", offer.token_id)
    pdf.field("Customer account", f"{account.name} (account {account_ref(account)})")
    pdf.field("Signer", agreement.signer_name)
    pdf.field("Signature method", agreement.signature_method)
    pdf.field("Signed at (UTC)", _utc_text(agreement.signed_at))
    pdf.field("Signed at (local)", _local_text(agreement.signed_at, timezone))
    pdf.field("E-SIGN consent at", _utc_text(agreement.consent_at))
    pdf.field("Signer IP", agreement.ip or "not recorded")
    pdf.field("Signer user agent", agreement.user_agent or "not recorded")
    pdf.field("Customer verified by", agreement.verified_by or "no verification step was required")
    pdf.field("Agreement text SHA-256", agreement.text_sha256)
    pdf.ln(2)
    pdf.set_font(SANS, "", 8)
    pdf.multi_cell(
        0, 4,
        "The agreement text SHA-256 is the SHA-256 of the text above encoded as UTF-8 (it is "
        "attached to this PDF as agreement-text.txt). The audit trail below lists every event "
        "up to and including signing, oldest first. Each hash is SHA-256 over the previous "
        "event's hash (64 zeros for the first) followed by the event's canonical JSON: the "
        "keys seq, type, at, ip, user_agent and data, sorted, without spaces, in UTF-8. Events "
        f"after signing, such as {RENDERED_EVENT} which records the SHA-256 of this PDF file, "
        f"are kept in the same chain by {creditor.name}.",
        align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT,
    )  # fmt: skip
    pdf.heading("Audit trail", size=11)
    for event in events:
        if pdf.will_page_break(26):
            pdf.add_page()
        pdf.set_font(SANS, "B", 8.5)
        pdf.multi_cell(
            0, 4.3, f"{event['seq']}. {event['type']} — {event['at']}",
            align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT,
        )  # fmt: skip
        pdf.set_font(SANS, "", 7.5)
        lines = [
            f"IP: {event['ip'] or '—'}",
            f"User agent: {event['user_agent'] or '—'}",
            f"Data: {chain.canonical_json(event['data']).decode('utf-8')}",
            f"Previous hash: {event['prev_hash']}",
            f"Hash: {event['hash']}",
        ]
        pdf.multi_cell(0, 3.6, "\n".join(lines), align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(1.5)
    return bytes(pdf.output())


# --- gathering, storing, recording -------------------------------------------------------------


def rendered_event(events: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The trail's ``document.rendered`` event, if the document has been rendered."""
    return next((e for e in events if e["type"] == RENDERED_EVENT), None)


def gather(session: Session, agreement: Agreement) -> AgreementInputs:
    """Read what a render of ``agreement`` needs. After the first render, the certificate
    lists exactly the events that render listed (as its ``document.rendered`` records)."""
    offer = session.get(Offer, agreement.offer_id)
    plan = session.scalar(select(PaymentPlan).where(PaymentPlan.offer_id == agreement.offer_id))
    if offer is None or plan is None:
        raise LookupError(f"agreement {agreement.id} has no offer or plan")
    account = session.get(Account, offer.account_id)
    method = session.get(PaymentMethod, plan.method_id)
    assert account is not None  # foreign keys
    assert method is not None
    settings = get_settings(session)
    installments = list(plan.installments)
    all_events = trail.events_json(session, offer.id)
    earlier = rendered_event(all_events)
    upto = earlier["data"].get("covers_seq") if earlier else None
    return AgreementInputs(
        agreement=agreement,
        offer=offer,
        plan=plan,
        installments=installments,
        events=certificate_events(all_events, agreement.signed_at, upto),
        creditor=Creditor.from_settings(settings),
        timezone=account.timezone or settings.default_timezone,
        method_text=method.label,
        # What the customer signed, word for word; a summary for a text without it.
        authorization=authorization_from_text(agreement.text)
        or plans.authorization_text(settings, method.label, installments, account.currency),
        account=account,
    )


def render(inputs: AgreementInputs) -> bytes:
    return render_agreement_pdf(
        inputs.agreement, inputs.offer, inputs.plan, inputs.installments, inputs.events,
        inputs.creditor, account=inputs.account, timezone=inputs.timezone,
        method_text=inputs.method_text, authorization=inputs.authorization,
    )  # fmt: skip


@dataclass(frozen=True)
class IssuedDocument:
    sha256: str
    key: str
    size: int
    messages: list[Message]


def issue_document(
    session: Session, agreement: Agreement, store: DocumentStore, *, env: MessageEnv, now: datetime
) -> IssuedDocument | None:
    """Render the agreement's PDF, store it, record its SHA-256 and key on the agreement
    and as a ``document.rendered`` trail event, and queue the ``plan_confirmed`` email with
    the PDF attached — all in the caller's transaction (the caller holds the agreement's
    row lock). None, and nothing done, when the agreement already has its document.
    Flushes."""
    if agreement.document_key is not None:
        return None
    inputs = gather(session, agreement)
    content = render(inputs)
    sha256 = sha256_hex(content)
    key = document_key(agreement.id, sha256)
    store.put(key, content, PDF_CONTENT_TYPE)
    agreement.sha256 = sha256
    agreement.document_key = key
    agreement.rendered_at = now
    covers = inputs.events[-1] if inputs.events else None
    trail.append(
        session, inputs.offer.id, RENDERED_EVENT, now,
        data={"agreement_id": agreement.id, "sha256": sha256, "document_key": key,
              "bytes": len(content), "covers_seq": covers["seq"] if covers else 0,
              "covers_hash": covers["hash"] if covers else chain.GENESIS},
    )  # fmt: skip
    messages = plans.queue_plan_confirmed(
        session, inputs.plan, inputs.account, authorization=inputs.authorization,
        attachments=[{"filename": ATTACHMENT_FILENAME, "content_type": PDF_CONTENT_TYPE,
                      "key": key}],
        env=env, now=now,
    )  # fmt: skip
    session.flush()
    return IssuedDocument(sha256, key, len(content), messages)


# --- verification ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Verification:
    agreement_id: int
    checks: list[Check]
    chain: chain.ChainReport

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def verify_agreement(session: Session, agreement: Agreement, store: DocumentStore) -> Verification:
    """Recompute what can be recomputed: the trail's hash chain, the agreement text's
    SHA-256, the stored PDF's SHA-256 against ``Agreement.sha256``, and that the trail's
    ``document.rendered`` event records that same SHA-256. Reads only."""
    checks: list[Check] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append(Check(name, ok, detail))

    events = trail.events_json(session, agreement.offer_id)
    report = chain.verify_chain(events)
    if report.ok:
        check("trail", True, f"{report.count} events, hash chain intact")
    else:
        where = f"seq {report.bad_seq}" if report.bad_seq is not None else "the end"
        check("trail", False, f"first bad event at {where}: {report.reason} ({report.detail})")
    text_hash = sha256_hex(agreement.text.encode("utf-8"))
    if text_hash == agreement.text_sha256:
        check("text", True, f"SHA-256 {text_hash}")
    else:
        check("text", False, f"the text hashes to {text_hash}, not {agreement.text_sha256}")
    if agreement.document_key is None or agreement.sha256 is None:
        check("document", False, "not rendered yet")
        return Verification(agreement.id, checks, report)
    try:
        stored = store.get(agreement.document_key)
    except DocumentNotFound:
        check("document", False, f"nothing stored under {agreement.document_key}")
    else:
        actual = sha256_hex(stored)
        if actual == agreement.sha256:
            check("document", True, f"SHA-256 {actual} ({len(stored)} bytes)")
        else:
            check("document", False, f"the stored PDF hashes to {actual}, not {agreement.sha256}")
    recorded = rendered_event(events)
    if recorded is None:
        check("record", False, f"the trail has no {RENDERED_EVENT} event")
    elif recorded["data"].get("sha256") != agreement.sha256:
        other = recorded["data"].get("sha256")
        check("record", False, f"{RENDERED_EVENT} (seq {recorded['seq']}) records {other}")
    else:
        check("record", True, f"{RENDERED_EVENT} (seq {recorded['seq']}) records the same SHA-256")
    return Verification(agreement.id, checks, report)
