"""Paylink: signed payment links and payment-plan offers, sent by SMS and email.

``create_app`` wires the web app in small named steps. Nothing connects at import time:
the database engine connects on first use, and Redis (embedded when none is configured)
is found or started on the first request or job that needs it.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask, Response, redirect, url_for
from flask_wtf.csrf import CSRFProtect

from app import config as config_module

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
csrf = CSRFProtect()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the Paylink app; ``config`` overrides settings from the environment."""
    cfg = config_module.load_config(overrides=config)
    app = Flask(
        "app",
        root_path=str(ROOT / "app"),
        instance_path=cfg.instance_path,
        template_folder=str(ROOT / "templates"),
        static_folder="static",
    )
    _configure(app, cfg)
    _init_logging(cfg)
    _init_database(app, cfg)
    _init_redis_and_queue(app, cfg)
    _init_security(app, cfg)
    _init_errors(app)
    _register_blueprints(app)
    _register_cli(app)
    return app


def _configure(app: Flask, cfg: config_module.Config) -> None:
    from app.sessions import KeptSessionInterface

    Path(cfg.instance_path).mkdir(parents=True, exist_ok=True)
    app.session_interface = KeptSessionInterface()
    app.extensions["paylink.config"] = cfg
    app.config.update(
        ENV_NAME=cfg.env,
        TESTING=cfg.env == "test",
        SECRET_KEY=cfg.secret_keys[0],
        SECRET_KEY_FALLBACKS=list(cfg.secret_keys[1:]),
        MAX_CONTENT_LENGTH=cfg.max_body_bytes,
        SESSION_COOKIE_NAME="paylink_session",
        SESSION_COOKIE_SECURE=cfg.session_cookie_secure,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=8),
        WTF_CSRF_TIME_LIMIT=8 * 3600,
        # Pages send Referrer-Policy: no-referrer (tokens live in URLs), so browsers send
        # no Referer for Flask-WTF's HTTPS check; the token and SameSite=Lax still hold.
        WTF_CSRF_SSL_STRICT=False,
        JSON_SORT_KEYS=False,
    )


def _init_logging(cfg: config_module.Config) -> None:
    from app import logs

    logs.configure(cfg.log_level, cfg.log_format)


def _init_database(app: Flask, cfg: config_module.Config) -> None:
    from app import db

    db.load_models()
    app.extensions["paylink.db"] = db.Database(cfg.database_url)
    app.teardown_appcontext(db.close_session)


def _init_redis_and_queue(app: Flask, cfg: config_module.Config) -> None:
    from app import embedded_redis, queue

    resolved: list[str] = []

    def redis_url() -> str:
        # Found or started on first use, then remembered for the life of the app.
        if not resolved:
            resolved.append(cfg.redis_url or embedded_redis.ensure_embedded(cfg.instance_path))
        return resolved[0]

    app.extensions["paylink.redis_url"] = redis_url
    job_queue = queue.JobQueue(redis_url)
    app.extensions["paylink.queue"] = job_queue
    queue.install(app.extensions["paylink.db"].Session, job_queue)


def _init_security(app: Flask, cfg: config_module.Config) -> None:
    from app import embedded_redis, ratelimit, security

    csrf.init_app(app)
    # The limiter needs the address now; the embedded server's socket path is fixed.
    static_url = cfg.redis_url or embedded_redis.RedisServer(Path(cfg.instance_path) / "redis").url
    ratelimit.init_app(app, static_url, cfg.ratelimit_enabled)

    @app.before_request
    def _ensure_redis() -> None:
        try:
            app.extensions["paylink.redis_url"]()
        except (OSError, RuntimeError):
            # Pages that need no queue keep working; /readyz reports the outage.
            log.exception("redis is not available")

    # Frame denial and the Content-Security-Policy on every page; a page may set its own.
    headers = app.extensions["paylink.security_headers"] = security.page_headers(
        production=cfg.is_production
    )

    @app.after_request
    def _headers(response: Response) -> Response:
        security.add_missing(response.headers, headers)
        return response


def _init_errors(app: Flask) -> None:
    from app import errors

    errors.register(app)


def _register_blueprints(app: Flask) -> None:
    from app import api, console, ops
    from app.messaging import api as messages_api
    from app.messaging import pages as messaging_pages
    from app.messaging import webhooks

    ops.init_app(app)
    app.register_blueprint(ops.bp)
    app.register_blueprint(console.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(messages_api.bp)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(messaging_pages.bp)
    # Bearer-token API and signed provider webhooks: no cookies, so no CSRF.
    for blueprint in (api.bp, messages_api.bp, webhooks.bp):
        csrf.exempt(blueprint)
    for endpoint in messaging_pages.CSRF_EXEMPT:
        csrf.exempt(f"app.messaging.pages.{endpoint}")
    _register_features(app)


def _register_features(app: Flask) -> None:
    """The feature packages' blueprints (imported here so app/ never imports a feature)."""
    from app import console_admin
    from links import api as links_api
    from links import campaigns, lookup_views, open_lane
    from links import console as link_console
    from links import views as link_views
    from offers import api as offers_api
    from offers import console as offer_console
    from offers import dashboard, plans_api
    from signing import api as agreements_api
    from signing import console as agreement_console
    from signing import method_views as plan_method_views
    from signing import storage as document_storage
    from signing import views as offer_views

    app.register_blueprint(links_api.bp)
    csrf.exempt(links_api.bp)
    app.register_blueprint(offers_api.bp)
    csrf.exempt(offers_api.bp)
    app.register_blueprint(link_views.bp)
    open_lane.install(app)  # the commonest link opens, answered ahead of Flask
    app.register_blueprint(lookup_views.bp)
    app.register_blueprint(offer_views.bp)
    app.register_blueprint(plan_method_views.bp)
    app.register_blueprint(plans_api.bp)
    csrf.exempt(plans_api.bp)
    app.register_blueprint(agreements_api.bp)
    csrf.exempt(agreements_api.bp)
    # The console's pages, each feature's own (CSRF-protected forms).
    for console_bp in (
        link_console.bp, offer_console.bp, agreement_console.bp, campaigns.bp, dashboard.bp,
        console_admin.bp,
    ):  # fmt: skip
        app.register_blueprint(console_bp)
    # Reads a stored document by key: the dev outbox serves email attachments with it.
    app.extensions["paylink.load_document"] = document_storage.loader(
        app.extensions["paylink.config"], app.extensions["paylink.db"]
    )

    @app.get("/")
    def index() -> Response:
        return redirect(url_for("console.accounts"))


def _register_cli(app: Flask) -> None:
    from app import cli

    cli.register(app)
