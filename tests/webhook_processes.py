"""Real `ledgerx serve` processes delivering outbound webhooks, for the crash and two-instance tests.

- `fresh_database`: a database of its own (migrated), so the spawned delivery workers see only the
  test's deliveries (a worker serves every project of its database).
- `Recorder`: a receiver (uvicorn in the test's loop, on a port chosen up front so it can start
  late: until then the port refuses connections) that keeps every request's path, `webhook-id`,
  client port and the status it answered. `/ok` answers 200; `/flaky/<n>` 500 for the first n
  requests of each `webhook-id`, then 200; `/delay/<ms>` 200 after that many milliseconds; `/hold`
  parks requests while `holding` is set (a worker is then mid-send with its lease taken) and
  answers 200 once released.
- `Ledgerx`: `python -m ledgerx.cli serve` with WORKER_ENABLED (its delivery worker runs), output to
  a file; killed with SIGKILL or stopped with SIGTERM, by pid.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import uvicorn

from ledgerx.db.engine import asyncpg_dsn
from ledgerx.db.migrate import upgrade
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


@asynccontextmanager
async def fresh_database(admin_url: str) -> AsyncIterator[str]:
    name = f"lxwh_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, query = admin_url.partition("?")
    url = base[: base.rfind("/") + 1] + name + ("?" + query if query else "")
    try:
        await asyncio.to_thread(upgrade, url)
        yield url
    finally:
        admin = await asyncpg.connect(asyncpg_dsn(admin_url))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@dataclasses.dataclass(frozen=True)
class Arrival:
    path: str
    webhook_id: str
    client_port: int
    status: int  # what the receiver answered (0: the worker was gone before the answer)
    at: float  # when the request arrived


class Recorder:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.arrivals: list[Arrival] = []
        self.holding = asyncio.Event()
        self._released = asyncio.Event()
        self._seen: Counter[tuple[str, str]] = Counter()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def hold(self) -> None:
        self._released.clear()
        self.holding.set()

    def release(self) -> None:
        self.holding.clear()
        self._released.set()

    def of(self, path: str, *, answered: int | None = None) -> list[Arrival]:
        return [a for a in self.arrivals if a.path == path and (answered is None or a.status == answered)]

    async def __call__(
        self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
    ) -> None:
        if scope["type"] != "http":
            return
        while True:
            msg = await receive()
            if not msg.get("more_body"):
                break
        at = time.time()
        path: str = scope["path"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        hook_id = headers.get("webhook-id", "")
        port = int(scope["client"][1]) if scope.get("client") else 0
        status = 200
        if path.startswith("/flaky/"):
            self._seen[(path, hook_id)] += 1
            status = 500 if self._seen[(path, hook_id)] <= int(path.rsplit("/", 1)[1]) else 200
        elif path.startswith("/delay/"):
            await asyncio.sleep(int(path.rsplit("/", 1)[1]) / 1000)
        elif path == "/hold" and self.holding.is_set():
            self.arrivals.append(Arrival(path, hook_id, port, 0, at))  # parked: no answer yet
            await self._released.wait()
            return  # its worker is gone (killed); nobody reads an answer
        self.arrivals.append(Arrival(path, hook_id, port, status, at))
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok" if status == 200 else b"no"})

    async def start(self) -> None:
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, log_config=None, lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        for _ in range(250):
            if self._server.started:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the receiver did not start")

    async def stop(self) -> None:
        self._released.set()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.force_exit = True
            await self._task


class Ledgerx:
    """One `ledgerx serve` process with its delivery worker."""

    def __init__(self, name: str, database_url: str, redis_url: str, data_dir: Path, **env: str) -> None:
        self.name = name
        self.port = free_port()
        self.log = data_dir / f"{name}.log"
        keep = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "REDIS_URL", "LEDGERX_ENV") and not k.startswith(("LEDGERX_", "OUTBOUND_"))
        }
        keep.update(
            DATABASE_URL=database_url,
            REDIS_URL=redis_url,
            REDIS_PREFIX=f"lxwh:{secrets.token_hex(4)}:",
            LEDGERX_DATA_DIR=str(data_dir),
            WORKER_ENABLED="true",
            SCHEDULER_ENABLED="false",
            LOG_LEVEL="WARNING",
            **env,
        )
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ledgerx.cli", "serve", "--port", str(self.port)],
                cwd=ROOT,
                env=keep,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ready(self, timeout: float = 120) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.output()[-3000:]}")
                try:
                    if (await client.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        self.kill()
        raise AssertionError(f"{self.name} did not become ready:\n{self.output()[-3000:]}")

    def client_ports(self, receiver_port: int) -> set[int]:
        """Local ports of this process's open connections to the receiver."""
        found = set()
        for c in psutil.Process(self.pid).net_connections(kind="tcp"):
            if c.raddr and c.raddr.port == receiver_port:
                found.add(c.laddr.port)
        return found

    def kill(self) -> None:
        """SIGKILL: no shutdown, no flush, nothing handed over."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")


async def deliveries(database_url: str, project_id: uuid.UUID) -> list[asyncpg.Record]:
    """Every delivery of the project with its endpoint's URL, as the table owner."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return list(
            await conn.fetch(
                "SELECT d.*, e.url, o.id AS event FROM webhook_deliveries d"
                " JOIN webhook_endpoints e ON e.id = d.endpoint_id JOIN webhook_outbox o ON o.id = d.event_id"
                " WHERE d.project_id = $1 ORDER BY d.id",
                project_id,
            )
        )
    finally:
        await conn.close()


async def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:  # noqa: ASYNC109
    """Until `check()` (a value or an awaitable) is true; its value."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not met in {timeout:g} s: {what}")
        await asyncio.sleep(0.1)
