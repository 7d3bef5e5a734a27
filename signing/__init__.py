"""Agreements: rendering, consent, signature capture and the audit trail."""
