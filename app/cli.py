"""Flask CLI commands: ``flask --app app <command>``."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import AppGroup, with_appcontext
from sqlalchemy import select

from app import accounts, agents, audit, migrate
from app.clock import parse_instant, utcnow
from app.db import get_by_id
from app.models import Agent, ApiKey, Role
from app.security import generate_password

DEMO_EMAIL = "demo@paylink.test"
DEMO_ACCOUNTS = (
    {"external_id": "DEMO-1001", "name": "Alex Rivera", "phone": "+12025550143",
     "email": "alex.rivera@example.com", "timezone": "America/New_York",
     "balance_cents": 125_000, "ssn": "123-45-6789", "zip": "20001"},
    {"external_id": "DEMO-1002", "name": "Jordan Lee", "phone": "+13125550178",
     "email": "jordan.lee@example.com", "timezone": "America/Chicago",
     "balance_cents": 48_250, "date_of_birth": "1985-04-12", "zip": "60601"},
    {"external_id": "DEMO-1003", "name": "Sam Patel", "phone": "+14155550199",
     "email": "sam.patel@example.com", "timezone": "America/Los_Angeles",
     "balance_cents": 9_999, "zip": "94103"},
)  # fmt: skip


def _db():
    return current_app.extensions["paylink.db"]


def _config():
    return current_app.extensions["paylink.config"]


def register(app: Flask) -> None:
    for command in (db_group, create_agent, seed_demo, sweep, import_accounts, worker, scheduler,
                    revoke_api_key):  # fmt: skip
        app.cli.add_command(command)
    app.cli.add_command(agreements_group)


@click.group("db", cls=AppGroup, help="Database schema (Alembic migrations).")
def db_group() -> None:
    pass


@db_group.command("upgrade")
@click.argument("revision", default="head")
def db_upgrade(revision: str) -> None:
    """Create or migrate the schema up to REVISION (default: the newest)."""
    migrate.upgrade(_config().database_url, revision)
    click.echo(f"database at {revision}")


@db_group.command("downgrade")
@click.argument("revision")
def db_downgrade(revision: str) -> None:
    """Migrate the schema down to REVISION."""
    migrate.downgrade(_config().database_url, revision)
    click.echo(f"database at {revision}")


@click.group("agreements", cls=AppGroup, help="Signed agreements and their audit trails.")
def agreements_group() -> None:
    pass


@agreements_group.command("verify")
@click.argument("agreement_id", type=int)
def agreements_verify(agreement_id: int) -> None:
    """Recompute agreement AGREEMENT_ID's audit trail hash chain and its stored PDF's
    SHA-256; print OK or what is wrong. Exit status 0 when everything checks, else 1."""
    from signing.document import verify_agreement
    from signing.models import Agreement
    from signing.storage import store_for

    with _db().transaction() as session:
        agreement = get_by_id(session, Agreement, agreement_id)
        if agreement is None:
            click.echo(f"agreement {agreement_id}: no such agreement", err=True)
            sys.exit(1)
        result = verify_agreement(session, agreement, store_for(_config(), session))
    click.echo(f"agreement {agreement_id} (offer {agreement.offer_id})")
    for check in result.checks:
        click.echo(f"{check.name}: {'ok' if check.ok else 'FAILED'}: {check.detail}")
    if not result.ok:
        click.echo("FAILED")
        sys.exit(1)
    click.echo("OK")


@click.command("create-agent")
@with_appcontext
@click.argument("email")
@click.option(
    "--role", type=click.Choice([r.value for r in Role]), default="agent", show_default=True
)
@click.option("--password", help="The console password; a random one is printed when omitted.")
@click.option("--name", default="", help="The agent's display name.")
def create_agent(email: str, role: str, password: str | None, name: str) -> None:
    """Create an agent and print a new API key on the last line."""
    shown_password = password is None
    password = password or generate_password()
    now = utcnow()
    actor = audit.Actor.system("cli")
    try:
        with _db().transaction() as session:
            agent = agents.create_agent(session, email, Role(role), password, actor, now, name=name)
            issued = agents.issue_api_key(session, agent, "created by create-agent", actor, now)
    except agents.AgentExists:
        raise click.ClickException(f"an agent with email {email!r} already exists") from None
    except agents.WeakPassword as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {role} {agent.email} (id {agent.id})")
    if shown_password:
        click.echo(f"password: {password}")
    click.echo(issued.key)


@click.command("revoke-api-key")
@with_appcontext
@click.argument("prefix")
def revoke_api_key(prefix: str) -> None:
    """Revoke the API key whose prefix (as listed by the API) is PREFIX."""
    with _db().transaction() as session:
        keys = list(session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)))
        if len(keys) != 1:
            raise click.ClickException(f"{len(keys)} keys have prefix {prefix!r}; need exactly one")
        agents.revoke_api_key(session, keys[0], audit.Actor.system("cli"), utcnow())
    click.echo(f"revoked key {prefix}")


@click.command("seed-demo")
@with_appcontext
def seed_demo() -> None:
    """A demo admin agent (new password and API key each run), a few accounts, and a fresh
    payment link and payment-plan offer to try; prints them."""
    now = utcnow()
    actor = audit.Actor.system("seed-demo")
    cfg = _config()
    password = generate_password()
    with _db().transaction() as session:
        agent = session.scalar(select(Agent).where(Agent.email == DEMO_EMAIL))
        if agent is None:
            agent = agents.create_agent(
                session, DEMO_EMAIL, Role.admin, password, actor, now, name="Demo Agent"
            )
        else:
            from app.security import hash_password

            agent.password_hash = hash_password(password)
            agent.active = True
            for old in session.scalars(select(ApiKey).where(ApiKey.agent_id == agent.id)):
                agents.revoke_api_key(session, old, actor, now)
        issued = agents.issue_api_key(session, agent, "demo", actor, now)
        created = 0
        for data in DEMO_ACCOUNTS:
            if accounts.find_by_external_id(session, data["external_id"]) is None:
                values, errors = accounts.clean_account(
                    data, ssn_key=cfg.ssn_hash_key, today=now.date()
                )
                if errors:  # pragma: no cover - the demo data is fixed
                    raise click.ClickException(str(errors.by_field))
                accounts.create_account(session, values, actor, now)
                created += 1
        link_url, offer_url = _demo_link_and_offer(session, actor, agent.id, now)
    click.echo(f"demo accounts: {created} created, {len(DEMO_ACCOUNTS) - created} already there")
    click.echo(f"console: {cfg.base_url}/console/login")
    click.echo(f"email: {DEMO_EMAIL}")
    click.echo(f"password: {password}")
    click.echo(f"api key: {issued.key}")
    click.echo(f"demo link: {link_url}")
    click.echo(f"demo offer: {offer_url}")


def _demo_link_and_offer(session, actor: audit.Actor, agent_id: int, now):
    """A new payment link for the first demo account and a plan offer for the second."""
    from datetime import timedelta

    from links import service as link_service
    from links.web import link_tokens, message_env
    from offers import plan_math
    from offers import service as offer_service
    from offers.web import offer_tokens

    first = accounts.find_by_external_id(session, DEMO_ACCOUNTS[0]["external_id"])
    second = accounts.find_by_external_id(session, DEMO_ACCOUNTS[1]["external_id"])
    env = message_env()
    link = link_service.create_link(
        session, first, amount_cents=None, channels=None, expires_in_hours=None, actor=actor,
        agent_id=agent_id, now=now, env=env, tokens=link_tokens(),
    )  # fmt: skip
    today = plan_math.local_today(now, second.timezone or "America/New_York")
    offer, offer_url, _messages = offer_service.create_offer(
        session,
        offer_service.OfferRequest(
            account=second, kind="plan", total_cents=second.balance_cents, installment_count=3,
            frequency="monthly", first_due_date=today + timedelta(days=7),
            expires_at=now + timedelta(days=7), channels=link_service.available_channels(second),
            reminder_offsets=["72h", "24h", "2h"],
        ),
        percent_off=None, actor=actor, agent_id=agent_id, now=now, env=env, tokens=offer_tokens(),
    )  # fmt: skip
    del offer
    return link.url, offer_url


@click.command("sweep")
@with_appcontext
@click.option("--at", "at", help="Run as of this ISO 8601 instant instead of now.")
def sweep(at: str | None) -> None:
    """One pass of every periodic duty; prints what each did as counts."""
    from workers.sweep import run_sweep

    try:
        now = parse_instant(at) if at else utcnow()
    except ValueError:
        raise click.BadParameter(f"{at!r} is not an ISO 8601 instant", param_hint="--at") from None
    results = run_sweep(now)
    click.echo(f"sweep at {now.isoformat().replace('+00:00', 'Z')}")
    if not results:
        click.echo("no periodic duties are defined")
    for name, counts in results.items():
        parts = (
            " ".join(f"{key}={value}" for key, value in sorted(counts.items())) or "nothing to do"
        )
        click.echo(f"{name}: {parts}")


@click.command("import-accounts")
@with_appcontext
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_accounts(path: Path) -> None:
    """Create or update accounts from a CSV file (header row with the API's field names).

    Good rows are kept; bad rows are listed and the exit status is 1.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise click.ClickException("the file must be UTF-8 text") from None
    try:
        with _db().transaction() as session:
            result = accounts.import_csv(
                session, text, audit.Actor.system("import-accounts"), utcnow(),
                ssn_key=_config().ssn_hash_key,
            )  # fmt: skip
    except accounts.BadCsv as exc:
        raise click.ClickException(str(exc)) from None
    for error in result.errors:
        click.echo(f"line {error['row']}: {error['field'] or 'row'} {error['message']}", err=True)
    click.echo(
        f"created {result.created}, updated {result.updated}, rejected {result.rejected} rows"
    )
    if result.errors:
        sys.exit(1)


@click.command("worker")
@with_appcontext
@click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
def worker(burst: bool) -> None:
    """Run an RQ worker on every Paylink queue, with RQ's scheduler enabled."""
    from workers.worker import run_worker

    run_worker(current_app._get_current_object(), burst=burst)  # type: ignore[attr-defined]


@click.command("scheduler")
@with_appcontext
def scheduler() -> None:
    """Enqueue the periodic duties, one job per duty and time slot (safe to run several)."""
    from workers.scheduler import run_forever

    stop = threading.Event()

    def _stop(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    run_forever(
        current_app.extensions["paylink.queue"], utcnow, _config().scheduler_tick_seconds, stop
    )
