"""Open websockets are only as good as their credential right now, and the server pings them.

Every operation on a socket is authorized as an HTTP request would be at that moment; the socket
is closed (4401) when its credential expires or is revoked, also while it is idle; a client that
stops answering the server's pings is closed (4408).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
from typing import Any

import pytest
import websockets

from ledgerx.domain.ratelimit import Limit
from ledgerx.settings import Settings
from tests.conftest import GQL, LiveServer, SignedIn, sign_up
from tests.tenancy_helpers import add_member, owner_sql
from tests.test_live_support import DEBIT, REMOVE_MEMBER, Closed, WsClient, live_project, live_settings

CREATE_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } secret } }"
REVOKE_KEY = "mutation($id: ID!) { revokeApiKey(id: $id) { id } }"
BALANCE = "query($w: ID!) { wallet(id: $w) { balance } }"
ME = "{ me { id } }"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Fast periodic re-checks of live streams; the socket's own re-check uses the same interval.
    return live_settings(settings, ws_ping_interval=0.0)


async def closed_with(ws: WsClient, wait: float = 10) -> tuple[int | None, str | None]:
    """Wait until the server closed the socket; its (code, reason)."""
    deadline = time.monotonic() + wait
    while ws.closed is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"the socket is still open after {wait}s")
        await asyncio.sleep(0.02)
    return ws.closed


async def run_op(ws: WsClient, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send one operation and return its first message (next or error)."""
    op = await ws.subscribe(query, variables)
    return await ws.recv(op)


async def api_key(gql: GQL, owner: SignedIn, project_id: str, scopes: list[str]) -> tuple[str, str]:
    data = await gql.ok(CREATE_KEY, {"i": {"projectId": project_id, "name": "ws", "scopes": scopes}}, token=owner.token)
    return data["createApiKey"]["apiKey"]["id"], data["createApiKey"]["secret"]


async def balance(gql: GQL, owner: SignedIn, wallet_id: str) -> str:
    return str((await gql.ok(BALANCE, {"w": wallet_id}, token=owner.token))["wallet"]["balance"])


def debit(wallet_id: str) -> dict[str, Any]:
    return {"i": {"walletId": wallet_id, "amount": 25, "idempotencyKey": secrets.token_hex(8)}}


async def test_a_revoked_api_key_closes_its_idle_socket_at_once(gql: GQL, live_server: LiveServer) -> None:
    # Periodic re-checks are far away: only the revocation's announcement can close it in time.
    live_server.services.live.recheck = 3600.0
    owner = await sign_up(gql)
    p = await live_project(gql, owner)
    key_id, secret = await api_key(gql, owner, p.project_id, ["wallets:write", "wallets:read"])
    ws = await WsClient.connect(live_server.ws_url, payload={"authorization": f"Bearer {secret}"})
    try:
        first = await run_op(ws, DEBIT, debit(p.wallet_id))
        assert first["type"] == "next" and not first["payload"].get("errors"), first
        await gql.ok(REVOKE_KEY, {"id": key_id}, token=owner.token)
        code, _ = await closed_with(ws, wait=5)
        assert code == 4401
    finally:
        await ws.close()
    assert await balance(gql, owner, p.wallet_id) == "975"


async def test_an_operation_on_an_open_socket_is_refused_once_its_key_is_revoked(
    gql: GQL, settings: Settings, live_server: LiveServer
) -> None:
    # Revoked behind the API's back (no announcement, no periodic re-check): the next operation
    # itself must find out, as an HTTP request would, once the instance's memory of the verified
    # key has run out (ACCESS_CACHE_TTL_MS bounds a change nobody announced; key_cache.py).
    live_server.services.live.recheck = 3600.0
    owner = await sign_up(gql)
    p = await live_project(gql, owner)
    _, secret = await api_key(gql, owner, p.project_id, ["wallets:write", "wallets:read"])
    ws = await WsClient.connect(live_server.ws_url, payload={"authorization": f"Bearer {secret}"})
    try:
        assert (await run_op(ws, DEBIT, debit(p.wallet_id)))["type"] == "next"
        await owner_sql(settings, "UPDATE api_keys SET revoked_at = now() WHERE public_id = $1", secret.split("_")[1])
        await asyncio.sleep(live_server.services.settings.access_cache_ttl + 0.2)
        op = await ws.subscribe(DEBIT, debit(p.wallet_id))
        # No answer: the socket closes before the operation runs.
        with pytest.raises(Closed):
            await ws.recv(op, wait=5)
        code, _ = await closed_with(ws)
        assert code == 4401
    finally:
        await ws.close()
    assert await balance(gql, owner, p.wallet_id) == "975"  # only the first debit


async def test_a_socket_closes_when_its_access_token_expires(
    gql: GQL, settings: Settings, live_server: LiveServer
) -> None:
    owner = await sign_up(gql)
    # A token living 2 seconds, signed with the same keys (as with ACCESS_TOKEN_TTL=2s).
    tokens = live_server.services.tokens
    old_ttl, tokens.ttl = tokens.ttl, 2
    try:
        short = await gql.ok(
            "mutation($i: LogInInput!) { logIn(input: $i) { accessToken expiresIn } }",
            {"i": {"email": owner.email, "password": owner.password}},
        )
    finally:
        tokens.ttl = old_ttl
    assert short["logIn"]["expiresIn"] == 2
    ws = await WsClient.connect(live_server.ws_url, short["logIn"]["accessToken"])
    try:
        assert (await run_op(ws, ME))["payload"]["data"]["me"]["id"] == owner.user_id
        started = time.monotonic()
        # Idle: nothing is sent, the server closes it at the token's `exp`.
        code, reason = await closed_with(ws, wait=10)
        assert code == 4401, reason
        assert "expired" in (reason or "")
        assert time.monotonic() - started < 5
    finally:
        await ws.close()


async def test_each_operation_sees_access_as_it_is_now(gql: GQL, live_server: LiveServer) -> None:
    """Access looked up by one operation is not reused by the next one on the same socket."""
    owner = await sign_up(gql)
    p = await live_project(gql, owner)
    member = await add_member(gql, owner, p.project_id, "MEMBER")
    ws = await WsClient.connect(live_server.ws_url, member.token)
    try:
        ok = await run_op(ws, BALANCE, {"w": p.wallet_id})
        assert ok["payload"]["data"]["wallet"]["balance"] == "1000", ok
        await gql.ok(REMOVE_MEMBER, {"i": {"projectId": p.project_id, "userId": member.user_id}}, token=owner.token)
        gone = await run_op(ws, BALANCE, {"w": p.wallet_id})
        assert gone["payload"]["errors"][0]["extensions"]["code"] == "NOT_FOUND", gone
        assert ws.closed is None  # the credential itself is fine
    finally:
        await ws.close()
    assert await balance(gql, owner, p.wallet_id) == "1000"


async def test_socket_operations_spend_the_callers_rate_limit(
    gql: GQL, settings: Settings, live_server: LiveServer
) -> None:
    owner = await sign_up(gql)
    # Three operations' burst, refilling one per ~17 minutes: as for HTTP requests (gateway.admit).
    live_server.services.limits.default = Limit(3, 0.001)
    ws = await WsClient.connect(live_server.ws_url, owner.token)
    try:
        answers = [await run_op(ws, ME) for _ in range(5)]
        codes = [(a["payload"][0]["extensions"]["code"] if a["type"] == "error" else "ok") for a in answers]
        assert "RATE_LIMITED" in codes and codes[0] == "ok", codes
        assert ws.closed is None  # refused operations, not a closed socket
    finally:
        await ws.close()


# -- pings -----------------------------------------------------------------------------------------


async def _read_types(ws: Any, seen: list[str]) -> None:
    """Read (and never answer) until the server closes the socket."""
    while True:
        seen.append(json.loads(await ws.recv())["type"])


@pytest.fixture
def ping_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, ws_ping_interval=0.3, ws_pong_timeout=0.5)


async def test_a_client_that_stops_answering_pings_is_closed_and_one_that_answers_stays(
    gql: GQL, live_server: LiveServer, ping_settings: Settings
) -> None:
    live_server.services.settings = ping_settings
    user = await sign_up(gql)
    # This client answers pings (WsClient does, as graphql-ws clients do).
    polite = await WsClient.connect(live_server.ws_url, user.token)
    # This one reads the server's messages but never answers.
    mute = await websockets.connect(live_server.ws_url, subprotocols=["graphql-transport-ws"])  # type: ignore[attr-defined]
    try:
        await mute.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {user.token}"}}))
        assert json.loads(await asyncio.wait_for(mute.recv(), 5))["type"] == "connection_ack"
        seen: list[str] = []
        with pytest.raises(websockets.ConnectionClosed) as closed:  # type: ignore[attr-defined]
            await asyncio.wait_for(_read_types(mute, seen), 10)
        assert "ping" in seen
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408
        # The answering client is still connected and served.
        assert polite.closed is None
        assert (await run_op(polite, ME))["payload"]["data"]["me"]["id"] == user.user_id
    finally:
        await polite.close()
        await mute.close()
