"""Usage limits per metric (meters), from the project's plan: one mechanism for the plan's monthly
quotas and its METERED entitlements (domain/entitlements: both become `Meter`s of the project).

A meter caps a metric's total over a UTC period, a calendar month or a day: the sum of units for SUM
metrics, the number of events for COUNT metrics (MAX and UNIQUE metrics take no limit). Past it,
recording is refused with QUOTA_EXCEEDED (policy BLOCK, the default) or accepted and flagged as
overage (policy OVERAGE, set per project in `projects.overrides.quotaPolicy`). The entitlement
checks report the same totals (`used`) against the same limits.

Exact under any concurrency, across instances: the transaction that stores capped events first
takes a transaction-scoped advisory lock per (project, metric, period) (`lock`), then reads the
period's total from the rollups on the same connection, decides, inserts and commits; the lock is
released by the commit or rollback. The next writer of that month reads after the commit, so the
total it sees includes every accepted event, never a refused or rolled-back one (rollups are
written by the same statement as the events), and a replayed key (already stored) is not counted
again. Only capped metrics pay for this: the lock serializes writers of one capped metric-month
(one extra round trip each), nothing else.

The first event a meter refuses (BLOCK) or flags (OVERAGE) in a period is its crossing: a row in
`usage_quota_crossings` (one per project, metric, period and limit: a limit raised mid-period can be
crossed again; the insert that lands is the crossing) and the outbound webhook event
`usage.quota_exceeded`, once, however many events are refused after it (`note_crossings`; an
instance remembers what is crossed, so a client that keeps sending past its quota costs no
statement more).

An accepted event that brings a total to its limit, and a crossing, are "reached" meters: the
caller announces them after its commit (`Admission.reached`, ProjectChanges.limit_reached), so
every instance's entitlement checks stop granting the feature at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import json
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

_CAPPED = (Aggregation.SUM, Aggregation.COUNT)
PERIODS = ("MONTH", "DAY")


@dataclasses.dataclass(frozen=True, slots=True)
class Meter:
    """A limit on a metric's total over each UTC period (MONTH or DAY)."""

    period: str
    limit: int


# The project's meters by metric key, and for how many seconds at most they hold (an override's
# expiry, a subscription's period end: changes nobody announces; None: until one is announced).
QuotaLookup = Callable[[uuid.UUID], Awaitable[tuple[Mapping[str, Sequence[Meter]], float | None]]]
# A project's meters are cached this long; a change of its plan forgets them on every instance
# (`ProjectChanges.plan_changed`, domain/changes.py).
CACHE_SECONDS = 30.0

Slot = tuple[uuid.UUID, str, dt.datetime]  # (metric id, period, its first instant)
Used = tuple[decimal.Decimal, int]  # (units, events)

# One 64-bit advisory lock per (project, metric, period), released at COMMIT/ROLLBACK.
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest($1::text[]) WITH ORDINALITY AS u(k, n)"
# The periods' totals from the 15-minute rollups (a UTC day or month is whole 15-minute buckets);
# every slot gets a row, zeros when nothing was recorded.
_USED = """
SELECT s.i, coalesce(sum(r.units_sum), 0) AS units, coalesce(sum(r.events), 0) AS events
FROM unnest($2::uuid[], $3::timestamptz[], $4::timestamptz[]) WITH ORDINALITY AS s(metric_id, start, stop, i)
LEFT JOIN usage_rollups r
  ON r.project_id = $1 AND r.metric_id = s.metric_id AND r.width = 15
 AND r.bucket >= s.start AND r.bucket < s.stop
GROUP BY s.i
"""
_STORED_KEYS = (
    "SELECT idempotency_key FROM usage_event_keys WHERE project_id = $1 AND idempotency_key = ANY($2::text[])"
)
# ON CONFLICT waits for a concurrent inserter of the same slot to end: a slot not returned was
# crossed by a transaction that committed.
_CROSSED = """
INSERT INTO usage_quota_crossings (project_id, metric_id, period, month, quota)
SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::timestamptz[], $5::int8[])
ON CONFLICT DO NOTHING
RETURNING metric_id, period, month, quota
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
    """A meter that refused or flagged an event of its period."""

    metric: MetricRecord
    period: str
    start: dt.datetime
    quota: int


@dataclasses.dataclass(frozen=True, slots=True)
class ProjectQuotas:
    limits: Mapping[str, Sequence[Meter]]  # by metric key
    block: bool


@dataclasses.dataclass(slots=True)
class Admission:
    """What a transaction's quota decisions leave for after its commit."""

    overage: int = 0
    reached: bool = False  # a meter reached its limit: announce it (ProjectChanges.limit_reached)


def period_start(period: str, t: dt.datetime) -> dt.datetime:
    """The first instant of the UTC month or day holding `t`."""
    t = t.astimezone(dt.UTC)
    if period == "DAY":
        return dt.datetime(t.year, t.month, t.day, tzinfo=dt.UTC)
    return dt.datetime(t.year, t.month, 1, tzinfo=dt.UTC)


def period_end(period: str, start: dt.datetime) -> dt.datetime:
    """The first instant after the period starting at `start` (its reset)."""
    if period == "DAY":
        return start + dt.timedelta(days=1)
    return dt.datetime(start.year + (start.month == 12), start.month % 12 + 1, 1, tzinfo=dt.UTC)


def month(t: dt.datetime) -> dt.datetime:
    return period_start("MONTH", t)


def slots_of(q: ProjectQuotas, metric: MetricRecord, t: dt.datetime) -> list[tuple[Slot, int]]:
    """The (slot, limit) of each meter of `metric` that counts an event at `t`."""
    if metric.aggregation not in _CAPPED:
        return []
    return [((metric.id, m.period, period_start(m.period, t)), m.limit) for m in q.limits.get(metric.key, ())]


def _weight(metric: MetricRecord, units: decimal.Decimal) -> decimal.Decimal:
    return units if metric.aggregation == Aggregation.SUM else decimal.Decimal(1)


class Refused(QuotaExceeded):
    """QUOTA_EXCEEDED from a meter, naming the crossing (recorded after the rollback: noting_refusal)."""

    def __init__(self, c: Crossing) -> None:
        per, wait = ("monthly quota", "next month") if c.period == "MONTH" else ("daily limit", "tomorrow (UTC)")
        super().__init__(
            f"the {per} of {c.quota} for {c.metric.key} is used up; upgrade the plan or wait for {wait}",
            field="metricKey",
            quota=c.quota,
            period=c.period,
        )
        self.crossing = c


class QuotaPolicy:
    def __init__(self, db: Database, lookup: QuotaLookup | None = None) -> None:
        self.db = db
        self.lookup = lookup
        # Told, after the commit, of a project whose meter reached its limit (services wire it to
        # ProjectChanges.limit_reached, which forgets entitlement checks on every instance).
        self.on_reached: Callable[[uuid.UUID], Awaitable[None]] | None = None
        self._cache: dict[uuid.UUID, tuple[float, ProjectQuotas]] = {}
        self._epoch = 0  # bumped by every forget: meters loaded across one are not kept
        # (project, metric, period, start, limit) known to be crossed by a committed transaction.
        self._crossed: set[tuple[uuid.UUID, uuid.UUID, str, dt.datetime, int]] = set()

    def forget(self, project_id: uuid.UUID | None) -> None:
        """Drop the project's cached answer (None: every project's); see domain/changes.py."""
        self._epoch += 1
        if project_id is None:
            self._cache.clear()
        else:
            self._cache.pop(project_id, None)

    async def of(self, project_id: uuid.UUID) -> ProjectQuotas:
        hit = self._cache.get(project_id)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        epoch = self._epoch
        limits, valid_for = await self.lookup(project_id) if self.lookup else ({}, None)
        row = await self._overrides(project_id)
        block = str((row or {}).get("quotaPolicy", "BLOCK")).upper() != "OVERAGE"
        q = ProjectQuotas({k: tuple(v) for k, v in limits.items() if v}, block)
        ttl = CACHE_SECONDS if valid_for is None else min(CACHE_SECONDS, valid_for)
        if ttl > 0 and epoch == self._epoch:
            self._cache[project_id] = (time.monotonic() + ttl, q)
        return q

    async def _overrides(self, project_id: uuid.UUID) -> dict[str, Any] | None:
        async with self.db.raw(project_id=project_id) as conn:
            value = await conn.fetchval("SELECT overrides FROM projects WHERE id = $1", project_id)
        if isinstance(value, str):
            value = json.loads(value)
        return value if isinstance(value, dict) else None

    async def announce(self, project_id: uuid.UUID, admission: Admission) -> None:
        """After the commit of a transaction whose decisions reached a limit: tell every instance."""
        if admission.reached and self.on_reached is not None:
            await self.on_reached(project_id)

    @staticmethod
    def capped(q: ProjectQuotas, metric: MetricRecord) -> bool:
        """Whether a meter limits the metric (MAX and UNIQUE metrics take none)."""
        return metric.aggregation in _CAPPED and bool(q.limits.get(metric.key))

    @staticmethod
    async def lock(conn: asyncpg.Connection, project_id: uuid.UUID, slots: Iterable[Slot]) -> None:
        """Hold the slots' advisory locks until the transaction ends (in one global order: no deadlocks)."""
        names = sorted(
            {
                f"ledgerx:quota:{project_id}:{metric_id}:{period}:{start.date().isoformat()}"
                for metric_id, period, start in slots
            }
        )
        await conn.execute(_LOCK, names)

    @staticmethod
    async def used(conn: asyncpg.Connection, project_id: uuid.UUID, slots: Iterable[Slot]) -> dict[Slot, Used]:
        """The periods' (units, events) as this transaction sees them (its own inserts included)."""
        wanted = sorted(set(slots))
        if not wanted:
            return {}
        rows = await conn.fetch(
            _USED,
            project_id,
            [m for m, _, _ in wanted],
            [t for _, _, t in wanted],
            [period_end(p, t) for _, p, t in wanted],
        )
        return {wanted[r["i"] - 1]: (r["units"], int(r["events"])) for r in rows}

    async def admit_stored(
        self,
        conn: asyncpg.Connection,
        q: ProjectQuotas,
        metric: MetricRecord,
        units: decimal.Decimal,
        occurred_at: dt.datetime,
    ) -> Admission:
        """After one new event was inserted in a transaction holding its slots' locks: whether it is
        overage and whether it reached a limit; QUOTA_EXCEEDED (the caller rolls the insert back)
        when blocked."""
        slots = slots_of(q, metric, occurred_at)
        if not slots:
            return Admission()
        used = await self.used(conn, metric.project_id, [s for s, _ in slots])
        out = Admission()
        crossings: list[Crossing] = []
        weight = _weight(metric, units)
        for slot, cap in slots:
            u, events = used[slot]
            total = decimal.Decimal(events) if metric.aggregation == Aggregation.COUNT else u
            if total - weight < cap <= total:
                out.reached = True
            if total > cap:
                crossings.append(Crossing(metric, slot[1], slot[2], cap))
        if crossings:
            for c in crossings:
                self._over(q, metric, c)
            out.overage = 1
            if await self.note_crossings(conn, metric.project_id, crossings):
                out.reached = True
        return out

    @contextlib.asynccontextmanager
    async def noting_refusal(
        self, project_id: uuid.UUID, q: ProjectQuotas | None, metric: MetricRecord, occurred_at: dt.datetime
    ) -> AsyncIterator[None]:
        """Around the transaction that stores one event (outside it): when a meter refuses the
        event, that transaction rolls back, and the crossing is recorded in a transaction of its
        own (the refusal happened, whatever became of the event); a fresh crossing is announced."""
        try:
            yield
        except Refused as exc:
            if q is not None:
                async with self.db.raw(project_id=project_id) as conn:
                    fresh = await self.note_crossings(conn, project_id, [exc.crossing])
                await self.announce(project_id, Admission(reached=fresh > 0))
            raise

    async def note_crossings(
        self, conn: asyncpg.Connection, project_id: uuid.UUID, crossings: Sequence[Crossing]
    ) -> int:
        """Record the meters that refused or flagged an event of their period, in `conn`'s
        transaction; the first record of (metric, period, limit) is announced
        (`usage.quota_exceeded`, data: GraphQL `Quota`). Returns how many were announced."""
        known = self._crossed
        fresh = {
            (c.metric.id, c.period, c.start, c.quota): c
            for c in crossings
            if (project_id, c.metric.id, c.period, c.start, c.quota) not in known
        }
        if not fresh:
            return 0
        slots = sorted(fresh)
        rows = await conn.fetch(
            _CROSSED,
            project_id,
            [s[0] for s in slots],
            [s[1] for s in slots],
            [s[2] for s in slots],
            [s[3] for s in slots],
        )
        new = {(r["metric_id"], r["period"], r["month"], r["quota"]) for r in rows}
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
    ) -> tuple[set[str], list[Rejection], Admission]:
        """Inside the batch's transaction, before its insert: lock the periods of the capped events,
        then decide them in batch order. Returns (keys refused, their rejections, the admission:
        how many are overage, whether a limit was reached). Keys already stored are duplicates:
        neither counted nor refused."""
        capped = [(c, slots_of(q, c.metric, c.occurred_at)) for c in candidates]
        capped = [(c, s) for c, s in capped if s]
        out = Admission()
        if not capped:
            return set(), [], out
        await self.lock(conn, project_id, {slot for _, ss in capped for slot, _ in ss})
        stored = {r["idempotency_key"] for r in await conn.fetch(_STORED_KEYS, project_id, [c.key for c, _ in capped])}
        counts_events = {slot: c.metric.aggregation == Aggregation.COUNT for c, ss in capped for slot, _ in ss}
        running = {
            slot: (decimal.Decimal(events) if counts_events[slot] else units)
            for slot, (units, events) in (await self.used(conn, project_id, counts_events)).items()
        }
        refused: set[str] = set()
        rejections: list[Rejection] = []
        crossed: dict[tuple[Slot, int], Crossing] = {}
        for c, ss in sorted(capped, key=lambda x: x[0].index):
            if c.key in stored:
                continue
            w = _weight(c.metric, c.units)
            over = [(slot, cap) for slot, cap in ss if running[slot] + w > cap]
            try:
                for slot, cap in over:
                    crossing = crossed.setdefault((slot, cap), Crossing(c.metric, slot[1], slot[2], cap))
                    self._over(q, c.metric, crossing)
            except QuotaExceeded as exc:
                refused.add(c.key)
                rejections.append(Rejection(c.index, exc.code, exc.message, "units"))
                continue
            if over:
                out.overage += 1
            for slot, cap in ss:
                if running[slot] < cap <= running[slot] + w:
                    out.reached = True
                running[slot] += w
        # In the batch's transaction: the refused events are left out, the rest commits with it.
        if await self.note_crossings(conn, project_id, list(crossed.values())):
            out.reached = True
        return refused, rejections, out

    @staticmethod
    def _over(q: ProjectQuotas, metric: MetricRecord, c: Crossing) -> None:
        """An event past a meter: QUOTA_EXCEEDED (BLOCK), else counted as overage."""
        if q.block:
            prom.QUOTA_REFUSED.labels(metric.key).inc()
            raise Refused(c)
        prom.QUOTA_OVERAGE.labels(metric.key).inc()
