"""liveMetrics: a full snapshot on subscribe, then updates as events happen; authorization."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from ledgerx.domain import topics
from ledgerx.ids import decode
from ledgerx.settings import Settings
from tests.conftest import GQL, LiveServer, sign_up
from tests.tenancy_helpers import add_member, make_platform_admin
from tests.test_live_support import (
    CREDIT,
    DEBIT,
    LIVE_METRICS,
    LIVE_REVENUE,
    Closed,
    WsClient,
    live_project,
    live_settings,
    record_usage,
)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return live_settings(settings)


async def test_snapshot_then_updates(gql: GQL, live_server: LiveServer) -> None:
    owner = await sign_up(gql)
    p = await live_project(gql, owner, credit=1000)
    ws = await WsClient.connect(live_server.ws_url, owner.token)
    try:
        op = await ws.subscribe(LIVE_METRICS, {"p": p.project_id})
        first = await ws.next_data(op, "liveMetrics")
        assert first["sequence"] == 1
        assert first["initial"] is True
        assert first["projectId"] == p.project_id
        assert first["currency"] == "CREDITS"
        assert first["totalBalance"] == "1000"
        assert first["walletCount"] == 1
        assert first["wallets"] == [{"walletId": p.wallet_id, "name": "main", "balance": "1000"}]
        assert first["creditsAddedToday"] == "1000"
        assert first["spendToday"] == "0"
        assert first["usage"] == [{"metricKey": "api_calls", "name": "api calls", "units": "0", "events": 0}]
        assert first["activeUsers"] == 1  # the owner: created the project, the wallet, the credit

        # Usage charged to the wallet: the ledger's event wakes the feed; the snapshot is exact.
        await record_usage(gql, owner.token, p.project_id, 7, wallet_id=p.wallet_id)
        upd = await ws.until(op, "liveMetrics", lambda d: d["spendToday"] == "7")
        assert upd["initial"] is False
        assert upd["sequence"] >= 2
        assert upd["events"] >= 1
        assert upd["firstEventAt"] is not None
        assert upd["totalBalance"] == "993"
        assert upd["usage"][0]["units"] == "7"
        assert upd["usage"][0]["events"] == 1

        # A debit (another ledger event) moves balance and spend again.
        await gql.ok(
            DEBIT,
            {"i": {"walletId": p.wallet_id, "amount": 3, "idempotencyKey": secrets.token_hex(6)}},
            token=owner.token,
        )
        upd = await ws.until(op, "liveMetrics", lambda d: d["spendToday"] == "10")
        assert upd["totalBalance"] == "990"

        # Usage without a wallet posts nothing to the ledger: the usage domain's event wakes the feed.
        await record_usage(gql, owner.token, p.project_id, 5)
        await live_server.services.events.publish(*topics.usage_recorded(decode("project", p.project_id)))
        upd = await ws.until(op, "liveMetrics", lambda d: d["usage"][0]["units"] == "12")
        assert upd["usage"][0]["events"] == 2
        assert upd["spendToday"] == "10"
    finally:
        await ws.close()


async def test_sequence_is_per_subscriber_and_late_joiners_get_a_full_snapshot(
    gql: GQL, live_server: LiveServer
) -> None:
    owner = await sign_up(gql)
    p = await live_project(gql, owner, credit=50)
    a = await WsClient.connect(live_server.ws_url, owner.token)
    b = await WsClient.connect(live_server.ws_url, owner.token)
    try:
        op_a = await a.subscribe(LIVE_METRICS, {"p": p.project_id})
        assert (await a.next_data(op_a, "liveMetrics"))["totalBalance"] == "50"
        await gql.ok(CREDIT, {"i": {"walletId": p.wallet_id, "amount": 25, "idempotencyKey": "k1"}}, token=owner.token)
        await a.until(op_a, "liveMetrics", lambda d: d["totalBalance"] == "75")
        op_b = await b.subscribe(LIVE_METRICS, {"p": p.project_id})
        first_b = await b.next_data(op_b, "liveMetrics")
        assert first_b["sequence"] == 1
        assert first_b["initial"] is True
        assert first_b["totalBalance"] == "75"
        assert first_b["creditsAddedToday"] == "75"
    finally:
        await a.close()
        await b.close()


async def test_a_viewer_may_watch_and_an_outsider_is_refused(gql: GQL, live_server: LiveServer) -> None:
    owner = await sign_up(gql)
    p = await live_project(gql, owner)
    viewer = await add_member(gql, owner, p.project_id, "VIEWER")
    outsider = await sign_up(gql)

    ws = await WsClient.connect(live_server.ws_url, viewer.token)
    try:
        op = await ws.subscribe(LIVE_METRICS, {"p": p.project_id})
        assert (await ws.next_data(op, "liveMetrics"))["totalBalance"] == "1000"
    finally:
        await ws.close()

    ws = await WsClient.connect(live_server.ws_url, outsider.token)
    try:
        op = await ws.subscribe(LIVE_METRICS, {"p": p.project_id})
        msg = await ws.recv(op)
        assert msg["type"] == "error", msg
        assert msg["payload"][0]["extensions"]["code"] == "NOT_FOUND"
        # Refused before any data: nothing else arrives for that operation.
        await asyncio.sleep(0.3)
        assert ws.pending(op) == []
        # A project id of the wrong type is bad input.
        op = await ws.subscribe(LIVE_METRICS, {"p": p.wallet_id})
        msg = await ws.recv(op)
        assert msg["type"] == "error"
        assert msg["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    finally:
        await ws.close()


async def test_subscribing_without_credentials_is_refused(live_server: LiveServer) -> None:
    import websockets

    ws = await websockets.connect(live_server.ws_url, subprotocols=["graphql-transport-ws"])
    try:
        await ws.send('{"type":"connection_init"}')
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 4403
    finally:
        await ws.close()
    ws = await websockets.connect(live_server.ws_url, subprotocols=["graphql-transport-ws"])
    try:
        await ws.send('{"type":"connection_init","payload":{"authorization":"Bearer not-a-token"}}')
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 4403
    finally:
        await ws.close()


async def test_live_revenue_is_for_platform_admins(gql: GQL, live_server: LiveServer, settings: Settings) -> None:
    user = await sign_up(gql)
    ws = await WsClient.connect(live_server.ws_url, user.token)
    try:
        op = await ws.subscribe(LIVE_REVENUE, {"c": "usd"})
        msg = await ws.recv(op)
        assert msg["type"] == "error"
        assert msg["payload"][0]["extensions"]["code"] == "FORBIDDEN"
    finally:
        await ws.close()
    admin = await make_platform_admin(gql, settings)
    ws = await WsClient.connect(live_server.ws_url, admin.token)
    try:
        op = await ws.subscribe(LIVE_REVENUE, {"c": "usd"})
        first = await ws.next_data(op, "liveRevenue")
        assert first["currency"] == "USD"
        assert first["sequence"] == 1
        op2 = await ws.subscribe(LIVE_REVENUE, {"c": "CREDITS"})
        msg = await ws.recv(op2)
        assert msg["type"] == "error"
        assert msg["payload"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    finally:
        await ws.close()


async def test_an_api_key_needs_project_read(gql: GQL, live_server: LiveServer) -> None:
    owner = await sign_up(gql)
    p = await live_project(gql, owner)
    create = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret apiKey { id } } }"
    narrow = (
        await gql.ok(
            create, {"i": {"projectId": p.project_id, "name": "usage", "scopes": ["usage:write"]}}, token=owner.token
        )
    )["createApiKey"]
    reader = (
        await gql.ok(
            create, {"i": {"projectId": p.project_id, "name": "read", "scopes": ["project:read"]}}, token=owner.token
        )
    )["createApiKey"]

    ws = await WsClient.connect(live_server.ws_url, narrow["secret"])
    try:
        op = await ws.subscribe(LIVE_METRICS, {"p": p.project_id})
        msg = await ws.recv(op)
        assert msg["type"] == "error"
        assert msg["payload"][0]["extensions"]["code"] == "FORBIDDEN"
    finally:
        await ws.close()

    ws = await WsClient.connect(live_server.ws_url, reader["secret"])
    try:
        op = await ws.subscribe(LIVE_METRICS, {"p": p.project_id})
        assert (await ws.next_data(op, "liveMetrics"))["sequence"] == 1
        # Revoking the key ends the stream at the next re-check.
        await gql.ok(
            "mutation($id: ID!) { revokeApiKey(id: $id) { id } }", {"id": reader["apiKey"]["id"]}, token=owner.token
        )

        # The key's death closes the socket (4401); the stream may first end with UNAUTHENTICATED.
        async def read_until_closed() -> None:
            while True:
                msg = await ws.recv(op, wait=10)
                errors = msg["payload"].get("errors") if msg["type"] == "next" else None
                if errors:
                    assert errors[0]["extensions"]["code"] == "UNAUTHENTICATED"
                assert msg["type"] in ("next", "complete")

        with pytest.raises(Closed) as closed:
            await read_until_closed()
        assert closed.value.args[0][0] == 4401
    finally:
        await ws.close()
