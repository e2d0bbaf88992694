"""Helpers for the live analytics tests: a graphql-transport-ws client, projects with metrics and
wallets made through the API, and extra app instances on the same database and Redis.

(No tests here; the module name keeps it among the live analytics test files.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
import websockets

from ledgerx.app import create_app
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, LiveServer, SignedIn, free_port
from tests.tenancy_helpers import create_project

LIVE_METRICS = """
subscription($p: ID!) {
  liveMetrics(projectId: $p) {
    projectId currency at sequence initial events firstEventAt lastEventAt
    usage { metricKey name units events }
    spendToday creditsAddedToday totalBalance walletCount
    wallets { walletId name balance }
    activeUsers activeApiKeys
  }
}
"""

LIVE_REVENUE = """
subscription($c: String!) {
  liveRevenue(currency: $c) {
    currency at mrr arr customers activeSubscriptions revenueToday refundsToday paymentsToday
    recentPayments { id projectId amount currency status createdAt }
    sequence initial events
  }
}
"""


class Closed(Exception):
    pass


class WsClient:
    """A small graphql-transport-ws client (answers pings; collects messages per operation id)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.messages: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read())
        self.closed: tuple[int | None, str | None] | None = None

    @classmethod
    async def connect(cls, url: str, token: str | None = None, *, payload: dict[str, Any] | None = None) -> WsClient:
        ws = await websockets.connect(url, subprotocols=["graphql-transport-ws"], max_size=2**24)
        init: dict[str, Any] = {"type": "connection_init"}
        if payload is not None:
            init["payload"] = payload
        elif token is not None:
            init["payload"] = {"authorization": f"Bearer {token}"}
        await ws.send(json.dumps(init))
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if first["type"] != "connection_ack":
            raise AssertionError(f"expected connection_ack, got {first}")
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg.get("type") == "ping":
                    await self.ws.send(json.dumps({"type": "pong"}))
                    continue
                if "id" in msg:
                    msg["_received"] = time.time()
                    self.messages.setdefault(msg["id"], asyncio.Queue()).put_nowait(msg)
        except websockets.ConnectionClosed as e:
            self.closed = (e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else None)
        finally:
            if self.closed is None:
                self.closed = (None, None)
            for q in self.messages.values():
                q.put_nowait({"type": "_closed"})

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None, op_id: str | None = None) -> str:
        op_id = op_id or secrets.token_hex(4)
        self.messages.setdefault(op_id, asyncio.Queue())
        await self.ws.send(
            json.dumps({"id": op_id, "type": "subscribe", "payload": {"query": query, "variables": variables or {}}})
        )
        return op_id

    async def recv(self, op_id: str, wait: float = 10) -> dict[str, Any]:
        q = self.messages.setdefault(op_id, asyncio.Queue())
        msg = await asyncio.wait_for(q.get(), wait)
        if msg["type"] == "_closed":
            q.put_nowait(msg)
            raise Closed(self.closed)
        return msg

    async def next_data(self, op_id: str, field: str, wait: float = 10) -> dict[str, Any]:
        msg = await self.recv(op_id, wait)
        assert msg["type"] == "next", msg
        assert not msg["payload"].get("errors"), msg
        data: dict[str, Any] = msg["payload"]["data"][field]
        data["_received"] = msg["_received"]
        return data

    async def until(self, op_id: str, field: str, pred: Any, wait: float = 15) -> dict[str, Any]:
        """Read messages until one satisfies `pred` (returns it)."""
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {field} message satisfied the condition in {wait}s")
            data = await self.next_data(op_id, field, left)
            if pred(data):
                return data

    def pending(self, op_id: str) -> list[dict[str, Any]]:
        q = self.messages.setdefault(op_id, asyncio.Queue())
        out = []
        while not q.empty():
            out.append(q.get_nowait())
        return out

    async def complete(self, op_id: str) -> None:
        await self.ws.send(json.dumps({"id": op_id, "type": "complete"}))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(BaseException):
            await self.reader


@dataclasses.dataclass
class LiveProject:
    project_id: str
    wallet_id: str
    owner: SignedIn


DEFINE_METRIC = "mutation($i: DefineMetricInput!) { defineMetric(input: $i) { key } }"
CREATE_WALLET = "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }"
CREDIT = "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id amount } }"
DEBIT = "mutation($i: DebitWalletInput!) { debitWallet(input: $i) { id amount } }"
RECORD = "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { __typename } }"
REMOVE_MEMBER = "mutation($i: RemoveMemberInput!) { removeMember(input: $i) }"


async def ends_with(ws: WsClient, op: str, code: str, wait: float = 10) -> None:
    """Skip data messages; the stream must end with an error carrying `code`, then complete."""
    while True:
        msg = await ws.recv(op, wait)
        if msg["type"] == "next" and not msg["payload"].get("errors"):
            continue
        break
    assert msg["type"] == "next", msg
    assert msg["payload"]["data"] is None
    assert msg["payload"]["errors"][0]["extensions"]["code"] == code
    assert (await ws.recv(op, wait))["type"] == "complete"


async def live_project(
    gql: GQL, owner: SignedIn, *, credit: int = 1000, metrics: tuple[str, ...] = ("api_calls",)
) -> LiveProject:
    pid = await create_project(gql, owner)
    for key in metrics:
        await gql.ok(
            DEFINE_METRIC,
            {
                "i": {
                    "projectId": pid,
                    "key": key,
                    "name": key.replace("_", " "),
                    "aggregation": "SUM",
                    "unitPrice": "1",
                }
            },
            token=owner.token,
        )
    wallet = (await gql.ok(CREATE_WALLET, {"i": {"projectId": pid, "name": "main"}}, token=owner.token))[
        "createWallet"
    ]["id"]
    if credit:
        await gql.ok(
            CREDIT,
            {"i": {"walletId": wallet, "amount": credit, "idempotencyKey": secrets.token_hex(8)}},
            token=owner.token,
        )
    return LiveProject(pid, wallet, owner)


async def record_usage(
    gql: GQL, token: str, project_id: str, units: int | str, *, wallet_id: str | None = None, metric: str = "api_calls"
) -> None:
    i: dict[str, Any] = {
        "projectId": project_id,
        "metricKey": metric,
        "units": str(units),
        "idempotencyKey": secrets.token_hex(8),
    }
    if wallet_id:
        i["walletId"] = wallet_id
    await gql.ok(RECORD, {"i": i}, token=token)


def live_settings(settings: Settings, **kw: Any) -> Settings:
    """Fast feeds for tests: short interval and re-check; no idle refresh unless asked."""
    base: dict[str, Any] = {"live_interval": 0.1, "live_refresh": 60.0, "live_recheck": 0.3}
    base.update(kw)
    return dataclasses.replace(settings, **base)


@contextlib.asynccontextmanager
async def app_instance(settings: Settings) -> AsyncIterator[LiveServer]:
    """Another app instance (own Services, own uvicorn server) on the same database and Redis."""
    svc = Services.build(settings)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings, svc),
            host="127.0.0.1",
            port=port,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
    )
    task = asyncio.create_task(server.serve())
    for _ in range(250):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield LiveServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/graphql", svc)
    finally:
        server.should_exit = True
        await task
        await svc.close()
