"""Monthly usage quotas per metric, from the project's plan.

A quota caps a metric's calendar-month (UTC) total: the sum of units for SUM metrics, the number
of events for COUNT metrics (MAX and UNIQUE metrics take no quota). Past it, recording is refused
with QUOTA_EXCEEDED (policy BLOCK, the default) or accepted and flagged as overage (policy OVERAGE,
set per project in `projects.overrides.quotaPolicy`).

The check reads the month's total from the rollups before the insert, so it is a soft cap under
concurrency: requests in flight at the same moment can pass it together by their own size.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from ledgerx import metrics as prom
from ledgerx.db.engine import Database
from ledgerx.domain.errors import QuotaExceeded
from ledgerx.domain.usage.summary import monthly_total
from ledgerx.domain.usage.types import Aggregation, MetricRecord, Rejection

QuotaLookup = Callable[[uuid.UUID], Awaitable[Mapping[str, int]]]
CACHE_SECONDS = 30.0
_CAPPED = (Aggregation.SUM, Aggregation.COUNT)


@dataclasses.dataclass(frozen=True, slots=True)
class ProjectQuotas:
    limits: Mapping[str, int]
    block: bool


def _month(t: dt.datetime) -> dt.datetime:
    t = t.astimezone(dt.UTC)
    return dt.datetime(t.year, t.month, 1, tzinfo=dt.UTC)


def _weight(metric: MetricRecord, units: decimal.Decimal) -> decimal.Decimal:
    return units if metric.aggregation == Aggregation.SUM else decimal.Decimal(1)


class QuotaPolicy:
    def __init__(self, db: Database, lookup: QuotaLookup | None = None) -> None:
        self.db = db
        self.lookup = lookup
        self._cache: dict[uuid.UUID, tuple[float, ProjectQuotas]] = {}

    def forget(self, project_id: uuid.UUID) -> None:
        self._cache.pop(project_id, None)

    async def of(self, project_id: uuid.UUID) -> ProjectQuotas:
        hit = self._cache.get(project_id)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        limits: Mapping[str, int] = await self.lookup(project_id) if self.lookup else {}
        row = await self._overrides(project_id)
        block = str((row or {}).get("quotaPolicy", "BLOCK")).upper() != "OVERAGE"
        q = ProjectQuotas(dict(limits), block)
        self._cache[project_id] = (time.monotonic() + CACHE_SECONDS, q)
        return q

    async def _overrides(self, project_id: uuid.UUID) -> dict[str, Any] | None:
        async with self.db.raw(project_id=project_id) as conn:
            value = await conn.fetchval("SELECT overrides FROM projects WHERE id = $1", project_id)
        if isinstance(value, str):
            import json

            value = json.loads(value)
        return value if isinstance(value, dict) else None

    async def admit_one(
        self, project_id: uuid.UUID, metric: MetricRecord, units: decimal.Decimal, occurred_at: dt.datetime
    ) -> bool:
        """Check one event; True when it is accepted as overage, QUOTA_EXCEEDED when blocked."""
        q = await self.of(project_id)
        cap = q.limits.get(metric.key)
        if cap is None or metric.aggregation not in _CAPPED:
            return False
        used = await self._used(metric, occurred_at)
        if used + _weight(metric, units) <= cap:
            return False
        return self._over(q, metric, cap)

    async def filter_batch(
        self, project_id: uuid.UUID, ordered: Iterable[tuple[int, MetricRecord, decimal.Decimal, dt.datetime]]
    ) -> tuple[set[int], list[Rejection], int]:
        """For events in batch order: (indexes refused, their rejections, how many are overage)."""
        q = await self.of(project_id)
        refused: set[int] = set()
        rejections: list[Rejection] = []
        overage = 0
        running: dict[tuple[uuid.UUID, dt.datetime], decimal.Decimal] = {}
        for index, metric, units, occurred_at in ordered:
            cap = q.limits.get(metric.key)
            if cap is None or metric.aggregation not in _CAPPED:
                continue
            slot = (metric.id, _month(occurred_at))
            if slot not in running:
                running[slot] = await self._used(metric, occurred_at)
            after = running[slot] + _weight(metric, units)
            if after <= cap:
                running[slot] = after
                continue
            try:
                self._over(q, metric, cap)
            except QuotaExceeded as exc:
                refused.add(index)
                rejections.append(Rejection(index, exc.code, exc.message, "units"))
                continue
            running[slot] = after
            overage += 1
        return refused, rejections, overage

    async def _used(self, metric: MetricRecord, occurred_at: dt.datetime) -> decimal.Decimal:
        units, events = await monthly_total(self.db, metric, _month(occurred_at))
        return decimal.Decimal(events) if metric.aggregation == Aggregation.COUNT else units

    @staticmethod
    def _over(q: ProjectQuotas, metric: MetricRecord, cap: int) -> bool:
        if q.block:
            prom.QUOTA_REFUSED.labels(metric.key).inc()
            raise QuotaExceeded(
                f"the monthly quota of {cap} for {metric.key} is used up; upgrade the plan or wait for next month",
                field="metricKey",
                quota=cap,
            )
        prom.QUOTA_OVERAGE.labels(metric.key).inc()
        return True
