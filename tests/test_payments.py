"""Credit packs end to end: the catalog, checkout through the SDK, signed webhooks, refunds and
disputes, replays and concurrency. The books are verified after every test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ledgerx import ids
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.domain.payments import inbox
from ledgerx.domain.payments.handlers import dispatch
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, sign_up
from tests.fake_stripe import FakeStripe, checkout, create_pack, deliver, stripe_settings
from tests.tenancy_helpers import add_member, create_project, make_platform_admin, owner_sql

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe) -> Settings:
    return stripe_settings(settings, fake)


class Books:
    """Reads of the ledger as the table owner, and `verifyLedger` for every project a test touched."""

    def __init__(self, services: Services, settings: Settings) -> None:
        self.services = services
        self.settings = settings
        self.projects: set[str] = set()

    def track(self, project_id: str) -> str:
        self.projects.add(project_id)
        return project_id

    async def balances(self, project_id: str) -> list[int]:
        rows = await owner_sql(
            self.settings,
            "SELECT balance FROM wallets WHERE project_id = $1 ORDER BY id",
            ids.decode("project", project_id),
        )
        return [r["balance"] for r in rows]

    async def system_balance(self, project_id: str, code: str) -> int:
        rows = await owner_sql(
            self.settings,
            "SELECT coalesce(sum(e.amount), 0)::bigint AS total FROM ledger_entries e"
            " JOIN ledger_system_accounts s ON s.id = e.system_account_id WHERE s.project_id = $1 AND s.code = $2",
            ids.decode("project", project_id),
            code,
        )
        return int(rows[0]["total"])

    async def transactions(self, project_id: str) -> list[Any]:
        return await owner_sql(
            self.settings,
            "SELECT kind, type, amount, idempotency_key FROM ledger_transactions WHERE project_id = $1 ORDER BY id",
            ids.decode("project", project_id),
        )

    async def verify(self) -> None:
        for pid in self.projects:
            report = await verify_ledger(self.services.ledger, ids.decode("project", pid))
            assert report.ok, report.mismatches


@pytest.fixture
async def books(services: Services, settings: Settings) -> AsyncIterator[Books]:
    b = Books(services, settings)
    yield b
    await b.verify()


class Shop:
    """A platform admin, a credit pack and a project with its owner."""

    def __init__(self, admin: SignedIn, owner: SignedIn, project_id: str, pack_id: str) -> None:
        self.admin, self.owner, self.project_id, self.pack_id = admin, owner, project_id, pack_id


@pytest.fixture
async def shop(gql: GQL, settings: Settings, books: Books) -> Shop:
    admin = await make_platform_admin(gql, settings)
    pack = await create_pack(gql, admin, credits=5000, amount=4900)
    owner = await sign_up(gql)
    pid = books.track(await create_project(gql, owner))
    return Shop(admin, owner, pid, pack)


async def buy(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, shop: Shop
) -> tuple[str, dict[str, Any]]:
    session_id = await checkout(gql, shop.owner, shop.project_id, creditPackId=shop.pack_id)
    (event,) = fake.complete_checkout(session_id)
    assert (await deliver(client, event)).status_code == 200
    await inbox.drain(services.payments)
    return session_id, event


PAYMENTS = """
query($p: ID!) { payments(projectId: $p) { edges { node {
  id kind status amount { amount currency } amountRefunded { amount } credits creditsReversed creditsHeld
  creditPackId walletId transactionId stripeCheckoutSessionId stripeChargeId
} } } }
"""
VERIFY = "query($p: ID!) { verifyLedger(projectId: $p) { ok walletsChecked entriesChecked } }"


async def test_pack_purchase_end_to_end(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, shop: Shop, books: Books
) -> None:
    # The catalog created the Stripe Product and Price through the SDK.
    (price,) = fake.of_type("price")
    assert price["unit_amount"] == 4900
    assert price["currency"] == "usd"
    assert price["recurring"] is None

    session_id = await checkout(gql, shop.owner, shop.project_id, creditPackId=shop.pack_id)
    (call,) = fake.calls_to("POST", "checkout/sessions")
    assert call.params["mode"] == "payment"
    assert call.params["metadata"]["ledgerx_project_id"] == shop.project_id
    assert call.params["metadata"]["ledgerx_credit_pack_id"] == shop.pack_id
    assert call.params["metadata"]["ledgerx_credits"] == "5000"
    assert call.params["payment_intent_data"]["metadata"]["ledgerx_project_id"] == shop.project_id
    assert call.params["line_items"] == [{"price": price["id"], "quantity": "1"}]

    (event,) = fake.complete_checkout(session_id)
    r = await deliver(client, event)
    assert r.status_code == 200
    assert r.json() == {"received": True, "duplicate": False}
    # Acknowledged at once, processed by the worker.
    assert await books.balances(shop.project_id) == []
    assert await inbox.drain(services.payments) >= 1
    assert await books.balances(shop.project_id) == [5000]

    (txn,) = await books.transactions(shop.project_id)
    assert (txn["kind"], txn["type"], txn["amount"]) == ("PURCHASE", "CREDIT", 5000)
    assert txn["idempotency_key"] == f"stripe:checkout:{session_id}"

    data = await gql.ok(PAYMENTS, {"p": shop.project_id}, token=shop.owner.token)
    (edge,) = data["payments"]["edges"]
    p = edge["node"]
    assert p["kind"] == "CREDIT_PACK"
    assert p["status"] == "SUCCEEDED"
    assert p["amount"] == {"amount": "4900", "currency": "USD"}
    assert p["credits"] == "5000"
    assert p["creditPackId"] == shop.pack_id
    assert p["stripeCheckoutSessionId"] == session_id
    assert p["transactionId"].startswith("txn_")

    # A second purchase reuses the project's Stripe customer.
    session2 = await checkout(gql, shop.owner, shop.project_id, creditPackId=shop.pack_id)
    for ev in fake.complete_checkout(session2):
        await deliver(client, ev)
    await inbox.drain(services.payments)
    assert await books.balances(shop.project_id) == [10000]
    assert len(fake.of_type("customer")) == 1
    assert len(fake.calls_to("POST", "customers")) == 1

    v = await gql.ok(VERIFY, {"p": shop.project_id}, token=shop.owner.token)
    assert v["verifyLedger"]["ok"] is True


async def test_same_event_delivered_20_times_concurrently_credits_once(
    gql: GQL,
    client: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    fake: FakeStripe,
    shop: Shop,
    books: Books,
) -> None:
    session_id = await checkout(gql, shop.owner, shop.project_id, creditPackId=shop.pack_id)
    (event,) = fake.complete_checkout(session_id)
    responses = await asyncio.gather(*(deliver(client, event) for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert sum(not r.json()["duplicate"] for r in responses) == 1
    rows = await owner_sql(settings, "SELECT count(*) AS n FROM webhook_events WHERE stripe_event_id = $1", event["id"])
    assert rows[0]["n"] == 1

    # Several workers at once claim disjoint rows (SKIP LOCKED): one processing in total.
    claimed = await asyncio.gather(*(inbox.run_once(services.payments) for _ in range(5)))
    assert sum(claimed) == 1
    # And the handler itself, run 20 times concurrently (as replays or reconciliation might),
    # still credits once: the ledger key and the payment's unique session id hold the line.
    outcomes = await asyncio.gather(*(dispatch.handle(services.payments, event) for _ in range(20)))
    assert all(o.project_id == ids.decode("project", shop.project_id) for o in outcomes)
    assert await books.balances(shop.project_id) == [5000]
    assert len(await books.transactions(shop.project_id)) == 1
    rows = await owner_sql(
        settings, "SELECT count(*) AS n FROM payments WHERE stripe_checkout_session_id = $1", session_id
    )
    assert rows[0]["n"] == 1


WEBHOOK_EVENTS = """
query($s: WebhookEventStatus, $t: String, $first: Int, $after: String) {
  webhookEvents(status: $s, type: $t, first: $first, after: $after) {
    edges { node { id stripeEventId type status attempts result projectId attemptLog { attempt trigger ok } } }
    pageInfo { hasNextPage endCursor }
  }
}
"""
REPLAY = "mutation($id: ID!) { replayWebhookEvent(id: $id) { id stripeEventId status attempts result } }"


async def test_replay_is_a_no_op_for_the_books(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, shop: Shop, books: Books
) -> None:
    session_id, event = await buy(gql, client, services, fake, shop)
    refund = fake.refund(fake.charge_of_session(session_id)["id"], 980)
    await deliver(client, refund)
    await inbox.drain(services.payments)
    assert await books.balances(shop.project_id) == [4000]
    before = await books.transactions(shop.project_id)

    data = await gql.ok(WEBHOOK_EVENTS, {"t": "checkout.session.completed"}, token=shop.admin.token)
    (node,) = [e["node"] for e in data["webhookEvents"]["edges"] if e["node"]["stripeEventId"] == event["id"]]
    assert node["status"] == "PROCESSED"
    assert node["projectId"] == shop.project_id
    refund_node = next(
        e["node"]
        for e in (await gql.ok(WEBHOOK_EVENTS, {"t": "charge.refunded"}, token=shop.admin.token))["webhookEvents"][
            "edges"
        ]
        if e["node"]["stripeEventId"] == refund["id"]
    )
    for _ in range(3):
        for target in (node, refund_node):
            r = await gql.ok(REPLAY, {"id": target["id"]}, token=shop.admin.token)
            assert r["replayWebhookEvent"]["status"] == "PROCESSED"
    assert await books.balances(shop.project_id) == [4000]
    assert await books.transactions(shop.project_id) == before

    data = await gql.ok(WEBHOOK_EVENTS, {"t": "checkout.session.completed"}, token=shop.admin.token)
    (node,) = [e["node"] for e in data["webhookEvents"]["edges"] if e["node"]["stripeEventId"] == event["id"]]
    assert node["attempts"] == 4
    assert [a["trigger"] for a in node["attemptLog"]] == ["WORKER", "REPLAY", "REPLAY", "REPLAY"]
    assert "already credited" in node["result"]

    # Replays are platform-admin only, and audited.
    err = await gql.error(REPLAY, {"id": node["id"]}, token=shop.owner.token)
    assert err["code"] == "FORBIDDEN"
    rows = await owner_sql(books.settings, "SELECT count(*) AS n FROM audit_log WHERE action = 'webhook.replay'")
    assert rows[0]["n"] >= 6


async def test_refunds_reverse_exactly_the_credits_granted(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, shop: Shop, books: Books
) -> None:
    session_id, _ = await buy(gql, client, services, fake, shop)
    charge = fake.charge_of_session(session_id)["id"]
    # 4900 cents bought 5000 credits: a refund of 1225 cents reverses floor(5000 * 1225 / 4900) = 1250.
    first = fake.refund(charge, 1225)
    second = fake.refund(charge, 1000)  # cumulative 2225 -> 2270 credits in total
    # Delivered out of order, then again: the same total either way.
    for ev in (second, first, second, first):
        assert (await deliver(client, ev)).status_code == 200
    await inbox.drain(services.payments)
    assert await books.balances(shop.project_id) == [5000 - 2270]
    last = fake.refund(charge)  # the rest: everything is reversed, no rounding left behind
    await deliver(client, last)
    await inbox.drain(services.payments)
    assert await books.balances(shop.project_id) == [0]
    assert await books.system_balance(shop.project_id, "REFUNDS") == 5000

    kinds = [(t["kind"], t["type"], t["amount"]) for t in await books.transactions(shop.project_id)]
    assert kinds[0] == ("PURCHASE", "CREDIT", 5000)
    assert sorted(k[2] for k in kinds[1:]) == sorted([1250, 1020, 2730])
    assert all(k[:2] == ("REFUND", "DEBIT") for k in kinds[1:])
    keys = {t["idempotency_key"] for t in await books.transactions(shop.project_id)}
    refund_ids = {r["id"] for r in fake.get(charge)["refunds"]["data"]}
    assert {f"stripe:refund:{r}" for r in refund_ids} <= keys

    data = await gql.ok(PAYMENTS, {"p": shop.project_id}, token=shop.owner.token)
    p = data["payments"]["edges"][0]["node"]
    assert p["status"] == "REFUNDED"
    assert p["amountRefunded"]["amount"] == "4900"
    assert p["creditsReversed"] == "5000"
    assert p["stripeChargeId"] == charge


async def test_refund_overtaking_its_checkout_waits_and_converges(
    gql: GQL,
    client: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    fake: FakeStripe,
    shop: Shop,
    books: Books,
) -> None:
    session_id = await checkout(gql, shop.owner, shop.project_id, creditPackId=shop.pack_id)
    (completed,) = fake.complete_checkout(session_id)
    refund = fake.refund(fake.charge_of_session(session_id)["id"], 2450)
    await deliver(client, refund)
    await inbox.drain(services.payments)
    rows = await owner_sql(
        settings, "SELECT status, attempts, last_error FROM webhook_events WHERE stripe_event_id = $1", refund["id"]
    )
    assert rows[0]["status"] == "FAILED"
    assert "not recorded yet" in rows[0]["last_error"]

    await deliver(client, completed)
    await inbox.drain(services.payments)
    assert await books.balances(shop.project_id) == [5000]
    # The retry comes after its backoff (made due here), and then the refund applies.
    await owner_sql(
        settings, "UPDATE webhook_events SET next_attempt_at = now() WHERE stripe_event_id = $1", refund["id"]
    )
    await inbox.drain(services.payments)
    assert await books.balances(shop.project_id) == [2500]


async def test_dispute_holds_the_credits_and_a_won_dispute_releases_them(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, shop: Shop, books: Books
) -> None:
    session_id, _ = await buy(gql, client, services, fake, shop)
    charge = fake.charge_of_session(session_id)["id"]
    opened = fake.dispute(charge)
    await deliver(client, opened)
    await inbox.drain(services.payments)
    assert await books.balances(shop.project_id) == [0]
    assert await books.system_balance(shop.project_id, "DISPUTES") == 5000
    data = await gql.ok(PAYMENTS, {"p": shop.project_id}, token=shop.owner.token)
    assert data["payments"]["edges"][0]["node"]["creditsHeld"] == "5000"

    # Redelivery and replay hold nothing more; a won dispute releases exactly what was held.
    await deliver(client, fake.event("charge.dispute.updated", fake.get(opened["data"]["object"]["id"])))
    closed = fake.close_dispute(opened["data"]["object"]["id"], won=True)
    await deliver(client, closed)
    await deliver(client, closed)
    await inbox.drain(services.payments)
    assert await books.balances(shop.project_id) == [5000]
    assert await books.system_balance(shop.project_id, "DISPUTES") == 0
    kinds = [(t["kind"], t["type"], t["amount"]) for t in await books.transactions(shop.project_id)]
    assert kinds == [("PURCHASE", "CREDIT", 5000), ("DISPUTE", "DEBIT", 5000), ("DISPUTE", "CREDIT", 5000)]


async def test_partial_dispute_lost_keeps_the_hold(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, shop: Shop, books: Books
) -> None:
    session_id, _ = await buy(gql, client, services, fake, shop)
    charge = fake.charge_of_session(session_id)["id"]
    opened = fake.dispute(charge, 2450)  # half the payment: half the credits
    closed = fake.close_dispute(opened["data"]["object"]["id"], won=False)
    # The close arrives first: the hold is taken then, and stays (lost).
    await deliver(client, closed)
    await deliver(client, opened)
    await inbox.drain(services.payments)
    assert await books.balances(shop.project_id) == [2500]
    assert await books.system_balance(shop.project_id, "DISPUTES") == 2500


CATALOG = "{ creditPacks { id name credits price { amount currency } archived } }"


async def test_catalog_is_public_to_read_and_platform_admins_change_it(
    gql: GQL, services: Services, fake: FakeStripe, shop: Shop
) -> None:
    data = await gql.ok(CATALOG)  # anonymous
    assert any(p["id"] == shop.pack_id for p in data["creditPacks"])

    bad = await gql.error(
        "mutation($i: CreateCreditPackInput!) { createCreditPack(input: $i) { id } }",
        {"i": {"name": "x", "credits": "10", "price": {"amount": 100, "currency": "usd"}}},
        token=shop.owner.token,
    )
    assert bad["code"] == "FORBIDDEN"
    for price, field in (
        ({"amount": 100, "currency": "usdx"}, "price.currency"),
        ({"amount": 100, "currency": "credits"}, "price.currency"),
        ({"amount": 0, "currency": "EUR"}, "price.amount"),
    ):
        err = await gql.error(
            "mutation($i: CreateCreditPackInput!) { createCreditPack(input: $i) { id } }",
            {"i": {"name": "x", "credits": "10", "price": price}},
            token=shop.admin.token,
        )
        assert (err["code"], err["field"]) == ("BAD_USER_INPUT", field)

    old_price = fake.get(next(p["id"] for p in fake.of_type("price")))
    data = await gql.ok(
        "mutation($i: UpdateCreditPackInput!) { updateCreditPack(input: $i) { name price { amount currency } stripePriceId } }",
        {"i": {"id": shop.pack_id, "name": "Big pack", "price": {"amount": 5900, "currency": "eur"}}},
        token=shop.admin.token,
    )
    upd = data["updateCreditPack"]
    assert upd["price"] == {"amount": "5900", "currency": "EUR"}
    assert upd["stripePriceId"] != old_price["id"]
    assert old_price["active"] is False
    new_price = fake.get(upd["stripePriceId"])
    assert (new_price["unit_amount"], new_price["currency"], new_price["product"]) == (
        5900,
        "eur",
        old_price["product"],
    )
    assert fake.get(old_price["product"])["name"] == "Big pack"

    arch = await gql.ok(
        "mutation($id: ID!) { archiveCreditPack(id: $id) { archived } }", {"id": shop.pack_id}, token=shop.admin.token
    )
    assert arch["archiveCreditPack"]["archived"] is True
    assert fake.get(old_price["product"])["active"] is False
    data = await gql.ok(CATALOG)
    assert all(p["id"] != shop.pack_id for p in data["creditPacks"])
    err = await gql.error(
        "mutation($i: CreateCheckoutSessionInput!) { createCheckoutSession(input: $i) { id } }",
        {
            "i": {
                "projectId": shop.project_id,
                "creditPackId": shop.pack_id,
                "successUrl": "https://a.b/ok",
                "cancelUrl": "https://a.b/no",
            }
        },
        token=shop.owner.token,
    )
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "creditPackId")
    rows = await owner_sql(
        services.settings, "SELECT action FROM audit_log WHERE target_id = $1 ORDER BY at", shop.pack_id
    )
    assert [r["action"] for r in rows] == [
        "catalog.credit_pack.create",
        "catalog.credit_pack.update",
        "catalog.credit_pack.archive",
    ]


async def test_checkout_needs_a_project_admin_and_one_target(gql: GQL, fake: FakeStripe, shop: Shop) -> None:
    mutation = "mutation($i: CreateCheckoutSessionInput!) { createCheckoutSession(input: $i) { id url } }"
    base = {"projectId": shop.project_id, "successUrl": "https://a.b/ok", "cancelUrl": "https://a.b/no"}
    member = await add_member(gql, shop.owner, shop.project_id, "MEMBER")
    err = await gql.error(mutation, {"i": {**base, "creditPackId": shop.pack_id}}, token=member.token)
    assert err["code"] == "FORBIDDEN"
    stranger = await sign_up(gql)
    err = await gql.error(mutation, {"i": {**base, "creditPackId": shop.pack_id}}, token=stranger.token)
    assert err["code"] == "NOT_FOUND"
    err = await gql.error(mutation, {"i": base}, token=shop.owner.token)
    assert err["code"] == "BAD_USER_INPUT"
    err = await gql.error(
        mutation, {"i": {**base, "creditPackId": shop.pack_id, "successUrl": "javascript:x"}}, token=shop.owner.token
    )
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "successUrl")
    err = await gql.error(mutation, {"i": {**base, "creditPackId": shop.project_id}}, token=shop.owner.token)
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "creditPackId")
    ok = await gql.ok(mutation, {"i": {**base, "creditPackId": shop.pack_id}}, token=shop.owner.token)
    assert ok["createCheckoutSession"]["url"].startswith("https://checkout.stripe.test/")
    assert fake.calls_to("POST", "checkout/sessions")


async def test_credits_go_to_the_wallet_named_at_checkout(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, shop: Shop, books: Books
) -> None:
    created = await gql.ok(
        "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }",
        {"i": {"projectId": shop.project_id, "name": "Team A"}},
        token=shop.owner.token,
    )
    other = await gql.ok(
        "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }",
        {"i": {"projectId": shop.project_id, "name": "Team B"}},
        token=shop.owner.token,
    )
    target = other["createWallet"]["id"]
    session_id = await checkout(gql, shop.owner, shop.project_id, creditPackId=shop.pack_id, walletId=target)
    for ev in fake.complete_checkout(session_id):
        await deliver(client, ev)
    await inbox.drain(services.payments)
    assert await books.balances(shop.project_id) == [0, 5000]
    data = await gql.ok(PAYMENTS, {"p": shop.project_id}, token=shop.owner.token)
    assert data["payments"]["edges"][0]["node"]["walletId"] == target
    assert created["createWallet"]["id"] != target


async def test_one_customer_and_one_default_wallet_under_concurrency(
    gql: GQL, services: Services, settings: Settings, fake: FakeStripe, shop: Shop, books: Books
) -> None:
    sessions = await asyncio.gather(
        *(checkout(gql, shop.owner, shop.project_id, creditPackId=shop.pack_id) for _ in range(5))
    )
    assert len(set(sessions)) == 5
    assert len(fake.of_type("customer")) == 1
    rows = await owner_sql(
        settings,
        "SELECT count(*) AS n FROM payment_customers WHERE project_id = $1",
        ids.decode("project", shop.project_id),
    )
    assert rows[0]["n"] == 1
    # Five purchases processed at once for a project without a wallet: one default wallet, all credited.
    events = [fake.complete_checkout(s)[0] for s in sessions]
    await asyncio.gather(*(dispatch.handle(services.payments, ev) for ev in events for _ in range(2)))
    assert await books.balances(shop.project_id) == [25000]


async def test_row_level_security_walls_off_payments_and_the_inbox(
    gql: GQL, client: httpx.AsyncClient, services: Services, fake: FakeStripe, shop: Shop, books: Books
) -> None:
    from sqlalchemy import func, select

    from ledgerx.db.models import Payment, PaymentCustomer, WebhookEvent

    await buy(gql, client, services, fake, shop)
    other = await create_project(gql, shop.owner)
    books.track(other)
    mine = ids.decode("project", shop.project_id)
    async with services.db.transaction(project_id=ids.decode("project", other)) as s:
        assert await s.scalar(select(func.count()).select_from(Payment)) == 0
        assert await s.scalar(select(func.count()).select_from(PaymentCustomer)) == 0
        assert await s.scalar(select(func.count()).select_from(WebhookEvent)) == 0  # system path only
    async with services.db.transaction(project_id=mine) as s:
        assert await s.scalar(select(func.count()).select_from(Payment)) == 1
        assert await s.scalar(select(func.count()).select_from(WebhookEvent)) == 0
    async with services.db.transaction(system=True) as s:
        assert await s.scalar(select(func.count()).select_from(WebhookEvent)) >= 1
