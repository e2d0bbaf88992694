"""Headless Chromium over the DevTools protocol, shared by the console's browser tests.

The tests start Debian's `chromium` themselves (`scripts/ensure-chromium.sh` installs it when it
can) and speak the DevTools protocol over the `websockets` client: no Playwright or Selenium.
Without a browser a test is skipped with the reason, never passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import free_port

CHROMIUM = os.environ.get("LEDGERX_CHROMIUM", "/usr/bin/chromium")


class DevTools:
    """Just enough of the Chrome DevTools protocol: commands with ids, events in a list."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)
            else:
                self.events.append(msg)

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        i = next(self.ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[i] = fut
        await self.ws.send(json.dumps({"id": i, "method": method, "params": params or {}}))
        msg = await asyncio.wait_for(fut, 30)
        if "error" in msg:
            raise AssertionError(f"{method}: {msg['error']}")
        result: dict[str, Any] = msg.get("result", {})
        return result

    async def eval(self, expression: str) -> Any:
        r = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if r.get("exceptionDetails"):
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    async def wait_for(self, expression: str, within: float = 20) -> Any:
        deadline = time.monotonic() + within
        last = None
        while time.monotonic() < deadline:
            last = await self.eval(expression)
            if last:
                return last
            await asyncio.sleep(0.1)
        page = await self.eval("document.body ? document.body.innerText.slice(0, 2000) : ''")
        raise AssertionError(
            f"timed out waiting for {expression!r} (last {last!r}); page:\n{page}\nconsole: {self.console()}"
        )

    def console(self) -> list[str]:
        out = []
        for e in self.events:
            if e.get("method") == "Runtime.consoleAPICalled":
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in e["params"]["args"]))
            elif e.get("method") == "Log.entryAdded":
                out.append(f"{e['params']['entry']['level']}: {e['params']['entry']['text']}")
            elif e.get("method") == "Runtime.exceptionThrown":
                out.append(f"exception: {e['params']['exceptionDetails']}")
        return out

    async def close(self) -> None:
        await self.ws.close()
        self.reader.cancel()
        with contextlib.suppress(BaseException):
            await self.reader


def find_chromium() -> str | None:
    if os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium")


def write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[DevTools]:
    binary = find_chromium()
    if binary is None:
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/ensure-chromium.sh installs Debian's `chromium` as root)")
    port = free_port()
    profile = tempfile.mkdtemp(prefix="lx-chromium-")
    proc = await asyncio.create_subprocess_exec(
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        f"--remote-debugging-port={port}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    tools: DevTools | None = None
    try:
        page_ws = None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(300):
                if proc.returncode is not None:
                    err = (await proc.stderr.read()).decode(errors="replace") if proc.stderr else ""
                    pytest.fail(f"chromium exited with {proc.returncode}: {err[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    targets = (await http.get("/json/list")).json()
                    pages = [t for t in targets if t.get("type") == "page"]
                    if pages:
                        page_ws = pages[0]["webSocketDebuggerUrl"]
                        break
                await asyncio.sleep(0.1)
        assert page_ws, "chromium did not open its DevTools endpoint"
        ws = await websockets.connect(page_ws, max_size=2**26)
        tools = DevTools(ws)
        for domain in ("Page", "Runtime", "Log"):
            await tools.send(f"{domain}.enable")
        yield tools
    finally:
        if tools is not None:
            await tools.close()
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        shutil.rmtree(profile, ignore_errors=True)
