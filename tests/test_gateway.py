"""Rate limits at the gateway: exact token-bucket behaviour, headers, 429, sharing and Redis outages."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ledgerx import metrics
from ledgerx.app import create_app
from ledgerx.domain.ratelimit import Limit, RateLimiter, lease_size
from ledgerx.services import Services, make_redis
from ledgerx.settings import Settings
from tests.conftest import GQL, sign_up
from tests.tcp_proxy import CuttableProxy


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_bucket_admits_exactly_the_burst_then_refills_at_the_rate(services: Services) -> None:
    clock = Clock()
    limiter = RateLimiter(services.redis, prefix=services.settings.redis_prefix, clock=clock)
    limit = Limit(capacity=5, per_second=2.0)
    results = [await limiter.hit("k", limit) for _ in range(7)]
    assert [r.allowed for r in results] == [True] * 5 + [False] * 2
    assert [r.remaining for r in results[:5]] == [4, 3, 2, 1, 0]
    assert results[5].retry_after_ms == 500  # one token at 2/s
    clock.now += 0.499
    assert not (await limiter.hit("k", limit)).allowed
    clock.now += 0.001
    assert (await limiter.hit("k", limit)).allowed  # exactly one token after 500 ms
    assert not (await limiter.hit("k", limit)).allowed
    clock.now += 60  # refill caps at the burst
    assert [(await limiter.hit("k", limit)).allowed for _ in range(6)] == [True] * 5 + [False]
    # Costs larger than one token.
    clock.now += 60
    assert (await limiter.hit("k", limit, cost=5)).allowed
    assert not (await limiter.hit("k", limit, cost=1)).allowed


@pytest.fixture
async def strict(settings: Settings) -> AsyncIterator[tuple[Services, GQL]]:
    svc = Services.build(dataclasses.replace(settings, rate_limit_burst=3, rate_limit_per_second=1.0))
    transport = httpx.ASGITransport(app=create_app(svc.settings, svc))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield svc, GQL(c)
    await svc.close()


async def test_headers_and_429(strict: tuple[Services, GQL]) -> None:
    _, gql = strict
    u = await sign_up(gql)
    seen = []
    for _ in range(3):
        await gql.ok("{ me { id } }", token=u.token)
        assert gql.last is not None
        seen.append(int(gql.last.headers["ratelimit-remaining"]))
        assert gql.last.headers["ratelimit-limit"] == "3"
        assert int(gql.last.headers["ratelimit-reset"]) >= 0
    assert seen == [2, 1, 0]
    err = await gql.error("{ me { id } }", token=u.token)
    assert gql.last is not None
    assert gql.last.status_code == 429 and err["code"] == "RATE_LIMITED"
    assert int(gql.last.headers["retry-after"]) >= 1 and gql.last.headers["ratelimit-remaining"] == "0"
    # Another user has a bucket of their own.
    other = await sign_up(gql)
    assert (await gql.ok("{ me { id } }", token=other.token))["me"]["id"] == other.user_id


async def test_project_override_sets_an_api_keys_limit(strict: tuple[Services, GQL], settings: Settings) -> None:
    from tests.tenancy_helpers import create_project, owner_sql

    _, gql = strict
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    created = await gql.ok(
        "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }",
        {"i": {"projectId": pid, "name": "ci", "scopes": ["project:read"]}},
        token=owner.token,
    )
    secret = created["createApiKey"]["secret"]
    from ledgerx import ids

    await owner_sql(
        settings,
        'UPDATE projects SET overrides = \'{"rateLimit": {"burst": 5, "perSecond": 1}}\' WHERE id = $1',
        ids.decode("project", pid),
    )
    statuses = []
    for _ in range(6):
        await gql("query($id: ID!) { project(id: $id) { id } }", {"id": pid}, headers={"X-Api-Key": secret})
        assert gql.last is not None
        statuses.append(gql.last.status_code)
    assert statuses == [200] * 5 + [429]


async def test_two_instances_share_one_limit(settings: Settings) -> None:
    s = dataclasses.replace(settings, rate_limit_burst=4, rate_limit_per_second=0.001)
    a, b = Services.build(s), Services.build(s)
    try:
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(s, a)), base_url="http://a") as ca,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(s, b)), base_url="http://b") as cb,
        ):
            u = await sign_up(GQL(ca))
            codes = []
            for i in range(8):
                r = await (ca if i % 2 == 0 else cb).post(
                    "/graphql", json={"query": "{ me { id } }"}, headers={"Authorization": f"Bearer {u.token}"}
                )
                codes.append(r.status_code)
            assert codes == [200] * 4 + [429] * 4
    finally:
        await a.close()
        await b.close()


async def test_requests_survive_a_redis_outage_and_the_limiter_recovers(
    settings: Settings, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = CuttableProxy(redis_url)
    await proxy.start()
    svc = Services.build(dataclasses.replace(settings, redis_url=proxy.url, rate_limit_burst=1000))
    svc.limiter.RETRY_REDIS_AFTER_S = 0.05
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(svc.settings, svc)), base_url="http://t"
        ) as c:
            gql = GQL(c)
            u = await sign_up(gql)
            await gql.ok("{ me { id } }", token=u.token)
            await proxy.cut()
            with caplog.at_level(logging.WARNING, logger="ledgerx.ratelimit"):
                for _ in range(5):
                    assert (await gql.ok("{ me { id } }", token=u.token))["me"]["id"] == u.user_id
                    assert gql.last is not None and "ratelimit-remaining" in gql.last.headers
                    await asyncio.sleep(0.06)
            assert svc.limiter.degraded
            assert metrics.RATELIMIT_DEGRADED._value.get() == 1
            warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
            assert len(warnings) == 1  # once per outage, not per request
            await proxy.restore()
            await asyncio.sleep(0.06)
            await gql.ok("{ me { id } }", token=u.token)
            assert not svc.limiter.degraded
            assert metrics.RATELIMIT_DEGRADED._value.get() == 0
            # Shared state is back in Redis: the bucket key exists there again.
            direct = make_redis(redis_url)
            try:
                keys = await direct.keys(f"{settings.redis_prefix}rl:gw:user:*")
            finally:
                await direct.aclose()
            assert keys
    finally:
        await svc.close()
        await proxy.cut()


async def test_local_fallback_still_limits(services: Services) -> None:
    dead = make_redis("redis://127.0.0.1:1/0")
    limiter = RateLimiter(dead, prefix="x:", clock=Clock())
    try:
        results = [await limiter.hit("k", Limit(3, 1.0)) for _ in range(4)]
    finally:
        await dead.aclose()
    assert [r.allowed for r in results] == [True, True, True, False]
    assert all(r.degraded for r in results)


async def test_leased_tokens_never_admit_more_than_the_shared_bucket_holds(services: Services) -> None:
    """A fast limit is spent through leases (several tokens per round trip, spent from memory);
    two instances hammering one key still admit exactly the bucket, never more."""
    clock = Clock()  # frozen: no refill while they spend
    a = RateLimiter(services.redis, prefix=services.settings.redis_prefix, clock=clock)
    b = RateLimiter(services.redis, prefix=services.settings.redis_prefix, clock=clock)
    limit = Limit(capacity=1000, per_second=1000.0)
    assert lease_size(limit) == 50
    key = f"lease:{secrets.token_hex(4)}"
    script = a._script
    round_trips = 0

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal round_trips
        round_trips += 1
        return await script(*args, **kwargs)

    a._script = counting  # type: ignore[method-assign]
    by_a = by_b = 0
    for _ in range(500):
        by_a += (await a.hit(key, limit)).allowed
        by_b += (await b.hit(key, limit)).allowed
    assert (by_a, by_b) == (500, 500)  # the whole bucket, shared
    assert round_trips <= 1000 // 50  # a took its 500 in leases of 50 (at most one per 50 admitted)
    # Nothing is left: each instance's next request asks Redis and is refused, lease or not.
    assert not (await a.hit(key, limit)).allowed
    assert not (await b.hit(key, limit)).allowed
    # A slow limit keeps one round trip per request (the default 20/s is one token per lease), and
    # so does a check that reads a flag (a session's revocation).
    assert lease_size(Limit(120, 20.0)) == 1
