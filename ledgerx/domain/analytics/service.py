"""The live analytics service one app instance holds (`services.live`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable

from ledgerx.db.engine import Database
from ledgerx.domain import topics
from ledgerx.domain.analytics.hub import BusSource, Listen, LiveHub, Watcher, utcnow
from ledgerx.domain.analytics.live import ProjectLive, project_live
from ledgerx.domain.analytics.revenue import RevenueLive, revenue_live
from ledgerx.domain.events import EventBus

# Payments publish per project (subscriptions; payments and refunds); platform revenue listens to all of them.
REVENUE_PATTERNS = (topics.SUBSCRIPTION_PATTERN, topics.PAYMENTS_PATTERN)


class LiveAnalytics:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        *,
        interval: float = 0.25,
        refresh: float = 5.0,
        recheck: float = 30.0,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.db = db
        self.bus = bus
        self.recheck = recheck
        self.hub = LiveHub(interval=interval, refresh=refresh, clock=clock)
        self._bus_source = BusSource(bus)
        self._pattern_source = BusSource(bus, pattern=True)

    @property
    def clock(self) -> Callable[[], dt.datetime]:
        return self.hub.clock

    @clock.setter
    def clock(self, value: Callable[[], dt.datetime]) -> None:
        self.hub.clock = value

    def project_listens(self, project_id: uuid.UUID) -> list[Listen]:
        src = self._bus_source
        return [
            Listen(src, topics.project_transactions(project_id)),
            Listen(src, topics.project_usage(project_id)),
            Listen(src, topics.project_members(project_id), recheck=True),
        ]

    def revenue_listens(self) -> list[Listen]:
        return [Listen(self._bus_source, topics.PLATFORM_REVENUE)] + [
            Listen(self._pattern_source, p) for p in REVENUE_PATTERNS
        ]

    @contextlib.asynccontextmanager
    async def project_metrics(self, project_id: uuid.UUID, currency: str) -> AsyncIterator[Watcher[ProjectLive]]:
        async def build(now: dt.datetime) -> ProjectLive:
            return await project_live(self.db, project_id, currency, now)

        async with self.hub.watch(
            ("metrics", project_id, currency), lambda: self.project_listens(project_id), build
        ) as w:
            yield w

    @contextlib.asynccontextmanager
    async def revenue(self, currency: str) -> AsyncIterator[Watcher[RevenueLive]]:
        async def build(now: dt.datetime) -> RevenueLive:
            return await revenue_live(self.db, currency, now)

        async with self.hub.watch(("revenue", currency), self.revenue_listens, build) as w:
            yield w

    async def close(self) -> None:
        await self.hub.close()
