"""Headless Chromium over the DevTools protocol, shared by the console's browser tests.

The tests start Debian's `chromium` themselves (`scripts/ensure-chromium.sh` installs it when it
can) and speak the DevTools protocol over the `websockets` client: no Playwright or Selenium.
Without a browser a test is skipped with the reason, never passed.
"""

from __future__ import annotations

import asyncio
import base64
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
        self.port = 0  # the browser's DevTools port (another_tab opens more pages through it)
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
        tools.port = port
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


@contextlib.asynccontextmanager
async def another_tab(page: DevTools, url: str) -> AsyncIterator[DevTools]:
    """A second page of the same browser (same profile: cookies, storage and Web Locks shared)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{page.port}") as http:
        target = (await http.put(f"/json/new?{url}")).json()
    tab = DevTools(await websockets.connect(target["webSocketDebuggerUrl"], max_size=2**26))
    tab.port = page.port
    try:
        for domain in ("Page", "Runtime", "Log"):
            await tab.send(f"{domain}.enable")
        yield tab
    finally:
        await tab.close()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{page.port}") as http:
            with contextlib.suppress(httpx.HTTPError):
                await http.get(f"/json/close/{target['id']}")


# -- the console (/dashboard): helpers for its browser tests and scripts/screenshots.py -------------


async def console_sign_in(page: DevTools, base_url: str, email: str, password: str) -> None:
    """Open the console and sign in through its form; returns once the shell shows the session."""
    await page.send("Page.navigate", {"url": f"{base_url}/dashboard"})
    await page.wait_for(
        "document.readyState === 'complete' && document.body.dataset.ready === '1'"
        " && !document.getElementById('signin').hidden"
    )
    await page.eval(
        f"""(() => {{
          document.getElementById('email').value = {json.dumps(email)};
          document.getElementById('password').value = {json.dumps(password)};
          document.getElementById('signin-button').click();
          return true;
        }})()"""
    )
    await page.wait_for(
        "!document.getElementById('session-bar').hidden && !!document.getElementById('page').dataset.ready"
    )


async def console_open(page: DevTools, hash_: str, within: float = 20) -> None:
    """Go to `#/<page>/...` and wait until the shell says the page finished rendering."""
    page_id = hash_.lstrip("#/").split("/")[0]
    await page.eval(
        f"""(() => {{
          delete document.getElementById('page').dataset.ready;
          const target = {json.dumps(hash_)};
          if (location.hash === target) window.dispatchEvent(new HashChangeEvent('hashchange'));
          else location.hash = target;
          return true;
        }})()"""
    )
    await page.wait_for(
        f"document.getElementById('page').dataset.page === {json.dumps(page_id)}"
        " && document.getElementById('page').dataset.ready === '1'",
        within,
    )


def console_problems(page: DevTools) -> list[str]:
    """What the browser reported that a console page must never cause: CSP violations, uncaught
    exceptions, and errors logged by the page or the browser."""
    out = []
    for e in page.events:
        method = e.get("method")
        if method == "Runtime.exceptionThrown":
            out.append(f"exception: {e['params']['exceptionDetails']}")
        elif method == "Log.entryAdded" and e["params"]["entry"]["level"] == "error":
            out.append(f"log error: {e['params']['entry']['text']} {e['params']['entry'].get('url', '')}")
        elif method == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in e["params"]["args"])
            out.append(f"console.{e['params']['type']}: {args}")
    out += [c for c in page.console() if "Content Security Policy" in c and c not in out]
    return out


async def set_viewport(page: DevTools, width: int, height: int) -> None:
    await page.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    await page.eval("window.dispatchEvent(new Event('resize')) || true")


async def page_overflow(page: DevTools) -> list[str]:
    """Elements that stick out past the viewport's right edge, making the page scroll sideways
    (what is inside a box that scrolls by itself, like a wide table's wrapper, does not count)."""
    result: list[str] = await page.eval(
        """(() => {
          const width = document.documentElement.clientWidth;
          const out = [];
          if (document.documentElement.scrollWidth > width) out.push(`page scrollWidth ${document.documentElement.scrollWidth} > ${width}`);
          const scrolls = (n) => { for (let p = n.parentElement; p; p = p.parentElement) {
            const o = getComputedStyle(p).overflowX; if (o === 'auto' || o === 'scroll' || o === 'hidden') return true; } return false; };
          for (const n of document.querySelectorAll('body *')) {
            const r = n.getBoundingClientRect();
            if (r.width && r.right > width + 1 && !scrolls(n)) {
              out.push(`${n.tagName.toLowerCase()}${n.id ? '#' + n.id : ''}${n.className && typeof n.className === 'string' ? '.' + n.className.split(' ').join('.') : ''} right=${Math.round(r.right)}`);
            }
          }
          return out.slice(0, 20);
        })()"""
    )
    return result


async def screenshot(page: DevTools, path: str, *, full_page: bool = False) -> None:
    params: dict[str, Any] = {"format": "png"}
    if full_page:
        params["captureBeyondViewport"] = True
    data = await page.send("Page.captureScreenshot", params)
    write_file(path, base64.b64decode(data["data"]))


async def axe_violations(
    page: DevTools, axe_source: str, impacts: tuple[str, ...] = ("serious", "critical")
) -> list[str]:
    """Run axe-core (its axe.min.js text) on the current page; the violations of these impacts as
    one line each: rule id, impact, help and the offending elements' selectors. The script is
    evaluated through DevTools, which the page's CSP does not govern."""
    if not await page.eval("typeof window.axe === 'object'"):
        r = await page.send("Runtime.evaluate", {"expression": axe_source, "returnByValue": False})
        if r.get("exceptionDetails"):
            raise AssertionError(f"axe-core did not load: {r['exceptionDetails']}")
    found: list[dict[str, Any]] = await page.eval(
        """axe.run(document, { resultTypes: ['violations'] }).then((r) => r.violations.map((v) => ({
             id: v.id, impact: v.impact, help: v.help,
             targets: v.nodes.map((n) => n.target.join(' ')).slice(0, 8) })))"""
    )
    return [
        f"{v['id']} ({v['impact']}): {v['help']} -> {', '.join(v['targets'])}" for v in found if v["impact"] in impacts
    ]


# -- form and click helpers (console tests) ---------------------------------------------------------


async def fill(page: DevTools, selector: str, value: str) -> None:
    """Type `value` into the input or select matched by `selector` (input and change events fire)."""
    ok = await page.eval(
        f"""(() => {{
          const n = document.querySelector({json.dumps(selector)});
          if (!n) return false;
          n.focus();
          n.value = {json.dumps(value)};
          n.dispatchEvent(new Event('input', {{ bubbles: true }}));
          n.dispatchEvent(new Event('change', {{ bubbles: true }}));
          return true;
        }})()"""
    )
    assert ok, f"nothing matches {selector!r}"


async def click(page: DevTools, selector: str) -> None:
    """Click the element matched by `selector` (asserts there is one)."""
    ok = await page.eval(
        f"""(() => {{ const n = document.querySelector({json.dumps(selector)});
          if (!n) return false; n.click(); return true; }})()"""
    )
    assert ok, f"nothing matches {selector!r}"


async def press_key(page: DevTools, key: str, code: str, key_code: int, modifiers: int = 0) -> None:
    """A real key press through the browser's input pipeline (Tab moves focus, Enter activates)."""
    base = {"key": key, "code": code, "windowsVirtualKeyCode": key_code, "modifiers": modifiers}
    await page.send("Input.dispatchKeyEvent", {"type": "rawKeyDown", **base})
    if key == "Enter":
        await page.send("Input.dispatchKeyEvent", {"type": "char", "text": "\r", **base})
    await page.send("Input.dispatchKeyEvent", {"type": "keyUp", **base})
