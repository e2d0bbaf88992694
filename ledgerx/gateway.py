"""API-gateway duties at the HTTP edge: one token-bucket check per request, and its headers.

Every response carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`; a refused
request gets HTTP 429, `Retry-After` and a RATE_LIMITED error. The buckets live in Redis (shared by
every instance); during a Redis outage `RateLimiter` decides locally and the request is served.

The same call tells whether the caller's session was revoked (log-out, refresh-token reuse): the
rate-limit script also reads the session's revocation mark, so the check adds no round trip. While
this instance's mirror of the marks is whole (auth/sessions.py `known_revoked`) the answer comes
from memory instead, and a fast limit is spent from a lease: no round trip at all. Only while Redis
is down does it cost a database read.
"""

from __future__ import annotations

import dataclasses
import logging

from starlette.datastructures import MutableHeaders

from ledgerx import metrics
from ledgerx.context import session_revoked
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.errors import RateLimited
from ledgerx.domain.ratelimit import Decision
from ledgerx.services import Services

log = logging.getLogger("ledgerx.gateway")

__all__ = ["admit", "apply_headers", "rate_limited", "session_revoked"]


async def admit(services: Services, principal: Principal | None, ip: str | None) -> Decision:
    """Spend one token of the caller's bucket; `flagged` means the caller's session was revoked."""
    key, limit = await services.limits.for_caller(principal, ip)
    sid = principal.session_id if principal is not None else None
    revocations = services.tokens.revocations
    known = revocations.known_revoked(sid) if sid and revocations is not None else None
    flag = revocations.key(sid) if sid and revocations is not None and known is None else None
    decision = await services.limiter.hit("gw:" + key, limit, flag=flag)
    if known:
        decision = dataclasses.replace(decision, flagged=True)
    elif sid and flag is not None and revocations is not None and (decision.degraded or sid in revocations.pending):
        # Redis was not asked (or has not taken this instance's mark yet): the database decides.
        try:
            revoked = sid in revocations.pending or await revocations.revoked_in_db(sid)
        except Exception:
            # Neither Redis nor the database answers: refuse rather than honour a maybe-revoked token.
            log.warning("session revocation unknown (redis and database unreachable); refusing", exc_info=True)
            revoked = True
        decision = dataclasses.replace(decision, flagged=revoked)
    if not decision.allowed:
        metrics.RATELIMIT_REFUSED.labels("gateway").inc()
    return decision


def apply_headers(headers: MutableHeaders, d: Decision) -> None:
    # Appended to the raw list (a response gets them once, here): setting would scan the list
    # once per header.
    headers.raw.extend(
        (
            (b"ratelimit-limit", str(d.limit).encode()),
            (b"ratelimit-remaining", str(max(0, d.remaining)).encode()),
            (b"ratelimit-reset", str(d.reset_s).encode()),
        )
    )
    if not d.allowed:
        headers["Retry-After"] = str(d.retry_after_s)


def rate_limited(d: Decision) -> RateLimited:
    """The error a refused decision answers with, on every transport (HTTP routes, GraphQL over
    HTTP, each operation on a socket)."""
    return RateLimited(f"rate limit exceeded; retry in {d.retry_after_s}s", retry_after=d.retry_after_s)
