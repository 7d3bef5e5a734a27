"""Paylink settings, read once from ``PAYLINK_*`` environment variables and validated.

Every process (web, worker, scheduler, CLI) builds its :class:`Config` through
:func:`load_config`; nothing else reads the environment.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

log = logging.getLogger(__name__)

ENVIRONMENTS = ("development", "test", "production")
SMS_BACKENDS = ("outbox", "twilio")
EMAIL_BACKENDS = ("outbox", "sendgrid")
PAYMENT_GATEWAYS = ("sandbox",)
DOCUMENT_STORES = ("database", "files")
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}
MIN_SECRET_LENGTH = 32


class ConfigError(click.ClickException):
    """The configuration cannot be used; ``problems`` lists every reason.

    A ClickException, so ``flask --app app ...`` prints the reasons without a traceback.
    """

    exit_code = 2

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid Paylink configuration:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class Config:
    env: str = "development"
    instance_path: str = "instance"
    database_url: str = ""
    redis_url: str = ""  # empty: an embedded Redis is started under instance/
    # Newest first, as in PAYLINK_SECRET_KEYS; the first one signs.
    secret_keys: tuple[str, ...] = ()
    ssn_hash_key: str = ""
    base_url: str = "http://localhost:5000"
    sms_backend: str = "outbox"
    email_backend: str = "outbox"
    payment_gateway: str = "sandbox"
    # Where signed agreement PDFs are kept: "database" (shared by every machine) or
    # "files" (under <instance>/documents/, for a single machine or a shared volume).
    document_store: str = "database"
    ratelimit_enabled: bool = True
    login_rate_limit: str = "10 per minute"
    api_rate_limit: str = "600 per minute"
    session_cookie_secure: bool = True
    max_body_bytes: int = 5 * 1024 * 1024
    log_level: str = "INFO"
    log_format: str = "json"
    scheduler_tick_seconds: float = 5.0
    ach_settle_seconds: int = 300  # sandbox: how long a bank debit stays pending
    sms_per_second: float = 10.0  # per sender (from number or messaging service)
    email_per_second: float = 500.0
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_from_number: str = ""
    twilio_messaging_service_sid: str = ""
    twilio_api_base: str = ""
    sendgrid_api_key: str = ""
    sendgrid_api_host: str = "https://api.sendgrid.com"
    sendgrid_from_email: str = ""
    sendgrid_webhook_public_key: str = ""
    # Secrets that were generated for development rather than configured.
    generated_secrets: tuple[str, ...] = field(default=(), compare=False)

    @property
    def is_production(self) -> bool:
        return self.env == "production"

    def public(self) -> dict[str, Any]:
        """The settings without secret values, for logs and diagnostics."""
        hidden = {"secret_keys", "ssn_hash_key", "twilio_auth_token", "sendgrid_api_key"}
        return {k: ("***" if k in hidden and v else v) for k, v in asdict(self).items()}


# env var suffix -> (field name, parser)
def _str(value: str) -> str:
    return value.strip()


def _bool(value: str) -> bool:
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _int(value: str) -> int:
    return int(value.strip())


def _float(value: str) -> float:
    return float(value.strip())


def _keys(value: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in value.split(",") if k.strip())


PARSERS = {
    "secret_keys": _keys,
    "ratelimit_enabled": _bool,
    "session_cookie_secure": _bool,
    "max_body_bytes": _int,
    "scheduler_tick_seconds": _float,
    "sms_per_second": _float,
    "ach_settle_seconds": _int,
    "email_per_second": _float,
}


def env_name(field_name: str) -> str:
    return "PAYLINK_" + field_name.upper()


def load_config(
    environ: dict[str, str] | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Build and validate the configuration from the environment plus ``overrides``."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in fields(Config):
        if f.name == "generated_secrets":
            continue
        raw = environ.get(env_name(f.name))
        if raw is None:
            continue
        try:
            values[f.name] = PARSERS.get(f.name, _str)(raw)
        except ValueError as exc:
            problems.append(f"{env_name(f.name)}: {exc}")
    if "base_url" not in values and environ.get("PORT"):
        values["base_url"] = f"http://localhost:{environ['PORT'].strip()}"
    values.update(overrides or {})
    config = Config(**values)
    config = replace(config, instance_path=str(Path(config.instance_path).resolve()))
    if not config.database_url:
        db_file = Path(config.instance_path) / "paylink.sqlite3"
        config = replace(config, database_url=f"sqlite:///{db_file}")
    config = _fill_dev_secrets(config)
    try:
        validate(config)
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        # What could not be read is reported together with everything else that is wrong.
        raise ConfigError(problems)
    return config


def validate(config: Config) -> None:
    problems: list[str] = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    check(config.env in ENVIRONMENTS, f"PAYLINK_ENV must be one of {', '.join(ENVIRONMENTS)}")
    check(
        config.sms_backend in SMS_BACKENDS,
        f"PAYLINK_SMS_BACKEND must be one of {', '.join(SMS_BACKENDS)}",
    )
    check(
        config.email_backend in EMAIL_BACKENDS,
        f"PAYLINK_EMAIL_BACKEND must be one of {', '.join(EMAIL_BACKENDS)}",
    )
    check(
        config.payment_gateway in PAYMENT_GATEWAYS,
        f"PAYLINK_PAYMENT_GATEWAY must be one of {', '.join(PAYMENT_GATEWAYS)}",
    )
    check(
        config.document_store in DOCUMENT_STORES,
        f"PAYLINK_DOCUMENT_STORE must be one of {', '.join(DOCUMENT_STORES)}",
    )
    base = urlsplit(config.base_url)
    check(
        base.scheme in ("http", "https") and bool(base.netloc) and not base.query,
        "PAYLINK_BASE_URL must be an absolute http(s) URL such as https://pay.example.com",
    )
    scheme = config.database_url.split(":", 1)[0]
    check(
        scheme.startswith(("sqlite", "postgresql")),
        "PAYLINK_DATABASE_URL must be a sqlite:/// or postgresql:// URL",
    )
    if config.redis_url:
        check(
            config.redis_url.split(":", 1)[0] in ("redis", "rediss", "unix"),
            "PAYLINK_REDIS_URL must be a redis://, rediss:// or unix:// URL",
        )
    if "secret_keys" not in config.generated_secrets:
        check(bool(config.secret_keys), "PAYLINK_SECRET_KEYS must name at least one key")
    check(config.max_body_bytes > 0, "PAYLINK_MAX_BODY_BYTES must be positive")
    check(config.scheduler_tick_seconds > 0, "PAYLINK_SCHEDULER_TICK_SECONDS must be positive")
    check(config.sms_per_second > 0, "PAYLINK_SMS_PER_SECOND must be positive")
    check(config.email_per_second > 0, "PAYLINK_EMAIL_PER_SECOND must be positive")
    check(
        config.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
        "PAYLINK_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR",
    )
    check(config.log_format in ("json", "text"), "PAYLINK_LOG_FORMAT must be json or text")
    if config.sms_backend == "twilio":
        check(
            bool(config.twilio_account_sid and config.twilio_auth_token),
            "the twilio SMS backend needs PAYLINK_TWILIO_ACCOUNT_SID and PAYLINK_TWILIO_AUTH_TOKEN",
        )
        check(
            bool(config.twilio_from_number or config.twilio_messaging_service_sid),
            "the twilio SMS backend needs PAYLINK_TWILIO_FROM_NUMBER or "
            "PAYLINK_TWILIO_MESSAGING_SERVICE_SID",
        )
    if config.email_backend == "sendgrid":
        check(
            bool(config.sendgrid_api_key and config.sendgrid_from_email),
            "the sendgrid email backend needs PAYLINK_SENDGRID_API_KEY and "
            "PAYLINK_SENDGRID_FROM_EMAIL",
        )
    if config.is_production:
        for name in config.generated_secrets:
            problems.append(f"{env_name(name)} must be set in production (no generated keys)")
        for key in config.secret_keys:
            if len(key) < MIN_SECRET_LENGTH:
                problems.append(
                    f"every PAYLINK_SECRET_KEYS entry must be at least {MIN_SECRET_LENGTH} "
                    "characters in production"
                )
                break
        if config.ssn_hash_key and len(config.ssn_hash_key) < MIN_SECRET_LENGTH:
            problems.append(f"PAYLINK_SSN_HASH_KEY must be at least {MIN_SECRET_LENGTH} characters")
        check(base.scheme == "https", "PAYLINK_BASE_URL must be https in production")
        check(
            bool(config.redis_url),
            "PAYLINK_REDIS_URL must be set in production (the embedded Redis is for development)",
        )
        check(
            config.sms_backend != "outbox" and config.email_backend != "outbox",
            "PAYLINK_SMS_BACKEND and PAYLINK_EMAIL_BACKEND must name real providers in "
            "production (the outbox backends send nothing)",
        )
        check(config.session_cookie_secure, "PAYLINK_SESSION_COOKIE_SECURE must stay on")
    if problems:
        raise ConfigError(problems)


def _fill_dev_secrets(config: Config) -> Config:
    """Outside production, generate missing secrets once and keep them under instance/."""
    missing = [
        name
        for name, value in (
            ("secret_keys", config.secret_keys),
            ("ssn_hash_key", config.ssn_hash_key),
        )
        if not value
    ]
    if not missing:
        return config
    if config.is_production:
        return replace(config, generated_secrets=tuple(missing))
    path = Path(config.instance_path) / "dev-secrets.json"
    stored: dict[str, Any] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    changed = False
    for name in missing:
        if name not in stored:
            stored[name] = secrets.token_urlsafe(32)
            changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(stored, fh)
    log.warning(
        "using development secrets from %s for %s; set them in production",
        path,
        ", ".join(env_name(n) for n in missing),
    )
    updates: dict[str, Any] = {"generated_secrets": tuple(missing)}
    if "secret_keys" in missing:
        updates["secret_keys"] = (stored["secret_keys"],)
    if "ssn_hash_key" in missing:
        updates["ssn_hash_key"] = stored["ssn_hash_key"]
    return replace(config, **updates)
