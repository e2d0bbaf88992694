"""Configuration from environment variables, validated once at start.

Every problem is reported with the variable's name so an operator knows what to fix.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    m = _DURATION.match(raw)
    if not m:
        raise SettingsError(f"{name}: expected seconds or a number with s/m/h/d (e.g. 900, 15m), got {raw!r}")
    value = int(m.group(1)) * _UNITS[m.group(2)]
    if value <= 0:
        raise SettingsError(f"{name}: must be positive, got {raw!r}")
    return value


def _duration_or_zero(env: Mapping[str, str], name: str, default: int) -> int:
    """Like `_duration`, but 0 (in any unit) is allowed: "no such period"."""
    raw = env.get(name)
    m = _DURATION.match(raw) if raw else None
    if m is not None and int(m.group(1)) == 0:
        return 0
    return _duration(env, name, default)


def _duration_list(env: Mapping[str, str], name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    """Comma-separated durations (e.g. `1h,6h,24h`); an empty list is allowed (`none`)."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    if raw.strip().lower() == "none":
        return ()
    return tuple(_duration({name: part}, name, 1) for part in raw.split(","))


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    v = raw.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: expected true or false, got {raw!r}")


def _list(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name) or ""
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def _token(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name) or None
    if raw is not None and (len(raw) < 16 or not raw.isascii() or not raw.isprintable() or " " in raw):
        raise SettingsError(f"{name}: expected at least 16 printable ASCII characters without spaces")
    return raw


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    raw = raw.strip()
    scheme = urlsplit(raw).scheme
    if scheme not in schemes:
        raise SettingsError(
            f"{name}: expected a URL starting with {' or '.join(s + '://' for s in schemes)}, got {raw!r}"
        )
    return raw


_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)


def _pem_keys(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name) or ""
    if not raw.strip():
        return ()
    raw = raw.replace("\\n", "\n")
    blocks = tuple(_PEM_BLOCK.findall(raw))
    if not blocks:
        raise SettingsError(f"{name}: expected one or more PEM private keys (the first signs, all verify)")
    return blocks


def _invoice_prefix(env: Mapping[str, str]) -> str:
    value = env.get("INVOICE_NUMBER_PREFIX") or "LX-"
    if not re.fullmatch(r"[A-Za-z0-9-]{1,16}", value):
        raise SettingsError(f"INVOICE_NUMBER_PREFIX: expected 1-16 letters, digits or dashes, got {value!r}")
    return value


def _tax_mode(env: Mapping[str, str]) -> Literal["none", "rates", "stripe"]:
    value = (env.get("TAX_MODE") or "none").strip().lower()
    if value == "rates":
        return "rates"
    if value == "stripe":
        return "stripe"
    if value != "none":
        raise SettingsError(f"TAX_MODE: expected none, rates or stripe, got {value!r}")
    return "none"


def _pooler(env: Mapping[str, str]) -> Literal["none", "pgbouncer"]:
    value = (env.get("DATABASE_POOLER") or "none").strip().lower()
    if value not in ("none", "pgbouncer"):
        raise SettingsError(f"DATABASE_POOLER: expected none or pgbouncer, got {value!r}")
    return "pgbouncer" if value == "pgbouncer" else "none"


def _country(env: Mapping[str, str], name: str) -> str | None:
    value = (env.get(name) or "").strip().upper()
    if value and not re.fullmatch(r"[A-Z]{2}", value):
        raise SettingsError(f"{name}: expected an ISO 3166-1 alpha-2 country code, got {value!r}")
    return value or None


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None = None
    # A streaming replica for lag-tolerant reads (analytics, the audit log); none: the primary serves them.
    database_replica_url: str | None = None
    # A transaction pooler between LedgerX and PostgreSQL (`pgbouncer`: no prepared-statement
    # caches, the app role set per transaction); migrations then need MIGRATION_DATABASE_URL
    # (PostgreSQL directly; `migrations_url`). docs/scaling.md "PgBouncer".
    database_pooler: Literal["none", "pgbouncer"] = "none"
    migration_database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path(".ledgerx")
    env: Literal["development", "production"] = "development"
    public_url: str | None = None
    jwt_private_keys: tuple[str, ...] = ()
    access_token_ttl: int = 15 * 60
    refresh_token_ttl: int = 30 * 86400
    cors_origins: tuple[str, ...] = ()
    smtp_url: str | None = None
    mail_from: str = "LedgerX <no-reply@localhost>"
    stripe_api_key: str | None = None
    stripe_webhook_secrets: tuple[str, ...] = ()
    stripe_api_base: str | None = None
    google_client_id: str | None = None
    google_client_secret: str | None = None
    google_issuer: str = "https://accounts.google.com"
    scheduler_enabled: bool = True
    worker_enabled: bool = True
    # Additions beyond DESIGN.md's fixed names.
    graphql_introspection: bool = True
    graphql_max_depth: int = 12
    graphql_max_tokens: int = 4000
    graphql_max_aliases: int = 30
    # Fields a document may expand to (fragments spread out, pages counted: schema/cost.py), and
    # the largest /graphql request body in bytes (413 beyond it).
    graphql_max_cost: int = 20_000
    graphql_max_body: int = 1024 * 1024
    # Bearer token for GET /metrics; unset: open in development, 404 in production.
    metrics_token: str | None = None
    db_app_role: str = "ledgerx_app"
    db_pool_size: int = 20
    redis_prefix: str = "lx:"
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 1
    login_limit_per_email: int = 5  # burst; refills one attempt per refill period
    login_limit_per_ip: int = 30
    login_limit_refill_seconds: int = 60
    log_level: str = "INFO"
    # Gateway limits until plans set them ([6/7]); projects may override (`projects.overrides`).
    rate_limit_burst: int = 120
    rate_limit_per_second: float = 20.0
    anonymous_rate_limit_burst: int = 60
    anonymous_rate_limit_per_second: float = 5.0
    # After rotateApiKey the previous secret keeps working this long (seconds; 0 = it dies at once).
    api_key_rotation_overlap: int = 24 * 3600
    # Invitations and the mail outbox (seconds unless noted).
    invite_ttl: int = 7 * 86400
    invite_resend_cooldown: int = 60
    # How long a mailed email-verification link works (seconds).
    email_verification_ttl: int = 48 * 3600
    smtp_timeout: float = 10.0
    mail_batch_size: int = 20
    mail_poll_interval: float = 2.0
    mail_retry_base: float = 30.0  # the first retry after a failed send; doubles per attempt
    mail_retry_max: float = 3600.0
    mail_max_attempts: int = 10
    # Payments ([6/7]): webhook signature tolerance, the dunning grace period after a failed
    # invoice (seconds), and the webhook processor's batch, retry and lease policy.
    stripe_webhook_tolerance: int = 300
    subscription_grace_period: int = 7 * 86400
    webhook_batch_size: int = 20
    webhook_poll_interval: float = 1.0
    webhook_retry_base: float = 5.0  # the first retry after a failed attempt; doubles per attempt
    webhook_retry_max: float = 3600.0
    webhook_max_attempts: int = 12
    webhook_lease_seconds: int = 120
    dunning_interval: float = 60.0
    # Origins Checkout's successUrl/cancelUrl may point to in production (CHECKOUT_REDIRECT_ORIGINS);
    # empty: the origin of LEDGERX_PUBLIC_URL plus CORS_ORIGINS (see `checkout_origins`).
    checkout_redirect_origins: tuple[str, ...] = ()
    # Usage metering: events older than the late window or further ahead than the future skew are
    # refused (seconds); bulk ingestion takes at most `usage_max_batch` events and body bytes.
    usage_late_window: int = 35 * 86400
    usage_future_skew: int = 300
    usage_max_batch: int = 10_000
    usage_max_body_bytes: int = 32 * 1024 * 1024
    # Bulk posting (postTransactions, POST /v1/transactions): operations per request.
    ledger_max_batch: int = 1_000
    # Live analytics subscriptions: at most one message per subscriber every `live_interval`
    # seconds; a snapshot is re-read every `live_refresh` seconds while nothing happens (rolling
    # windows) and sent only if it changed; access is re-checked every `live_recheck` seconds.
    live_interval: float = 0.25
    live_refresh: float = 5.0
    live_recheck: float = 30.0
    # How long an instance remembers a member's access to a project (domain/tenancy/access_cache.py):
    # changes made elsewhere take effect here within this many seconds; 0 turns the cache off.
    access_cache_ttl: float = 2.0
    # graphql-transport-ws keep-alive: the server pings every `ws_ping_interval` seconds (0: never)
    # and closes (4408) a connection that has not answered with a pong `ws_pong_timeout` later.
    ws_ping_interval: float = 15.0
    ws_pong_timeout: float = 10.0
    # Billing rules and their scheduler: the delays between attempts of a run that met
    # insufficient funds (seconds after the 1st, 2nd, … failure), the grace period after which such
    # a rule is paused, rules per scheduler transaction and workers, the lease, the poll interval.
    billing_retry_delays: tuple[int, ...] = (3600, 6 * 3600, 24 * 3600)
    billing_grace_period: int = 3 * 86400
    scheduler_batch_size: int = 200
    scheduler_concurrency: int = 2
    scheduler_lease_ttl: int = 15
    scheduler_poll_interval: float = 1.0
    test_clock_max_runs: int = 20_000
    # Outbound webhooks (DESIGN.md "Outbound webhooks"): the delays between attempts (seconds after
    # the 1st, 2nd, … failure; jittered), the per-attempt timeout, how long an endpoint may fail
    # before it is disabled, and whether URLs may reach private addresses (development only by default).
    outbound_webhook_retry_delays: tuple[int, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    outbound_webhook_timeout: float = 10.0
    outbound_webhook_disable_after: int = 5 * 86400
    outbound_webhook_allow_private: bool = True
    outbound_webhook_poll_interval: float = 0.25
    # Invoices (DESIGN.md "Invoices, taxes, credit notes, statements"): the number prefix, how taxes
    # are computed (none | rates | stripe), the seller printed on every document (SELLER_COUNTRY
    # also decides EU reverse charge), and how long a signed document link (pdfUrl) works.
    invoice_number_prefix: str = "LX-"
    tax_mode: Literal["none", "rates", "stripe"] = "none"
    seller_name: str = "LedgerX"
    seller_address: tuple[str, ...] = ()
    seller_country: str | None = None
    seller_tax_id: str | None = None
    seller_email: str | None = None
    document_link_ttl: int = 30 * 86400

    @property
    def migrations_url(self) -> str | None:
        """Where migrations run: MIGRATION_DATABASE_URL, else DATABASE_URL."""
        return self.migration_database_url or self.database_url

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def checkout_origins(self) -> tuple[str, ...]:
        """Where Stripe Checkout may send a customer back to (enforced in production only)."""
        if self.checkout_redirect_origins:
            return self.checkout_redirect_origins
        own = (self.public_url,) if self.public_url else ()
        return own + tuple(o for o in self.cors_origins if o != "*")

    @property
    def jwt_issuer(self) -> str:
        return (self.public_url or "urn:ledgerx").rstrip("/")

    @property
    def jwt_audience(self) -> str:
        return "ledgerx-api"

    @property
    def cookie_secure(self) -> bool:
        # Browsers drop Secure cookies on plain http except for localhost; always Secure in production.
        return True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        e: Mapping[str, str] = os.environ if env is None else env
        mode = (e.get("LEDGERX_ENV") or "development").strip().lower()
        if mode not in ("development", "production"):
            raise SettingsError(f"LEDGERX_ENV: expected development or production, got {mode!r}")
        production = mode == "production"
        log_level = (e.get("LOG_LEVEL") or "INFO").upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError(f"LOG_LEVEL: expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}")
        role = e.get("LEDGERX_DB_APP_ROLE") or "ledgerx_app"
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role):
            raise SettingsError(f"LEDGERX_DB_APP_ROLE: expected a lower-case SQL identifier, got {role!r}")
        s = cls(
            database_url=_url(e, "DATABASE_URL", ("postgresql", "postgres")),
            database_replica_url=_url(e, "DATABASE_REPLICA_URL", ("postgresql", "postgres")),
            database_pooler=_pooler(e),
            migration_database_url=_url(e, "MIGRATION_DATABASE_URL", ("postgresql", "postgres")),
            redis_url=_url(e, "REDIS_URL", ("redis", "rediss", "unix")),
            data_dir=Path(e.get("LEDGERX_DATA_DIR") or ".ledgerx"),
            env="production" if production else "development",
            public_url=_url(e, "LEDGERX_PUBLIC_URL", ("http", "https")),
            jwt_private_keys=_pem_keys(e, "JWT_PRIVATE_KEYS"),
            access_token_ttl=_duration(e, "ACCESS_TOKEN_TTL", 15 * 60),
            refresh_token_ttl=_duration(e, "REFRESH_TOKEN_TTL", 30 * 86400),
            cors_origins=_list(e, "CORS_ORIGINS"),
            smtp_url=_url(e, "SMTP_URL", ("smtp", "smtps")),
            mail_from=e.get("MAIL_FROM") or "LedgerX <no-reply@localhost>",
            stripe_api_key=e.get("STRIPE_API_KEY") or None,
            stripe_webhook_secrets=_list(e, "STRIPE_WEBHOOK_SECRET"),
            stripe_api_base=_url(e, "STRIPE_API_BASE", ("http", "https")),
            google_client_id=e.get("GOOGLE_CLIENT_ID") or None,
            google_client_secret=e.get("GOOGLE_CLIENT_SECRET") or None,
            google_issuer=_url(e, "GOOGLE_ISSUER", ("http", "https")) or "https://accounts.google.com",
            scheduler_enabled=_bool(e, "SCHEDULER_ENABLED", True),
            worker_enabled=_bool(e, "WORKER_ENABLED", True),
            graphql_introspection=_bool(e, "GRAPHQL_INTROSPECTION", not production),
            graphql_max_cost=_int(e, "GRAPHQL_MAX_COST", 20_000, minimum=1),
            graphql_max_body=_int(e, "GRAPHQL_MAX_BODY", 1024 * 1024, minimum=1024),
            metrics_token=_token(e, "METRICS_TOKEN"),
            db_app_role=role,
            db_pool_size=_int(e, "DB_POOL_SIZE", 20, minimum=1),
            redis_prefix=e.get("REDIS_PREFIX") or "lx:",
            login_limit_per_email=_int(e, "LOGIN_LIMIT_PER_EMAIL", 5, minimum=1),
            login_limit_per_ip=_int(e, "LOGIN_LIMIT_PER_IP", 30, minimum=1),
            log_level=log_level,
            rate_limit_burst=_int(e, "RATE_LIMIT_BURST", 120, minimum=1),
            rate_limit_per_second=float(_int(e, "RATE_LIMIT_PER_SECOND", 20, minimum=1)),
            anonymous_rate_limit_burst=_int(e, "ANONYMOUS_RATE_LIMIT_BURST", 60, minimum=1),
            anonymous_rate_limit_per_second=float(_int(e, "ANONYMOUS_RATE_LIMIT_PER_SECOND", 5, minimum=1)),
            api_key_rotation_overlap=_duration_or_zero(e, "API_KEY_ROTATION_OVERLAP", 24 * 3600),
            invite_ttl=_duration(e, "INVITE_TTL", 7 * 86400),
            invite_resend_cooldown=_duration_or_zero(e, "INVITE_RESEND_COOLDOWN", 60),
            email_verification_ttl=_duration(e, "EMAIL_VERIFICATION_TTL", 48 * 3600),
            mail_max_attempts=_int(e, "MAIL_MAX_ATTEMPTS", 10, minimum=1),
            stripe_webhook_tolerance=_duration(e, "STRIPE_WEBHOOK_TOLERANCE", 300),
            checkout_redirect_origins=_list(e, "CHECKOUT_REDIRECT_ORIGINS"),
            subscription_grace_period=_duration_or_zero(e, "SUBSCRIPTION_GRACE_PERIOD", 7 * 86400),
            webhook_max_attempts=_int(e, "WEBHOOK_MAX_ATTEMPTS", 12, minimum=1),
            usage_late_window=_duration(e, "USAGE_LATE_WINDOW", 35 * 86400),
            usage_future_skew=_duration_or_zero(e, "USAGE_FUTURE_SKEW", 300),
            usage_max_batch=_int(e, "USAGE_MAX_BATCH", 10_000, minimum=1),
            usage_max_body_bytes=_int(e, "USAGE_MAX_BODY_BYTES", 32 * 1024 * 1024, minimum=1024),
            ledger_max_batch=_int(e, "LEDGER_MAX_BATCH", 1_000, minimum=1),
            live_interval=_int(e, "LIVE_INTERVAL_MS", 250, minimum=20) / 1000,
            live_refresh=float(_duration(e, "LIVE_REFRESH", 5)),
            live_recheck=float(_duration(e, "LIVE_RECHECK", 30)),
            access_cache_ttl=_int(e, "ACCESS_CACHE_TTL_MS", 2000) / 1000,
            ws_ping_interval=float(_duration_or_zero(e, "WS_PING_INTERVAL", 15)),
            ws_pong_timeout=float(_duration(e, "WS_PONG_TIMEOUT", 10)),
            billing_retry_delays=_duration_list(e, "BILLING_RETRY_DELAYS", (3600, 6 * 3600, 24 * 3600)),
            billing_grace_period=_duration_or_zero(e, "BILLING_GRACE_PERIOD", 3 * 86400),
            scheduler_batch_size=_int(e, "SCHEDULER_BATCH_SIZE", 200, minimum=1),
            scheduler_concurrency=_int(e, "SCHEDULER_CONCURRENCY", 2, minimum=1),
            scheduler_lease_ttl=_duration(e, "SCHEDULER_LEASE_TTL", 15),
            test_clock_max_runs=_int(e, "TEST_CLOCK_MAX_RUNS", 20_000, minimum=1),
            outbound_webhook_retry_delays=_duration_list(
                e, "OUTBOUND_WEBHOOK_RETRY_DELAYS", (5, 300, 1800, 7200, 18000, 36000, 36000)
            ),
            outbound_webhook_timeout=float(_duration(e, "OUTBOUND_WEBHOOK_TIMEOUT", 10)),
            outbound_webhook_disable_after=_duration(e, "OUTBOUND_WEBHOOK_DISABLE_AFTER", 5 * 86400),
            outbound_webhook_allow_private=_bool(e, "OUTBOUND_WEBHOOK_ALLOW_PRIVATE", not production),
            invoice_number_prefix=_invoice_prefix(e),
            tax_mode=_tax_mode(e),
            seller_name=(e.get("SELLER_NAME") or "LedgerX").strip() or "LedgerX",
            seller_address=tuple(x.strip() for x in (e.get("SELLER_ADDRESS") or "").split("|") if x.strip()),
            seller_country=_country(e, "SELLER_COUNTRY"),
            seller_tax_id=(e.get("SELLER_TAX_ID") or "").strip() or None,
            seller_email=(e.get("SELLER_EMAIL") or "").strip() or None,
            document_link_ttl=_duration(e, "DOCUMENT_LINK_TTL", 30 * 86400),
        )
        for origin in s.cors_origins:
            if origin != "*" and urlsplit(origin).scheme not in ("http", "https"):
                raise SettingsError(f"CORS_ORIGINS: {origin!r} is not an origin like https://app.example.com")
        for origin in s.checkout_redirect_origins:
            parts = urlsplit(origin)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
                raise SettingsError(
                    f"CHECKOUT_REDIRECT_ORIGINS: {origin!r} is not an origin like https://app.example.com"
                )
        if s.database_pooler == "pgbouncer" and not s.migration_database_url:
            raise SettingsError(
                "MIGRATION_DATABASE_URL: required with DATABASE_POOLER=pgbouncer; migrations hold a session"
                " advisory lock and run DDL, so they connect to PostgreSQL directly, not through the pooler"
            )
        if production:
            s.check_production()
        return s

    def check_production(self) -> None:
        if not self.database_url:
            raise SettingsError("DATABASE_URL: required in production (embedded PostgreSQL is for development)")
        if not self.redis_url:
            raise SettingsError("REDIS_URL: required in production (embedded Redis is for development)")
        if not self.jwt_private_keys:
            raise SettingsError("JWT_PRIVATE_KEYS: required in production (generated dev keys are refused)")
        if "*" in self.cors_origins:
            raise SettingsError("CORS_ORIGINS: '*' is refused in production; list the allowed origins")
