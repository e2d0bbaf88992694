"""Subscriptions on the event bus end cleanly: no task is left pending (and later destroyed) when a
websocket subscriber completes, disconnects, or the bus closes."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import warnings
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from ledgerx import ids
from ledgerx.domain.events import EventBus
from ledgerx.services import Services
from tests.conftest import GQL, LiveServer, sign_up
from tests.tenancy_helpers import create_project
from tests.test_ledger_api import new_wallet
from tests.test_ledger_subscriptions import TXN_POSTED, WALLET_UPDATED
from tests.test_live_support import LIVE_METRICS

DESTROYED = "Task was destroyed but it is pending"


def _destroyed(caplog: pytest.LogCaptureFixture, caught: list[warnings.WarningMessage]) -> list[str]:
    gc.collect()  # a pending task nobody references any more is reported when it is collected
    logged = [r.getMessage() for r in caplog.records if DESTROYED in r.getMessage()]
    warned = [str(w.message) for w in caught if "never awaited" in str(w.message) or DESTROYED in str(w.message)]
    return logged + warned


async def _until(predicate: Any, what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(what)


def _tasks(prefix: str) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(prefix) and not t.done()]


@pytest.mark.parametrize("how", ["complete", "disconnect"])
async def test_websocket_subscriptions_leave_no_pending_task(
    live_server: LiveServer, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    bus = live_server.services.events
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with httpx.AsyncClient(base_url=live_server.url) as http:
            gql = GQL(http)
            owner = await sign_up(gql)
            pid = await create_project(gql, owner)
            wid = await new_wallet(gql, owner.token, pid)
            # The streams' topics name the wallet or the project (the connection may keep its own).
            mine = (str(ids.decode("project", pid)), str(ids.decode("wallet", wid)))

            def ours() -> set[str]:
                return {t for t in bus.active_topics() if any(m in t for m in mine)}

            for _ in range(3):
                ws = await connect(live_server.ws_url, subprotocols=["graphql-transport-ws"])  # type: ignore[list-item]
                await ws.send(
                    json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {owner.token}"}})
                )
                assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "connection_ack"
                for sid, query, variables in (
                    ("w", WALLET_UPDATED, {"w": wid}),
                    ("p", TXN_POSTED, {"p": pid}),
                    ("l", LIVE_METRICS, {"p": pid}),
                ):
                    payload = {"query": query, "variables": variables}
                    await ws.send(json.dumps({"id": sid, "type": "subscribe", "payload": payload}))
                await _until(lambda: len(ours()) >= 3, "subscriptions did not become active")
                if how == "complete":
                    for sid in ("w", "p", "l"):
                        await ws.send(json.dumps({"id": sid, "type": "complete"}))
                    await _until(lambda: not ours(), "the subscriptions did not end")
                    await ws.close()
                else:
                    ws.transport.abort()  # the client vanishes without a close frame
                    await _until(lambda: not ours(), "the subscriptions did not end")
                await _until(lambda: not _tasks("ledgerx-stream"), "a stream's helper task is still running")
        assert _destroyed(caplog, caught) == []


async def test_closing_the_bus_ends_its_subscribers_and_reader(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    bus = EventBus(services.redis, prefix=services.settings.redis_prefix + "close-test:")
    received: list[Any] = []
    entered = asyncio.Event()

    async def listen() -> None:
        async with bus.subscribe("t") as sub:
            entered.set()
            async for ev in sub:
                received.append(ev)

    listener = asyncio.create_task(listen())
    await asyncio.wait_for(entered.wait(), 5)
    await bus.publish("t", {"n": 1})
    await _until(lambda: received, "the event did not arrive")
    await bus.close()
    # Closing the bus ends every subscription: the listener waiting on one is cancelled and awaited.
    assert listener.done() and listener.cancelled()
    assert _tasks("ledgerx-events") == []
    assert _destroyed(caplog, []) == []
