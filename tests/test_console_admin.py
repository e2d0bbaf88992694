"""The console's platform-admin pages (`ledgerx/static/console/admin/`), driven in headless Chromium.

Each test signs in through the console's form and works the page as an operator would (filling
labelled inputs, clicking buttons), then reads the result back through the GraphQL API: revenue
figures equal to `revenueAnalytics` and a live `liveRevenue` feed that moves with a payment, a
failed Stripe event replayed from the inbox (its status and attempts change in the API), a coupon
and a plan created, edited and archived. A user who is not a platform admin sees none of these
pages, in the menu or by typing their hash. Nothing may break the CSP, throw, or log an error.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx
import pytest

from ledgerx import ids
from ledgerx.domain.payments import inbox
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.browser import (
    DevTools,
    chromium,
    console_open,
    console_problems,
    console_sign_in,
    page_overflow,
    set_viewport,
)
from tests.conftest import GQL, LiveServer, SignedIn, sign_up
from tests.fake_stripe import FakeStripe, checkout, create_pack, deliver, stripe_settings
from tests.tenancy_helpers import create_project, make_platform_admin, owner_sql
from tests.test_live_support import live_settings

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

ADMIN_PAGES = ("revenue", "stripe-inbox", "coupons", "plans")


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe) -> Settings:
    return stripe_settings(live_settings(settings), fake)


def js(value: Any) -> str:
    return json.dumps(value)


async def fill(page: DevTools, form: str, values: dict[str, str]) -> None:
    """Type into a form's controls by name, as a user would (input and change events fire)."""
    await page.eval(
        f"""(() => {{
          const form = document.querySelector({js(form)});
          for (const [name, value] of Object.entries({js(values)})) {{
            const input = form.querySelector(`[name="${{name}}"]`);
            if (!input) throw new Error('no control named ' + name);
            input.value = value;
            input.dispatchEvent(new Event('input', {{ bubbles: true }}));
            input.dispatchEvent(new Event('change', {{ bubbles: true }}));
          }}
          return true;
        }})()"""
    )


async def click(page: DevTools, selector: str) -> None:
    await page.wait_for(f"!!document.querySelector({js(selector)}) && !document.querySelector({js(selector)}).disabled")
    await page.eval(f"document.querySelector({js(selector)}).click() || true")


async def text(page: DevTools, selector: str) -> str:
    return str(await page.eval(f"document.querySelector({js(selector)}).textContent"))


def no_problems(page: DevTools) -> None:
    problems = console_problems(page)
    assert problems == [], problems


async def buy_pack(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, admin: SignedIn, amount: int
) -> tuple[str, str, dict[str, Any]]:
    """A project buys a credit pack through Stripe Checkout (the fake): (project, session, event)."""
    pack = await create_pack(gql, admin, credits=5000, amount=amount)
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    session = await checkout(gql, owner, pid, creditPackId=pack)
    (completed,) = fake.complete_checkout(session)
    return pid, session, completed


# -- revenue --------------------------------------------------------------------------------------

ANALYTICS = """query($from: DateTime!, $to: DateTime!) { revenueAnalytics(from: $from, to: $to, granularity: MONTH) {
  mrr arr netNewMrr customers customerChurnRate grossRevenue refunds netRevenue payments mrrSeries { bucket } } }"""
FIGURES = {
    "rev-mrr": "mrr",
    "rev-arr": "arr",
    "rev-net-new-mrr": "netNewMrr",
    "rev-customers": "customers",
    "rev-churn-rate": "customerChurnRate",
    "rev-gross": "grossRevenue",
    "rev-refunds": "refunds",
    "rev-net": "netRevenue",
    "rev-payments": "payments",
}


async def page_figures(page: DevTools) -> dict[str, str]:
    return {
        api: str(await page.eval(f"document.getElementById({js(element)}).dataset.value"))
        for element, api in FIGURES.items()
    }


async def test_revenue_figures_match_the_api_and_move_live(
    gql: GQL,
    client: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    fake: FakeStripe,
    live_server: LiveServer,
) -> None:
    admin = await make_platform_admin(gql, settings)
    # A payment in the range, so the figures are not all zero.
    pid, _, completed = await buy_pack(gql, client, services, fake, admin, 4900)
    assert (await deliver(client, completed)).status_code == 200
    await inbox.drain(services.payments)

    async with chromium() as page:
        await set_viewport(page, 1280, 900)
        await console_sign_in(page, live_server.url, admin.email, admin.password)
        # The admin pages are in the menu.
        await page.wait_for("!document.getElementById('nav-admin').hidden")
        links = await page.eval("[...document.querySelectorAll('#nav-admin a')].map((a) => a.dataset.page)")
        assert links == list(ADMIN_PAGES)
        await console_open(page, "#/revenue")
        await page.wait_for("!!document.getElementById('rev-mrr')")
        start, end = await page.eval(
            "[document.querySelector('#revenue-form [name=from]').value, document.querySelector('#revenue-form [name=to]').value]"
        )
        variables = {"from": f"{start}T00:00:00Z", "to": f"{end}T00:00:00Z"}
        # The API and the page, read until both agree (other tests of the session add payments).
        for _ in range(5):
            before = (await gql.ok(ANALYTICS, variables, token=admin.token))["revenueAnalytics"]
            shown = await page_figures(page)
            after = (await gql.ok(ANALYTICS, variables, token=admin.token))["revenueAnalytics"]
            expected = {k: str(v) for k, v in after.items() if k != "mrrSeries"}
            if before == after and shown == expected:
                break
            await page.eval("document.querySelector('#revenue-form button[type=submit]').click() || true")
            await page.wait_for("!document.getElementById('main').hasAttribute('aria-busy')")
        assert shown == expected
        assert int(shown["grossRevenue"]) >= 4900 and int(shown["payments"]) >= 1
        # Money is shown in major units, exactly.
        gross = int(shown["grossRevenue"])
        assert await text(page, "#rev-gross .adm-figure") == f"USD {gross // 100:,}.{gross % 100:02d}"
        assert int(await page.eval("document.querySelector('#revenue-analytics svg').dataset.points")) == len(
            after["mrrSeries"]
        )

        # Another range and granularity through the form: the page asks for exactly that.
        await fill(page, "#revenue-form", {"from": start, "to": end, "granularity": "DAY"})
        await click(page, "#revenue-form button[type=submit]")
        await page.wait_for("document.getElementById('revenue-range').textContent.includes('(day, USD)')")

        # Live: the feed is up, and a new payment moves today's figures.
        await page.wait_for("document.getElementById('live-status').dataset.state === 'live'")
        payments_today = int(await page.eval("document.getElementById('live-payments-today').dataset.value"))
        revenue_today = int(await page.eval("document.getElementById('live-revenue-today').dataset.value"))
        pid2, _, completed2 = await buy_pack(gql, client, services, fake, admin, 1234)
        assert (await deliver(client, completed2)).status_code == 200
        await inbox.drain(services.payments)
        await page.wait_for(
            f"Number(document.getElementById('live-payments-today').dataset.value) >= {payments_today + 1}"
        )
        assert (
            int(await page.eval("document.getElementById('live-revenue-today').dataset.value")) >= revenue_today + 1234
        )
        await page.wait_for(f"document.getElementById('live-revenue').textContent.includes({js(pid2)})")
        assert pid != pid2
        no_problems(page)


# -- the Stripe inbox -----------------------------------------------------------------------------

EVENT = """query($id: ID!) { webhookEvent(id: $id) { status attempts lastError attemptLog { trigger ok } } }"""
PAYMENTS = "query($p: ID!) { payments(projectId: $p) { nodes { amountRefunded { amount } } } }"


async def test_replay_a_failed_stripe_event_from_the_inbox(
    gql: GQL,
    client: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    fake: FakeStripe,
    live_server: LiveServer,
) -> None:
    admin = await make_platform_admin(gql, settings)
    pid, session, completed = await buy_pack(gql, client, services, fake, admin, 4900)
    # Stripe's refund arrives before the payment it refunds is recorded: the event fails (not ready).
    refund = fake.refund(fake.charge_of_session(session)["id"], 1225)
    assert (await deliver(client, refund)).status_code == 200
    (row,) = await owner_sql(settings, "SELECT id FROM webhook_events WHERE stripe_event_id = $1", refund["id"])
    failed = await inbox.process(services.payments, await inbox.claim_one(services.payments, row["id"]))
    assert (failed.status, failed.attempts) == ("FAILED", 1)
    event_id = ids.encode("webhook_event", row["id"])
    # Then the payment is recorded; the refund waits for its retry, or an operator's replay.
    assert (await deliver(client, completed)).status_code == 200
    (done,) = await owner_sql(settings, "SELECT id FROM webhook_events WHERE stripe_event_id = $1", completed["id"])
    await inbox.process(services.payments, await inbox.claim_one(services.payments, done["id"]))

    async with chromium() as page:
        await set_viewport(page, 1280, 900)
        await console_sign_in(page, live_server.url, admin.email, admin.password)
        await console_open(page, "#/stripe-inbox")
        # Filtered to failed refunds: the event is listed with its status, attempts and error.
        await fill(page, "#inbox-filter", {"status": "FAILED", "type": "charge.refunded"})
        await click(page, "#inbox-filter button[type=submit]")
        row_sel = f'#inbox-list tr[data-stripe-event-id="{refund["id"]}"]'
        await page.wait_for(
            f"!!document.querySelector({js(row_sel)}) && [...document.querySelectorAll('#inbox-list tbody tr')]"
            ".every((r) => r.dataset.status === 'FAILED')"
        )
        assert await page.eval(f"document.querySelector({js(row_sel)}).dataset.attempts") == "1"
        assert "not ready" in await text(page, row_sel)
        types = await page.eval(
            "[...document.querySelectorAll('#inbox-list tbody tr a.adm-event-link')].map((a) => a.textContent)"
        )
        assert set(types) == {"charge.refunded"}

        # Its detail: the payload and the attempt log; Replay processes it now.
        await page.eval(f"document.querySelector({js(row_sel + ' a.adm-event-link')}).click() || true")
        await page.wait_for(f"location.hash === {js('#/stripe-inbox/' + event_id)}")
        await page.wait_for(
            "document.getElementById('page').dataset.ready === '1' && !!document.getElementById('replay-button')"
        )
        assert await page.eval("document.getElementById('event-fields').dataset.status") == "FAILED"
        assert refund["id"] in await text(page, "#inbox-detail pre")
        await click(page, "#replay-button")
        await page.wait_for("!!document.querySelector('#replay-status .adm-result')")
        assert await page.eval("document.querySelector('#replay-status .adm-result').dataset.status") == "PROCESSED"
        assert "now PROCESSED after 2 attempts" in await text(page, "#replay-status")
        await page.wait_for("document.getElementById('event-fields').dataset.status === 'PROCESSED'")

        # The API agrees, and the refund reached the books.
        event = (await gql.ok(EVENT, {"id": event_id}, token=admin.token))["webhookEvent"]
        assert (event["status"], event["attempts"], event["lastError"]) == ("PROCESSED", 2, None)
        assert [(a["trigger"], a["ok"]) for a in event["attemptLog"]] == [("WORKER", False), ("REPLAY", True)]
        rows = await owner_sql(
            settings, "SELECT amount_refunded FROM payments WHERE project_id = $1", ids.decode("project", pid)
        )
        assert [r["amount_refunded"] for r in rows] == [1225]

        # Back to the list: Replay from a row shows the new status and attempts in the row.
        await console_open(page, "#/stripe-inbox")
        await fill(page, "#inbox-filter", {"type": "charge.refunded"})
        await click(page, "#inbox-filter button[type=submit]")
        await page.wait_for(f"document.querySelector({js(row_sel)})?.dataset.attempts === '2'")
        await click(page, row_sel + " button.adm-replay")
        await page.wait_for(f"document.querySelector({js(row_sel)})?.dataset.attempts === '3'")
        event = (await gql.ok(EVENT, {"id": event_id}, token=admin.token))["webhookEvent"]
        assert (event["status"], event["attempts"]) == ("PROCESSED", 3)
        rows = await owner_sql(
            settings, "SELECT amount_refunded FROM payments WHERE project_id = $1", ids.decode("project", pid)
        )
        assert [r["amount_refunded"] for r in rows] == [1225]  # a replay never changes the books twice

        # An unknown event id: the API's error, with its code, on the page.
        await console_open(page, "#/stripe-inbox/whe_00000000000000000000000000")
        await page.wait_for("!!document.querySelector('#inbox-detail .error-box')")
        assert await page.eval("document.querySelector('#inbox-detail .error-box').dataset.code") == "NOT_FOUND"
        no_problems(page)


# -- coupons --------------------------------------------------------------------------------------

COUPONS = """query { coupons(includeArchived: true) { id code name percentOff amountOff { amount currency }
  duration durationInMonths maxRedemptions expiresAt appliesTo archived } }"""


async def coupon(gql: GQL, admin: SignedIn, code: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        c for c in (await gql.ok(COUPONS, token=admin.token))["coupons"] if c["code"] == code.upper()
    ]
    assert len(found) == 1, found
    return found[0]


async def test_create_and_archive_coupons(
    gql: GQL, client: httpx.AsyncClient, settings: Settings, fake: FakeStripe, live_server: LiveServer
) -> None:
    admin = await make_platform_admin(gql, settings)
    pack = await create_pack(gql, admin, credits=1000, amount=1000)
    tag = secrets.token_hex(3).upper()
    async with chromium() as page:
        await set_viewport(page, 1280, 900)
        await console_sign_in(page, live_server.url, admin.email, admin.password)
        await console_open(page, "#/coupons")

        # A percentage off for three months, for one credit pack, at most 10 redemptions.
        await fill(
            page,
            "#coupon-form",
            {
                "code": f"spring-{tag}",
                "name": "Spring sale",
                "discount": "percent",
                "percentOff": "15.5",
                "duration": "REPEATING",
                "durationInMonths": "3",
                "maxRedemptions": "10",
                "expiresAt": "2031-05-01T12:30",
            },
        )
        await page.eval(f"document.getElementById('applies-{pack}').click() || true")
        await click(page, "#coupon-form button[type=submit]")
        await page.wait_for(f"document.getElementById('coupon-status').textContent.includes('SPRING-{tag}')")
        await page.wait_for(f"!!document.querySelector('#coupon-list tr[data-code=\"SPRING-{tag}\"]')")
        c = await coupon(gql, admin, f"SPRING-{tag}")
        assert (c["name"], c["percentOff"], c["amountOff"], c["duration"], c["durationInMonths"]) == (
            "Spring sale",
            15.5,
            None,
            "REPEATING",
            3,
        )
        assert (c["maxRedemptions"], c["appliesTo"], c["archived"]) == (10, [pack], False)
        assert c["expiresAt"].startswith("2031-05-01T12:30:00")

        # An amount off, typed in dollars: exactly 525 cents.
        await fill(
            page,
            "#coupon-form",
            {"code": f"five-{tag}", "name": "Five off", "discount": "amount", "amountOff": "5.25", "currency": "usd"},
        )
        await click(page, "#coupon-form button[type=submit]")
        await page.wait_for(f"!!document.querySelector('#coupon-list tr[data-code=\"FIVE-{tag}\"]')")
        c = await coupon(gql, admin, f"FIVE-{tag}")
        assert (c["percentOff"], c["amountOff"], c["duration"]) == (None, {"amount": "525", "currency": "USD"}, "ONCE")
        assert "USD 5.25 off" in await text(page, f'#coupon-list tr[data-code="FIVE-{tag}"]')

        # The same code again: the API's refusal, with its code and field, beside the form.
        await fill(
            page, "#coupon-form", {"code": f"five-{tag}", "name": "Again", "discount": "percent", "percentOff": "5"}
        )
        await click(page, "#coupon-form button[type=submit]")
        await page.wait_for("!!document.querySelector('#coupon-form .error-box')")
        code = await page.eval("document.querySelector('#coupon-form .error-box').dataset.code")
        assert code in ("CONFLICT", "BAD_USER_INPUT")
        assert code in await text(page, "#coupon-form .error-box")
        # A bad amount is refused before asking the API, and the field is marked.
        await fill(
            page, "#coupon-form", {"code": f"bad-{tag}", "name": "Bad", "discount": "amount", "amountOff": "1.999"}
        )
        await click(page, "#coupon-form button[type=submit]")
        await page.wait_for(
            "document.querySelector('#coupon-form [name=amountOff]').getAttribute('aria-invalid') === 'true'"
        )
        assert "BAD_USER_INPUT" in await text(page, "#coupon-form .error-box")
        assert await page.eval("document.activeElement.name") == "amountOff"
        assert not [c for c in (await gql.ok(COUPONS, token=admin.token))["coupons"] if c["code"] == f"BAD-{tag}"]

        # Archive (two steps): gone from the list, archived in the API, listed again on request.
        row = f'#coupon-list tr[data-code="SPRING-{tag}"]'
        await click(page, row + " button.adm-archive")
        await click(page, row + " button.adm-confirm")
        await page.wait_for(f"!document.querySelector({js(row)})")
        assert (await coupon(gql, admin, f"SPRING-{tag}"))["archived"] is True
        await click(page, "#coupons-archived")
        await page.wait_for(f"document.querySelector({js(row)})?.dataset.archived === 'true'")
        no_problems(page)


# -- plans ----------------------------------------------------------------------------------------

PLANS = """query { plans(includeArchived: true) { id name tier interval price { amount currency } includedCredits
  rateLimit { burst perSecond } monthlyQuotas { metric limit } features trialDays rolloverCredits archived
  entitlements { featureKey type enabled limit metricKey } } }"""


async def plan_named(gql: GQL, admin: SignedIn, name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [p for p in (await gql.ok(PLANS, token=admin.token))["plans"] if p["name"] == name]
    assert len(found) == 1, found
    return found[0]


async def test_create_edit_and_archive_plans(
    gql: GQL, client: httpx.AsyncClient, settings: Settings, fake: FakeStripe, live_server: LiveServer
) -> None:
    admin = await make_platform_admin(gql, settings)
    name = f"Scale {secrets.token_hex(3)}"
    async with chromium() as page:
        await set_viewport(page, 1280, 900)
        await console_sign_in(page, live_server.url, admin.email, admin.password)
        await console_open(page, "#/plans")
        values = {
            "name": name,
            "tier": "PRO",
            "interval": "YEAR",
            "price": "12.345",
            "currency": "USD",
            "includedCredits": "1000",
            "trialDays": "14",
            "rateLimitBurst": "50",
            "rateLimitPerSecond": "5.5",
            "features": "SSO\nPriority support\n",
            "monthlyQuotas": "api_calls=100000",
            "entitlements": '[{"featureKey": "sso", "type": "BOOLEAN"}]',
        }
        # Three decimals of a dollar: refused on the page, the price field marked.
        await fill(page, "#plan-form", values)
        await click(page, "#plan-form button[type=submit]")
        await page.wait_for("document.querySelector('#plan-form [name=price]').getAttribute('aria-invalid') === 'true'")
        assert "BAD_USER_INPUT" in await text(page, "#plan-form .error-box")
        # Entitlements the API refuses: its code and field on the page.
        await fill(page, "#plan-form", {"price": "29.99", "entitlements": '[{"featureKey": "", "type": "BOOLEAN"}]'})
        await click(page, "#plan-form button[type=submit]")
        await page.wait_for("document.querySelector('#plan-form .error-box')?.dataset.code === 'BAD_USER_INPUT'")
        assert not [p for p in (await gql.ok(PLANS, token=admin.token))["plans"] if p["name"] == name]

        await fill(page, "#plan-form", {"entitlements": values["entitlements"]})
        await page.eval("document.querySelector('#plan-form [name=rolloverCredits]').click() || true")
        await click(page, "#plan-form button[type=submit]")
        await page.wait_for(f"!!document.querySelector('#plan-list tr[data-name={js(name)}]')")
        p = await plan_named(gql, admin, name)
        assert (p["tier"], p["interval"], p["price"], p["includedCredits"], p["trialDays"]) == (
            "PRO",
            "YEAR",
            {"amount": "2999", "currency": "USD"},
            "1000",
            14,
        )
        assert p["rateLimit"] == {"burst": 50, "perSecond": 5.5}
        assert p["monthlyQuotas"] == [{"metric": "api_calls", "limit": "100000"}]
        assert p["features"] == ["SSO", "Priority support"]
        assert p["rolloverCredits"] is True
        assert [(e["featureKey"], e["type"], e["enabled"]) for e in p["entitlements"]] == [("sso", "BOOLEAN", True)]

        # Edit: a new price and name, the rate limit back to the default; the rest unchanged.
        row = f"#plan-list tr[data-id={js(p['id'])}]"
        await click(page, row + " button.adm-edit")
        await page.wait_for("!document.getElementById('plan-editor').hidden")
        assert await page.eval("document.activeElement.id") == "plan-edit-heading"
        assert await page.eval("document.querySelector('#plan-edit-form [name=price]').value") == "29.99"
        assert await page.eval("document.querySelector('#plan-edit-form [name=tier]').disabled") is True
        await fill(
            page,
            "#plan-edit-form",
            {"name": f"{name} v2", "price": "39", "rateLimitBurst": "", "rateLimitPerSecond": ""},
        )
        await click(page, "#plan-edit-form button[type=submit]")
        await page.wait_for("document.getElementById('plan-editor').hidden")
        await page.wait_for(f"!!document.querySelector('#plan-list tr[data-name={js(name + ' v2')}]')")
        q = await plan_named(gql, admin, f"{name} v2")
        assert q["id"] == p["id"]
        assert (q["price"], q["rateLimit"], q["includedCredits"], q["features"]) == (
            {"amount": "3900", "currency": "USD"},
            None,
            "1000",
            ["SSO", "Priority support"],
        )
        assert q["entitlements"] == p["entitlements"]

        # Archive: still listed (archived ones included), archived in the API.
        await click(page, row + " button.adm-archive")
        await click(page, row + " button.adm-confirm")
        await page.wait_for(f"document.querySelector({js(row)})?.dataset.archived === 'true'")
        assert (await plan_named(gql, admin, f"{name} v2"))["archived"] is True
        # Keyboard: the edit button of the archived plan is reachable and opens the editor by Enter.
        assert await page.eval(f"document.querySelector({js(row + ' button.adm-edit')}).tabIndex") == 0
        no_problems(page)


# -- who sees the admin pages, and how they fit a phone ------------------------------------------------


async def test_a_non_admin_neither_sees_nor_reaches_the_admin_pages(
    gql: GQL, settings: Settings, live_server: LiveServer
) -> None:
    user = await sign_up(gql)
    await create_project(gql, user)
    async with chromium() as page:
        await set_viewport(page, 1280, 900)
        await console_sign_in(page, live_server.url, user.email, user.password)
        assert await page.eval("document.getElementById('nav-admin').hidden") is True
        assert await page.eval("document.querySelectorAll('#nav-admin a').length") == 0
        for page_id in ADMIN_PAGES:
            assert await page.eval(f"!!document.querySelector('nav a[data-page={js(page_id)}]')") is False
        for hash_ in (
            "#/revenue",
            "#/stripe-inbox",
            "#/stripe-inbox/whe_00000000000000000000000000",
            "#/coupons",
            "#/plans",
        ):
            await console_open(page, hash_)
            assert await text(page, "#page h1") == "Page not found"
            for marker in ("revenue-analytics", "inbox-list", "inbox-detail", "coupon-list", "plan-list"):
                assert await page.eval(f"!!document.getElementById({js(marker)})") is False
        no_problems(page)


async def test_admin_pages_fit_a_phone_and_work_by_keyboard(
    gql: GQL, settings: Settings, fake: FakeStripe, live_server: LiveServer
) -> None:
    admin = await make_platform_admin(gql, settings)
    async with chromium() as page:
        await set_viewport(page, 390, 844)
        await console_sign_in(page, live_server.url, admin.email, admin.password)
        for page_id in ADMIN_PAGES:
            await console_open(page, f"#/{page_id}")
            await page.wait_for("!document.getElementById('main').hasAttribute('aria-busy')")
            assert await page_overflow(page) == [], page_id
            # Every control has a label (or an accessible name) and nothing needs a mouse: no
            # click handler on something that is not a link, button or form control.
            unlabelled = await page.eval(
                """[...document.querySelectorAll('#page input, #page select, #page textarea')]
                   .filter((c) => !(c.labels && c.labels.length) && !c.getAttribute('aria-label'))
                   .map((c) => c.name || c.id)"""
            )
            assert unlabelled == [], (page_id, unlabelled)
            negative = await page.eval(
                "[...document.querySelectorAll('#page [tabindex]')].filter((n) => n.tabIndex < 0 && n.id !== 'page-title' && n.id !== 'plan-edit-heading').length"
            )
            assert negative == 0, page_id
        # The inbox's detail with a long payload fits too.
        no_problems(page)
