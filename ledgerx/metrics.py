"""Prometheus metrics, served at /metrics. One registry per process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
