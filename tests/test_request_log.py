"""One JSON log line per request (and per websocket, when it closes), written by the middleware."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from ledgerx.logs import JsonFormatter
from tests.conftest import GQL, LiveServer, sign_up


class _Lines(logging.Handler):
    """Formats at emit time, as the real handler does (the request id is read from the context then)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def access_lines() -> Iterator[list[dict[str, Any]]]:
    handler = _Lines()
    logger = logging.getLogger("ledgerx.access")
    previous = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


async def test_each_request_is_one_json_line_with_its_operation(
    client: httpx.AsyncClient, access_lines: list[dict[str, Any]]
) -> None:
    r = await client.post(
        "/graphql",
        json={"query": "query WhoAmI { __typename }"},
        headers={"X-Request-Id": "req-log-test-0001"},
    )
    assert r.status_code == 200
    r = await client.get("/healthz")
    assert r.status_code == 200

    graphql = [line for line in access_lines if line["path"] == "/graphql"]
    assert len(graphql) == 1, access_lines
    line = graphql[0]
    assert line["msg"] == "request"
    assert line["method"] == "POST"
    assert line["status"] == 200
    assert line["request_id"] == "req-log-test-0001"
    assert line["operation"] == "WhoAmI"
    assert isinstance(line["duration_ms"], float | int) and line["duration_ms"] >= 0
    health = [line for line in access_lines if line["path"] == "/healthz"]
    assert len(health) == 1
    assert health[0]["status"] == 200
    assert "operation" not in health[0]
    assert health[0]["request_id"] == r.headers["X-Request-Id"]


async def test_get_logs_the_path_without_the_query_string(
    client: httpx.AsyncClient, access_lines: list[dict[str, Any]]
) -> None:
    r = await client.get(
        "/graphql",
        params={"query": "query Named($x: String) { __typename }", "variables": json.dumps({"x": "secret-value"})},
        headers={"Accept": "application/json"},
    )
    assert r.status_code == 200
    (line,) = [line for line in access_lines if line["path"] == "/graphql"]
    assert line["method"] == "GET"
    assert line["operation"] == "Named"
    assert "secret-value" not in json.dumps(access_lines)


async def test_a_failed_request_is_logged_with_its_status(
    client: httpx.AsyncClient, access_lines: list[dict[str, Any]]
) -> None:
    r = await client.post("/graphql", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    (line,) = [line for line in access_lines if line["path"] == "/graphql"]
    assert line["status"] == 400


async def test_a_websocket_is_logged_once_when_it_closes(
    gql: GQL, live_server: LiveServer, access_lines: list[dict[str, Any]]
) -> None:
    user = await sign_up(gql)
    access_lines.clear()
    async with websockets.connect(live_server.ws_url, subprotocols=["graphql-transport-ws"]) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {user.token}"}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connection_ack"
        for i, name in enumerate(["First", "Second", "First"]):
            await ws.send(
                json.dumps({"id": str(i), "type": "subscribe", "payload": {"query": f"query {name} {{ __typename }}"}})
            )
            while json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] != "complete":
                pass
        assert not [line for line in access_lines if line["path"] == "/graphql"]  # not before it closes
    for _ in range(100):
        if any(line["path"] == "/graphql" for line in access_lines):
            break
        await asyncio.sleep(0.02)
    (line,) = [line for line in access_lines if line["path"] == "/graphql"]
    assert line["msg"] == "websocket"
    assert line["status"] == 101
    assert line["close_code"] == 1000
    assert line["operations"] == 3
    assert line["operation_names"] == ["First", "Second"]
    assert line["request_id"]
