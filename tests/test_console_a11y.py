"""Accessibility of every console page: axe-core (the npm package, pinned in scripts/axe-core.sh and
installed into a cache outside the repository) runs in headless Chromium on each tenant page, each
platform-admin page and the sign-in form, with data on them; no violation of impact serious or
critical may remain. The script is evaluated through DevTools, which the page's CSP does not
govern, so the console's policy stays as strict as it is served.

Skipped with the reason when npm (to install axe-core) or Chromium is missing.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from ledgerx import ids
from ledgerx.domain.payments import inbox
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.browser import DevTools, axe_violations, chromium, console_open, console_sign_in, set_viewport
from tests.conftest import GQL, LiveServer, sign_up
from tests.fake_stripe import FakeStripe, create_pack, create_plan, deliver, stripe_settings
from tests.tenancy_helpers import make_platform_admin, owner_sql
from tests.test_live_support import live_project, live_settings, record_usage

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def axe_source() -> str:
    if shutil.which("npm") is None and not list(Path.home().glob(".cache/ledgerx/axe-core-*/node_modules/axe-core")):
        pytest.skip("npm is missing: scripts/axe-core.sh installs axe-core with it (e.g. apt-get install npm)")
    run = subprocess.run([str(ROOT / "scripts" / "axe-core.sh")], capture_output=True, text=True, timeout=300)
    if run.returncode == 3:
        pytest.skip(run.stderr.strip())
    assert run.returncode == 0, f"scripts/axe-core.sh failed: {run.stderr}"
    return Path(run.stdout.strip()).read_text()


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe) -> Settings:
    return stripe_settings(live_settings(settings), fake)


async def settle(page: DevTools) -> None:
    await page.wait_for("!document.getElementById('main').hasAttribute('aria-busy')")
    await asyncio.sleep(0.3)  # live feeds draw their first snapshot


async def audit(page: DevTools, axe: str, hashes: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for hash_ in hashes:
        await console_open(page, hash_)
        await settle(page)
        violations = await axe_violations(page, axe)
        if violations:
            found[hash_] = violations
    return found


def report(found: dict[str, list[str]]) -> str:
    return "\n".join(f"{page}:\n  " + "\n  ".join(v) for page, v in found.items())


async def test_tenant_pages_and_sign_in_have_no_serious_violations(
    gql: GQL, axe_source: str, live_server: LiveServer
) -> None:
    owner = await sign_up(gql)
    p = await live_project(gql, owner, credit=5000)
    for units in (3, 7, 11):
        await record_usage(gql, owner.token, p.project_id, units, wallet_id=p.wallet_id)
    await gql.ok(
        "mutation($i: CreateBillingRuleInput!) { createBillingRule(input: $i) { id } }",
        {"i": {"walletId": p.wallet_id, "name": "Daily fee", "mode": "DAILY_FLAT", "amount": "10", "timezone": "UTC"}},
        token=owner.token,
    )
    await gql.ok(
        "mutation($i: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $i) { secret } }",
        {"i": {"projectId": p.project_id, "url": "http://127.0.0.1:9/hook", "events": ["*"]}},
        token=owner.token,
    )
    async with chromium() as page:
        await set_viewport(page, 1280, 900)
        # The sign-in form first (signed out).
        await page.send("Page.navigate", {"url": f"{live_server.url}/dashboard"})
        await page.wait_for(
            "document.readyState === 'complete' && document.body.dataset.ready === '1' && !document.getElementById('signin').hidden"
        )
        found: dict[str, list[str]] = {}
        if violations := await axe_violations(page, axe_source):
            found["sign-in"] = violations
        await console_sign_in(page, live_server.url, owner.email, owner.password)
        pages = await page.eval("[...document.querySelectorAll('#nav-tenant a')].map((a) => a.dataset.page)")
        assert len(pages) >= 5, pages
        found.update(await audit(page, axe_source, [f"#/{i}" for i in pages]))
        # An entity page: the wallet with its grants and transactions.
        found.update(await audit(page, axe_source, [f"#/wallets/{p.wallet_id}"]))
    assert not found, "axe-core: serious or critical violations on tenant pages\n" + report(found)


async def test_admin_pages_have_no_serious_violations(
    gql: GQL,
    client: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    fake: FakeStripe,
    axe_source: str,
    live_server: LiveServer,
) -> None:
    admin = await make_platform_admin(gql, settings)
    pack = await create_pack(gql, admin, credits=1000, amount=1500)
    await create_plan(gql, admin, name="A11y plan", quotas={"api_calls": 1000})
    await gql.ok(
        "mutation($i: CreateCouponInput!) { createCoupon(input: $i) { id } }",
        {"i": {"code": f"A11Y-{secrets.token_hex(3)}", "name": "A11y", "percentOff": 10, "appliesTo": [pack]}},
        token=admin.token,
    )
    event = fake.event("customer.tax_id.created", {"id": "txi_a11y", "object": "tax_id"})
    assert (await deliver(client, event)).status_code == 200
    await inbox.drain(services.payments)
    (row,) = await owner_sql(settings, "SELECT id FROM webhook_events WHERE stripe_event_id = $1", event["id"])
    async with chromium() as page:
        await set_viewport(page, 1280, 900)
        await console_sign_in(page, live_server.url, admin.email, admin.password)
        pages = await page.eval("[...document.querySelectorAll('#nav-admin a')].map((a) => a.dataset.page)")
        assert pages == ["revenue", "stripe-inbox", "coupons", "plans"]
        hashes = [f"#/{i}" for i in pages] + [f"#/stripe-inbox/{ids.encode('webhook_event', row['id'])}"]
        found = await audit(page, axe_source, hashes)
        # The plan editor and a coupon's archive confirmation, opened.
        await console_open(page, "#/plans")
        await page.eval("document.querySelector('#plan-list button.adm-edit').click() || true")
        await page.wait_for("!document.getElementById('plan-editor').hidden")
        if violations := await axe_violations(page, axe_source):
            found["#/plans (editing)"] = violations
        await console_open(page, "#/coupons")
        await page.eval("document.querySelector('#coupon-list button.adm-archive').click() || true")
        await page.wait_for("!!document.querySelector('#coupon-list button.adm-confirm')")
        if violations := await axe_violations(page, axe_source):
            found["#/coupons (confirming)"] = violations
    assert not found, "axe-core: serious or critical violations on admin pages\n" + report(found)
