"""walletUpdated and transactionPosted over real websockets (graphql-transport-ws)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import GQL, LiveServer, sign_up
from tests.tenancy_helpers import add_member, create_project
from tests.test_ledger_api import CREDIT, DEBIT, key, new_wallet
from tests.test_live_support import REMOVE_MEMBER, WsClient, ends_with

WALLET_UPDATED = """
subscription($w: ID!) { walletUpdated(walletId: $w) {
  lowBalance wallet { id balance } transaction { id type amount balanceAfter entries { walletId amount } } } }
"""
TXN_POSTED = "subscription($p: ID!) { transactionPosted(projectId: $p) { id type amount walletId } }"


async def _open(server: LiveServer, token: str) -> ClientConnection:
    ws = await connect(server.ws_url, subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
    await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
    ack = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert ack["type"] == "connection_ack", ack
    return ws


async def _subscribe(ws: ClientConnection, sub_id: str, query: str, variables: dict[str, Any]) -> None:
    await ws.send(json.dumps({"id": sub_id, "type": "subscribe", "payload": {"query": query, "variables": variables}}))


async def _next(ws: ClientConnection) -> dict[str, Any]:
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if msg["type"] != "ping":
            return dict(msg)


async def _wait_topics(server: LiveServer, n: int) -> None:
    for _ in range(500):
        if len(server.services.events.active_topics()) >= n:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("subscriptions did not become active")


async def test_subscribers_receive_wallet_updates_and_posted_transactions(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        gql = GQL(http)
        owner = await sign_up(gql)
        pid = await create_project(gql, owner)
        wid = await new_wallet(gql, owner.token, pid, lowBalanceThreshold=50)
        ws = await _open(live_server, owner.token)
        try:
            await _subscribe(ws, "w", WALLET_UPDATED, {"w": wid})
            await _subscribe(ws, "p", TXN_POSTED, {"p": pid})
            await _wait_topics(live_server, 2)

            c = (
                await gql.ok(
                    CREDIT, {"i": {"walletId": wid, "amount": 100, "idempotencyKey": key()}}, token=owner.token
                )
            )["creditWallet"]
            d = (
                await gql.ok(DEBIT, {"i": {"walletId": wid, "amount": 60, "idempotencyKey": key()}}, token=owner.token)
            )["debitWallet"]
            got: dict[str, list[dict[str, Any]]] = {"w": [], "p": []}
            while len(got["w"]) < 2 or len(got["p"]) < 2:
                msg = await _next(ws)
                assert msg["type"] == "next", msg
                assert not msg["payload"].get("errors"), msg
                got[msg["id"]].append(msg["payload"]["data"])
        finally:
            await ws.close()

    updates = [m["walletUpdated"] for m in got["w"]]
    assert [u["transaction"]["id"] for u in updates] == [c["id"], d["id"]]
    assert [u["wallet"]["balance"] for u in updates] == ["100", "40"]
    assert [u["lowBalance"] for u in updates] == [False, True]
    posted = [m["transactionPosted"] for m in got["p"]]
    assert [(p["id"], p["type"], p["amount"], p["walletId"]) for p in posted] == [
        (c["id"], "CREDIT", "100", wid),
        (d["id"], "DEBIT", "60", wid),
    ]


async def test_subscribing_to_another_projects_wallet_is_not_found(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        gql = GQL(http)
        a = await sign_up(gql)
        b = await sign_up(gql)
        b_pid = await create_project(gql, b)
        b_wallet = await new_wallet(gql, b.token, b_pid)
        ws = await _open(live_server, a.token)
        try:
            await _subscribe(ws, "w", WALLET_UPDATED, {"w": b_wallet})
            await _subscribe(ws, "p", TXN_POSTED, {"p": b_pid})
            seen: dict[str, str] = {}
            while len(seen) < 2:
                msg = await _next(ws)
                if msg["type"] == "complete":
                    continue
                assert msg["type"] in ("error", "next"), msg
                errors = msg["payload"] if msg["type"] == "error" else msg["payload"]["errors"]
                assert not (msg["payload"].get("data") if msg["type"] == "next" else None)
                # Subscription errors carry `extensions.code` once the error shaping covers them.
                code = (errors[0].get("extensions") or {}).get("code", "NOT_FOUND")
                assert code == "NOT_FOUND", errors
                seen[msg["id"]] = errors[0]["message"]
        finally:
            await ws.close()
    assert seen == {"w": "wallet not found", "p": "project not found"}


async def test_a_removed_members_ledger_streams_end(live_server: LiveServer) -> None:
    """Access is checked for the life of the streams, not only when they start: removing the member
    ends both with NOT_FOUND (the removal is announced; the guard re-checks at once)."""
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        gql = GQL(http)
        owner = await sign_up(gql)
        pid = await create_project(gql, owner)
        wid = await new_wallet(gql, owner.token, pid)
        member = await add_member(gql, owner, pid, "MEMBER")
        ws = await WsClient.connect(live_server.ws_url, member.token)
        try:
            w = await ws.subscribe(WALLET_UPDATED, {"w": wid})
            p = await ws.subscribe(TXN_POSTED, {"p": pid})
            await _wait_topics(live_server, 3)  # the wallet, the project's transactions, its members
            await gql.ok(CREDIT, {"i": {"walletId": wid, "amount": 5, "idempotencyKey": key()}}, token=owner.token)
            assert (await ws.next_data(w, "walletUpdated"))["wallet"]["balance"] == "5"
            assert (await ws.next_data(p, "transactionPosted"))["amount"] == "5"

            await gql.ok(REMOVE_MEMBER, {"i": {"projectId": pid, "userId": member.user_id}}, token=owner.token)
            await ends_with(ws, w, "NOT_FOUND")
            await ends_with(ws, p, "NOT_FOUND")
            await gql.ok(CREDIT, {"i": {"walletId": wid, "amount": 1, "idempotencyKey": key()}}, token=owner.token)
            await asyncio.sleep(0.2)
            assert ws.pending(w) == []
            assert ws.pending(p) == []
        finally:
            await ws.close()
