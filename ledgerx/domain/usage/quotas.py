"""Monthly usage quotas per metric, from the project's plan.

A quota caps a metric's calendar-month (UTC) total: the sum of units for SUM metrics, the number
of events for COUNT metrics (MAX and UNIQUE metrics take no quota). Past it, recording is refused
with QUOTA_EXCEEDED (policy BLOCK, the default) or accepted and flagged as overage (policy OVERAGE,
set per project in `projects.overrides.quotaPolicy`).

Exact under any concurrency, across instances: the transaction that stores capped events first
takes a transaction-scoped advisory lock per (project, metric, month) (`lock`), then reads the
month's total from the rollups on the same connection, decides, inserts and commits; the lock is
released by the commit or rollback. The next writer of that month reads after the commit, so the
total it sees includes every accepted event, never a refused or rolled-back one (rollups are
written by the same statement as the events), and a replayed key (already stored) is not counted
again. Only capped metrics pay for this: the lock serializes writers of one capped metric-month
(one extra round trip each), nothing else.

The first event a quota refuses (BLOCK) or flags (OVERAGE) in a month is its crossing: a row in
`usage_quota_crossings` (one per project, metric, month and limit: a limit raised mid-month can be
crossed again; the insert that lands is the crossing) and the outbound webhook event
`usage.quota_exceeded`, once, however many events are refused after it (`note_crossings`; an
instance remembers what is crossed, so a client that keeps sending past its quota costs no
statement more).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import asyncpg

from ledgerx import metrics as prom
from ledgerx.db.engine import Database
from ledgerx.domain.errors import QuotaExceeded
from ledgerx.domain.usage import payloads
from ledgerx.domain.usage.types import Aggregation, MetricRecord, Rejection
from ledgerx.domain.webhooks import outbox

QuotaLookup = Callable[[uuid.UUID], Awaitable[Mapping[str, int]]]
# A project's quotas are cached this long; a change of its plan forgets them on every instance
# (`ProjectChanges.plan_changed`, domain/changes.py).
CACHE_SECONDS = 30.0
_CAPPED = (Aggregation.SUM, Aggregation.COUNT)

Slot = tuple[uuid.UUID, dt.datetime]  # (metric id, first instant of the UTC month)
Used = tuple[decimal.Decimal, int]  # (units, events)

# One 64-bit advisory lock per (project, metric, month), released at COMMIT/ROLLBACK.
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest($1::text[]) WITH ORDINALITY AS u(k, n)"
# The months' totals from the 15-minute rollups (a month is whole 15-minute buckets); every slot
# gets a row, zeros when nothing was recorded.
_USED = """
SELECT s.metric_id, s.month, coalesce(sum(r.units_sum), 0) AS units, coalesce(sum(r.events), 0) AS events
FROM unnest($2::uuid[], $3::timestamptz[], $4::timestamptz[]) AS s(metric_id, month, next_month)
LEFT JOIN usage_rollups r
  ON r.project_id = $1 AND r.metric_id = s.metric_id AND r.width = 15
 AND r.bucket >= s.month AND r.bucket < s.next_month
GROUP BY s.metric_id, s.month
"""
_STORED_KEYS = (
    "SELECT idempotency_key FROM usage_event_keys WHERE project_id = $1 AND idempotency_key = ANY($2::text[])"
)
# ON CONFLICT waits for a concurrent inserter of the same slot to end: a slot not returned was
# crossed by a transaction that committed.
_CROSSED = """
INSERT INTO usage_quota_crossings (project_id, metric_id, month, quota)
SELECT $1, * FROM unnest($2::uuid[], $3::timestamptz[], $4::int8[])
ON CONFLICT DO NOTHING
RETURNING metric_id, month, quota
"""
_REMEMBERED_CROSSINGS = 100_000


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """A valid event of a batch, before its insert."""

    index: int  # its first position in the request
    key: str
    metric: MetricRecord
    units: decimal.Decimal
    occurred_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Crossing:
    """A quota that refused or flagged an event of its month."""

    metric: MetricRecord
    month: dt.datetime
    quota: int


@dataclasses.dataclass(frozen=True, slots=True)
class ProjectQuotas:
    limits: Mapping[str, int]
    block: bool


def month(t: dt.datetime) -> dt.datetime:
    t = t.astimezone(dt.UTC)
    return dt.datetime(t.year, t.month, 1, tzinfo=dt.UTC)


def _next_month(t: dt.datetime) -> dt.datetime:
    return dt.datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=dt.UTC)


def _aggregation(candidates: Iterable[Candidate], slot: Slot) -> Aggregation:
    return next(c.metric.aggregation for c in candidates if c.metric.id == slot[0])


def _weight(metric: MetricRecord, units: decimal.Decimal) -> decimal.Decimal:
    return units if metric.aggregation == Aggregation.SUM else decimal.Decimal(1)


class QuotaPolicy:
    def __init__(self, db: Database, lookup: QuotaLookup | None = None) -> None:
        self.db = db
        self.lookup = lookup
        self._cache: dict[uuid.UUID, tuple[float, ProjectQuotas]] = {}
        # (project, metric, month, limit) known to be crossed by a committed transaction.
        self._crossed: set[tuple[uuid.UUID, uuid.UUID, dt.datetime, int]] = set()

    def forget(self, project_id: uuid.UUID | None) -> None:
        """Drop the project's cached answer (None: every project's); see domain/changes.py."""
        if project_id is None:
            self._cache.clear()
        else:
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

    def cap(self, q: ProjectQuotas, metric: MetricRecord) -> int | None:
        """The metric's monthly quota, or None when it has none (or takes none: MAX, UNIQUE)."""
        if metric.aggregation not in _CAPPED:
            return None
        return q.limits.get(metric.key)

    @staticmethod
    async def lock(conn: asyncpg.Connection, project_id: uuid.UUID, slots: Iterable[Slot]) -> None:
        """Hold the slots' advisory locks until the transaction ends (in one global order: no deadlocks)."""
        names = sorted(
            {f"ledgerx:quota:{project_id}:{metric_id}:{month.date().isoformat()}" for metric_id, month in slots}
        )
        await conn.execute(_LOCK, names)

    @staticmethod
    async def used(conn: asyncpg.Connection, project_id: uuid.UUID, slots: Iterable[Slot]) -> dict[Slot, Used]:
        """The months' (units, events) as this transaction sees them (its own inserts included)."""
        wanted = sorted(set(slots))
        rows = await conn.fetch(
            _USED,
            project_id,
            [m for m, _ in wanted],
            [t for _, t in wanted],
            [_next_month(t) for _, t in wanted],
        )
        return {(r["metric_id"], r["month"]): (r["units"], int(r["events"])) for r in rows}

    async def admit_stored(
        self, conn: asyncpg.Connection, q: ProjectQuotas, metric: MetricRecord, occurred_at: dt.datetime
    ) -> bool:
        """After one new event was inserted in a transaction holding its slot's lock: True when it is
        overage; QUOTA_EXCEEDED (the caller rolls the insert back) when blocked."""
        cap = self.cap(q, metric)
        if cap is None:
            return False
        slot = (metric.id, month(occurred_at))
        units, events = (await self.used(conn, metric.project_id, [slot]))[slot]
        total = decimal.Decimal(events) if metric.aggregation == Aggregation.COUNT else units
        over = total > cap and self._over(q, metric, cap)
        if over:
            await self.note_crossings(conn, metric.project_id, [Crossing(metric, slot[1], cap)])
        return over

    @contextlib.asynccontextmanager
    async def noting_refusal(
        self, project_id: uuid.UUID, q: ProjectQuotas | None, metric: MetricRecord, occurred_at: dt.datetime
    ) -> AsyncIterator[None]:
        """Around the transaction that stores one event (outside it): when the quota refuses the
        event, that transaction rolls back, and the crossing is recorded in a transaction of its
        own (the refusal happened, whatever became of the event)."""
        try:
            yield
        except QuotaExceeded:
            cap = self.cap(q, metric) if q is not None else None
            if cap is not None:
                async with self.db.raw(project_id=project_id) as conn:
                    await self.note_crossings(conn, project_id, [Crossing(metric, month(occurred_at), cap)])
            raise

    async def note_crossings(
        self, conn: asyncpg.Connection, project_id: uuid.UUID, crossings: Sequence[Crossing]
    ) -> int:
        """Record the quotas that refused or flagged an event of their month, in `conn`'s
        transaction; the first record of (metric, month, limit) is announced
        (`usage.quota_exceeded`, data: GraphQL `Quota`). Returns how many were announced."""
        known = self._crossed
        fresh = {
            (c.metric.id, c.month, c.quota): c
            for c in crossings
            if (project_id, c.metric.id, c.month, c.quota) not in known
        }
        if not fresh:
            return 0
        slots = sorted(fresh)
        rows = await conn.fetch(
            _CROSSED, project_id, [s[0] for s in slots], [s[1] for s in slots], [s[2] for s in slots]
        )
        new = {(r["metric_id"], r["month"], r["quota"]) for r in rows}
        if len(self._crossed) > _REMEMBERED_CROSSINGS:
            self._crossed.clear()
        # Only slots another transaction committed are remembered: ours may still roll back.
        self._crossed.update((project_id, *s) for s in slots if s not in new)
        batch = outbox.Batch()
        for s in slots:
            if s in new:
                c = fresh[s]
                batch.add(project_id, "usage.quota_exceeded", payloads.quota(c.metric.key, c.quota))
        await outbox.emit_many(conn, batch)
        return len(batch)

    async def reserve_batch(
        self, conn: asyncpg.Connection, project_id: uuid.UUID, q: ProjectQuotas, candidates: Sequence[Candidate]
    ) -> tuple[set[str], list[Rejection], int]:
        """Inside the batch's transaction, before its insert: lock the months of the capped events,
        then decide them in batch order. Returns (keys refused, their rejections, how many are
        overage). Keys already stored are duplicates: neither counted nor refused."""
        capped = [c for c in candidates if self.cap(q, c.metric) is not None]
        if not capped:
            return set(), [], 0
        slots = {(c.metric.id, month(c.occurred_at)) for c in capped}
        await self.lock(conn, project_id, slots)
        stored = {r["idempotency_key"] for r in await conn.fetch(_STORED_KEYS, project_id, [c.key for c in capped])}
        running = {
            slot: (decimal.Decimal(events) if _aggregation(capped, slot) == Aggregation.COUNT else units)
            for slot, (units, events) in (await self.used(conn, project_id, slots)).items()
        }
        refused: set[str] = set()
        rejections: list[Rejection] = []
        overage = 0
        crossed: dict[Slot, Crossing] = {}
        for c in sorted(capped, key=lambda c: c.index):
            if c.key in stored:
                continue
            cap = self.cap(q, c.metric)
            assert cap is not None
            slot = (c.metric.id, month(c.occurred_at))
            after = running[slot] + _weight(c.metric, c.units)
            if after > cap:
                crossed.setdefault(slot, Crossing(c.metric, slot[1], cap))
                try:
                    self._over(q, c.metric, cap)
                except QuotaExceeded as exc:
                    refused.add(c.key)
                    rejections.append(Rejection(c.index, exc.code, exc.message, "units"))
                    continue
                overage += 1
            running[slot] = after
        # In the batch's transaction: the refused events are left out, the rest commits with it.
        await self.note_crossings(conn, project_id, list(crossed.values()))
        return refused, rejections, overage

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
