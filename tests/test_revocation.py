"""Revoking a session (log-out, refresh-token reuse) ends its access tokens at once, not at `exp`.

Over HTTP and over open websockets, on every instance, and while Redis is down (the database
answers then).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from ledgerx.app import create_app
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, LiveServer, sign_up
from tests.tcp_proxy import CuttableProxy
from tests.test_live_support import WsClient, app_instance

ME = "{ me { id } }"
REFRESH = "mutation($t: String) { refreshSession(refreshToken: $t) { accessToken refreshToken } }"
LOG_OUT = "mutation($t: String) { logOut(refreshToken: $t) }"


async def me_code(gql: GQL, token: str) -> str:
    body = await gql(ME, token=token)
    if not body.get("errors"):
        return "ok"
    return str(body["errors"][0]["extensions"]["code"])


async def closed_with(ws: WsClient, wait: float = 10) -> tuple[int | None, str | None]:
    deadline = time.monotonic() + wait
    while ws.closed is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"the socket is still open after {wait}s")
        await asyncio.sleep(0.02)
    return ws.closed


async def test_log_out_ends_the_sessions_access_tokens_over_http(gql: GQL) -> None:
    u = await sign_up(gql)
    other = await sign_up(gql)
    assert await me_code(gql, u.token) == "ok"
    assert (await gql.ok(LOG_OUT, {"t": u.refresh}))["logOut"] is True
    body = await gql(ME, token=u.token)
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", body
    assert "signed out" in body["errors"][0]["message"]
    # Only that session: another user's token is untouched.
    assert await me_code(gql, other.token) == "ok"


async def test_a_new_sign_in_after_log_out_works(gql: GQL) -> None:
    u = await sign_up(gql)
    await gql.ok(LOG_OUT, {"t": u.refresh})
    login = await gql.ok(
        "mutation($i: LogInInput!) { logIn(input: $i) { accessToken } }",
        {"i": {"email": u.email, "password": u.password}},
    )
    assert await me_code(gql, login["logIn"]["accessToken"]) == "ok"
    assert await me_code(gql, u.token) == "UNAUTHENTICATED"


async def test_refresh_token_reuse_ends_every_access_token_of_the_family(gql: GQL) -> None:
    u = await sign_up(gql)
    first = (await gql.ok(REFRESH, {"t": u.refresh}))["refreshSession"]
    second = (await gql.ok(REFRESH, {"t": first["refreshToken"]}))["refreshSession"]
    for token in (u.token, first["accessToken"], second["accessToken"]):
        assert await me_code(gql, token) == "ok"
    # The first refresh token again: it leaked. The whole family dies, access tokens included.
    reuse = await gql(REFRESH, {"t": u.refresh})
    assert reuse["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    for token in (u.token, first["accessToken"], second["accessToken"]):
        assert await me_code(gql, token) == "UNAUTHENTICATED"


async def test_log_out_closes_the_sessions_open_websockets_on_every_instance(
    gql: GQL, settings: Settings, live_server: LiveServer
) -> None:
    # Periodic re-checks far away: the announcement must do it, on this instance and another one.
    live_server.services.live.recheck = 3600.0
    u = await sign_up(gql)
    other = await sign_up(gql)
    async with app_instance(dataclasses.replace(settings, live_recheck=3600.0)) as second:
        here = await WsClient.connect(live_server.ws_url, u.token)
        there = await WsClient.connect(second.ws_url, u.token)
        bystander = await WsClient.connect(live_server.ws_url, other.token)
        try:
            await gql.ok(LOG_OUT, {"t": u.refresh})
            assert (await closed_with(here, 5))[0] == 4401
            assert (await closed_with(there, 5))[0] == 4401
            assert bystander.closed is None
            # Connecting again with the dead token is refused.
            with pytest.raises(Exception, match=r"4403|connection_ack"):
                await WsClient.connect(live_server.ws_url, u.token)
        finally:
            for ws in (here, there, bystander):
                await ws.close()


@pytest.fixture
async def cuttable(settings: Settings, redis_url: str) -> AsyncIterator[tuple[Services, CuttableProxy, GQL]]:
    proxy = CuttableProxy(redis_url)
    await proxy.start()
    svc = Services.build(dataclasses.replace(settings, redis_url=proxy.url))
    svc.limiter.RETRY_REDIS_AFTER_S = 0.05
    assert svc.tokens.revocations is not None
    svc.tokens.revocations.RETRY_S = 0.05
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(svc.settings, svc)), base_url="http://t"
        ) as c:
            yield svc, proxy, GQL(c)
    finally:
        await svc.close()
        await proxy.cut()


async def test_a_session_revoked_before_redis_went_down_stays_revoked(
    cuttable: tuple[Services, CuttableProxy, GQL],
) -> None:
    svc, proxy, gql = cuttable
    u = await sign_up(gql)
    still = await sign_up(gql)
    await gql.ok(LOG_OUT, {"t": u.refresh})
    await proxy.cut()
    await asyncio.sleep(0.06)
    for _ in range(3):
        assert await me_code(gql, u.token) == "UNAUTHENTICATED"
        assert svc.limiter.degraded  # served by the local fallback: the database answered
        assert await me_code(gql, still.token) == "ok"


async def test_a_session_revoked_while_redis_is_down_stays_revoked_after_it_returns(
    cuttable: tuple[Services, CuttableProxy, GQL],
) -> None:
    svc, proxy, gql = cuttable
    u = await sign_up(gql)
    await proxy.cut()
    assert (await gql.ok(LOG_OUT, {"t": u.refresh}))["logOut"] is True
    assert await me_code(gql, u.token) == "UNAUTHENTICATED"
    await proxy.restore()
    await asyncio.sleep(0.3)
    assert await me_code(gql, u.token) == "UNAUTHENTICATED"
    assert not svc.limiter.degraded
    revocations = svc.tokens.revocations
    assert revocations is not None and not revocations.pending  # the mark reached Redis


# -- the in-memory mirror of revocation marks (no round trip per signed-in request) ----------------


async def mirror_whole(svc: Services, within: float = 10) -> None:
    revocations = svc.tokens.revocations
    assert revocations is not None
    deadline = time.monotonic() + within
    while revocations.known_revoked("probe") is None:
        if time.monotonic() > deadline:
            raise AssertionError("the revocation mirror did not become whole")
        await asyncio.sleep(0.02)


@pytest.fixture
async def mirrored(
    cuttable: tuple[Services, CuttableProxy, GQL],
) -> AsyncIterator[tuple[Services, CuttableProxy, GQL]]:
    svc, proxy, gql = cuttable
    assert svc.tokens.revocations is not None
    follower = asyncio.create_task(svc.tokens.revocations.follow(retry_s=0.05))
    try:
        await mirror_whole(svc)
        yield svc, proxy, gql
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower


def count_round_trips(svc: Services) -> list[int]:
    """Counts the rate limiter's Redis script calls from now on."""
    calls = [0]
    script = svc.limiter._script

    async def counted(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return await script(*args, **kwargs)

    svc.limiter._script = counted  # type: ignore[method-assign]
    return calls


async def test_with_the_mirror_a_signed_in_request_spends_a_lease_and_log_out_still_ends_it(
    mirrored: tuple[Services, CuttableProxy, GQL], settings: Settings
) -> None:
    svc, _, gql = mirrored
    u = await sign_up(gql)
    calls = count_round_trips(svc)
    for _ in range(50):
        assert await me_code(gql, u.token) == "ok"
    assert calls[0] <= 5, calls  # leases (a fast limit): not one round trip per request
    await gql.ok(LOG_OUT, {"t": u.refresh})
    assert await me_code(gql, u.token) == "UNAUTHENTICATED"  # this instance: at once

    # Another instance hears of it within the announcement's latency.
    v = await sign_up(gql)
    async with app_instance(settings) as second:
        await mirror_whole(second.services)
        other = GQL(httpx.AsyncClient(base_url=second.url))
        try:
            assert await me_code(other, v.token) == "ok"
            await gql.ok(LOG_OUT, {"t": v.refresh})
            deadline = time.monotonic() + 2
            while await me_code(other, v.token) == "ok":
                assert time.monotonic() < deadline, "the other instance still honours a revoked session"
                await asyncio.sleep(0.005)
        finally:
            await other.client.aclose()


async def test_the_mirror_reads_marks_made_before_it_started(gql: GQL, services: Services, settings: Settings) -> None:
    u = await sign_up(gql)
    await gql.ok(LOG_OUT, {"t": u.refresh})  # marked in Redis by `services`, before the instance below starts
    async with app_instance(settings) as second:
        await mirror_whole(second.services)
        revocations = second.services.tokens.revocations
        assert revocations is not None
        sid = str(second.services.tokens.verify(u.token)["sid"])
        assert revocations.known_revoked(sid) is True
        other = GQL(httpx.AsyncClient(base_url=second.url))
        try:
            assert await me_code(other, u.token) == "UNAUTHENTICATED"
        finally:
            await other.client.aclose()


async def test_a_lost_bus_connection_stops_the_mirror_until_it_is_read_again(
    mirrored: tuple[Services, CuttableProxy, GQL], client: httpx.AsyncClient
) -> None:
    """While the pub/sub connection is down a revocation may go unheard: the mirror stops
    answering at once (the gateway asks Redis, or the database), and after the reconnection it
    has read the marks written meanwhile."""
    svc, proxy, gql = mirrored
    revocations = svc.tokens.revocations
    assert revocations is not None
    u = await sign_up(gql)
    sid = str(svc.tokens.verify(u.token)["sid"])
    assert revocations.known_revoked(sid) is False
    await proxy.cut()
    deadline = time.monotonic() + 5
    while revocations.known_revoked(sid) is not None:
        assert time.monotonic() < deadline, "the mirror still answers with its connection gone"
        await asyncio.sleep(0.01)
    # Revoked through another instance (straight to Redis) while this one hears nothing.
    await GQL(client).ok(LOG_OUT, {"t": u.refresh})
    assert await me_code(gql, u.token) == "UNAUTHENTICATED"  # Redis is cut: the database said so
    await proxy.restore()
    await mirror_whole(svc)
    assert revocations.known_revoked(sid) is True
    assert await me_code(gql, u.token) == "UNAUTHENTICATED"
