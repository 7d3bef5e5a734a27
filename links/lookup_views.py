"""Find my account at /pay: a public page that sends a fresh link to the contact on file.

The answer to a good submission is the same page, status and work whether or not anything
matched (see links.lookup). Limited per address and per account number or SSN entered.
"""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, request
from flask_limiter.errors import RateLimitExceeded

from app.clock import utcnow
from app.config import Config
from app.db import db_session
from app.pages import private_page
from app.queue import enqueue_after_commit
from app.ratelimit import limiter
from app.settings import get_settings
from links import lookup

bp = Blueprint("lookup", __name__)

# Attempts per address: enough for typing mistakes, too few to guess anyone's details.
PER_ADDRESS = "5 per 15 minutes"
# Attempts per account number (or SSN) from anywhere: guessing a date of birth or ZIP
# from many addresses stays slow. A limit on what was entered reveals nothing: it counts
# the same whether or not such an account exists.
PER_IDENTIFIER = "10 per hour"


def _config() -> Config:
    return current_app.extensions["paylink.config"]


def _identifier() -> str | None:
    return lookup.identifier_digest(
        request.form.get("account_number", "")[:100],
        request.form.get("ssn", "")[:40],
        key=_config().ssn_hash_key,
    )


def _identifier_key() -> str:
    return f"lookup-id:{_identifier()}"


def _no_identifier() -> bool:
    # A form without one gets its error message, not a count shared by everyone.
    return _identifier() is None


bp.after_request(private_page)


@bp.errorhandler(RateLimitExceeded)
def _limited(exc: RateLimitExceeded) -> tuple[str, int, dict[str, str]]:
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    page = render_template("lookup/limited.html", creditor=get_settings(db_session()))
    return page, 429, headers


@bp.get("/pay")
def find_account_page() -> str:
    """The form. Changes nothing."""
    return render_template("lookup/find.html", creditor=get_settings(db_session()), errors={},
                           values={})  # fmt: skip


@bp.post("/pay")
@limiter.limit(PER_ADDRESS)
@limiter.limit(PER_IDENTIFIER, key_func=_identifier_key, exempt_when=_no_identifier)
def find_account() -> tuple[str, int]:
    """Check the facts; whatever matched, enqueue the one send job and give one answer."""
    now = utcnow()
    session = db_session()
    creditor = get_settings(session)
    facts, errors = lookup.read_facts(request.form, now.date())
    if facts is None:
        # Echo what was typed, except the SSN.
        values = {
            k: request.form.get(k, "")[:64] for k in ("account_number", "date_of_birth", "zip")
        }
        page = render_template("lookup/find.html", creditor=creditor, errors=errors, values=values)
        return page, 422
    account_id = lookup.match_account(session, facts, ssn_key=_config().ssn_hash_key)
    enqueue_after_commit(session, lookup.lookup_job(account_id, now))
    session.commit()
    return render_template("lookup/sent.html", creditor=creditor), 200
