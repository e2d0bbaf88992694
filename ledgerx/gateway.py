"""API-gateway duties at the HTTP edge: one token-bucket check per request, and its headers.

Every response carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`; a refused
request gets HTTP 429, `Retry-After` and a RATE_LIMITED error. The buckets live in Redis (shared by
every instance); during a Redis outage `RateLimiter` decides locally and the request is served.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse

from ledgerx import metrics
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.ratelimit import Decision
from ledgerx.services import Services


async def admit(services: Services, principal: Principal | None, ip: str | None) -> Decision:
    key, limit = await services.limits.for_caller(principal, ip)
    decision = await services.limiter.hit("gw:" + key, limit)
    if not decision.allowed:
        metrics.RATELIMIT_REFUSED.labels("gateway").inc()
    return decision


def apply_headers(headers: MutableHeaders, d: Decision) -> None:
    headers["RateLimit-Limit"] = str(d.limit)
    headers["RateLimit-Remaining"] = str(max(0, d.remaining))
    headers["RateLimit-Reset"] = str(d.reset_s)
    if not d.allowed:
        headers["Retry-After"] = str(d.retry_after_s)


def refused(d: Decision) -> JSONResponse:
    """A GraphQL-shaped error body, so clients handle it like any other error."""
    body = {
        "data": None,
        "errors": [
            {
                "message": f"rate limit exceeded; retry in {d.retry_after_s}s",
                "extensions": {"code": "RATE_LIMITED", "retryAfter": d.retry_after_s},
            }
        ],
    }
    response = JSONResponse(body, status_code=429)
    apply_headers(response.headers, d)
    return response
