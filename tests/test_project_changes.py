"""Changes announce themselves from the domain, after commit (ledgerx/domain/changes.py).

A plan change, whichever path makes it (a Stripe webhook, overridePlan), drops the rate-limit,
quota and effective-plan caches of every instance, not only the one that made it; a member removed
by calling the domain function directly (no GraphQL resolver involved) loses their live stream and
their cached access at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from ledgerx import ids
from ledgerx.domain import topics
from ledgerx.domain.actor import Actor
from ledgerx.domain.payments import subscriptions
from ledgerx.domain.ratelimit import Limit
from ledgerx.domain.tenancy import members
from ledgerx.domain.tenancy.access import Access
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, LiveServer, sign_up
from tests.fake_stripe import FakeStripe
from tests.instances import following_instance
from tests.tenancy_helpers import add_member, create_project
from tests.test_ledger_api import new_wallet
from tests.test_live_support import WsClient, ends_with
from tests.test_payments_subscriptions import OVERRIDE, World, settings, subscribe, world

__all__ = ["settings", "world"]  # fixtures of the payments tests, used here (fake is in conftest)

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

FREE_LIMIT = Limit(5, 1.0)  # the world's FREE plan (every project without a subscription)
PRO_LIMIT = Limit(50, 10.0)
PRO_QUOTAS = {"api_calls": 100_000}
WALLETS = "query($p: ID!) { wallets(projectId: $p) { edges { node { id } } } }"
WALLET_UPDATED = "subscription($w: ID!) { walletUpdated(walletId: $w) { wallet { id balance } } }"


@pytest.fixture
async def instance_b(settings: Settings) -> AsyncIterator[Services]:
    async with following_instance(settings) as other:
        yield other


async def plan_caches(b: Services, project_id: str) -> tuple[Limit, dict[str, int], dict[str, int]]:
    """What instance B answers from its caches: (rate limit, quotas, the effective plan's quotas)."""
    pid = ids.decode("project", project_id)
    limit = await b.limits.project_limit(pid)
    quotas = {k: m.limit for k, meters in (await b.quotas.of(pid)).limits.items() for m in meters}
    plan_quotas = dict(await subscriptions.plan_quotas(b.payments, pid))
    return limit, quotas, plan_quotas


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 5.0) -> None:
    # Well inside every cache's TTL (15-30 s): only the announcement can explain a change.
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_a_plan_changed_by_a_stripe_webhook_drops_every_plan_cache_on_another_instance(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, world: World, instance_b: Services
) -> None:
    assert await plan_caches(instance_b, world.project_id) == (FREE_LIMIT, {}, {})  # cached on B now

    # Checkout on A; Stripe's checkout and subscription events are processed by A's webhook inbox.
    await subscribe(gql, client, services, fake, world, world.pro)

    async def b_sees_pro() -> bool:
        return await plan_caches(instance_b, world.project_id) == (PRO_LIMIT, PRO_QUOTAS, PRO_QUOTAS)

    await eventually(b_sees_pro, "instance B kept the old plan's rate limit, quotas or effective plan")
    # And A, which processed the webhook, answers the new plan at once.
    assert await plan_caches(services, world.project_id) == (PRO_LIMIT, PRO_QUOTAS, PRO_QUOTAS)


async def test_an_overridden_plan_drops_every_plan_cache_on_another_instance(
    gql: GQL, services: Services, world: World, instance_b: Services
) -> None:
    assert await plan_caches(instance_b, world.project_id) == (FREE_LIMIT, {}, {})
    assert await plan_caches(services, world.project_id) == (FREE_LIMIT, {}, {})

    override = {
        "projectId": world.project_id,
        "rateLimit": {"burst": 999, "perSecond": 50},
        "monthlyQuotas": [{"metric": "api_calls", "limit": "5"}],
        "reason": "design partner",
    }
    await gql.ok(OVERRIDE, {"i": override}, token=world.admin.token)
    overridden = (Limit(999, 50.0), {"api_calls": 5}, {"api_calls": 5})
    assert await plan_caches(services, world.project_id) == overridden  # this instance: at once

    async def b_sees_the_override() -> bool:
        return await plan_caches(instance_b, world.project_id) == overridden

    await eventually(b_sees_the_override, "instance B kept the plan from before the override")


async def test_a_member_removed_through_the_domain_loses_their_stream_and_cached_access(
    gql: GQL, services: Services, live_server: LiveServer
) -> None:
    services.access_cache.ttl = 3600  # only the announcement can explain what follows
    services.live.recheck = 3600
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    wid = await new_wallet(gql, owner.token, pid)
    member = await add_member(gql, owner, pid, "MEMBER")
    await gql.ok(WALLETS, {"p": pid}, token=member.token)  # the member's access is cached now
    ws = await WsClient.connect(live_server.ws_url, member.token)
    try:
        op = await ws.subscribe(WALLET_UPDATED, {"w": wid})
        members_topic = topics.project_members(ids.decode("project", pid))
        deadline = time.monotonic() + 5
        while members_topic not in services.events.active_topics():
            assert time.monotonic() < deadline, "the stream never listened to its project's access changes"
            await asyncio.sleep(0.01)

        # Not through GraphQL: an operator script, a job or another transport calls the domain.
        project_id, owner_id = ids.decode("project", pid), ids.decode("user", owner.user_id)
        await members.remove_member(
            services.db,
            Actor("user", owner_id),
            Access(project_id, "member", "OWNER", suspended=False),
            project_id,
            ids.decode("user", member.user_id),
            changes=services.changes,
        )

        await ends_with(ws, op, "NOT_FOUND")
        assert (await gql.error(WALLETS, {"p": pid}, token=member.token))["code"] == "NOT_FOUND"
    finally:
        await ws.close()
