"""Screenshots of every console page (tenant and platform-admin) into docs/screenshots/<page>.png.

    .venv/bin/python scripts/screenshots.py [--out docs/screenshots] [--width 1280 --height 900]

What it does, all in this process and all thrown away afterwards:
- PostgreSQL: a scratch database created on the server of LEDGERX_TEST_DATABASE_URL, else
  DATABASE_URL, else the embedded server (`ledgerx serve`'s way, data in .ledgerx/screenshots);
  migrated, filled, and dropped at the end. Redis: LEDGERX_TEST_REDIS_URL, else REDIS_URL, else the
  embedded one, under a key prefix of its own.
- LedgerX on a free local port, with the fake Stripe of the tests (tests/fake_stripe.py) for
  checkouts, subscriptions and signed webhook events.
- Data: `ledgerx demo`'s seed (demo@example.com), a platform admin, credit packs, plans, coupons,
  two paying customers and a purchase (revenue), and an inbox with a failed event.
- Debian's chromium over DevTools (tests/browser.py) at 1280x900: signs in as the demo user for the
  tenant pages, then as the platform admin for the admin pages.

Needs the dev install (`pip install -e ".[dev]"`: pytest and the test helpers) and chromium
(`scripts/ensure-chromium.sh`). Exits 2 when chromium is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
import uvicorn  # noqa: E402

from ledgerx import demo, embedded, ids  # noqa: E402
from ledgerx.app import create_app  # noqa: E402
from ledgerx.db.engine import asyncpg_dsn  # noqa: E402
from ledgerx.db.migrate import upgrade  # noqa: E402
from ledgerx.domain.auth.keys import generate_pem  # noqa: E402
from ledgerx.domain.payments import inbox  # noqa: E402
from ledgerx.services import Services  # noqa: E402
from ledgerx.settings import Settings  # noqa: E402
from tests.browser import (  # noqa: E402
    DevTools,
    chromium,
    console_open,
    console_problems,
    console_sign_in,
    find_chromium,
    screenshot,
    set_viewport,
)
from tests.conftest import free_port  # noqa: E402
from tests.fake_stripe import API_KEY, SECRETS, FakeStripe, deliver  # noqa: E402

ADMIN_EMAIL = "ops@example.com"
ADMIN_PASSWORD = "screenshots-admin-password"


def log(message: str) -> None:
    print(f"screenshots: {message}", file=sys.stderr, flush=True)


# -- servers ------------------------------------------------------------------------------------------


def server_urls(data_dir: Path) -> tuple[str, str]:
    db = os.environ.get("LEDGERX_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    redis = os.environ.get("LEDGERX_TEST_REDIS_URL") or os.environ.get("REDIS_URL")
    if not db:
        log("starting the embedded PostgreSQL")
        db = embedded.start_postgres(data_dir)
    if not redis:
        log("starting the embedded Redis")
        redis = embedded.start_redis(data_dir)
    return db, redis


@contextlib.asynccontextmanager
async def scratch_database(server_url: str) -> AsyncIterator[str]:
    name = f"lxshots_{os.getpid()}_{secrets.token_hex(3)}"
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = server_url.split("?", 1)
    cut = base[0].rfind("/")
    url = base[0][: cut + 1] + name + ("?" + base[1] if len(base) > 1 else "")
    try:
        yield url
    finally:
        conn = await asyncpg.connect(asyncpg_dsn(server_url))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def serving(settings: Settings, services: Services) -> AsyncIterator[str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, services), host="127.0.0.1", port=port, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


# -- data ---------------------------------------------------------------------------------------------


class Api:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def __call__(self, query: str, variables: dict[str, Any] | None = None, token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = await self.http.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)
        body = r.json()
        if body.get("errors"):
            raise RuntimeError(f"{query.split('(')[0].strip()}: {body['errors']}")
        return body["data"]

    async def sign_up(self, email: str, password: str, name: str) -> str:
        data = await self(
            "mutation($i: SignUpInput!) { signUp(input: $i) { accessToken } }",
            {"i": {"email": email, "password": password, "name": name}},
        )
        return str(data["signUp"]["accessToken"])


CHECKOUT = "mutation($i: CreateCheckoutSessionInput!) { createCheckoutSession(input: $i) { id } }"


async def seed(settings: Settings, services: Services, http: httpx.AsyncClient, fake: FakeStripe) -> dict[str, str]:
    api = Api(http)
    report = await demo.seed(services)
    log(f"demo project {report.project_id} seeded")

    admin = await api.sign_up(ADMIN_EMAIL, ADMIN_PASSWORD, "Platform Operator")
    assert settings.database_url
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        await conn.execute("UPDATE users SET is_platform_admin = true WHERE email = $1", ADMIN_EMAIL)
    finally:
        await conn.close()

    pack = (
        await api(
            "mutation($i: CreateCreditPackInput!) { createCreditPack(input: $i) { id } }",
            {"i": {"name": "5,000 credits", "credits": "5000", "price": {"amount": 4900, "currency": "USD"}}},
            admin,
        )
    )["createCreditPack"]["id"]
    plan_ids: dict[str, str] = {}
    for name, tier, interval, amount, credits in (
        ("Starter", "PRO", "MONTH", 1900, 2000),
        ("Pro", "PRO", "MONTH", 4900, 10000),
        ("Scale (yearly)", "ENTERPRISE", "YEAR", 99000, 250000),
        ("Legacy", "PRO", "MONTH", 900, 500),
    ):
        made = await api(
            "mutation($i: CreatePlanInput!) { createPlan(input: $i) { id } }",
            {
                "i": {
                    "name": name,
                    "tier": tier,
                    "interval": interval,
                    "price": {"amount": amount, "currency": "USD"},
                    "includedCredits": str(credits),
                    "trialDays": 14 if name == "Pro" else 0,
                    "features": [f"{name} support", "Usage analytics"],
                    "monthlyQuotas": [{"metric": "api_calls", "limit": str(credits * 50)}],
                    "entitlements": [{"featureKey": "sso", "type": "BOOLEAN", "enabled": tier == "ENTERPRISE"}],
                }
            },
            admin,
        )
        plan_ids[name] = made["createPlan"]["id"]
    await api("mutation($id: ID!) { archivePlan(id: $id) { id } }", {"id": plan_ids["Legacy"]}, admin)

    for coupon in (
        {"code": "SPRING25", "name": "Spring sale", "percentOff": 25, "duration": "REPEATING", "durationInMonths": 3},
        {
            "code": "WELCOME",
            "name": "Welcome credits",
            "bonusCredits": "500",
            "duration": "ONCE",
            "maxRedemptions": 100,
        },
        {
            "code": "TENOFF",
            "name": "Ten dollars off packs",
            "amountOff": {"amount": 1000, "currency": "USD"},
            "appliesTo": [pack],
        },
        {"code": "LAUNCH", "name": "Launch week", "percentOff": 50, "duration": "ONCE"},
    ):
        made = await api("mutation($i: CreateCouponInput!) { createCoupon(input: $i) { id } }", {"i": coupon}, admin)
        if coupon["code"] == "LAUNCH":
            await api("mutation($id: ID!) { archiveCoupon(id: $id) { id } }", {"id": made["createCoupon"]["id"]}, admin)

    async def customer(email: str, project: str) -> tuple[str, str]:
        token = await api.sign_up(email, secrets.token_urlsafe(12), project)
        pid = (
            await api(
                "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }",
                {"i": {"name": project, "externalKey": project.lower().replace(" ", "-")}},
                token,
            )
        )["createProject"]["id"]
        return token, pid

    async def checkout(token: str, pid: str, **target: str) -> str:
        data = await api(
            CHECKOUT,
            {
                "i": {
                    "projectId": pid,
                    "successUrl": "https://app.example.com/ok",
                    "cancelUrl": "https://app.example.com/no",
                    **target,
                }
            },
            token,
        )
        return str(data["createCheckoutSession"]["id"])

    async def stripe(*events: dict[str, Any]) -> None:
        for ev in events:
            r = await deliver(http, ev)
            if r.status_code != 200:
                raise RuntimeError(f"webhook refused: {r.status_code} {r.text}")
        await inbox.drain(services.payments)

    # Paying customers (MRR) and a credit pack purchase (revenue today).
    for email, project, plan in (
        ("cto@acme.example", "Acme Corp", "Pro"),
        ("dev@globex.example", "Globex", "Starter"),
        ("it@initech.example", "Initech", "Scale (yearly)"),
    ):
        token, pid = await customer(email, project)
        session = await checkout(token, pid, planId=plan_ids[plan])
        await stripe(*fake.complete_checkout(session, trial=False))
    token, pid = await customer("ops@umbrella.example", "Umbrella")
    session = await checkout(token, pid, creditPackId=pack)
    (paid,) = fake.complete_checkout(session)
    await stripe(paid)
    # The inbox: a refund whose payment LedgerX has not recorded yet (FAILED, waiting for a retry
    # or a replay), and an event type LedgerX does not handle (IGNORED).
    token, pid = await customer("billing@hooli.example", "Hooli")
    session = await checkout(token, pid, creditPackId=pack)
    (late,) = fake.complete_checkout(session)
    refund = fake.refund(fake.charge_of_session(session)["id"], 1500)
    await stripe(refund, fake.event("customer.tax_id.created", {"id": "txi_demo", "object": "tax_id"}))
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        failed = await conn.fetchval("SELECT id FROM webhook_events WHERE stripe_event_id = $1", refund["id"])
    finally:
        await conn.close()
    del late  # its checkout.session.completed never arrives: the refund stays FAILED
    return {"failed_event": ids.encode("webhook_event", failed)}


# -- the browser ----------------------------------------------------------------------------------------


async def settle(page: DevTools) -> None:
    await page.wait_for("!document.getElementById('main').hasAttribute('aria-busy')")
    await asyncio.sleep(0.6)  # charts draw and live feeds send their first snapshot
    await page.eval("window.scrollTo(0, 0) || document.activeElement.blur() || true")


async def shoot_pages(
    base_url: str, email: str, password: str, out: Path, width: int, height: int, *, admin: bool, extra: list[str]
) -> list[Path]:
    written: list[Path] = []
    async with chromium() as page:
        await set_viewport(page, width, height)
        await console_sign_in(page, base_url, email, password)
        nav = "#nav-admin a" if admin else "#nav-tenant a"
        ids_ = await page.eval(f"[...document.querySelectorAll({nav!r})].map((a) => a.dataset.page)")
        for hash_ in [f"#/{i}" for i in ids_] + extra:
            await console_open(page, hash_)
            await settle(page)
            name = hash_.lstrip("#/").split("/")[0] + ("-event" if hash_.count("/") > 1 else "")
            path = out / f"{name}.png"
            await screenshot(page, str(path))
            written.append(path)
            shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            log(f"wrote {shown} ({path.stat().st_size // 1024} KB)")
        problems = console_problems(page)
        if problems:
            log("the browser reported problems:\n  " + "\n  ".join(problems))
    return written


def prepare_dirs(out_arg: str) -> tuple[Path, Path]:
    out = Path(out_arg).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = ROOT / ".ledgerx" / "screenshots"
    data_dir.mkdir(parents=True, exist_ok=True)
    return out, data_dir


async def main_async(args: argparse.Namespace) -> int:
    if find_chromium() is None:
        log("no chromium (scripts/ensure-chromium.sh installs Debian's `chromium`)")
        return 2
    out, data_dir = await asyncio.to_thread(prepare_dirs, args.out)
    db_server, redis_url = server_urls(data_dir)
    fake = FakeStripe()
    await fake.start()
    try:
        async with scratch_database(db_server) as db_url:
            log("migrating a scratch database")
            await asyncio.to_thread(upgrade, db_url)
            with tempfile.TemporaryDirectory(prefix="lxshots-") as tmp:
                settings = Settings(
                    database_url=db_url,
                    redis_url=redis_url,
                    data_dir=Path(tmp),
                    jwt_private_keys=(generate_pem(),),
                    redis_prefix=f"lxshots:{secrets.token_hex(6)}:",
                    stripe_api_key=API_KEY,
                    stripe_api_base=fake.url,
                    stripe_webhook_secrets=SECRETS,
                    scheduler_enabled=False,
                    worker_enabled=False,
                    db_pool_size=5,
                )
                services = Services.build(settings)
                try:
                    async with serving(settings, services) as base_url:
                        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
                            made = await seed(settings, services, http, fake)
                        await shoot_pages(
                            base_url, demo.EMAIL, demo.PASSWORD, out, args.width, args.height, admin=False, extra=[]
                        )
                        await shoot_pages(
                            base_url,
                            ADMIN_EMAIL,
                            ADMIN_PASSWORD,
                            out,
                            args.width,
                            args.height,
                            admin=True,
                            extra=[f"#/stripe-inbox/{made['failed_event']}"],
                        )
                finally:
                    await services.close()
    finally:
        await fake.stop()
        embedded.stop_all()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"))
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
