"""Messaging: the transactional outbox, templates, compliance, and the SMS and email
backends (outbox for development, Twilio, SendGrid)."""
