"""Agreements: what the customer signed, its document, and its hash-chained audit trail."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.clock import utcnow
from app.db import Base, UTCDateTime


class Agreement(Base):
    """A signed payment-plan agreement. ``text`` is frozen exactly as the customer saw it;
    ``sha256`` is the hash of the final PDF's bytes, set when the document is rendered."""

    __tablename__ = "agreement"
    __table_args__ = (
        CheckConstraint("signature_method IN ('typed', 'drawn')", name="signature_method"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    offer_id: Mapped[int] = mapped_column(ForeignKey("offer.id"), unique=True)
    version: Mapped[str] = mapped_column(String(20))
    text: Mapped[str] = mapped_column(Text)
    text_sha256: Mapped[str] = mapped_column(String(64))
    signer_name: Mapped[str] = mapped_column(String(200))
    signature_method: Mapped[str] = mapped_column(String(8))
    signature_png: Mapped[bytes | None] = mapped_column(LargeBinary)  # a drawn signature
    consent_at: Mapped[datetime] = mapped_column(UTCDateTime)  # E-SIGN consent
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ip: Mapped[str | None] = mapped_column(String(45))
    user_agent: Mapped[str | None] = mapped_column(String(400))
    verified_by: Mapped[str | None] = mapped_column(String(64))  # how the signer was verified
    sha256: Mapped[str | None] = mapped_column(String(64))
    document_key: Mapped[str | None] = mapped_column(String(200))
    rendered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class StoredDocument(Base):
    """The database backend of document storage (signing.storage)."""

    __tablename__ = "stored_document"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    content_type: Mapped[str] = mapped_column(String(100))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
