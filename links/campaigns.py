"""CSV account import and link campaigns in the console.

An agent uploads accounts (each bad row is listed with its line and field), then starts a
campaign: one payment link, for the balance, sent by the chosen channels to each account of
a selection. ``workers.campaigns.run_campaign`` mints and sends them in batches after the
campaign's rows commit; the campaign page shows the counts per status as they move.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import String, cast, func, insert, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import accounts, audit, validation
from app.auth import require_console
from app.clock import utcnow
from app.console import load_or_404
from app.db import db_session
from app.models import Account, Message
from app.queue import JobSpec, enqueue_after_commit, job_id
from app.validation import Errors, FieldError
from links.campaign_models import Campaign, CampaignItem, CampaignStatus, ItemStatus

bp = Blueprint("campaigns", __name__, url_prefix="/console")

RUN_JOB = "workers.campaigns.run_campaign"
RUN_TIMEOUT = 300
MAX_ACCOUNTS = 20_000  # per campaign
CHANNELS = {"sms": "SMS", "email": "Email"}
LIST_SIZE = 50
ITEMS_SHOWN = 200


# --- operations (take the session, plain values and ``now``; flush, never commit) ----------


def run_job(campaign_id: int, *parts: object) -> JobSpec:
    """The campaign job; ``parts`` tell one start apart from another (each id is unique)."""
    return JobSpec(
        RUN_JOB, (campaign_id,), job_id=job_id("campaign", campaign_id, *parts),
        timeout=RUN_TIMEOUT, unique=True,
    )  # fmt: skip


def create_campaign(
    session: Session,
    *,
    name: str,
    account_ids: Iterable[int],
    channels: list[str],
    expires_in_hours: int | None,
    actor: audit.Actor,
    agent_id: int | None,
    now: datetime,
) -> Campaign:
    """A campaign with one pending item per account; its job is enqueued after commit."""
    ids = list(dict.fromkeys(account_ids))
    campaign = Campaign(
        name=name, status=CampaignStatus.queued.value, channels=channels,
        expires_in_hours=expires_in_hours, total=len(ids), created_by_agent_id=agent_id,
        created_at=now,
    )  # fmt: skip
    session.add(campaign)
    session.flush()
    for start in range(0, len(ids), 1000):
        rows = [
            {"campaign_id": campaign.id, "account_id": account_id, "status": "pending"}
            for account_id in ids[start : start + 1000]
        ]
        session.execute(insert(CampaignItem), rows)
    audit.record(
        session, actor, "campaign.created", "campaign", campaign.id, now,
        {"name": name, "accounts": len(ids), "channels": channels},
    )  # fmt: skip
    enqueue_after_commit(session, run_job(campaign.id, "start"))
    return campaign


def cancel_campaign(session: Session, campaign: Campaign, actor: audit.Actor, now: datetime) -> int:
    """Stop a campaign: items not yet sent are cancelled (links already sent stay).
    Returns how many items were cancelled; a finished campaign changes nothing."""
    if campaign.status in (CampaignStatus.completed, CampaignStatus.cancelled):
        return 0
    result = session.execute(
        update(CampaignItem)
        .where(CampaignItem.campaign_id == campaign.id, CampaignItem.status == "pending")
        .values(status=ItemStatus.cancelled.value, updated_at=now)
    )
    campaign.status = CampaignStatus.cancelled.value
    campaign.finished_at = now
    cancelled = result.rowcount or 0  # type: ignore[attr-defined]
    audit.record(
        session, actor, "campaign.cancelled", "campaign", campaign.id, now,
        {"items_cancelled": cancelled},
    )  # fmt: skip
    session.flush()
    return cancelled


def resume_campaign(
    session: Session, campaign: Campaign, actor: audit.Actor, now: datetime
) -> bool:
    """Enqueue the job again (after commit) for a campaign whose job was lost; harmless
    when one is still running. False when the campaign has ended."""
    if campaign.status in (CampaignStatus.completed, CampaignStatus.cancelled):
        return False
    audit.record(session, actor, "campaign.resumed", "campaign", campaign.id, now)
    enqueue_after_commit(session, run_job(campaign.id, "resume", int(now.timestamp() * 1000)))
    return True


def progress(session: Session, campaign_ids: list[int]) -> dict[int, dict[str, int]]:
    """Items per status for each campaign (every status present, zeros included)."""
    counts: dict[int, dict[str, int]] = {cid: dict.fromkeys(ItemStatus, 0) for cid in campaign_ids}
    if campaign_ids:
        rows = session.execute(
            select(CampaignItem.campaign_id, CampaignItem.status, func.count())
            .where(CampaignItem.campaign_id.in_(campaign_ids))
            .group_by(CampaignItem.campaign_id, CampaignItem.status)
        )
        for campaign_id, status, count in rows:
            counts[campaign_id][ItemStatus(status)] = count
    return {cid: {str(k): v for k, v in c.items()} for cid, c in counts.items()}


def delivery(session: Session, campaign_id: int) -> dict[str, dict[str, int]]:
    """The campaign's messages per channel and status (the first send of each link)."""
    prefix = literal("link-") + cast(CampaignItem.link_id, String) + literal("-0-")
    rows = session.execute(
        select(Message.channel, Message.status, func.count())
        .select_from(CampaignItem)
        .join(
            Message,
            or_(
                Message.dedupe_key == prefix + literal("sms"),
                Message.dedupe_key == prefix + literal("email"),
            ),
        )
        .where(CampaignItem.campaign_id == campaign_id, CampaignItem.link_id.is_not(None))
        .group_by(Message.channel, Message.status)
    )
    out: dict[str, dict[str, int]] = {}
    for channel, status, count in rows:
        out.setdefault(channel, {})[status] = count
    return out


# --- reading the forms --------------------------------------------------------------------


def _upload_text(errors: Errors) -> str | None:
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        errors.add("file", "Choose a CSV file to upload.")
        return None
    try:
        return upload.read().decode("utf-8-sig")
    except UnicodeDecodeError:
        errors.add("file", "The file must be UTF-8 text (save it as CSV UTF-8).")
        return None


def _good_external_ids(text: str, result: accounts.ImportResult) -> list[str]:
    """The account numbers of the rows that were imported, in file order."""
    bad_lines = {e["row"] for e in result.errors}
    found: list[str] = []
    for line, row in accounts._records(text):
        external_id = (row.get("external_id") or "").strip()
        if line not in bad_lines and external_id:
            found.append(external_id)
    return list(dict.fromkeys(found))


def _campaign_form(session: Session) -> tuple[dict[str, Any], dict[str, Any], Errors]:
    """(form values as typed, clean values, errors) of the Start campaign form."""
    form = request.form
    typed = {
        "name": form.get("name", ""),
        "accounts": form.get("accounts", ""),
        "channels": [c for c in form.getlist("channels") if c in CHANNELS],
        "expires_in_hours": form.get("expires_in_hours", "").strip(),
    }
    errors = Errors()
    clean: dict[str, Any] = {}
    try:
        clean["name"] = validation.text(typed["name"], max_length=200)
    except FieldError as exc:
        errors.add("name", f"Name {exc}.")
    numbers = list(dict.fromkeys(n for n in re.split(r"[\s,;]+", typed["accounts"]) if n))
    if not numbers:
        errors.add("accounts", "List at least one account number.")
    elif len(numbers) > MAX_ACCOUNTS:
        errors.add("accounts", f"At most {MAX_ACCOUNTS:,} accounts per campaign.")
    elif any(len(n) > 64 or not n.isprintable() for n in numbers):
        errors.add("accounts", "Account numbers are at most 64 printable characters.")
    else:
        found: dict[str, int] = {}
        for start in range(0, len(numbers), 1000):
            chunk = numbers[start : start + 1000]
            found.update(
                session.execute(
                    select(Account.external_id, Account.id).where(Account.external_id.in_(chunk))
                ).all()
            )
        unknown = [n for n in numbers if n not in found]
        if unknown:
            shown = ", ".join(unknown[:10]) + (
                f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            )
            errors.add("accounts", f"No account has the number {shown}.")
        clean["account_ids"] = [found[n] for n in numbers if n in found]
    if not typed["channels"]:
        errors.add("channels", "Choose SMS, Email or both.")
    clean["channels"] = typed["channels"]
    clean["expires_in_hours"] = None
    if typed["expires_in_hours"]:
        raw = typed["expires_in_hours"]
        if not raw.isdigit() or not 1 <= int(raw) <= 24 * 90:
            errors.add("expires_in_hours", f"Enter whole hours from 1 to {24 * 90}.")
        else:
            clean["expires_in_hours"] = int(raw)
    return typed, clean, errors


def _index_page(status: int = 200, **context: Any) -> tuple[str, int]:
    session = db_session()
    campaigns = list(
        session.scalars(select(Campaign).order_by(Campaign.id.desc()).limit(LIST_SIZE))
    )
    context.setdefault("typed", {"name": "", "accounts": "", "channels": ["sms", "email"],
                                 "expires_in_hours": ""})  # fmt: skip
    context.setdefault("errors", {})
    context.setdefault("import_errors", {})
    return render_template(
        "console/campaigns.html",
        campaigns=campaigns,
        progress=progress(session, [c.id for c in campaigns]),
        channels=CHANNELS,
        max_accounts=MAX_ACCOUNTS,
        **context,
    ), status


def _load(campaign_id: int) -> Campaign:
    return load_or_404(db_session(), Campaign, campaign_id, "campaign")


# --- pages --------------------------------------------------------------------------------


@bp.get("/campaigns")
@require_console()
def index() -> tuple[str, int]:
    return _index_page()


@bp.post("/campaigns/import")
@require_console()
def import_accounts() -> tuple[str, int]:
    errors = Errors()
    text = _upload_text(errors)
    if text is None:
        return _index_page(400, import_errors=errors.by_field)
    session = db_session()
    config = current_app.extensions["paylink.config"]
    try:
        result = accounts.import_csv(session, text, g.actor, utcnow(), ssn_key=config.ssn_hash_key)
        session.commit()
    except accounts.BadCsv as exc:
        session.rollback()
        return _index_page(400, import_errors={"file": [f"The file cannot be imported: {exc}."]})
    except IntegrityError:
        session.rollback()
        abort(
            409, "Another import changed the same accounts at the same time; upload the file again."
        )
    imported = _good_external_ids(text, result)
    typed = {
        "name": f"Import {utcnow():%Y-%m-%d %H:%M}",
        "accounts": "\n".join(imported),
        "channels": ["sms", "email"],
        "expires_in_hours": "",
    }
    return _index_page(result=result, typed=typed, imported=len(imported))


@bp.post("/campaigns")
@require_console()
def create() -> Response | tuple[str, int]:
    session = db_session()
    typed, clean, errors = _campaign_form(session)
    if errors:
        session.rollback()
        return _index_page(400, typed=typed, errors=errors.by_field)
    campaign = create_campaign(
        session, name=clean["name"], account_ids=clean["account_ids"],
        channels=clean["channels"], expires_in_hours=clean["expires_in_hours"], actor=g.actor,
        agent_id=g.agent.id, now=utcnow(),
    )  # fmt: skip
    session.commit()
    flash(f"Campaign started: {campaign.total} account(s). Links go out in the background.", "info")
    return redirect(url_for("campaigns.detail", campaign_id=campaign.id))


@bp.get("/campaigns/<int:campaign_id>")
@require_console()
def detail(campaign_id: int) -> str:
    session = db_session()
    campaign = _load(campaign_id)
    counts = progress(session, [campaign.id])[campaign.id]
    items = session.execute(
        select(CampaignItem, Account.external_id, Account.name)
        .join(Account, Account.id == CampaignItem.account_id)
        .where(CampaignItem.campaign_id == campaign.id)
        .order_by(CampaignItem.id)
        .limit(ITEMS_SHOWN)
    ).all()
    return render_template(
        "console/campaign.html",
        campaign=campaign,
        counts=counts,
        done=campaign.total - counts["pending"],
        delivery=delivery(session, campaign.id),
        items=items,
        items_shown=ITEMS_SHOWN,
        channels=CHANNELS,
    )


@bp.post("/campaigns/<int:campaign_id>/cancel")
@require_console()
def cancel(campaign_id: int) -> Response:
    session = db_session()
    campaign = _load(campaign_id)
    if campaign.status in (CampaignStatus.completed, CampaignStatus.cancelled):
        abort(409, f"This campaign is {campaign.status}: there is nothing left to do.")
    cancelled = cancel_campaign(session, campaign, g.actor, utcnow())
    session.commit()
    flash(f"Campaign cancelled; {cancelled} account(s) will not get a link.", "info")
    return redirect(url_for("campaigns.detail", campaign_id=campaign.id))


@bp.post("/campaigns/<int:campaign_id>/resume")
@require_console()
def resume(campaign_id: int) -> Response:
    session = db_session()
    campaign = _load(campaign_id)
    if not resume_campaign(session, campaign, g.actor, utcnow()):
        abort(409, f"This campaign is {campaign.status}: there is nothing left to do.")
    session.commit()
    flash("The campaign's job was started again; accounts already sent are not sent twice.", "info")
    return redirect(url_for("campaigns.detail", campaign_id=campaign.id))
