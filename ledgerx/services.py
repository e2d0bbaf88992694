"""The long-lived services one app instance holds: database, Redis, keys, limiter, domain services."""

from __future__ import annotations

import dataclasses
import functools

import httpx
from redis.asyncio import Redis

from ledgerx import embedded
from ledgerx.db.engine import Database, asyncpg_dsn, make_engine
from ledgerx.db.replica import Replica
from ledgerx.domain.analytics import LiveAnalytics
from ledgerx.domain.auth.keys import KeyRing, derived_secrets
from ledgerx.domain.auth.oidc import OidcClient
from ledgerx.domain.auth.passwords import Passwords
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.auth.service import AuthService, LoginLimits
from ledgerx.domain.auth.sessions import Revocations
from ledgerx.domain.auth.tokens import AccessTokens
from ledgerx.domain.auth.verification import EmailVerifier
from ledgerx.domain.billing.service import BillingPolicy, BillingService
from ledgerx.domain.changes import ProjectChanges
from ledgerx.domain.entitlements.checks import EntitlementChecks
from ledgerx.domain.events import EventBus
from ledgerx.domain.invoicing.links import DocumentLinks
from ledgerx.domain.ledger import LedgerService
from ledgerx.domain.limits import LimitPolicy
from ledgerx.domain.mail import Mailer, OutboxSender, SenderPolicy, SmtpConfig, SmtpTransport
from ledgerx.domain.payments import PaymentsService, subscriptions
from ledgerx.domain.ratelimit import Limit, RateLimiter
from ledgerx.domain.tenancy import api_keys
from ledgerx.domain.tenancy.access_cache import AccessCache
from ledgerx.domain.tenancy.invites import InviteService
from ledgerx.domain.tenancy.key_cache import VerifiedKeys
from ledgerx.domain.usage.quotas import QuotaPolicy
from ledgerx.domain.webhooks.delivery import DeliveryPolicy, DeliveryWorker
from ledgerx.scheduler import Scheduler
from ledgerx.settings import Settings
from ledgerx.webhooks.processor import WebhookProcessor


def resolve_urls(settings: Settings) -> Settings:
    """Fill in DATABASE_URL / REDIS_URL with embedded servers when they are unset."""
    db_url = settings.database_url
    redis_url = settings.redis_url
    if not db_url:
        db_url = embedded.start_postgres(settings.data_dir)
    if not redis_url:
        redis_url = embedded.start_redis(settings.data_dir)
    return dataclasses.replace(settings, database_url=db_url, redis_url=redis_url)


def make_redis(url: str) -> Redis:
    # Short timeouts: a Redis outage must degrade requests, not hang them.
    return Redis.from_url(
        url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=30, decode_responses=False
    )


@dataclasses.dataclass
class Services:
    settings: Settings
    db: Database
    redis: Redis
    http: httpx.AsyncClient
    keys: KeyRing
    tokens: AccessTokens
    passwords: Passwords
    limiter: RateLimiter
    auth: AuthService
    mailer: Mailer = dataclasses.field(default_factory=Mailer)
    # Members' and API keys' recent access to projects, and recently verified API keys (a short
    # TTL; see domain/tenancy/access_cache.py and key_cache.py).
    # Lag-tolerant reads (analytics, the audit log): the replica when DATABASE_REPLICA_URL is set.
    reads: Database = dataclasses.field(init=False)
    replica: Replica | None = None
    access_cache: AccessCache = dataclasses.field(init=False)
    verified_keys: VerifiedKeys = dataclasses.field(init=False)
    invites: InviteService = dataclasses.field(init=False)
    # Which rate limit applies to a caller (the gateway asks per request).
    limits: LimitPolicy = dataclasses.field(init=False)
    # Usage meters of the project's plan (its monthly quotas and METERED entitlements; usage
    # recording asks per event or batch).
    quotas: QuotaPolicy = dataclasses.field(init=False)
    # Entitlement checks, answered from this instance's memory (domain/entitlements/checks.py).
    entitlements: EntitlementChecks = dataclasses.field(init=False)
    # The outbox delivery loop; only when SMTP_URL is set (the app's lifespan starts it).
    mail_sender: OutboxSender | None = None
    # The pub/sub event bus (Redis) and the ledger (its own asyncpg pool and posting batcher).
    events: EventBus = dataclasses.field(init=False)
    # Access and plan changes: forgets the caches above on this instance and every other one.
    changes: ProjectChanges = dataclasses.field(init=False)
    ledger: LedgerService = dataclasses.field(init=False)
    # Live analytics: this instance's feeds behind liveMetrics / liveRevenue.
    live: LiveAnalytics = dataclasses.field(init=False)
    # Billing rules, and the scheduler loop that executes them (the lifespan starts it when
    # SCHEDULER_ENABLED; `ledgerx scheduler` runs only it).
    billing: BillingService = dataclasses.field(init=False)
    scheduler: Scheduler = dataclasses.field(init=False)
    # Plans, payments and Stripe, and the webhook inbox processor (the lifespan starts it when
    # WORKER_ENABLED; `ledgerx worker` runs it alone).
    payments: PaymentsService = dataclasses.field(init=False)
    webhook_processor: WebhookProcessor = dataclasses.field(init=False)
    # Outbound webhooks: the delivery loop (the lifespan starts it when WORKER_ENABLED).
    webhook_delivery: DeliveryWorker = dataclasses.field(init=False)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        settings = resolve_urls(settings)
        assert settings.database_url
        assert settings.redis_url
        db = Database(
            make_engine(
                settings.database_url,
                role=settings.db_app_role,
                pool_size=settings.db_pool_size,
                pooler=settings.database_pooler,
            ),
            dsn=asyncpg_dsn(settings.database_url),
            role=settings.db_app_role,
            pool_size=settings.db_pool_size,
        )
        redis = make_redis(settings.redis_url)
        http = httpx.AsyncClient(follow_redirects=False)
        keys = KeyRing.from_settings(settings)
        tokens = AccessTokens(
            keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience, ttl=settings.access_token_ttl
        )
        passwords = Passwords(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        limiter = RateLimiter(redis, prefix=settings.redis_prefix)
        refill = 1.0 / settings.login_limit_refill_seconds
        mailer = Mailer()
        auth = AuthService(
            db=db,
            passwords=passwords,
            tokens=tokens,
            limiter=limiter,
            limits=LoginLimits(
                per_email=Limit(settings.login_limit_per_email, refill),
                per_ip=Limit(settings.login_limit_per_ip, refill * settings.login_limit_per_ip / 5),
            ),
            oidc=OidcClient(
                issuer=settings.google_issuer,
                client_id=settings.google_client_id,
                client_secret=settings.google_client_secret,
                http=http,
                redis=redis,
                prefix=settings.redis_prefix,
            ),
            refresh_ttl=settings.refresh_token_ttl,
            verifier=EmailVerifier(
                db, mailer, limiter, ttl=settings.email_verification_ttl, public_url=settings.public_url
            ),
        )
        replica = None
        if settings.database_replica_url:
            replica = Replica(
                make_engine(
                    settings.database_replica_url,
                    role=settings.db_app_role,
                    pool_size=settings.db_pool_size,
                    app_name="ledgerx-reads",
                    pooler=settings.database_pooler,
                ),
                db,
                dsn=asyncpg_dsn(settings.database_replica_url),
                role=settings.db_app_role,
                pool_size=settings.db_pool_size,
            )
        svc = cls(settings, db, redis, http, keys, tokens, passwords, limiter, auth, mailer=mailer, replica=replica)
        svc.access_cache = AccessCache(settings.access_cache_ttl)
        svc.verified_keys = VerifiedKeys(settings.access_cache_ttl)
        # Subscribers block on the pub/sub connection: it gets no socket timeout of its own.
        listen = Redis.from_url(settings.redis_url, socket_connect_timeout=2, decode_responses=False)
        svc.events = EventBus(redis, listen_redis=listen, prefix=settings.redis_prefix)
        svc.changes = ProjectChanges(svc.events)
        svc.changes.forgets_access(svc.access_cache.forget_project, svc.verified_keys.forget_project)
        svc.changes.forgets_plans(svc.limits.forget, svc.quotas.forget)
        tokens.revocations = Revocations(redis, db, svc.events, prefix=settings.redis_prefix, ttl=tokens.max_lifetime)
        svc.live = LiveAnalytics(
            db,
            svc.events,
            interval=settings.live_interval,
            refresh=settings.live_refresh,
            recheck=settings.live_recheck,
        )
        svc.ledger = LedgerService(db, svc.events)
        svc.billing = BillingService(
            db,
            svc.ledger,
            policy=BillingPolicy(
                retry_delays=settings.billing_retry_delays,
                grace_period=settings.billing_grace_period,
                batch_size=settings.scheduler_batch_size,
                test_clock_max_runs=settings.test_clock_max_runs,
            ),
        )
        svc.payments = PaymentsService(db, svc.ledger, settings, changes=svc.changes)
        svc.payments.documents = DocumentLinks(
            derived_secrets(keys, "document-links"), settings.public_url, settings.document_link_ttl
        )
        svc.changes.forgets_plans(svc.payments.forget_plan)
        svc.entitlements = EntitlementChecks(svc.payments)
        svc.changes.forgets_plans(svc.entitlements.forget)
        svc.quotas.on_reached = svc.changes.limit_reached
        svc.webhook_processor = WebhookProcessor(svc.payments)
        svc.webhook_delivery = DeliveryWorker(db, DeliveryPolicy.from_settings(settings))
        svc.limits.plan_lookup = functools.partial(subscriptions.plan_limit, svc.payments)
        svc.quotas.lookup = functools.partial(subscriptions.plan_meters, svc.payments)
        svc.scheduler = Scheduler(
            svc.billing,
            lease_ttl=settings.scheduler_lease_ttl,
            poll_interval=settings.scheduler_poll_interval,
            concurrency=settings.scheduler_concurrency,
        )
        if settings.smtp_url:
            svc.mail_sender = OutboxSender(
                db,
                SmtpTransport(SmtpConfig.parse(settings.smtp_url, timeout=settings.smtp_timeout)),
                mail_from=settings.mail_from,
                policy=SenderPolicy(
                    batch_size=settings.mail_batch_size,
                    poll_interval=settings.mail_poll_interval,
                    retry_base=settings.mail_retry_base,
                    retry_max=settings.mail_retry_max,
                    max_attempts=settings.mail_max_attempts,
                ),
            )
            svc.mailer.attach(svc.mail_sender)
        return svc

    def __post_init__(self) -> None:
        self.reads = self.replica or self.db
        self.limits = LimitPolicy(self.db, self.settings)
        self.quotas = QuotaPolicy(self.db)
        self.invites = InviteService(
            self.db,
            self.mailer,
            ttl=self.settings.invite_ttl,
            resend_cooldown=self.settings.invite_resend_cooldown,
            public_url=self.settings.public_url,
        )

    async def authenticate_api_key(self, token: str) -> Principal:
        """A bearer `lx_…` token (context.authenticate hands them here) -> the key's principal."""
        return await api_keys.authenticate(self.db, token, cache=self.verified_keys)

    async def close(self) -> None:
        await self.scheduler.stop()
        await self.webhook_processor.stop()
        await self.webhook_delivery.stop()
        if self.mail_sender is not None:
            await self.mail_sender.stop()
        await api_keys.flush_last_used()
        await self.ledger.close()
        await self.live.close()
        if self.tokens.revocations is not None:
            await self.tokens.revocations.close()
        await self.events.close()
        await self.http.aclose()
        await self.redis.aclose()
        if self.replica is not None:
            await self.replica.dispose()
        await self.db.dispose()
