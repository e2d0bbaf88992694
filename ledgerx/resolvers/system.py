"""Fields about the server itself."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncGenerator

import strawberry

from ledgerx import __version__
from ledgerx.domain.health import system_health
from ledgerx.resolvers.guards import require_platform_admin
from ledgerx.schema.info import Info
from ledgerx.schema.system_health import SystemHealth


@strawberry.type
class Query:
    @strawberry.field(description="The server's version.")
    def version(self) -> str:
        return __version__

    @strawberry.field(
        description="Database, read replica, Redis, billing scheduler, webhook inbox, outbound deliveries and mail"
        " outbox, as seen from this instance (platform admins)."
    )
    async def system_health(self, info: Info) -> SystemHealth:
        await require_platform_admin(info)
        return SystemHealth.of(await system_health(info.context.services))


@strawberry.type
class Subscription:
    @strawberry.subscription(description="The server's clock every interval: a liveness signal for dashboards.")
    async def heartbeat(self, info: Info, interval_seconds: int = 15) -> AsyncGenerator[dt.datetime, None]:
        info.context.require_principal()
        interval = min(max(interval_seconds, 1), 300)
        while True:
            yield dt.datetime.now(dt.UTC)
            await asyncio.sleep(interval)
