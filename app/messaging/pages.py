"""Customer and developer pages of messaging: unsubscribe links and the dev outbox."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("messaging_pages", __name__)
# View functions that must accept POSTs without a CSRF token (RFC 8058 one-click
# unsubscribe comes from the mail client, which has no form token). The factory exempts them.
CSRF_EXEMPT: tuple[str, ...] = ()
