"""Entitlement checks, answered from a per-instance cache.

A project's checks are computed once (its effective features, payments/subscriptions.py, and for
METERED ones the metric's total in the current UTC period from the usage rollups) and kept in this
instance's memory, so `check` is a dictionary lookup: no database or Redis round trip.

What forgets them, on every instance at once (domain/changes.py): a plan change, an override of the
plan or of a feature (`ProjectChanges.plan_changed`), and usage reaching a METERED limit
(`ProjectChanges.limit_reached`, announced by usage/quotas.py after the commit that reached it). An
entry also ends at the next instant the answer changes by itself (a period reset, an override's
expiry, a subscription's period end or grace end) and after `TTL_SECONDS`, which bounds what a lost
announcement leaves behind, and how stale `usage` and `remaining` below the limit may be.

A fill that raced with a forget is not kept (a generation counter; the plan state it reads is kept
under the same rule, payments/service.py's plan epoch), so an answer computed before a change
committed never outlives the announcement of that change.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, TypeGuard

from ledgerx.domain.entitlements.features import Feature
from ledgerx.domain.payments import subscriptions
from ledgerx.domain.payments.service import PaymentsService, utcnow
from ledgerx.domain.usage import periods, quotas, store

TTL_SECONDS = 10.0
_MAX_PROJECTS = 100_000
_ZERO = decimal.Decimal(0)


@dataclasses.dataclass(frozen=True, slots=True)
class Entitlement:
    feature_key: str
    type: str  # BOOLEAN | METERED | CONFIG
    has_access: bool
    limit: int | None = None
    usage: decimal.Decimal | None = None
    remaining: decimal.Decimal | None = None
    config: Any = None
    resets_at: dt.datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The HTTP answer (GET /v1/entitlements): GraphQL's field names, big numbers as strings."""
        return {
            "featureKey": self.feature_key,
            "type": self.type,
            "hasAccess": self.has_access,
            "limit": str(self.limit) if self.limit is not None else None,
            "usage": format(self.usage, "f") if self.usage is not None else None,
            "remaining": format(self.remaining, "f") if self.remaining is not None else None,
            "config": self.config,
            "resetsAt": self.resets_at.isoformat().replace("+00:00", "Z") if self.resets_at is not None else None,
        }


def unknown(feature_key: str) -> Entitlement:
    """A feature the project's plan does not name: no access (a typo denies, never grants)."""
    return Entitlement(feature_key, "BOOLEAN", False)


def decide(f: Feature, usage: decimal.Decimal | None, resets_at: dt.datetime | None) -> Entitlement:
    """One feature's answer from its effective definition and, for METERED, its period's usage."""
    if f.type == "METERED":
        used = usage if usage is not None else _ZERO
        cap = f.limit if f.limit is not None else 0
        remaining = max(decimal.Decimal(cap) - used, _ZERO)
        return Entitlement(f.feature_key, f.type, f.enabled and used < cap, cap, used, remaining, None, resets_at)
    if f.type == "CONFIG":
        return Entitlement(f.feature_key, f.type, f.enabled, config=f.config)
    return Entitlement(f.feature_key, f.type, f.enabled)


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    expires: float  # time.monotonic(): the TTL
    # The next instant the answers change by themselves, on the payments clock (which tests and
    # test clocks move): the entry ends there too.
    until: dt.datetime | None
    items: Mapping[str, Entitlement]
    # Each answer's HTTP body, encoded once per fill: a check over HTTP then encodes nothing.
    bodies: Mapping[str, bytes]


def encode(e: Entitlement) -> bytes:
    return json.dumps(e.to_json(), separators=(",", ":")).encode()


class EntitlementChecks:
    def __init__(self, payments: PaymentsService, ttl: float = TTL_SECONDS) -> None:
        self.payments = payments
        self.ttl = ttl
        self._cache: dict[uuid.UUID, _Entry] = {}
        self._generation = 0

    def forget(self, project_id: uuid.UUID | None) -> None:
        """Drop the project's answers (None: every project's); see domain/changes.py."""
        self._generation += 1
        if project_id is None:
            self._cache.clear()
        else:
            self._cache.pop(project_id, None)

    def _live(self, entry: _Entry | None) -> TypeGuard[_Entry]:
        # On the real clock the monotonic `expires` already ends the entry at `until`; a clock
        # someone replaced (tests, a pinned instant) may jump, so it is read.
        return (
            entry is not None
            and entry.expires > time.monotonic()
            and (entry.until is None or self.payments.clock is utcnow or self.payments.now() < entry.until)
        )

    def cached(self, project_id: uuid.UUID, feature_key: str) -> Entitlement | None:
        """The answer from this instance's memory, or None when it has none (or it ended)."""
        entry = self._cache.get(project_id)
        if not self._live(entry):
            return None
        return entry.items.get(feature_key) or unknown(feature_key)

    async def _entry(self, project_id: uuid.UUID) -> _Entry:
        """The project's answers: from memory, else computed (and kept unless a change raced)."""
        entry = self._cache.get(project_id)
        return entry if self._live(entry) else await self._fill(project_id)

    async def check(self, project_id: uuid.UUID, feature_key: str) -> Entitlement:
        """entitlement(projectId, featureKey) and GET /v1/entitlements/{featureKey}."""
        hit = self.cached(project_id, feature_key)
        if hit is not None:
            return hit
        return (await self._fill(project_id)).items.get(feature_key) or unknown(feature_key)

    async def check_body(self, project_id: uuid.UUID, feature_key: str) -> bytes:
        """`check` as the HTTP answer's body (GET /v1/entitlements/{featureKey})."""
        entry = await self._entry(project_id)
        return entry.bodies.get(feature_key) or encode(unknown(feature_key))

    async def all(self, project_id: uuid.UUID) -> list[Entitlement]:
        """entitlements(projectId) and GET /v1/entitlements, by feature key."""
        items = (await self._entry(project_id)).items
        return [items[k] for k in sorted(items)]

    async def _fill(self, project_id: uuid.UUID) -> _Entry:
        generation = self._generation
        state = await subscriptions.load_state(self.payments, project_id)
        now = self.payments.now()
        plan = subscriptions.effective_plan_at(state, now)
        feats = plan.features
        usage = await self._usage(project_id, feats, now)
        items = {k: decide(f, *usage.get(k, (None, None))) for k, f in feats.items()}
        until = subscriptions.next_change(state, plan, now)
        ttl = self.ttl if until is None else min(self.ttl, max((until - now).total_seconds(), 0.0))
        entry = _Entry(time.monotonic() + ttl, until, items, {k: encode(e) for k, e in items.items()})
        if generation == self._generation and ttl > 0:
            if len(self._cache) >= _MAX_PROJECTS:
                self._cache.clear()
            self._cache[project_id] = entry
        return entry

    async def _usage(
        self, project_id: uuid.UUID, feats: Mapping[str, Feature], now: dt.datetime
    ) -> dict[str, tuple[decimal.Decimal, dt.datetime]]:
        """Each METERED feature's total in its current UTC period (the rollups the meters count),
        with the period's end."""
        metered = {k: f for k, f in feats.items() if f.type == "METERED" and f.metric_key and f.period}
        if not metered:
            return {}
        found = await store.metrics_by_key(
            self.payments.db, project_id, {f.metric_key for f in metered.values() if f.metric_key}
        )
        out: dict[str, tuple[decimal.Decimal, dt.datetime]] = {}
        windows: list[tuple[str, periods.Window]] = []
        for k, f in metered.items():
            assert f.period is not None
            assert f.metric_key is not None
            start = quotas.period_start(f.period, now)
            end = quotas.period_end(f.period, start)
            out[k] = (_ZERO, end)
            metric = found.get(f.metric_key)
            if metric is not None:
                windows.append((k, periods.Window(project_id, metric, start, end)))
        if windows:
            async with self.payments.db.raw(project_id=project_id) as conn:
                totals = await periods.units(conn, [w for _, w in windows])
            for (k, w), total in zip(windows, totals, strict=True):
                out[k] = (total, w.end)
        return out
