from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    return {"PAYLINK_INSTANCE_PATH": str(tmp_path / "instance"), **values}


def test_defaults_use_embedded_parts(tmp_path, caplog):
    cfg = load_config(env(tmp_path))
    assert cfg.database_url == f"sqlite:///{tmp_path / 'instance' / 'paylink.sqlite3'}"
    assert cfg.redis_url == ""
    assert (cfg.sms_backend, cfg.email_backend, cfg.payment_gateway) == (
        "outbox",
        "outbox",
        "sandbox",
    )
    assert cfg.ratelimit_enabled is True
    assert "development secrets" in caplog.text


def test_dev_secrets_are_generated_once_and_kept_private(tmp_path):
    first = load_config(env(tmp_path))
    second = load_config(env(tmp_path))
    assert first.secret_keys == second.secret_keys
    assert first.ssn_hash_key == second.ssn_hash_key
    assert len(first.secret_keys[0]) >= 32
    path = tmp_path / "instance" / "dev-secrets.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(json.loads(path.read_text())) == {"secret_keys", "ssn_hash_key"}


def test_secret_keys_are_a_comma_list_newest_first(tmp_path):
    cfg = load_config(
        env(tmp_path, PAYLINK_SECRET_KEYS="new-key, old-key", PAYLINK_SSN_HASH_KEY="s")
    )
    assert cfg.secret_keys == ("new-key", "old-key")
    assert cfg.generated_secrets == ()


def test_production_refuses_generated_or_weak_secrets(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(
            env(tmp_path, PAYLINK_ENV="production", PAYLINK_BASE_URL="https://pay.example.com")
        )
    assert any("PAYLINK_SECRET_KEYS must be set in production" in p for p in err.value.problems)
    assert any("PAYLINK_SSN_HASH_KEY must be set in production" in p for p in err.value.problems)
    assert not (tmp_path / "instance" / "dev-secrets.json").exists()
    with pytest.raises(ConfigError, match="at least 32"):
        load_config(
            env(tmp_path, PAYLINK_ENV="production", PAYLINK_BASE_URL="https://pay.example.com",
                PAYLINK_SECRET_KEYS="short", PAYLINK_SSN_HASH_KEY="x" * 40)
        )  # fmt: skip
    production = env(
        tmp_path, PAYLINK_ENV="production", PAYLINK_BASE_URL="https://pay.example.com",
        PAYLINK_SECRET_KEYS="k" * 40, PAYLINK_SSN_HASH_KEY="s" * 40,
        PAYLINK_DATABASE_URL="postgresql://db.internal/paylink",
        PAYLINK_REDIS_URL="redis://cache.internal:6379/0",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="outbox backends send nothing"):
        load_config(production)
    providers = {
        "PAYLINK_SMS_BACKEND": "twilio", "PAYLINK_TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
        "PAYLINK_TWILIO_AUTH_TOKEN": "t" * 32, "PAYLINK_TWILIO_FROM_NUMBER": "+15005550006",
        "PAYLINK_EMAIL_BACKEND": "sendgrid", "PAYLINK_SENDGRID_API_KEY": "SG.key",
        "PAYLINK_SENDGRID_FROM_EMAIL": "billing@example.com",
    }  # fmt: skip
    good = load_config({**production, **providers})
    assert good.is_production


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PAYLINK_SMS_BACKEND", "carrier-pigeon", "PAYLINK_SMS_BACKEND must be one of"),
        ("PAYLINK_EMAIL_BACKEND", "fax", "PAYLINK_EMAIL_BACKEND must be one of"),
        ("PAYLINK_RATELIMIT_ENABLED", "maybe", "expected true or false"),
        ("PAYLINK_BASE_URL", "pay.example.com", r"absolute http\(s\) URL"),
        ("PAYLINK_DATABASE_URL", "mysql://x/y", "sqlite:/// or postgresql://"),
        ("PAYLINK_REDIS_URL", "memcached://x", "redis://"),
        ("PAYLINK_MAX_BODY_BYTES", "lots", "invalid literal"),
    ],
)
def test_bad_values_are_named(tmp_path, name, value, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env(tmp_path, **{name: value}))


def test_provider_backends_need_their_credentials(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(env(tmp_path, PAYLINK_SMS_BACKEND="twilio", PAYLINK_EMAIL_BACKEND="sendgrid"))
    text = "\n".join(err.value.problems)
    assert "PAYLINK_TWILIO_ACCOUNT_SID" in text
    assert "PAYLINK_TWILIO_FROM_NUMBER" in text
    assert "PAYLINK_SENDGRID_API_KEY" in text


def test_port_sets_default_base_url(tmp_path):
    assert load_config({**env(tmp_path), "PORT": "8123"}).base_url == "http://localhost:8123"


def test_cli_reports_bad_config_without_traceback(tmp_path):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PAYLINK_")}
    environ.update(env(tmp_path, PAYLINK_ENV="production"))
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "sweep"],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "invalid Paylink configuration" in result.stderr
    assert "PAYLINK_SECRET_KEYS must be set in production" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreadable_and_invalid_values_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(env(tmp_path, PAYLINK_MAX_BODY_BYTES="lots", PAYLINK_SMS_BACKEND="fax"))
    text = "\n".join(err.value.problems)
    assert "PAYLINK_MAX_BODY_BYTES" in text
    assert "PAYLINK_SMS_BACKEND must be one of" in text


def test_production_needs_an_external_redis(tmp_path):
    with pytest.raises(ConfigError, match="PAYLINK_REDIS_URL must be set in production"):
        load_config(env(tmp_path, PAYLINK_ENV="production"))
