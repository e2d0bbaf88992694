"""Analytics fields: projectAnalytics, revenueAnalytics (platform admins), liveMetrics, liveRevenue.

Authorization (domain/tenancy/access.py): project figures take any role of the project (API keys
with `project:read`); platform revenue takes a platform admin. Live streams are authorized when
they start and stay authorized only while the caller keeps access: the stream ends (an error with
the code, then `complete`) when the access token expires, the API key is revoked, the caller leaves
the project or loses platform admin, or the project is suspended (re-checked every LIVE_RECHECK
seconds, and at once when the project's memberships change).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Annotated, TypeVar

import strawberry

from ledgerx.context import authenticate
from ledgerx.domain.analytics import policy
from ledgerx.domain.analytics.guard import StreamGuard
from ledgerx.domain.analytics.hub import FeedClosed, Snapshot, Update, Watcher
from ledgerx.domain.analytics.project import normalize_currency, project_analytics
from ledgerx.domain.analytics.revenue import revenue_analytics
from ledgerx.domain.errors import AppError, BadInput, Forbidden, Unauthenticated
from ledgerx.domain.tenancy.access import is_platform_admin
from ledgerx.resolvers.guards import project_access, require_platform_admin
from ledgerx.resolvers.streams import graphql_error, member_guard, stream_credential
from ledgerx.schema.analytics import AnalyticsGranularity, LiveMetrics, LiveRevenue, ProjectAnalytics, RevenueAnalytics
from ledgerx.schema.info import Info

S = TypeVar("S", bound=Snapshot)
T = TypeVar("T")

FromArg = Annotated[dt.datetime, strawberry.argument(name="from", description="Start of the range (inclusive).")]
ToArg = Annotated[dt.datetime, strawberry.argument(description="End of the range (exclusive).")]


def _iso_currency(value: str) -> str:
    c = normalize_currency(value)
    if c == "CREDITS":
        raise BadInput("revenue is in an ISO 4217 currency, not CREDITS", field="currency")
    return c


@strawberry.type
class Query:
    @strawberry.field(
        description="A project's credits added and spent, spend by metric, balance history and active users and"
        " API keys over [from, to), bucketed in UTC (definitions: docs/analytics.md)."
    )
    async def project_analytics(
        self,
        info: Info,
        project_id: strawberry.ID,
        from_: FromArg,
        to: ToArg,
        granularity: AnalyticsGranularity = AnalyticsGranularity.DAY,
        currency: str = "CREDITS",
    ) -> ProjectAnalytics:
        access = await project_access(info, project_id, policy.READ)
        result = await project_analytics(
            info.context.services.reads, access.project_id, from_, to, granularity.domain(), currency
        )
        return ProjectAnalytics.of(result)

    @strawberry.field(
        description="Platform revenue over [from, to) (platform admins): MRR and ARR, MRR movements, customer"
        " churn, revenue from payments and paying subscriptions by plan (definitions: docs/analytics.md)."
    )
    async def revenue_analytics(
        self,
        info: Info,
        from_: FromArg,
        to: ToArg,
        granularity: AnalyticsGranularity = AnalyticsGranularity.MONTH,
        currency: str = "USD",
    ) -> RevenueAnalytics:
        await require_platform_admin(info)
        result = await revenue_analytics(
            info.context.services.reads, from_, to, granularity.domain(), _iso_currency(currency)
        )
        return RevenueAnalytics.of(result)


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="A project's live figures: usage per metric over the last minute, spend today, balances,"
        " active users. A full snapshot first, then a snapshot whenever figures change (coalesced: at most a"
        " few messages a second). Ends when the caller loses access to the project or the token expires."
    )
    async def live_metrics(
        self, info: Info, project_id: strawberry.ID, currency: str = "CREDITS"
    ) -> AsyncIterator[LiveMetrics]:
        try:
            access = await project_access(info, project_id, policy.READ)
            cur = normalize_currency(currency)
            guard = member_guard(info, access.project_id, policy.READ)
        except AppError as exc:
            raise graphql_error(exc) from None
        services = info.context.services
        pid = access.project_id
        return _stream(lambda: services.live.project_metrics(pid, cur), guard, LiveMetrics.of)

    @strawberry.subscription(
        description="Platform revenue, live (platform admins): MRR, revenue today and payments as they happen."
        " Same message rules as liveMetrics; ends when the caller stops being a platform admin or the token expires."
    )
    async def live_revenue(self, info: Info, currency: str = "USD") -> AsyncIterator[LiveRevenue]:
        try:
            await require_platform_admin(info)
            cur = _iso_currency(currency)
            credential, expires_at = stream_credential(info)
        except AppError as exc:
            raise graphql_error(exc) from None
        services = info.context.services

        async def recheck() -> None:
            principal = await authenticate(services, credential)
            if principal.kind != "user" or principal.user_id is None:
                raise Unauthenticated("this operation needs a signed-in user, not an API key")
            if not await is_platform_admin(services.db, principal.user_id):
                raise Forbidden("platform admins only")

        guard = StreamGuard(recheck, expires_at=expires_at, interval=services.live.recheck)
        return _stream(lambda: services.live.revenue(cur), guard, LiveRevenue.of)


async def _stream(
    watch: Callable[[], contextlib.AbstractAsyncContextManager[Watcher[S]]],
    guard: StreamGuard,
    convert: Callable[[Update[S]], T],
) -> AsyncGenerator[T, None]:
    """Hold a feed watcher and its guard for the life of the subscription.

    The hub's pacer wakes the watcher when its turn comes (a few subscribers per turn of the event
    loop); it then takes the newest snapshot, and the message is rendered and sent before this
    generator is asked for the next one.
    """
    async with watch() as w:
        task = asyncio.create_task(guard.run(w), name="ledgerx-live-guard")
        try:
            while True:
                try:
                    update = await w.next()
                except FeedClosed:
                    return
                except AppError as exc:
                    raise graphql_error(exc) from None
                yield convert(update)
        finally:
            task.cancel()
