"""Configuration: bad values stop the start with the variable's name; production is strict."""

from __future__ import annotations

import pytest

from ledgerx.domain.auth.keys import generate_pem
from ledgerx.settings import Settings, SettingsError


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"ACCESS_TOKEN_TTL": "soon"}, "ACCESS_TOKEN_TTL"),
        ({"REFRESH_TOKEN_TTL": "0"}, "REFRESH_TOKEN_TTL"),
        ({"LEDGERX_ENV": "staging"}, "LEDGERX_ENV"),
        ({"SCHEDULER_ENABLED": "maybe"}, "SCHEDULER_ENABLED"),
        ({"CORS_ORIGINS": "app.example.com"}, "CORS_ORIGINS"),
        ({"JWT_PRIVATE_KEYS": "not a pem"}, "JWT_PRIVATE_KEYS"),
        ({"STRIPE_API_BASE": "ftp://x"}, "STRIPE_API_BASE"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env(env)


def test_defaults_and_parsing() -> None:
    s = Settings.from_env(
        {
            "ACCESS_TOKEN_TTL": "10m",
            "REFRESH_TOKEN_TTL": "7d",
            "CORS_ORIGINS": "https://a.example.com, https://b.example.com",
            "DATABASE_URL": "postgresql://u@/db?host=/tmp/sock",
            "STRIPE_WEBHOOK_SECRET": "whsec_a,whsec_b",
        }
    )
    assert s.access_token_ttl == 600
    assert s.refresh_token_ttl == 7 * 86400
    assert s.cors_origins == ("https://a.example.com", "https://b.example.com")
    assert s.stripe_webhook_secrets == ("whsec_a", "whsec_b")
    assert s.env == "development"
    assert s.graphql_introspection is True


def test_production_refuses_dev_keys_and_embedded_servers() -> None:
    base = {"LEDGERX_ENV": "production"}
    with pytest.raises(SettingsError, match="DATABASE_URL"):
        Settings.from_env(base)
    with pytest.raises(SettingsError, match="REDIS_URL"):
        Settings.from_env({**base, "DATABASE_URL": "postgresql://x/db"})
    with pytest.raises(SettingsError, match="JWT_PRIVATE_KEYS"):
        Settings.from_env({**base, "DATABASE_URL": "postgresql://x/db", "REDIS_URL": "redis://x"})
    s = Settings.from_env(
        {
            **base,
            "DATABASE_URL": "postgresql://x/db",
            "REDIS_URL": "redis://x",
            "JWT_PRIVATE_KEYS": generate_pem(),
        }
    )
    assert s.production
    assert s.graphql_introspection is False


def test_several_keys_for_rotation() -> None:
    s = Settings.from_env({"JWT_PRIVATE_KEYS": generate_pem() + "\n" + generate_pem()})
    assert len(s.jwt_private_keys) == 2
