"""The grant terms the catalog sets: a credit pack's `validityDays` (a purchase through Checkout or
auto top-up is a PAID grant expiring that many days after the payment, then expired by the expiry
pass; the terms a Checkout opened with hold), a plan's `rolloverCredits` (its credits do not expire
at the period end), bad input, audit rows, and migration 0015 keeping the catalog as it was."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from ledgerx import ids
from ledgerx.db.engine import asyncpg_dsn
from ledgerx.db.migrate import downgrade, upgrade
from ledgerx.db.models import Invoice
from ledgerx.domain.ledger import expiry
from ledgerx.domain.ledger.types import GrantCategory
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.domain.payments import top_up_intents
from ledgerx.domain.payments.grants import pack_credit_terms, plan_credit_terms
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, sign_up
from tests.fake_stripe import FakeStripe, checkout, deliver_and_process, stripe_settings
from tests.tenancy_helpers import create_project, make_platform_admin, owner_sql

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

DAY = dt.timedelta(days=1)
SECOND = dt.timedelta(seconds=1)

PACK_FIELDS = "id name credits validityDays"
CREATE_PACK = f"mutation($i: CreateCreditPackInput!) {{ createCreditPack(input: $i) {{ {PACK_FIELDS} }} }}"
UPDATE_PACK = f"mutation($i: UpdateCreditPackInput!) {{ updateCreditPack(input: $i) {{ {PACK_FIELDS} }} }}"
CREATE_PLAN = "mutation($i: CreatePlanInput!) { createPlan(input: $i) { id includedCredits rolloverCredits } }"
UPDATE_PLAN = "mutation($i: UpdatePlanInput!) { updatePlan(input: $i) { id name rolloverCredits } }"
CATALOG = "query { creditPacks { id validityDays } plans { id rolloverCredits } }"
CREATE_WALLET = "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }"
DEBIT = "mutation($i: DebitWalletInput!) { debitWallet(input: $i) { balanceAfter } }"
SET_TOP_UP = "mutation($i: SetAutoTopUpInput!) { setAutoTopUp(input: $i) { enabled } }"
GRANTS = """
query($id: ID!) { wallet(id: $id) { balance grants(first: 20) { nodes {
  id amount remaining category expiresAt status createdAt
} } } }
"""
INVOICES = "query($p: ID!) { invoices(projectId: $p) { nodes { status credits periodEnd } } }"


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe) -> Settings:
    return stripe_settings(settings, fake)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def pack_input(credits: int, **extra: Any) -> dict[str, Any]:
    return {"name": f"{credits} credits", "credits": str(credits), "price": {"amount": 900, "currency": "usd"}, **extra}


@dataclasses.dataclass
class Buyer:
    gql: GQL
    client: httpx.AsyncClient
    services: Services
    settings: Settings
    fake: FakeStripe
    admin: SignedIn
    owner: SignedIn
    project_id: str
    wallet_id: str

    async def send(self, *events: dict[str, Any]) -> None:
        await deliver_and_process(self.client, self.services, *events)

    async def open(self, pack_id: str) -> str:
        return await checkout(self.gql, self.owner, self.project_id, creditPackId=pack_id, walletId=self.wallet_id)

    async def pay(self, session_id: str) -> None:
        await self.send(*self.fake.complete_checkout(session_id))

    async def wallet(self) -> dict[str, Any]:
        return (await self.gql.ok(GRANTS, {"id": self.wallet_id}, token=self.owner.token))["wallet"]

    async def grants(self) -> list[dict[str, Any]]:
        return sorted((await self.wallet())["grants"]["nodes"], key=lambda g: g["createdAt"])

    async def pack(self, **fields: Any) -> dict[str, Any]:
        made = await self.gql.ok(CREATE_PACK, {"i": pack_input(**fields)}, token=self.admin.token)
        return dict(made["createCreditPack"])

    async def audit(self, target: str) -> list[tuple[str, Any, Any]]:
        rows = await owner_sql(
            self.settings,
            "SELECT action, before::text AS b, after::text AS a FROM audit_log WHERE target_id = $1 ORDER BY at, id",
            target,
        )
        return [(r["action"], json.loads(r["b"] or "null"), json.loads(r["a"] or "null")) for r in rows]

    async def verify(self) -> None:
        report = await verify_ledger(self.services.ledger, ids.decode("project", self.project_id))
        assert report.ok, report.mismatches


@pytest.fixture
async def buyer(gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe) -> Buyer:
    admin = await make_platform_admin(gql, settings)
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    made = await gql.ok(CREATE_WALLET, {"i": {"projectId": pid, "name": "main"}}, token=owner.token)
    return Buyer(gql, client, services, settings, fake, admin, owner, pid, made["createWallet"]["id"])


def assert_expires(grant: dict[str, Any], days: int, before: dt.datetime, after: dt.datetime) -> dt.datetime:
    """A PAID grant expiring `days` after it was made, made between `before` and `after`."""
    assert grant["category"] == "PAID"
    expires, created = at(grant["expiresAt"]), at(grant["createdAt"])
    assert before + days * DAY <= expires <= after + days * DAY
    assert abs(expires - created - days * DAY) < SECOND
    return expires


async def test_a_pack_with_validity_days_makes_a_grant_that_expires(buyer: Buyer) -> None:
    b = buyer
    pack = await b.pack(credits=500, validityDays=2)
    assert pack["validityDays"] == 2
    plain = await b.pack(credits=300)
    assert plain["validityDays"] is None
    catalog = {p["id"]: p["validityDays"] for p in (await b.gql.ok(CATALOG))["creditPacks"]}
    assert (catalog[pack["id"]], catalog[plain["id"]]) == (2, None)

    before = now()
    await b.pay(await b.open(pack["id"]))
    await b.pay(await b.open(plain["id"]))
    after = now()
    [bought, forever] = await b.grants()
    assert (bought["amount"], forever["amount"]) == ("500", "300")
    expires = assert_expires(bought, 2, before, after)
    assert (forever["category"], forever["expiresAt"]) == ("PAID", None)

    # The expiry pass: nothing before the instant, the remainder at it; the pack without
    # validity stays.
    await expiry.run(b.services.ledger, expires - SECOND)
    assert [(g["status"], g["remaining"]) for g in await b.grants()] == [("ACTIVE", "500"), ("ACTIVE", "300")]
    await expiry.run(b.services.ledger, expires + SECOND)
    w = await b.wallet()
    assert sorted((g["amount"], g["status"], g["remaining"]) for g in w["grants"]["nodes"]) == [
        ("300", "ACTIVE", "300"),
        ("500", "EXPIRED", "0"),
    ]
    assert w["balance"] == "300"
    rows = await owner_sql(
        b.settings,
        "SELECT kind, amount FROM ledger_transactions WHERE project_id = $1 AND kind = 'EXPIRATION'",
        ids.decode("project", b.project_id),
    )
    assert [(r["kind"], r["amount"]) for r in rows] == [("EXPIRATION", 500)]
    await b.verify()


async def test_a_checkout_keeps_the_validity_it_opened_with_and_update_clears_it(buyer: Buyer) -> None:
    b = buyer
    pack = await b.pack(credits=100, validityDays=30)
    before = now()
    opened_with_30 = await b.open(pack["id"])
    assert b.fake.calls_to("POST", "checkout/sessions")[-1].params["metadata"]["ledgerx_validity_days"] == "30"

    # Omitted: unchanged; null: no expiry from then on.
    kept = await b.gql.ok(UPDATE_PACK, {"i": {"id": pack["id"], "name": "Hundred"}}, token=b.admin.token)
    assert kept["updateCreditPack"]["validityDays"] == 30
    cleared = await b.gql.ok(UPDATE_PACK, {"i": {"id": pack["id"], "validityDays": None}}, token=b.admin.token)
    assert cleared["updateCreditPack"]["validityDays"] is None
    opened_without = await b.open(pack["id"])
    assert b.fake.calls_to("POST", "checkout/sessions")[-1].params["metadata"]["ledgerx_validity_days"] == "0"

    await b.pay(opened_without)
    await b.pay(opened_with_30)  # paid after the change: the customer bought 30 days
    after = now()
    [without, with_30] = await b.grants()
    assert (without["category"], without["expiresAt"]) == ("PAID", None)
    assert_expires(with_30, 30, before, after)

    set_again = await b.gql.ok(UPDATE_PACK, {"i": {"id": pack["id"], "validityDays": 365}}, token=b.admin.token)
    assert set_again["updateCreditPack"]["validityDays"] == 365
    audit = await b.audit(pack["id"])
    assert [a[0] for a in audit] == ["catalog.credit_pack.create"] + ["catalog.credit_pack.update"] * 3
    assert audit[0][2]["validityDays"] == 30
    assert [(bf["validityDays"], af["validityDays"]) for _, bf, af in audit[1:]] == [(30, 30), (30, None), (None, 365)]
    await b.verify()


async def test_a_session_opened_before_validity_existed_takes_the_packs_current_validity(buyer: Buyer) -> None:
    """A Checkout opened before LedgerX wrote the validity into its metadata (or by an older
    instance): the pack's validity at payment applies."""
    b = buyer
    pack = await b.pack(credits=40, validityDays=10)
    sid = await b.open(pack["id"])
    # Stripe's copy of the session, as an older LedgerX would have opened it.
    del b.fake.get(sid)["metadata"]["ledgerx_validity_days"]
    before = now()
    await b.pay(sid)
    [g] = await b.grants()
    assert_expires(g, 10, before, now())
    await b.verify()


async def test_auto_top_up_credits_the_pack_with_its_validity(buyer: Buyer) -> None:
    b = buyer
    pack = await b.pack(credits=500, validityDays=7)
    # A Checkout saves the card for off-session use (and buys the pack once).
    sid = await b.open(pack["id"])
    await b.pay(sid)
    await b.send(b.fake.intent_succeeded(b.fake.get(sid)["payment_intent"]))
    top_up = {"walletId": b.wallet_id, "enabled": True, "threshold": "300", "creditPackId": pack["id"]}
    await b.gql.ok(SET_TOP_UP, {"i": top_up}, token=b.owner.token)
    debit = {"walletId": b.wallet_id, "amount": "300", "idempotencyKey": uuid.uuid4().hex}
    assert (await b.gql.ok(DEBIT, {"i": debit}, token=b.owner.token))["debitWallet"]["balanceAfter"] == "200"
    before = now()
    # (The round also claims what earlier tests in this database left wanted: look for ours.)
    assert await top_up_intents.run_once(b.services.payments) >= 1
    [attempt] = await owner_sql(
        b.settings,
        "SELECT status, stripe_payment_intent_id AS pi FROM auto_top_up_attempts WHERE wallet_id = $1",
        ids.decode("wallet", b.wallet_id),
    )
    assert attempt["status"] == "PENDING"
    [paid] = [
        e
        for e in b.fake.events
        if e["type"] == "payment_intent.succeeded" and e["data"]["object"]["id"] == attempt["pi"]
    ]
    await b.send(paid)
    after = now()
    assert (await b.wallet())["balance"] == "700"
    rows = await owner_sql(
        b.settings,
        "SELECT g.amount, g.category, g.expires_at, g.created_at FROM credit_grants g"
        " JOIN ledger_transactions t ON t.id = g.source_transaction_id"
        " WHERE g.wallet_id = $1 AND t.idempotency_key LIKE 'stripe:payment_intent:%'",
        ids.decode("wallet", b.wallet_id),
    )
    [g] = rows
    assert (g["amount"], g["category"]) == (500, "PAID")
    assert before + 7 * DAY <= g["expires_at"] <= after + 7 * DAY
    assert abs(g["expires_at"] - g["created_at"] - 7 * DAY) < SECOND
    await b.verify()


async def test_plan_credits_expire_at_the_period_end_unless_the_plan_rolls_them_over(buyer: Buyer) -> None:
    b = buyer
    base = {"tier": "PRO", "interval": "MONTH", "price": {"amount": 2000, "currency": "USD"}, "includedCredits": "100"}
    expiring = (await b.gql.ok(CREATE_PLAN, {"i": {"name": "Pro", **base}}, token=b.admin.token))["createPlan"]
    assert expiring["rolloverCredits"] is False
    made = await b.gql.ok(CREATE_PLAN, {"i": {"name": "Pro+", "rolloverCredits": True, **base}}, token=b.admin.token)
    rolling = made["createPlan"]
    assert rolling["rolloverCredits"] is True
    catalog = {p["id"]: p["rolloverCredits"] for p in (await b.gql.ok(CATALOG))["plans"]}
    assert (catalog[expiring["id"]], catalog[rolling["id"]]) == (False, True)
    try:
        got = {}
        for plan in (expiring, rolling):
            pid = await create_project(b.gql, b.owner)
            await b.send(*b.fake.complete_checkout(await checkout(b.gql, b.owner, pid, planId=plan["id"])))
            [invoice] = (await b.gql.ok(INVOICES, {"p": pid}, token=b.owner.token))["invoices"]["nodes"]
            assert (invoice["status"], invoice["credits"]) == ("PAID", "100")
            [grant] = await owner_sql(
                b.settings,
                "SELECT amount, category, expires_at FROM credit_grants WHERE project_id = $1",
                ids.decode("project", pid),
            )
            got[plan["id"]] = (grant["amount"], grant["category"], grant["expires_at"], at(invoice["periodEnd"]))
            report = await verify_ledger(b.services.ledger, ids.decode("project", pid))
            assert report.ok, report.mismatches
        amount, category, expires, period_end = got[expiring["id"]]
        assert (amount, category, expires) == (100, "PROMOTIONAL", period_end) and period_end > now()
        assert got[rolling["id"]][:3] == (100, "PROMOTIONAL", None)

        # Turned off again (audited): credits granted from then on expire.
        off = await b.gql.ok(UPDATE_PLAN, {"i": {"id": rolling["id"], "rolloverCredits": False}}, token=b.admin.token)
        assert off["updatePlan"]["rolloverCredits"] is False
        kept = await b.gql.ok(UPDATE_PLAN, {"i": {"id": rolling["id"], "name": "Pro plus"}}, token=b.admin.token)
        assert kept["updatePlan"]["rolloverCredits"] is False
        audit = await b.audit(rolling["id"])
        assert [(a[0], a[2]["rolloverCredits"]) for a in audit] == [
            ("catalog.plan.create", True),
            ("catalog.plan.update", False),
            ("catalog.plan.update", False),
        ]
        assert audit[1][1]["rolloverCredits"] is True
    finally:
        await owner_sql(
            b.settings,
            "UPDATE plans SET archived_at = now() WHERE id = ANY($1::uuid[])",
            [ids.decode("plan", expiring["id"]), ids.decode("plan", rolling["id"])],
        )


def test_the_terms_functions() -> None:
    t = now()
    rolled = plan_credit_terms(Invoice(period_end=t + 20 * DAY), t, rollover=True)
    assert (rolled.category, rolled.expires_at) == (GrantCategory.PROMOTIONAL, None)
    expiring = plan_credit_terms(Invoice(period_end=t + 20 * DAY), t)
    assert (expiring.category, expiring.expires_at) == (GrantCategory.PROMOTIONAL, t + 20 * DAY)
    assert pack_credit_terms(None, t) == pack_credit_terms(0, t)
    assert (pack_credit_terms(None, t).category, pack_credit_terms(None, t).expires_at) == (GrantCategory.PAID, None)
    assert pack_credit_terms(90, t).expires_at == t + 90 * DAY


async def test_bad_terms_are_refused_on_their_field_and_write_nothing(buyer: Buyer) -> None:
    b = buyer
    products = len(b.fake.of_type("product"))
    name = f"refused {uuid.uuid4().hex}"
    for bad in (0, -1, 3651, 2**31 - 1):
        refused = pack_input(10, validityDays=bad, name=name)
        err = await b.gql.error(CREATE_PACK, {"i": refused}, token=b.admin.token)
        assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "validityDays"), bad
    assert len(b.fake.of_type("product")) == products  # refused before Stripe is asked
    rows = await owner_sql(b.settings, "SELECT count(*) AS n FROM credit_packs WHERE name = $1", name)
    assert rows[0]["n"] == 0

    pack = await b.pack(credits=20, validityDays=3650)
    assert pack["validityDays"] == 3650
    before = await b.audit(pack["id"])
    for bad in (0, 3651):
        err = await b.gql.error(
            UPDATE_PACK, {"i": {"id": pack["id"], "name": "renamed", "validityDays": bad}}, token=b.admin.token
        )
        assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "validityDays"), bad
    catalog = {p["id"]: p["validityDays"] for p in (await b.gql.ok(CATALOG))["creditPacks"]}
    assert catalog[pack["id"]] == 3650
    assert await b.audit(pack["id"]) == before
    assert b.fake.get(b.fake.of_type("product")[-1]["id"])["name"] == "20 credits"

    # The database refuses what the API would (the CHECK behind the validation).
    with pytest.raises(asyncpg.CheckViolationError):
        await owner_sql(
            b.settings, "UPDATE credit_packs SET validity_days = 0 WHERE id = $1", ids.decode("credit_pack", pack["id"])
        )


async def test_migration_0015_keeps_existing_packs_and_plans(scratch_database: str) -> None:
    await asyncio.to_thread(upgrade, scratch_database, "0014_auto_top_up")
    conn = await asyncpg.connect(asyncpg_dsn(scratch_database))
    try:
        pack, plan = uuid.uuid4(), uuid.uuid4()
        await conn.execute(
            "INSERT INTO credit_packs (id, name, credits, price_amount, currency) VALUES ($1, 'old', 10, 100, 'USD')",
            pack,
        )
        await conn.execute(
            "INSERT INTO plans (id, name, tier, interval, price_amount, currency, included_credits)"
            " VALUES ($1, 'old', 'PRO', 'MONTH', 100, 'USD', 5)",
            plan,
        )
        await asyncio.to_thread(upgrade, scratch_database)
        assert await conn.fetchval("SELECT validity_days FROM credit_packs WHERE id = $1", pack) is None
        assert await conn.fetchval("SELECT rollover_credits FROM plans WHERE id = $1", plan) is False
        await conn.execute("UPDATE credit_packs SET validity_days = 3650 WHERE id = $1", pack)
        for bad in (0, 3651):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute("UPDATE credit_packs SET validity_days = $2 WHERE id = $1", pack, bad)
        with pytest.raises(asyncpg.NotNullViolationError):
            await conn.execute("UPDATE plans SET rollover_credits = NULL WHERE id = $1", plan)
        await asyncio.to_thread(downgrade, scratch_database, "0014_auto_top_up")
        cols = await conn.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE (table_name, column_name) IN (('credit_packs', 'validity_days'), ('plans', 'rollover_credits'))"
        )
        assert cols == []
        assert await conn.fetchval("SELECT count(*) FROM credit_packs WHERE id = $1", pack) == 1
    finally:
        await conn.close()
