"""`/dashboard`: served with a strict CSP, and driven end to end in headless Chromium.

The browser test starts Debian's `chromium` itself (`scripts/ensure-chromium.sh` installs it when
it can) and speaks the DevTools protocol over the `websockets` client: no Playwright or Selenium.
Without a browser it is skipped with the reason, never passed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os

import httpx
import pytest

from ledgerx.settings import Settings
from tests.browser import chromium, write_file
from tests.conftest import GQL, LiveServer, sign_up
from tests.test_live_support import live_project, live_settings, record_usage


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return live_settings(settings)


async def test_dashboard_page_and_assets(client: httpx.AsyncClient) -> None:
    r = await client.get("/dashboard")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self'" in csp
    assert "'unsafe-inline'" not in csp
    assert "connect-src 'self' ws://testserver wss://testserver" in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    html = r.text
    # No inline script or style, nothing from another origin.
    assert '<script src="/dashboard/dashboard.js" defer></script>' in html
    assert "<script>" not in html
    assert "<style" not in html
    assert "http://" not in html
    assert "https://" not in html
    for element_id in ("signin-form", "project-picker", "spend-today", "total-balance", "usage-events", "usage-chart"):
        assert f'id="{element_id}"' in html

    js = await client.get("/dashboard/dashboard.js")
    assert js.status_code == 200
    assert js.headers["content-type"].startswith("text/javascript")
    assert "graphql-transport-ws" in js.text
    assert "liveMetrics" in js.text
    css = await client.get("/dashboard/dashboard.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert (await client.get("/dashboard/nope.js")).status_code == 404
    assert (await client.get("/dashboard/..%2Fdashboard.py")).status_code == 404
    # A forged Host header is not echoed into the policy.
    odd = await client.get("/dashboard", headers={"host": "evil.example; script-src *"})
    assert "evil" not in odd.headers["content-security-policy"]


def _value(element_id: str) -> str:
    return f"document.getElementById({json.dumps(element_id)}).dataset.value"


async def test_dashboard_in_headless_chromium(gql: GQL, live_server: LiveServer) -> None:
    owner = await sign_up(gql)
    p = await live_project(gql, owner, credit=1000, metrics=("api_calls", "storage_gb"))
    async with chromium() as page:
        await page.send("Page.navigate", {"url": f"{live_server.url}/dashboard"})
        await page.wait_for("document.readyState === 'complete' && !!document.getElementById('signin-form')")
        await page.eval(
            f"""(() => {{
              document.getElementById('email').value = {json.dumps(owner.email)};
              document.getElementById('password').value = {json.dumps(owner.password)};
              document.getElementById('signin-button').click();
              return true;
            }})()"""
        )
        # Signed in, the project picked, the first snapshot drawn.
        await page.wait_for("document.getElementById('status').dataset.state === 'live'")
        assert await page.eval("document.getElementById('project-picker').value") == p.project_id
        await page.wait_for(f"{_value('total-balance')} === '1000'")
        assert await page.eval(_value("spend-today")) == "0"
        assert await page.eval(_value("usage-events")) == "0"
        assert await page.eval("document.getElementById('total-balance').textContent") == "1,000"
        assert await page.eval("document.querySelectorAll('#metrics-table tbody tr').length") == 2
        points_before = int(await page.eval("document.getElementById('usage-chart').dataset.points"))
        assert points_before >= 1

        # Usage recorded through the API: the numbers and the chart move.
        await record_usage(gql, owner.token, p.project_id, 7, wallet_id=p.wallet_id)
        await page.wait_for(f"{_value('spend-today')} === '7'")
        await page.wait_for(f"{_value('usage-events')} === '1'")
        assert await page.eval(_value("usage-units")) == "7"
        assert await page.eval(_value("total-balance")) == "993"
        await record_usage(gql, owner.token, p.project_id, 5, wallet_id=p.wallet_id, metric="storage_gb")
        await page.wait_for(f"{_value('usage-units')} === '12'")
        assert await page.eval(_value("spend-today")) == "12"
        chart = await page.eval(
            "(() => { const c = document.getElementById('usage-chart'); return [c.dataset.points, c.dataset.last]; })()"
        )
        assert int(chart[0]) > points_before
        assert chart[1] == "7,5"
        assert (
            await page.eval(
                "document.querySelector('#metrics-table tr[data-metric=\"storage_gb\"]').cells[2].dataset.value"
            )
            == "5"
        )
        assert int(await page.eval(_value("message-count"))) >= 3
        # The page drew on its canvases and nothing broke the policy or threw.
        assert await page.eval("document.getElementById('balance-chart').dataset.bars") == "1"
        problems = [c for c in page.console() if "Content Security Policy" in c or c.startswith("exception")]
        assert problems == []
        shot = os.environ.get("LEDGERX_DASHBOARD_SCREENSHOT")
        if shot:  # for a look at the page: LEDGERX_DASHBOARD_SCREENSHOT=/tmp/dashboard.png
            await page.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": 1300, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
            )
            await asyncio.sleep(0.3)
            await page.eval("window.dispatchEvent(new Event('resize')) || true")
            data = await page.send("Page.captureScreenshot", {"format": "png"})
            write_file(shot, base64.b64decode(data["data"]))
