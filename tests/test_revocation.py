"""Revoking a session (log-out, refresh-token reuse) ends its access tokens at once, not at `exp`.

Over HTTP and over open websockets, on every instance, and while Redis is down (the database
answers then).
"""

from __future__ import annotations

import asyncio
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
