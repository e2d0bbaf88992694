"""Prometheus metrics, served at /metrics. One registry per process."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from graphql.language import DocumentNode, OperationDefinitionNode, OperationType
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

if TYPE_CHECKING:
    from ledgerx.domain.health import Backlogs, PoolStats
    from ledgerx.services import Services

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "ledgerx_http_requests_total", "HTTP requests by route and status", ["route", "status"], registry=REGISTRY
)
HTTP_LATENCY = Histogram(
    "ledgerx_http_request_seconds",
    "HTTP request latency",
    ["route"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
GRAPHQL_ERRORS = Counter("ledgerx_graphql_errors_total", "GraphQL errors by code", ["code"], registry=REGISTRY)
RATELIMIT_DEGRADED = Gauge(
    "ledgerx_ratelimit_degraded",
    "1 while Redis is unreachable and limits are per instance",
    registry=REGISTRY,
)
RATELIMIT_FALLBACKS = Counter(
    "ledgerx_ratelimit_local_decisions_total",
    "Rate-limit decisions taken locally during a Redis outage",
    registry=REGISTRY,
)
RATELIMIT_REFUSED = Counter(
    "ledgerx_ratelimit_refused_total", "Requests refused by a limit", ["limit"], registry=REGISTRY
)
QUOTA_REFUSED = Counter(
    "ledgerx_quota_refused_total", "Usage events refused by a monthly quota", ["metric"], registry=REGISTRY
)
QUOTA_OVERAGE = Counter(
    "ledgerx_quota_overage_total", "Usage events accepted past a monthly quota (overage)", ["metric"], registry=REGISTRY
)

# -- process ------------------------------------------------------------------------------------
# CPU, memory, open file descriptors, start time (process_*), the Python version (python_info) and
# garbage collection (python_gc_*), on our registry rather than prometheus_client's default one.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# -- GraphQL operations -------------------------------------------------------------------------

# Operation names come from clients: each distinct name is a time series, so only the first
# MAX_OPERATION_LABELS names this process sees get their own; later ones share "other". Real
# clients send a fixed set of named documents, which are seen early and keep their labels.
MAX_OPERATION_LABELS = 100
_operation_labels: set[str] = {"anonymous", "other"}

OPERATION_LATENCY = Histogram(
    "ledgerx_graphql_operation_seconds",
    "GraphQL query and mutation latency by operation name (anonymous: 'anonymous'; names past the first"
    f" {MAX_OPERATION_LABELS} seen, or not an operation of their document: 'other')",
    ["operation"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def operation_label(document: DocumentNode | None, name: str | None) -> str | None:
    """The label for an operation, or None for a subscription (its duration is the stream's life,
    not a latency)."""
    op = _find_operation(document, name)
    if op is not None and op.operation is OperationType.SUBSCRIPTION:
        return None
    if name is None and (op is None or op.name is None):
        return "anonymous"
    if op is None or op.name is None:
        return "other"  # an operationName the document does not define, or no document at all
    label = op.name.value
    if label not in _operation_labels:
        if len(_operation_labels) >= MAX_OPERATION_LABELS + 2:
            return "other"
        _operation_labels.add(label)
    return label


def _find_operation(document: DocumentNode | None, name: str | None) -> OperationDefinitionNode | None:
    if document is None:
        return None
    ops = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if name is None:
        return ops[0] if len(ops) == 1 else None
    return next((o for o in ops if o.name is not None and o.name.value == name), None)


def observe_operation(document: DocumentNode | None, name: str | None, seconds: float) -> None:
    label = operation_label(document, name)
    if label is not None:
        OPERATION_LATENCY.labels(label).observe(seconds)


# -- scraped state: database pools and backlogs ---------------------------------------------------
# Set when /metrics is scraped (refresh below), not on every change: pools are read from memory;
# backlogs with one cheap statement (domain/health.py), at most once per BACKLOG_TTL seconds.

DB_POOL_SIZE = Gauge("ledgerx_db_pool_size", "Connections the pool may open at most", ["pool"], registry=REGISTRY)
DB_POOL_OPEN = Gauge("ledgerx_db_pool_connections", "Connections the pool holds open now", ["pool"], registry=REGISTRY)
DB_POOL_IN_USE = Gauge("ledgerx_db_pool_in_use", "Connections lent out now", ["pool"], registry=REGISTRY)
DB_POOL_WAITING = Gauge(
    "ledgerx_db_pool_waiting", "Tasks waiting for a connection (the pool is exhausted)", ["pool"], registry=REGISTRY
)
WEBHOOK_INBOX_DEPTH = Gauge(
    "ledgerx_webhook_inbox_depth",
    "Stripe webhook events waiting to be processed (counted to 100,000)",
    registry=REGISTRY,
)
WEBHOOK_INBOX_OLDEST = Gauge(
    "ledgerx_webhook_inbox_oldest_age_seconds", "Age of the oldest waiting webhook event (0: none)", registry=REGISTRY
)
WEBHOOK_INBOX_DEAD = Gauge(
    "ledgerx_webhook_inbox_dead", "Webhook events given up on (they need a replay)", registry=REGISTRY
)
MAIL_OUTBOX_BACKLOG = Gauge(
    "ledgerx_mail_outbox_backlog", "Mails waiting to be sent (counted to 100,000)", registry=REGISTRY
)
MAIL_OUTBOX_OLDEST = Gauge(
    "ledgerx_mail_outbox_oldest_age_seconds", "Age of the oldest waiting mail (0: none)", registry=REGISTRY
)
MAIL_OUTBOX_DEAD = Gauge("ledgerx_mail_outbox_dead", "Mails given up on after the last attempt", registry=REGISTRY)
WEBHOOK_DELIVERIES_BACKLOG = Gauge(
    "ledgerx_webhook_deliveries_backlog",
    "Outbound webhook deliveries waiting, retries included (counted to 100,000)",
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES_LATE = Gauge(
    "ledgerx_webhook_deliveries_late_seconds",
    "How long the most overdue outbound delivery has been due (0: none due)",
    registry=REGISTRY,
)
SCHEDULER_DUE_RULES = Gauge(
    "ledgerx_scheduler_due_rules", "Billing rules due now and not yet run (counted to 100,000)", registry=REGISTRY
)
SCHEDULER_LAG = Gauge(
    "ledgerx_scheduler_lag_seconds", "How long the oldest due billing rule has waited (0: none due)", registry=REGISTRY
)
BACKLOG_READ_ERRORS = Counter(
    "ledgerx_metrics_backlog_read_errors_total",
    "Scrapes whose backlog read failed (the backlog gauges keep their last values)",
    registry=REGISTRY,
)
BACKLOG_TTL = 5.0
_backlog_read_at = -float("inf")


def set_pool_gauges(pools: Iterable[PoolStats]) -> None:
    for p in pools:
        DB_POOL_SIZE.labels(p.name).set(p.size)
        DB_POOL_OPEN.labels(p.name).set(p.open)
        DB_POOL_IN_USE.labels(p.name).set(p.in_use)
        DB_POOL_WAITING.labels(p.name).set(p.waiting)


def set_backlog_gauges(b: Backlogs) -> None:
    WEBHOOK_INBOX_DEPTH.set(b.inbox_depth)
    WEBHOOK_INBOX_OLDEST.set(b.age(b.inbox_oldest) or 0)
    WEBHOOK_INBOX_DEAD.set(b.inbox_dead)
    MAIL_OUTBOX_BACKLOG.set(b.mail_depth)
    MAIL_OUTBOX_OLDEST.set(b.age(b.mail_oldest) or 0)
    MAIL_OUTBOX_DEAD.set(b.mail_dead)
    WEBHOOK_DELIVERIES_BACKLOG.set(b.deliveries_depth)
    WEBHOOK_DELIVERIES_LATE.set(b.age(b.deliveries_oldest_due) or 0)
    SCHEDULER_DUE_RULES.set(b.rules_due)
    SCHEDULER_LAG.set(b.scheduler_lag)


async def refresh(services: Services, *, now: float | None = None) -> None:
    """Bring the scraped gauges up to date (the /metrics route calls this before rendering)."""
    from ledgerx.domain import health  # the domain imports this module: import it lazily

    global _backlog_read_at
    set_pool_gauges(health.pool_stats(services.db))
    t = time.monotonic() if now is None else now
    if t - _backlog_read_at < BACKLOG_TTL:
        return
    _backlog_read_at = t
    try:
        backlogs = await asyncio.wait_for(
            health.read_backlogs(
                services.db,
                mail_max_attempts=services.settings.mail_max_attempts,
                lease_name=services.scheduler.lease.name,
            ),
            timeout=health.CHECK_TIMEOUT,
        )
    except Exception:  # a scrape reports what it can; the counter says the backlog read failed
        BACKLOG_READ_ERRORS.inc()
        return
    set_backlog_gauges(backlogs)


# -- access ---------------------------------------------------------------------------------------


def scrape_status(authorization: str | None, token: str | None, *, production: bool) -> int:
    """200 when the caller may read /metrics; 401 without the right `Authorization: Bearer
    METRICS_TOKEN`; 404 in production when no METRICS_TOKEN is set (the route is off there)."""
    if token is None:
        return 404 if production else 200
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        return 401
    return 200
