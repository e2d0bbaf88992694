"""Which rate limit applies to a caller.

API keys are limited per key with their project's limit; signed-in users per user; anonymous
callers per IP with a tighter limit. A project's limit comes from its override when set
(`projects.overrides.rateLimit = {burst, perSecond}`), then its plan, then the default.
Project limits are cached in-process briefly: limits change rarely, requests are many. A change of
the project's plan forgets them on every instance (`ProjectChanges.plan_changed`, domain/changes.py).
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select

from ledgerx.db.engine import Database
from ledgerx.db.models import Project
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.ratelimit import Limit
from ledgerx.settings import Settings

CACHE_SECONDS = 30.0

# Filled by the plans domain ([6/7]): the project's plan limit, or None for the default.
PlanLimitLookup = Callable[[uuid.UUID], Awaitable[Limit | None]]


def _limit_from(raw: Any) -> Limit | None:
    if not isinstance(raw, dict):
        return None
    try:
        return Limit(int(raw["burst"]), float(raw["perSecond"]))
    except (KeyError, TypeError, ValueError):
        return None


class LimitPolicy:
    def __init__(self, db: Database, settings: Settings, plan_lookup: PlanLimitLookup | None = None) -> None:
        self.db = db
        self.default = Limit(settings.rate_limit_burst, settings.rate_limit_per_second)
        self.anonymous = Limit(settings.anonymous_rate_limit_burst, settings.anonymous_rate_limit_per_second)
        self.plan_lookup = plan_lookup
        self._cache: dict[uuid.UUID, tuple[float, Limit]] = {}
        self._epoch = 0  # bumped by every forget: a limit loaded across one is not kept

    def forget(self, project_id: uuid.UUID | None) -> None:
        """Drop the project's cached answer (None: every project's); see domain/changes.py."""
        self._epoch += 1
        if project_id is None:
            self._cache.clear()
        else:
            self._cache.pop(project_id, None)

    async def project_limit(self, project_id: uuid.UUID) -> Limit:
        hit = self._cache.get(project_id)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        epoch = self._epoch
        async with self.db.transaction(project_id=project_id) as s:
            overrides = (await s.execute(select(Project.overrides).where(Project.id == project_id))).scalar()
        limit = _limit_from((overrides or {}).get("rateLimit"))
        if limit is None and self.plan_lookup is not None:
            limit = await self.plan_lookup(project_id)
        limit = limit or self.default
        if epoch == self._epoch:
            self._cache[project_id] = (time.monotonic() + CACHE_SECONDS, limit)
        return limit

    async def for_caller(self, principal: Principal | None, ip: str | None) -> tuple[str, Limit]:
        """The bucket key and limit for this caller."""
        if principal is None:
            return f"ip:{ip or 'unknown'}", self.anonymous
        if principal.kind == "api_key":
            assert principal.project_id is not None
            return _key_bucket(principal.api_key_id), await self.project_limit(principal.project_id)
        return f"user:{principal.user_id}", self.default


@functools.lru_cache(maxsize=65_536)
def _key_bucket(api_key_id: uuid.UUID | None) -> str:
    """An API key's bucket name, formatted once per key (a UUID's str() is Python-level work, and the
    gateway asks on every request)."""
    return f"key:{api_key_id}"
