"""The operator console (/dashboard) driven in headless Chromium (tests/browser.py), against a real
server, PostgreSQL, Redis, the fake Stripe and a local webhook receiver.

- every tenant page: find a project, wallets with grants and transactions, usage, billing rules
  (create, preview, edit, pause, run), runs, invoices (the signed PDF opens), webhooks (an
  endpoint, a delivery, a redelivery), the audit log; no CSP violation or exception anywhere;
- the session survives a reload (the HttpOnly refresh cookie) and sign-out empties the form;
- at 390 px no page scrolls sideways; every page has a title, one h1, labelled controls;
- the keyboard reaches the menu and activates it, and focus is visible;
- a platform admin with no project sees a helpful state and the admin menu, not a blank page.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from ledgerx.app import create_app
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.browser import (
    DevTools,
    another_tab,
    chromium,
    click,
    console_open,
    console_problems,
    console_sign_in,
    fill,
    page_overflow,
    press_key,
    set_viewport,
)
from tests.conftest import GQL, LiveServer, SignedIn, free_port, sign_up
from tests.fake_stripe import FakeStripe, checkout, create_pack, deliver_and_process, stripe_settings
from tests.tenancy_helpers import create_project, make_platform_admin, owner_sql
from tests.test_live_support import live_project, live_settings, record_usage
from tests.webhooks_out_receiver import Receiver, running_receiver

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

TENANT_PAGES = ("projects", "overview", "wallets", "usage", "rules", "runs", "invoices", "webhooks", "audit")
CREATE_RULE = "mutation($i: CreateBillingRuleInput!) { createBillingRule(input: $i) { id } }"
RUN_RULE = "mutation($id: ID!) { runBillingRule(id: $id) { id status } }"
CREATE_HOOK = "mutation($i: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $i) { endpoint { id } } }"


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe, port: int) -> Settings:
    """Stripe through the fake; signed document links point at the server the browser uses."""
    return live_settings(stripe_settings(settings, fake, public_url=f"http://127.0.0.1:{port}"))


@pytest.fixture
async def server(services: Services, port: int) -> AsyncIterator[LiveServer]:
    app = create_app(services.settings, services)
    srv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", timeout_graceful_shutdown=10)
    )
    task = asyncio.create_task(srv.serve())
    for _ in range(250):
        if srv.started:
            break
        await asyncio.sleep(0.02)
    yield LiveServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/graphql", services)
    srv.should_exit = True
    await task


@pytest.fixture
async def receiver(services: Services) -> AsyncIterator[Receiver]:
    # Deliveries of other tests of this session are not ours to send.
    await owner_sql(services.settings, "UPDATE webhook_deliveries SET status = 'FAILED' WHERE status = 'PENDING'")
    async with running_receiver() as r:
        yield r


async def js(page: DevTools, expression: str) -> Any:
    return await page.eval(expression)


async def text(page: DevTools, selector: str) -> str:
    return str(await page.eval(f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''"))


async def rows(page: DevTools, selector: str) -> list[list[str]]:
    """The body rows of the table inside `selector`, as cell texts."""
    found: list[list[str]] = await page.eval(
        f"""[...document.querySelectorAll({json.dumps(selector + " tbody tr")})]
              .map((tr) => [...tr.cells].map((td) => td.textContent.trim()))"""
    )
    return found


async def submit(page: DevTools, form_selector: str) -> None:
    await click(page, f"{form_selector} button[type=submit]")


async def page_basics(page: DevTools, page_id: str) -> None:
    """What every page must have: its title, one h1, labelled controls, the three landmarks."""
    got = await page.eval(
        """(() => {
          const unlabelled = [...document.querySelectorAll('input, select, textarea')]
            .filter((n) => n.type !== 'hidden' && !n.closest('[hidden]'))
            .filter((n) => !(n.labels && n.labels.length) && !n.getAttribute('aria-label') && !n.getAttribute('aria-labelledby'))
            .map((n) => n.outerHTML.slice(0, 80));
          const nameless = [...document.querySelectorAll('button, a[href]')]
            .filter((n) => !n.closest('[hidden]') && !(n.textContent.trim() || n.getAttribute('aria-label')))
            .map((n) => n.outerHTML.slice(0, 80));
          return {
            title: document.title,
            h1: [...document.querySelectorAll('#page h1')].map((h) => h.textContent),
            unlabelled, nameless,
            landmarks: ['header', 'nav', 'main'].filter((t) => document.querySelector(t) && !document.querySelector(t).hidden),
          };
        })()"""
    )
    assert got["title"].endswith("· LedgerX console"), (page_id, got["title"])
    assert len(got["h1"]) == 1 and got["h1"][0], (page_id, got["h1"])
    assert got["title"].startswith(got["h1"][0].split(" ")[0]), (page_id, got)
    assert got["unlabelled"] == [], (page_id, got["unlabelled"])
    assert got["nameless"] == [], (page_id, got["nameless"])
    assert got["landmarks"] == ["header", "nav", "main"], page_id


@dataclasses.dataclass
class Tenant:
    owner: SignedIn
    project_id: str
    wallet_id: str
    name: str


async def tenant(gql: GQL, *, credit: int = 50_000) -> Tenant:
    """A project with two metrics (calls and tokens, very different scales), a funded wallet and
    usage of both; and a second project, so finding one means something."""
    owner = await sign_up(gql)
    await create_project(gql, owner, name=f"Other {secrets.token_hex(2)}")
    p = await live_project(gql, owner, credit=credit, metrics=("api_calls", "tokens"))
    name = f"Console {secrets.token_hex(3)}"
    await rename_project(gql, owner, p.project_id, name)
    await record_usage(gql, owner.token, p.project_id, 3, wallet_id=p.wallet_id)
    await record_usage(gql, owner.token, p.project_id, 4000, metric="tokens")
    return Tenant(owner, p.project_id, p.wallet_id, name)


async def rename_project(gql: GQL, owner: SignedIn, project_id: str, name: str) -> None:
    await gql.ok(
        "mutation($i: UpdateProjectInput!) { updateProject(input: $i) { id } }",
        {"i": {"projectId": project_id, "name": name}},
        token=owner.token,
    )


async def issued_invoice(gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, t: Tenant) -> None:
    """A credit pack bought through (fake) Stripe Checkout: one issued invoice with a PDF."""
    admin = await make_platform_admin(gql, services.settings)
    pack = await create_pack(gql, admin, credits=500, amount=900)
    session_id = await checkout(gql, t.owner, t.project_id, creditPackId=pack)
    await deliver_and_process(client, services, *fake.complete_checkout(session_id))


async def test_every_tenant_page_in_chromium(
    gql: GQL,
    client: httpx.AsyncClient,
    services: Services,
    fake: FakeStripe,
    server: LiveServer,
    receiver: Receiver,
) -> None:
    t = await tenant(gql)
    await issued_invoice(gql, client, services, fake, t)
    async with chromium() as page:
        await console_sign_in(page, server.url, t.owner.email, t.owner.password)

        # Projects: find this one by a piece of its name, pick it.
        await console_open(page, "#/projects")
        await page_basics(page, "projects")
        assert len(await rows(page, "#project-list")) == 2
        await fill(page, "#page input[name=q]", t.name.split(" ")[1])
        assert [r[0] for r in await rows(page, "#project-list")] == [t.name]
        await click(page, f"button[data-project='{t.project_id}']")
        await page.wait_for("location.hash === '#/overview' && document.getElementById('page').dataset.ready === '1'")
        assert await js(page, "document.getElementById('project-picker').value") == t.project_id
        await page.wait_for("document.getElementById('total-balance').dataset.value !== ''")
        await page_basics(page, "overview")

        # Wallets: the list, then one wallet's grants and transactions.
        await console_open(page, "#/wallets")
        await page_basics(page, "wallets")
        assert (await rows(page, "#wallets-table"))[0][:2] == ["main", "50,497"]  # 50,000 + 500 bought - 3
        await click(page, f"a[data-wallet='{t.wallet_id}']")
        await page.wait_for(
            f"location.hash === '#/wallets/{t.wallet_id}' && document.getElementById('page').dataset.ready === '1'"
        )
        await page_basics(page, "wallet")
        assert await js(page, "document.getElementById('wallet-balance').dataset.value") == "50497"
        grants = await rows(page, "#grants-table")
        assert sorted((g[1], g[2], g[3]) for g in grants) == [("50,000", "49,997", "PAID"), ("500", "500", "PAID")]
        txns = await rows(page, "#transactions-table")
        assert [(x[1], x[3]) for x in txns] == [("CREDIT", "500"), ("DEBIT", "3"), ("CREDIT", "50,000")]

        # Usage: each metric on its own charts; tokens' scale is not the calls'.
        await console_open(page, "#/usage")
        await page_basics(page, "usage")
        await fill(page, "#page select[name=metric]", "api_calls")
        await page.wait_for("document.getElementById('usage-totals').dataset.units === '3'")
        calls_max = await js(page, "document.getElementById('usage-units-chart').dataset.ymax")
        await fill(page, "#page select[name=metric]", "tokens")
        await page.wait_for("document.getElementById('usage-totals').dataset.units === '4000'")
        assert (calls_max, await js(page, "document.getElementById('usage-units-chart').dataset.ymax")) == ("5", "5000")
        assert await js(page, "document.getElementById('usage-events-chart').dataset.ymax") == "1"
        assert await js(page, "document.getElementById('usage-totals').dataset.events") == "1"

        # Billing rules: create one through the form and see its preview.
        await console_open(page, "#/rules")
        await page_basics(page, "rules")
        assert await text(page, "#rules-table") == "No billing rules yet."
        await fill(page, "#create-rule input[name=name]", "Nightly fee")
        await fill(page, "#create-rule select[name=mode]", "DAILY_FLAT")
        assert await js(page, "document.querySelector('#create-rule [data-uses=cron]').hidden") is True
        await fill(page, "#create-rule input[name=amount]", "25")
        await fill(page, "#create-rule input[name=timezone]", "UTC")
        await fill(page, "#create-rule input[name=timeOfDay]", "06:30")
        await submit(page, "#create-rule form")
        await page.wait_for(
            "/^#\\/rules\\/rul_/.test(location.hash) && document.getElementById('page').dataset.ready === '1'"
        )
        rule_id = str(await js(page, "location.hash.split('/')[2]"))
        await page_basics(page, "rule")
        await page.wait_for("document.getElementById('rule-preview').dataset.count === '5'")
        preview = await rows(page, "#rule-preview")
        assert [p[3] for p in preview] == ["25"] * 5
        assert all(p[1].startswith("06:30") or "06:30" in p[1] for p in preview), preview
        # A bad amount: the error names the field, nothing is saved.
        await fill(page, "#edit-rule input[name=amount]", "-5")
        await submit(page, "#edit-rule")
        await page.wait_for("!!document.querySelector('#edit-rule [role=alert]')")
        assert "BAD_USER_INPUT" in await text(page, "#edit-rule [role=alert]")
        # Edit: the preview follows.
        loaded = await js(page, "document.getElementById('rule-preview').dataset.loaded")
        await fill(page, "#edit-rule input[name=amount]", "40")
        await submit(page, "#edit-rule")
        await page.wait_for(
            f"document.getElementById('rule-preview').dataset.loaded !== '{loaded}'"
            " && document.getElementById('rule-saved').textContent !== ''"
            " && document.getElementById('rule-preview').dataset.source === 'saved'"
        )
        assert [p[3] for p in await rows(page, "#rule-preview")] == ["40"] * 5
        assert "Amount40" in (await text(page, "#rule-facts")).replace(" ", "")
        # Run it now: the run is listed.
        await click(page, "#rule-run")
        await page.wait_for("document.querySelectorAll('#runs-table tbody tr').length === 1")
        run = (await rows(page, "#runs-table"))[0]
        assert (run[3], run[4], run[5]) == ("MANUAL", "40", "SUCCEEDED"), run
        # Pause, then resume.
        await click(page, "#rule-toggle")
        await page.wait_for("document.querySelector('#rule-facts .badge').dataset.value === 'PAUSED'")
        assert await text(page, "#rule-toggle") == "Resume"
        await click(page, "#rule-toggle")
        await page.wait_for("document.querySelector('#rule-facts .badge').dataset.value === 'ACTIVE'")
        await click(page, "#rule-toggle")
        await page.wait_for("document.querySelector('#rule-facts .badge').dataset.value === 'PAUSED'")
        listed = await gql.ok(
            "query($id: ID!) { billingRule(id: $id) { status amount } }", {"id": rule_id}, token=t.owner.token
        )
        assert listed["billingRule"] == {"status": "PAUSED", "amount": "40"}

        # Runs: the run shows on the project's runs page too.
        await console_open(page, "#/runs")
        await page_basics(page, "runs")
        assert len(await rows(page, "#all-runs")) == 1, await text(page, "#page")
        (only,) = await rows(page, "#all-runs")
        assert (only[1], only[4], only[6]) == ("Nightly fee", "40", "SUCCEEDED")

        # Invoices: the issued invoice opens its PDF through the signed link.
        await console_open(page, "#/invoices")
        await page_basics(page, "invoices")
        assert len(await rows(page, "#invoices-table")) == 1, await text(page, "#page")
        (inv,) = await rows(page, "#invoices-table")
        assert inv[0].startswith("LX-") and inv[4] == "900 USD" and inv[6] == "PAID", inv
        # A trusted key press (a script's click() would be a blocked pop-up).
        await page.eval("document.querySelector('a.pdf-link').focus() || true")
        await press_key(page, "Enter", "Enter", 13)
        opened = await wait_for_target(page, "/invoices/")
        assert opened.startswith(f"{server.url}/invoices/ivc_") and "signature=" in opened
        async with httpx.AsyncClient() as http:  # no credentials: the signed link alone
            pdf = await http.get(opened)
        assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF-")

        # Webhooks: add an endpoint at the local receiver, send a test event, redeliver it.
        await console_open(page, "#/webhooks")
        await page_basics(page, "webhooks")
        await fill(page, "#create-endpoint input[name=url]", receiver.url())
        await fill(page, "#create-endpoint input[name=description]", "books")
        await submit(page, "#create-endpoint form")
        await page.wait_for("!!document.querySelector('#endpoint-secret code')")
        assert (await text(page, "#endpoint-secret code")).startswith("whsec_")
        await click(page, "#endpoint-secret a")
        await page.wait_for(
            "/^#\\/webhooks\\/whk_/.test(location.hash) && document.getElementById('page').dataset.ready === '1'"
        )
        await page_basics(page, "webhook")
        assert await text(page, "#deliveries") == "No deliveries yet."
        await click(page, "#send-test")
        await page.wait_for("document.querySelectorAll('#deliveries tbody tr').length === 1")
        assert await services.webhook_delivery.run_once() == 1
        await click(page, "#refresh-deliveries")
        await page.wait_for("document.querySelector('#deliveries tbody .badge').dataset.value === 'SUCCEEDED'")
        (first,) = await receiver.wait_for(1)
        await click(page, "#deliveries button[data-delivery]")
        await page.wait_for("!!document.getElementById('webhook-status').dataset.redelivered")
        assert await services.webhook_delivery.run_once() == 1
        got = await receiver.wait_for(2)
        assert got[1].headers["webhook-id"] == first.headers["webhook-id"]  # the same event again
        assert json.loads(got[1].body)["type"] == "webhook.test"

        # Audit log: what was just done is there.
        await console_open(page, "#/audit")
        await page_basics(page, "audit")
        actions = {r[1] for r in await rows(page, "#audit-table")}
        assert len(actions) >= 5, actions
        assert any("billing_rule" in a or "BillingRule" in a or "rule" in a.lower() for a in actions), actions
        assert any("webhook" in a.lower() for a in actions), actions

        assert console_problems(page) == []


async def test_a_usage_rules_preview_follows_usage_as_it_arrives(gql: GQL, server: LiveServer) -> None:
    t = await tenant(gql)
    made = await gql.ok(
        CREATE_RULE,
        {"i": {"walletId": t.wallet_id, "name": "Calls", "mode": "USAGE_BASED", "metricKey": "api_calls"}},
        token=t.owner.token,
    )
    rule_id = made["createBillingRule"]["id"]
    async with chromium() as page:
        await console_sign_in(page, server.url, t.owner.email, t.owner.password)
        await fill(page, "#project-picker", t.project_id)
        await console_open(page, f"#/rules/{rule_id}")
        await page.wait_for("document.getElementById('rule-preview').dataset.count === '5'")
        before = int(await js(page, "document.getElementById('rule-preview').dataset.first"))
        # Usage recorded elsewhere (the API): the preview's next charge grows, no reload, no click.
        await record_usage(gql, t.owner.token, t.project_id, 7, wallet_id=t.wallet_id)
        await page.wait_for(f"document.getElementById('rule-preview').dataset.first === '{before + 7}'")
        assert console_problems(page) == []


RULES_OF = "query($p: ID!) { billingRules(projectId: $p, first: 50) { edges { node { id amount } } } }"
RULE_AMOUNT = "query($id: ID!) { billingRule(id: $id) { amount } }"


def preview_is(region: str, source: str, first: str) -> str:
    """A wait_for expression: the preview region shows 5 runs from `source`, the first charging `first`."""
    return (
        f"(d => d.dataset.count === '5' && d.dataset.source === {json.dumps(source)}"
        f" && d.dataset.first === {json.dumps(first)} && !d.hasAttribute('aria-busy'))"
        f"(document.getElementById({json.dumps(region)}))"
    )


async def test_the_rule_forms_preview_unsaved_input_and_save_nothing(gql: GQL, server: LiveServer) -> None:
    t = await tenant(gql)

    async def rule_count() -> int:
        got = await gql.ok(RULES_OF, {"p": t.project_id}, token=t.owner.token)
        return len(got["billingRules"]["edges"])

    async with chromium() as page:
        await console_sign_in(page, server.url, t.owner.email, t.owner.password)
        await fill(page, "#project-picker", t.project_id)
        await console_open(page, "#/rules")
        assert await js(page, "document.getElementById('draft-preview').getAttribute('aria-live')") == "polite"
        # Typing into the create form: the next runs of the rule it would make, before any save.
        await fill(page, "#create-rule input[name=name]", "Draft fee")
        await fill(page, "#create-rule select[name=mode]", "DAILY_FLAT")
        await fill(page, "#create-rule input[name=timezone]", "UTC")
        await fill(page, "#create-rule input[name=timeOfDay]", "07:15")
        await fill(page, "#create-rule input[name=amount]", "3")
        await fill(page, "#create-rule input[name=amount]", "33")
        await page.wait_for(preview_is("draft-preview", "draft", "33"))
        preview = await rows(page, "#draft-preview")
        assert [p[3] for p in preview] == ["33"] * 5
        assert all(p[1].startswith("07:15") or "07:15" in p[1] for p in preview), preview
        # A bad amount: the server's error, the field marked; still nothing created.
        await fill(page, "#create-rule input[name=amount]", "-3")
        await page.wait_for("document.getElementById('draft-preview').dataset.error === 'BAD_USER_INPUT'")
        assert "BAD_USER_INPUT" in await text(page, "#draft-preview")
        assert "amount" in await text(page, "#draft-preview")
        invalid = "document.querySelector('#create-rule input[name=amount]').getAttribute('aria-invalid')"
        assert await js(page, invalid) == "true"
        await fill(page, "#create-rule input[name=amount]", "34")
        await page.wait_for(preview_is("draft-preview", "draft", "34"))
        assert await js(page, invalid) is None
        # Only the latest answer shows: a slow answer to an older edit arriving last is dropped.
        await js(
            page,
            """(() => { const real = window.fetch; window.fetch = (url, init) => {
                 const slow = init && String(init.body).includes('"amount":"71"');
                 return slow ? new Promise((ok) => setTimeout(ok, 1500)).then(() => real(url, init)) : real(url, init);
               }; return true; })()""",
        )
        await fill(page, "#create-rule input[name=amount]", "71")
        await asyncio.sleep(0.6)  # past the debounce: the slow request is on its way
        await fill(page, "#create-rule input[name=amount]", "72")
        await page.wait_for(preview_is("draft-preview", "draft", "72"))
        await asyncio.sleep(1.5)
        assert await js(page, "document.getElementById('draft-preview').dataset.first") == "72"
        assert await rule_count() == 0

        # A rule's page: edits show in its preview before they are saved; the rule is unchanged.
        made = await gql.ok(
            CREATE_RULE,
            {"i": {"walletId": t.wallet_id, "name": "Daily", "mode": "DAILY_FLAT", "amount": "10", "timezone": "UTC"}},
            token=t.owner.token,
        )
        rule_id = made["createBillingRule"]["id"]
        await console_open(page, f"#/rules/{rule_id}")
        await page.wait_for(preview_is("rule-preview", "saved", "10"))
        await fill(page, "#edit-rule input[name=amount]", "55")
        await page.wait_for(preview_is("rule-preview", "draft", "55"))
        assert [p[3] for p in await rows(page, "#rule-preview")] == ["55"] * 5
        assert "unsaved" in await text(page, "#rule-preview caption")
        assert (await gql.ok(RULE_AMOUNT, {"id": rule_id}, token=t.owner.token))["billingRule"]["amount"] == "10"
        assert "Amount10" in (await text(page, "#rule-facts")).replace(" ", "")
        await fill(page, "#edit-rule input[name=amount]", "-1")
        await page.wait_for("document.getElementById('rule-preview').dataset.error === 'BAD_USER_INPUT'")
        # Back to the saved value: the rule's own preview again.
        await fill(page, "#edit-rule input[name=amount]", "10")
        await page.wait_for(preview_is("rule-preview", "saved", "10"))
        # Saved: the preview is the rule's own, at the new amount.
        await fill(page, "#edit-rule input[name=amount]", "56")
        await page.wait_for(preview_is("rule-preview", "draft", "56"))
        await submit(page, "#edit-rule")
        await page.wait_for("document.getElementById('rule-saved').textContent !== ''")
        await page.wait_for(preview_is("rule-preview", "saved", "56"))
        assert (await gql.ok(RULE_AMOUNT, {"id": rule_id}, token=t.owner.token))["billingRule"]["amount"] == "56"
        assert await rule_count() == 1
        assert console_problems(page) == []


async def wait_for_target(page: DevTools, needle: str, within: float = 10) -> str:
    """The URL of a tab the page opened, containing `needle`."""
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        for info in (await page.send("Target.getTargets"))["targetInfos"]:
            if needle in info.get("url", ""):
                return str(info["url"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"no tab opened with {needle!r}")


async def reload(page: DevTools) -> None:
    """Reload, and wait until the new document's shell has started (not the old one's)."""
    await page.eval("window.beforeReload = true")
    await page.send("Page.reload", {"ignoreCache": True})
    await page.wait_for("!window.beforeReload && !!document.body && document.body.dataset.ready === '1'")


async def test_reload_keeps_the_session_and_sign_out_empties_the_form(gql: GQL, server: LiveServer) -> None:
    t = await tenant(gql)
    async with chromium() as page:
        await console_sign_in(page, server.url, t.owner.email, t.owner.password)
        await console_open(page, "#/wallets")
        await fill(page, "#project-picker", t.project_id)  # the header's picker
        await page.wait_for("document.querySelectorAll('#wallets-table tbody tr').length === 1")
        # A reload: no sign-in form, the same page, the user and project still there.
        await reload(page)
        await page.wait_for("document.getElementById('page').dataset.ready === '1'")
        assert await js(page, "document.getElementById('signin').hidden") is True
        assert await js(page, "location.hash") == "#/wallets"
        assert await text(page, "#user-email") == t.owner.email
        assert await js(page, "document.getElementById('project-picker').value") == t.project_id
        assert len(await rows(page, "#wallets-table")) == 1, await text(page, "#page")
        # An access token the API no longer takes (as after its expiry): the page refreshes the
        # session once with the cookie and retries, the user notices nothing.
        await page.eval(
            """(() => {
              const real = window.fetch;
              window.sentOps = [];
              let spoil = true;
              window.fetch = (url, init = {}) => {
                const body = JSON.parse(init.body || '{}');
                window.sentOps.push((body.query || '').match(/\\{\\s*(\\w+)/)[1]);
                if (spoil && init.headers && init.headers.authorization) {
                  spoil = false;
                  init = { ...init, headers: { ...init.headers, authorization: 'Bearer not.a.token' } };
                }
                return real(url, init);
              };
              return true;
            })()"""
        )
        await console_open(page, "#/audit")
        assert len(await rows(page, "#audit-table")) >= 3
        assert await js(page, "window.sentOps") == ["auditLog", "refreshSession", "auditLog"]
        assert await js(page, "document.getElementById('signin').hidden") is True
        # Sign out: the form is back and empty, the password gone.
        await click(page, "#signout")
        await page.wait_for("!document.getElementById('signin').hidden")
        assert await js(page, "document.getElementById('password').value") == ""
        assert await js(page, "document.getElementById('email').value") == ""
        assert await js(page, "document.getElementById('nav').hidden") is True
        assert await js(page, "document.getElementById('page').children.length") == 0
        # And the session is really over: a reload does not bring it back.
        await reload(page)
        assert await js(page, "document.getElementById('signin').hidden") is False
        assert await js(page, "document.getElementById('session-bar').hidden") is True
        # A wrong password is shown, not thrown.
        await fill(page, "#email", t.owner.email)
        await fill(page, "#password", "wrong horse")
        await click(page, "#signin-button")
        await page.wait_for("document.getElementById('signin-error').textContent !== ''")
        assert console_problems(page) == []


async def test_two_tabs_refreshing_at_once_keep_the_session(gql: GQL, server: LiveServer) -> None:
    """Every tab restores its session by spending the one refresh cookie. Two tabs spending the
    same cookie at once look like a stolen token to the server, which then ends the session: the
    tabs take turns (a Web Lock), so each spends the cookie the previous one was given."""
    t = await tenant(gql)
    refresh = "import('/dashboard/console/api.js').then((api) => api.restoreSession()).then(() => true)"
    async with chromium() as page:
        await console_sign_in(page, server.url, t.owner.email, t.owner.password)
        async with another_tab(page, f"{server.url}/dashboard") as tab:
            await tab.wait_for("document.body.dataset.ready === '1' && !!document.getElementById('page').dataset.ready")
            assert await js(tab, "document.getElementById('signin').hidden") is True
            for _ in range(5):  # both at the same instant, several times
                await asyncio.gather(page.eval(refresh), tab.eval(refresh))
            for p in (page, tab):
                await reload(p)
                await p.wait_for("document.getElementById('page').dataset.ready === '1'")
                assert await js(p, "document.getElementById('signin').hidden") is True
                assert await text(p, "#user-email") == t.owner.email
        assert console_problems(page) == []


async def test_no_page_scrolls_sideways_at_390px_and_the_favicon_exists(
    gql: GQL, client: httpx.AsyncClient, server: LiveServer
) -> None:
    t = await tenant(gql)
    rule = await gql.ok(
        CREATE_RULE,
        {
            "i": {
                "walletId": t.wallet_id,
                "name": "A rule with a rather long name for a phone",
                "mode": "CRON",
                "amount": 5,
                "cron": "15 9 * * 1-5",
            }
        },
        token=t.owner.token,
    )
    rule_id = rule["createBillingRule"]["id"]
    await gql.ok(RUN_RULE, {"id": rule_id}, token=t.owner.token)
    hook = await gql.ok(
        CREATE_HOOK,
        {
            "i": {
                "projectId": t.project_id,
                "url": "https://hooks.example.com/a/very/long/path/for/a/narrow/screen",
                "events": ["*"],
            }
        },
        token=t.owner.token,
    )
    hook_id = hook["createWebhookEndpoint"]["endpoint"]["id"]
    async with chromium() as page:
        await set_viewport(page, 390, 844)
        await console_sign_in(page, server.url, t.owner.email, t.owner.password)
        await fill(page, "#project-picker", t.project_id)
        for target in (
            *(f"#/{p}" for p in TENANT_PAGES),
            f"#/wallets/{t.wallet_id}",
            f"#/rules/{rule_id}",
            f"#/webhooks/{hook_id}",
        ):
            await console_open(page, target)
            await asyncio.sleep(0.05)
            assert await js(page, "document.documentElement.scrollWidth") <= 390, (target, await page_overflow(page))
        # Signed out too.
        await click(page, "#signout")
        await page.wait_for("!document.getElementById('signin').hidden")
        assert await js(page, "document.documentElement.scrollWidth") <= 390
        # The icon the browser asks for by itself, and the one the page links.
        status = await js(page, "fetch('/favicon.ico').then((r) => r.status + ' ' + r.headers.get('content-type'))")
        assert status == "200 image/x-icon"
        assert await js(page, "document.querySelector('link[rel=icon]').href") == f"{server.url}/dashboard/favicon.svg"
        assert console_problems(page) == []
    assert (await client.get("/favicon.ico")).status_code == 200


async def test_the_keyboard_reaches_everything_and_focus_shows(gql: GQL, server: LiveServer) -> None:
    t = await tenant(gql)
    async with chromium() as page:
        await console_sign_in(page, server.url, t.owner.email, t.owner.password)
        await console_open(page, "#/overview")
        # The navigation ends with the focus on the page's title; only then start from the top.
        await page.wait_for("document.activeElement && document.activeElement.id === 'page-title'")
        await page.eval("document.activeElement.blur() || document.body.focus() || true")
        # Tab from the top: the skip link first, then the header's controls, then the menu.
        seen: list[str] = []
        for _ in range(25):
            await press_key(page, "Tab", "Tab", 9)
            seen.append(
                await js(
                    page,
                    "(() => { const a = document.activeElement; return a.id || a.dataset.page || a.textContent.trim().slice(0, 20); })()",
                )
            )
            if seen[-1] == "wallets":
                break
        assert seen[0] == "Skip to content", seen
        assert "project-picker" in seen and "signout" in seen, seen
        assert seen[-1] == "wallets", seen
        # Focus is visible: the focused link has an outline.
        outline = await js(page, "getComputedStyle(document.activeElement).outlineStyle")
        assert outline not in ("none", ""), outline
        # Enter follows the link.
        await press_key(page, "Enter", "Enter", 13)
        await page.wait_for("location.hash === '#/wallets' && document.getElementById('page').dataset.ready === '1'")
        assert await js(page, "document.activeElement.id") == "page-title"  # focus moves to the new page
        assert await js(page, "document.querySelector('nav a[aria-current=page]').dataset.page") == "wallets"
        # Text contrast: every visible text colour against its background is at least 4.5:1.
        low = await page.eval(CONTRAST)
        assert low == [], low
        assert console_problems(page) == []


CONTRAST = """(() => {
  const parse = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const bg = (n) => { for (; n; n = n.parentElement) { const c = parse(getComputedStyle(n).backgroundColor); if (c.length === 3 || c[3] > 0.9) return c; } return [255, 255, 255]; };
  const out = [];
  for (const n of document.querySelectorAll('body *')) {
    if (!n.offsetParent || ![...n.childNodes].some((c) => c.nodeType === 3 && c.textContent.trim())) continue;
    const fg = parse(getComputedStyle(n).color), b = bg(n);
    const [l1, l2] = [lum(fg), lum(b)].sort((x, y) => y - x);
    const ratio = (l1 + 0.05) / (l2 + 0.05);
    if (ratio < 4.5) out.push(`${n.tagName} ${n.textContent.trim().slice(0, 30)}: ${ratio.toFixed(2)}`);
  }
  return out;
})()"""


async def test_a_platform_admin_without_projects_sees_where_to_go(
    gql: GQL, services: Services, server: LiveServer
) -> None:
    admin = await make_platform_admin(gql, services.settings)
    async with chromium() as page:
        await console_sign_in(page, server.url, admin.email, admin.password)
        assert await js(page, "location.hash") == "#/projects"
        await page_basics(page, "projects")
        assert "No projects yet" in await text(page, "#no-projects")
        assert "platform admin" in await text(page, "#admin-hint")
        assert await js(page, "document.getElementById('project-picker').parentElement.hidden") is True
        # The admin menu is there (the admin pages are the other half of the console).
        admin_pages = await js(page, "[...document.querySelectorAll('#nav-admin a')].map((a) => a.dataset.page)")
        from_module = await js(
            page, "import('/dashboard/console/admin/index.js').then((m) => m.default.map((p) => p.id))"
        )
        assert admin_pages == from_module
        if from_module:
            assert await js(page, "document.getElementById('nav-admin').hidden") is False
        # A project page explains itself instead of staying blank.
        await console_open(page, "#/wallets")
        assert await js(page, "!!document.getElementById('no-project')") is True
        await page_basics(page, "wallets")
        # Creating a project from the empty state picks it and opens its Overview.
        await console_open(page, "#/projects")
        await fill(page, "#page input[name=name]", "First light")
        await submit(page, "#page form")
        await page.wait_for("location.hash === '#/overview' && document.getElementById('page').dataset.ready === '1'")
        assert (
            await js(page, "document.getElementById('project-picker').selectedOptions[0].textContent") == "First light"
        )
        assert await js(page, "document.getElementById('project-picker').parentElement.hidden") is False
        assert console_problems(page) == []
    # A plain user never sees the admin menu.
    async with chromium() as page:
        plain = await sign_up(gql)
        await console_sign_in(page, server.url, plain.email, plain.password)
        assert await js(page, "document.querySelectorAll('#nav-admin a').length") == 0
        assert await js(page, "document.getElementById('nav-admin').hidden") is True
        assert "No projects yet" in await text(page, "#no-projects")
        assert await js(page, "!!document.getElementById('admin-hint')") is False
        assert console_problems(page) == []
