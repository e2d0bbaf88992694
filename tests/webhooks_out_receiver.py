"""A real HTTP receiver for outbound-webhook tests: uvicorn on a local port, in the test's loop.

Paths choose the answer: `/ok` 200, `/fail` 500, `/slow` never answers in time (sleeps a minute),
`/flaky/<n>` 500 for the first n requests of each `webhook-id`, then 200. Every request is kept
(path, headers, body, arrival time).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager, suppress
from typing import Any

import uvicorn

from tests.conftest import free_port

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


class Receiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Received] = []
        self.seen: Counter[str] = Counter()
        self.arrived = asyncio.Event()

    def url(self, path: str = "/ok") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def of(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def wait_for(self, count: int, path: str | None = None, timeout: float = 10.0) -> list[Received]:  # noqa: ASYNC109
        """Until `count` requests (to `path`, if given) arrived; the requests."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.received if path is None else self.of(path)
            if len(got) >= count:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} requests to {path or 'any path'}, got {len(got)}")
            self.arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), timeout=max(0.01, deadline - time.monotonic()))

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        path: str = scope["path"]
        self.received.append(Received(path, headers, body, time.time()))
        self.arrived.set()
        status = 200
        if path == "/fail":
            status = 500
        elif path == "/slow":
            await asyncio.sleep(60)
        elif path.startswith("/flaky/"):
            key = headers.get("webhook-id", "")
            self.seen[key] += 1
            status = 500 if self.seen[key] <= int(path.rsplit("/", 1)[1]) else 200
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok" if status == 200 else b"no"})


@asynccontextmanager
async def running_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    config = uvicorn.Config(receiver, host="127.0.0.1", port=receiver.port, log_config=None, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield receiver
    finally:
        server.should_exit = True
        server.force_exit = True  # /slow requests would hold a graceful shutdown for a minute
        await task
