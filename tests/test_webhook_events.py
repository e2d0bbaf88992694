"""Every outbound webhook event type LedgerX emits today, caused by the real change: GraphQL
mutations, the billing scheduler, usage recording, and Stripe events through the signed webhook
route (tests/fake_stripe.py). Each delivery reaches a local HTTP receiver and is verified with the
official `standardwebhooks` package, unchanged; its `data` is checked against the schema (every
key is a field of the GraphQL type the event names, recursively) and against a query of the same
object (the same values, as the API writes them).

Also: a change that rolls back emits nothing, and a replay (an idempotent retry, a Stripe event
delivered again) emits no second event.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from ledgerx import ids
from ledgerx.db.engine import asyncpg_dsn
from ledgerx.domain.actor import Actor
from ledgerx.domain.billing import runner
from ledgerx.domain.billing.records import Rule
from ledgerx.domain.ledger import posting
from ledgerx.domain.payments import inbox, objects
from ledgerx.domain.payments.handlers import dispatch
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, sign_up
from tests.fake_stripe import FakeStripe, checkout, create_pack, create_plan, deliver, stripe_settings
from tests.ledger_helpers import new_project, new_wallet
from tests.tenancy_helpers import create_project, make_platform_admin, owner_sql
from tests.webhooks_out_receiver import Receiver, running_receiver

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

CREATE_ENDPOINT = """mutation($i: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $i) {
  secret endpoint { id } } }"""
TYPE = """query($n: String!) { __type(name: $n) { kind fields { name type { ...T } } } }
fragment T on __Type { kind name ofType { kind name ofType { kind name ofType { kind name } } } }"""


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe) -> Settings:
    return stripe_settings(settings, fake)


@pytest.fixture
async def receiver(services: Services) -> AsyncIterator[Receiver]:
    # The delivery worker serves every project of the shared test database: what other tests left
    # pending must not reach this test's receiver (nor count as its deliveries).
    await owner_sql(services.settings, "UPDATE webhook_deliveries SET status = 'FAILED' WHERE status = 'PENDING'")
    async with running_receiver() as r:
        yield r
    await owner_sql(services.settings, "UPDATE webhook_deliveries SET status = 'FAILED' WHERE status = 'PENDING'")


class Hook:
    """A project's endpoint subscribed to everything, and what reached it, verified."""

    def __init__(self, services: Services, receiver: Receiver, project_id: str, secret: str, path: str) -> None:
        self.services, self.receiver = services, receiver
        self.project_id, self.secret, self.path = project_id, secret, path
        self.seen = 0

    async def next(self, count: int) -> list[dict[str, Any]]:
        """The next `count` deliveries, verified by `standardwebhooks` (nothing else arrives)."""
        want = self.seen + count
        for _ in range(200):
            await self.services.webhook_delivery.run_once()
            if len(self.receiver.of(self.path)) >= want:
                break
            await asyncio.sleep(0.02)
        got = self.receiver.of(self.path)
        assert len(got) == want, f"expected {want} deliveries in all, got {len(got)}"
        fresh = got[self.seen :]
        self.seen = want
        payloads: list[dict[str, Any]] = []
        for r in fresh:
            payload: dict[str, Any] = Webhook(self.secret).verify(r.body, r.headers)
            assert payload["id"] == r.headers["webhook-id"]
            assert payload["projectId"] == self.project_id
            payloads.append(payload)
        return sorted(payloads, key=lambda p: p["id"])  # event ids are time-ordered

    async def one(self, event_type: str) -> dict[str, Any]:
        [payload] = await self.next(1)
        assert payload["type"] == event_type
        data: dict[str, Any] = payload["data"]
        return data

    async def nothing_more(self) -> None:
        await self.services.webhook_delivery.run_once()
        await asyncio.sleep(0.05)
        assert len(self.receiver.of(self.path)) == self.seen


async def hook(gql: GQL, services: Services, receiver: Receiver, owner: SignedIn, project_id: str) -> Hook:
    path = f"/ok/{uuid.uuid4().hex}"
    made = await gql.ok(
        CREATE_ENDPOINT,
        {"i": {"projectId": project_id, "url": receiver.url(path), "events": ["*"]}},
        token=owner.token,
    )
    return Hook(services, receiver, project_id, made["createWebhookEndpoint"]["secret"], path)


async def outbox_types(settings: Settings, project_id: str) -> list[str]:
    rows = await owner_sql(
        settings, "SELECT type FROM webhook_outbox WHERE project_id = $1 ORDER BY id", ids.decode("project", project_id)
    )
    return [r["type"] for r in rows]


# -- data against the schema -----------------------------------------------------------------------


class Schema:
    """The GraphQL types as the running API describes them (introspection)."""

    def __init__(self, gql: GQL) -> None:
        self.gql = gql
        self.types: dict[str, dict[str, str | None]] = {}

    async def fields(self, type_name: str) -> dict[str, str | None]:
        """Field name -> the object type it holds (through lists and non-null), None for a scalar or enum."""
        if type_name not in self.types:
            t = (await self.gql.ok(TYPE, {"n": type_name}))["__type"]
            assert t is not None and t["kind"] == "OBJECT", f"{type_name} is not a GraphQL object type"
            found: dict[str, str | None] = {}
            for f in t["fields"]:
                ref = f["type"]
                while ref["kind"] in ("NON_NULL", "LIST"):
                    ref = ref["ofType"]
                found[f["name"]] = ref["name"] if ref["kind"] == "OBJECT" else None
            self.types[type_name] = found
        return self.types[type_name]

    async def selection(self, type_name: str, data: dict[str, Any]) -> str:
        """Asserts every key of `data` (nested too) is a field of `type_name`; the selection set
        that asks for exactly those fields."""
        fields = await self.fields(type_name)
        assert data, f"empty data for {type_name}"
        parts = []
        for key, value in data.items():
            assert key in fields, f"{key!r} is not a field of the GraphQL type {type_name}"
            inner = fields[key]
            if inner is None:
                assert not isinstance(value, dict) or key == "metadata", f"{type_name}.{key} is a scalar"
                parts.append(key)
                continue
            items = [v for v in (value if isinstance(value, list) else [value]) if v is not None]
            if not items:  # null or []: any selection answers the same
                parts.append(f"{key} {{ __typename }}")
                continue
            subs = {await self.selection(inner, v) for v in items}
            assert len(subs) == 1, f"{type_name}.{key}: items with different fields"
            parts.append(f"{key} {{ {subs.pop()} }}")
        return " ".join(parts)

    async def check(self, type_name: str, data: dict[str, Any], token: str, root: str, wrap: str = "{}") -> None:
        """`data` has only fields of `type_name` and equals the answer of `root` (a query field
        with its arguments) asked for the same fields; `wrap` places the selection in the answer
        (for a connection or a list field)."""
        selection = await self.selection(type_name, data)
        query = "query { " + root + " " + wrap.replace("{}", "{ " + selection + " }") + " }"
        answer = await self.gql.ok(query, token=token)
        found = _unwrap(answer, data)
        assert found == data, f"{type_name}: event data differs from the query's answer"


def _unwrap(answer: Any, data: dict[str, Any]) -> Any:
    """The object in a query's answer that the event describes (the same `id`, or the only one)."""
    if isinstance(answer, dict) and set(answer) == set(data):
        return answer
    if isinstance(answer, dict):
        for v in answer.values():
            found = _unwrap(v, data)
            if found is not None:
                return found
    if isinstance(answer, list):
        candidates = [_unwrap(v, data) for v in answer]
        matches = [c for c in candidates if c is not None and c.get("id", c) == data.get("id", c)]
        if "id" not in data:
            matches = [c for c in candidates if c == data] or [c for c in candidates if c is not None]
        return matches[0] if matches else None
    return None


# -- the ledger ------------------------------------------------------------------------------------

CREATE_WALLET = """mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }"""
CREDIT = """mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id } }"""
DEBIT = """mutation($i: DebitWalletInput!) { debitWallet(input: $i) { id } }"""


async def test_transactions_and_low_balance_crossings(
    gql: GQL, services: Services, settings: Settings, receiver: Receiver
) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    h = await hook(gql, services, receiver, owner, pid)
    schema = Schema(gql)
    wallet = (
        await gql.ok(
            CREATE_WALLET, {"i": {"projectId": pid, "name": "main", "lowBalanceThreshold": "500"}}, token=owner.token
        )
    )["createWallet"]["id"]

    async def move(mutation: str, amount: int, key: str, **extra: Any) -> str:
        data = await gql.ok(
            mutation,
            {"i": {"walletId": wallet, "amount": str(amount), "idempotencyKey": key, **extra}},
            token=owner.token,
        )
        return str(next(iter(data.values()))["id"])

    txn = await move(CREDIT, 1000, "c1", reason="top-up", metadata={"b": [1, 2.5, None], "a": "x"}, reference="r-1")
    data = await h.one("transaction.posted")
    assert data["id"] == txn and data["amount"] == "1000" and data["metadata"] == {"a": "x", "b": [1, 2.5, None]}
    await schema.check("Transaction", data, owner.token, f'transaction(id: "{txn}")')

    # 1000 -> 400 crosses the threshold of 500: the transaction and the crossing.
    txn = await move(DEBIT, 600, "d1")
    posted, low = await h.next(2)
    assert (posted["type"], low["type"]) == ("transaction.posted", "wallet.low_balance")
    await schema.check("Transaction", posted["data"], owner.token, f'transaction(id: "{txn}")')
    update = low["data"]
    assert update["lowBalance"] is True
    assert update["wallet"]["id"] == wallet and update["wallet"]["balance"] == "400"
    assert update["transaction"] == posted["data"]
    await schema.selection("WalletUpdate", update)
    await schema.check("Wallet", update["wallet"], owner.token, f'wallet(id: "{wallet}")')

    # Below already: no second crossing. A replayed key and a refused debit emit nothing.
    await move(DEBIT, 100, "d2")
    assert (await h.next(1))[0]["type"] == "transaction.posted"
    await move(DEBIT, 100, "d2")
    refused = await gql.error(
        DEBIT, {"i": {"walletId": wallet, "amount": "1000000", "idempotencyKey": "d3"}}, token=owner.token
    )
    assert refused["code"] == "INSUFFICIENT_FUNDS"
    await h.nothing_more()

    # Back above the threshold and below again: a second crossing, a second event.
    await move(CREDIT, 1000, "c2")
    await move(DEBIT, 900, "d4")
    events = await h.next(3)
    assert [e["type"] for e in events] == ["transaction.posted", "transaction.posted", "wallet.low_balance"]
    assert events[2]["data"]["wallet"]["balance"] == "400"
    assert await outbox_types(settings, pid) == [
        "transaction.posted",
        "transaction.posted",
        "wallet.low_balance",
        "transaction.posted",
        "transaction.posted",
        "transaction.posted",
        "wallet.low_balance",
    ]


async def test_a_batch_writes_events_only_for_projects_with_an_endpoint(
    gql: GQL, services: Services, settings: Settings, receiver: Receiver
) -> None:
    """Concurrent postings of two projects share ledger batches: the project with an endpoint gets
    each of its transactions once, the other gets no outbox row at all."""
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    h = await hook(gql, services, receiver, owner, pid)
    hooked = await services.ledger.wallet_ref(
        ids.decode(
            "wallet",
            (await gql.ok(CREATE_WALLET, {"i": {"projectId": pid, "name": "w"}}, token=owner.token))["createWallet"][
                "id"
            ],
        )
    )
    other_pid = await new_project(services)
    other = await new_wallet(services, other_pid)
    actor = Actor.system("test")
    await asyncio.gather(
        *(posting.credit_wallet(services.ledger, actor, hooked, 10, f"k{i}") for i in range(20)),
        *(posting.credit_wallet(services.ledger, actor, other, 10, f"k{i}") for i in range(20)),
    )
    events = await h.next(20)
    assert {e["data"]["idempotencyKey"] for e in events} == {f"k{i}" for i in range(20)}
    assert all(e["data"]["walletId"] == ids.encode("wallet", hooked.id) for e in events)
    assert await outbox_types(settings, ids.encode("project", other_pid)) == []


# -- billing runs ----------------------------------------------------------------------------------

CREATE_RULE = "mutation($i: CreateBillingRuleInput!) { createBillingRule(input: $i) { id } }"
RUN_RULE = "mutation($id: ID!) { runBillingRule(id: $id) { id status } }"


async def wallet_with(gql: GQL, owner: SignedIn, pid: str, funds: int) -> str:
    wid = str(
        (await gql.ok(CREATE_WALLET, {"i": {"projectId": pid, "name": secrets.token_hex(3)}}, token=owner.token))[
            "createWallet"
        ]["id"]
    )
    if funds:
        await gql.ok(
            CREDIT,
            {"i": {"walletId": wid, "amount": str(funds), "idempotencyKey": secrets.token_hex(6)}},
            token=owner.token,
        )
    return wid


async def rule_for(gql: GQL, owner: SignedIn, wallet: str, amount: int) -> str:
    data = await gql.ok(
        CREATE_RULE,
        {"i": {"walletId": wallet, "name": "daily", "mode": "DAILY_FLAT", "amount": str(amount)}},
        token=owner.token,
    )
    return str(data["createBillingRule"]["id"])


async def test_billing_runs_succeed_and_fail(
    gql: GQL, services: Services, settings: Settings, receiver: Receiver
) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    funded = await wallet_with(gql, owner, pid, 1000)
    empty = await wallet_with(gql, owner, pid, 0)
    h = await hook(gql, services, receiver, owner, pid)
    schema = Schema(gql)

    run = (await gql.ok(RUN_RULE, {"id": await rule_for(gql, owner, funded, 300)}, token=owner.token))["runBillingRule"]
    posted, succeeded = await h.next(2)
    assert (posted["type"], posted["data"]["kind"], posted["data"]["amount"]) == (
        "transaction.posted",
        "BILLING",
        "300",
    )
    assert succeeded["type"] == "billing_run.succeeded"
    data = succeeded["data"]
    assert (data["id"], data["status"], data["transactionId"]) == (run["id"], "SUCCEEDED", posted["data"]["id"])
    await schema.check("BillingRun", data, owner.token, f'billingRun(id: "{run["id"]}")')

    # Not enough money: the run fails (and is retried later); no transaction.
    run = (await gql.ok(RUN_RULE, {"id": await rule_for(gql, owner, empty, 300)}, token=owner.token))["runBillingRule"]
    data = await h.one("billing_run.failed")
    assert (data["id"], data["status"], data["transactionId"]) == (run["id"], "INSUFFICIENT_FUNDS", None)
    assert data["nextRetryAt"] is not None and data["attempts"] == 1
    await schema.check("BillingRun", data, owner.token, f'billingRun(id: "{run["id"]}")')
    await h.nothing_more()


async def test_a_billing_batch_that_rolls_back_emits_nothing(
    gql: GQL, services: Services, settings: Settings, receiver: Receiver
) -> None:
    """The scheduler's batch fails just before its commit: its debits, runs and events are gone."""
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    h = await hook(gql, services, receiver, owner, pid)
    wallet = await wallet_with(gql, owner, pid, 1000)
    rule = await rule_for(gql, owner, wallet, 300)
    await h.one("transaction.posted")
    before = await outbox_types(settings, pid)
    mine = ids.decode("rule", rule)
    claimed: list[uuid.UUID] = []

    async def crash(rules: list[Rule]) -> None:
        assert mine in [r.id for r in rules]  # the batch charged this rule (and wrote its events)
        raise RuntimeError("the instance dies before the commit")

    # Far enough ahead for the rule to be due: every rule claimed rolls back with the batch.
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    with pytest.raises(RuntimeError):
        await runner.run_due_batch(services.billing, later, limit=100_000, hook=crash, claimed=claimed)
    assert mine in claimed
    assert await outbox_types(settings, pid) == before == ["transaction.posted"]
    runs = await owner_sql(settings, "SELECT count(*) AS n FROM billing_runs WHERE rule_id = $1", mine)
    assert runs[0]["n"] == 0
    await h.nothing_more()
    # The same charge, committed this time, is announced.
    await gql.ok(RUN_RULE, {"id": rule}, token=owner.token)
    assert [e["type"] for e in await h.next(2)] == ["transaction.posted", "billing_run.succeeded"]


# -- usage quotas ----------------------------------------------------------------------------------

DEFINE_METRIC = "mutation($i: DefineMetricInput!) { defineMetric(input: $i) { key } }"
OVERRIDE = "mutation($i: OverridePlanInput!) { overridePlan(input: $i) { source } }"
RECORD = "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { duplicate overage } }"
RECORD_BATCH = """mutation($i: RecordUsageBatchInput!) { recordUsageBatch(input: $i) {
  accepted duplicates overage rejected { index code } } }"""


async def quota_project(gql: GQL, settings: Settings, admin: SignedIn, limit: int) -> tuple[SignedIn, str]:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    await gql.ok(
        DEFINE_METRIC,
        {"i": {"projectId": pid, "key": "api_calls", "name": "API calls", "aggregation": "SUM", "unitPrice": "0"}},
        token=owner.token,
    )
    await gql.ok(
        OVERRIDE,
        {"i": {"projectId": pid, "monthlyQuotas": [{"metric": "api_calls", "limit": str(limit)}]}},
        token=admin.token,
    )
    return owner, pid


def usage(pid: str, key: str, units: str = "1") -> dict[str, Any]:
    return {"i": {"projectId": pid, "metricKey": "api_calls", "units": units, "idempotencyKey": key}}


async def test_a_quota_is_exceeded_once_per_month_however_often_it_refuses(
    gql: GQL, services: Services, settings: Settings, receiver: Receiver
) -> None:
    admin = await make_platform_admin(gql, settings)
    owner, pid = await quota_project(gql, settings, admin, 3)
    h = await hook(gql, services, receiver, owner, pid)
    schema = Schema(gql)
    for i in range(3):
        await gql.ok(RECORD, usage(pid, f"u{i}"), token=owner.token)
    await h.nothing_more()

    refused = await gql.error(RECORD, usage(pid, "u3"), token=owner.token)
    assert refused["code"] == "QUOTA_EXCEEDED"
    data = await h.one("usage.quota_exceeded")
    assert data == {"metric": "api_calls", "limit": "3"}
    await schema.check("Quota", data, owner.token, f'effectivePlan(projectId: "{pid}")', "{ monthlyQuotas {} }")

    # More refusals, one by one and in batches (a client hammering its quota): no second event.
    for i in range(4, 8):
        assert (await gql.error(RECORD, usage(pid, f"u{i}"), token=owner.token))["code"] == "QUOTA_EXCEEDED"
    events = [{"metricKey": "api_calls", "units": "1", "idempotencyKey": f"b{i}"} for i in range(5)]
    batch = (await gql.ok(RECORD_BATCH, {"i": {"projectId": pid, "events": events}}, token=owner.token))[
        "recordUsageBatch"
    ]
    assert (batch["accepted"], len(batch["rejected"])) == (0, 5)
    await h.nothing_more()
    assert await outbox_types(settings, pid) == ["usage.quota_exceeded"]

    # A limit raised during the month is a new quota: crossing it is announced too.
    raised = {"i": {"projectId": pid, "monthlyQuotas": [{"metric": "api_calls", "limit": "5"}]}}
    await gql.ok(OVERRIDE, raised, token=admin.token)
    for i in range(2):
        await gql.ok(RECORD, usage(pid, f"v{i}"), token=owner.token)
    for i in range(2, 4):
        assert (await gql.error(RECORD, usage(pid, f"v{i}"), token=owner.token))["code"] == "QUOTA_EXCEEDED"
    assert await h.one("usage.quota_exceeded") == {"metric": "api_calls", "limit": "5"}
    await h.nothing_more()


async def test_an_overage_quota_is_exceeded_once_by_the_batch_that_crosses_it(
    gql: GQL, services: Services, settings: Settings, receiver: Receiver
) -> None:
    admin = await make_platform_admin(gql, settings)
    owner, pid = await quota_project(gql, settings, admin, 2)
    await owner_sql(
        settings,
        """UPDATE projects SET overrides = coalesce(overrides, '{}'::jsonb) || '{"quotaPolicy": "OVERAGE"}' WHERE id = $1""",
        ids.decode("project", pid),
    )
    await gql.ok(
        OVERRIDE, {"i": {"projectId": pid, "monthlyQuotas": [{"metric": "api_calls", "limit": "2"}]}}, token=admin.token
    )
    h = await hook(gql, services, receiver, owner, pid)
    events = [{"metricKey": "api_calls", "units": "1", "idempotencyKey": f"b{i}"} for i in range(4)]
    batch = (await gql.ok(RECORD_BATCH, {"i": {"projectId": pid, "events": events}}, token=owner.token))[
        "recordUsageBatch"
    ]
    assert (batch["accepted"], batch["overage"]) == (4, 2)
    assert await h.one("usage.quota_exceeded") == {"metric": "api_calls", "limit": "2"}
    assert (await gql.ok(RECORD, usage(pid, "one-more"), token=owner.token))["recordUsage"]["overage"] is True
    await h.nothing_more()


# -- payments and subscriptions (the Stripe webhook route) -----------------------------------------

PAYMENTS_OF = 'payments(projectId: "{}", first: 50)'


REPLAY = "mutation($id: ID!) { replayWebhookEvent(id: $id) { status } }"


async def stripe(client: httpx.AsyncClient, services: Services, *events: dict[str, Any]) -> None:
    """Through the signed webhook route, then the inbox processor."""
    for ev in events:
        assert (await deliver(client, ev)).status_code == 200
    await inbox.drain(services.payments)


async def again(
    gql: GQL, client: httpx.AsyncClient, services: Services, admin: SignedIn, *events: dict[str, Any]
) -> None:
    """Stripe delivers the events again (the inbox keeps one of each), and a platform admin
    replays each through the handlers (`replayWebhookEvent`)."""
    await stripe(client, services, *events)
    for ev in events:
        [row] = await owner_sql(services.settings, "SELECT id FROM webhook_events WHERE stripe_event_id = $1", ev["id"])
        assert (await gql.ok(REPLAY, {"id": ids.encode("webhook_event", row["id"])}, token=admin.token))[
            "replayWebhookEvent"
        ]["status"] == "PROCESSED"


async def test_a_credit_pack_is_paid_refunded_and_disputed(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe, receiver: Receiver
) -> None:
    admin = await make_platform_admin(gql, settings)
    pack = await create_pack(gql, admin, credits=5000, amount=4900)
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    h = await hook(gql, services, receiver, owner, pid)
    schema = Schema(gql)

    session = await checkout(gql, owner, pid, creditPackId=pack)
    (completed,) = fake.complete_checkout(session)
    await stripe(client, services, completed)
    posted, created, invoice_paid, paid = await h.next(4)
    # The pack's own invoice (issued and paid at once), before the payment that names it.
    assert (created["type"], invoice_paid["type"]) == ("invoice.created", "invoice.paid")
    assert created["data"] == invoice_paid["data"]
    assert (created["data"]["kind"], created["data"]["status"], created["data"]["total"]["amount"]) == (
        "CREDIT_PACK",
        "PAID",
        "4900",
    )
    assert created["data"]["number"].startswith("LX-")
    await schema.check("Invoice", created["data"], owner.token, INVOICES_OF.format(pid), "{ nodes {} }")
    assert (posted["type"], posted["data"]["kind"], posted["data"]["amount"]) == (
        "transaction.posted",
        "PURCHASE",
        "5000",
    )
    assert paid["type"] == "payment.succeeded"
    data = paid["data"]
    assert (data["kind"], data["status"], data["amount"], data["credits"]) == (
        "CREDIT_PACK",
        "SUCCEEDED",
        {"amount": "4900", "currency": "USD"},
        "5000",
    )
    assert data["transactionId"] == posted["data"]["id"]
    assert data["invoiceId"] == created["data"]["id"]
    await schema.check("Payment", data, owner.token, PAYMENTS_OF.format(pid), "{ nodes {} }")
    # The same Stripe event again (a retry of the delivery, a replay): nothing new.
    await again(gql, client, services, admin, completed)
    await h.nothing_more()

    charge = fake.charge_of_session(session)["id"]
    refund = fake.refund(charge, 1225)
    await stripe(client, services, refund)
    posted, refunded = await h.next(2)
    assert (posted["data"]["kind"], posted["data"]["amount"], refunded["type"]) == (
        "REFUND",
        "1250",
        "payment.refunded",
    )
    assert (refunded["data"]["status"], refunded["data"]["amountRefunded"]["amount"]) == ("PARTIALLY_REFUNDED", "1225")
    assert refunded["data"]["creditsReversed"] == "1250"
    await schema.check("Payment", refunded["data"], owner.token, PAYMENTS_OF.format(pid), "{ nodes {} }")
    await again(gql, client, services, admin, refund)
    await h.nothing_more()

    dispute = fake.dispute(charge, 2450)
    await stripe(client, services, dispute)
    posted, disputed = await h.next(2)
    assert (posted["data"]["kind"], disputed["type"], disputed["data"]["creditsHeld"]) == (
        "DISPUTE",
        "payment.disputed",
        "2500",
    )
    await schema.check("Payment", disputed["data"], owner.token, PAYMENTS_OF.format(pid), "{ nodes {} }")
    await again(gql, client, services, admin, dispute)
    await stripe(client, services, fake.event("charge.dispute.updated", fake.get(dispute["data"]["object"]["id"])))
    await h.nothing_more()
    assert await outbox_types(settings, pid) == [
        "transaction.posted", "invoice.created", "invoice.paid", "payment.succeeded",
        "transaction.posted", "payment.refunded", "transaction.posted", "payment.disputed",
    ]  # fmt: skip


SUBSCRIPTION_OF = 'subscription(projectId: "{}")'
CHANGE = "mutation($i: ChangePlanInput!) { changePlan(input: $i) { immediate } }"
CANCEL = "mutation($i: CancelSubscriptionInput!) { cancelSubscription(input: $i) { status } }"


@pytest.fixture
async def plans(
    gql: GQL, services: Services, settings: Settings, fake: FakeStripe
) -> AsyncIterator[tuple[SignedIn, str, str]]:
    """Two paid plans, and both clocks (LedgerX's payments clock and Stripe's) pinned to one instant."""
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    services.payments.clock = lambda: now
    fake.now = int(now.timestamp())
    admin = await make_platform_admin(gql, settings)
    pro = await create_plan(gql, admin, name="Pro", amount=2000, included=1000, quotas={"api_calls": 100})
    lite = await create_plan(gql, admin, name="Pro lite", amount=1000, included=500)
    try:
        yield admin, pro, lite
    finally:
        # The catalog is global in the session's database: retire this test's plans.
        await owner_sql(settings, "UPDATE plans SET archived_at = now() WHERE id = ANY($1::uuid[])",
                        [ids.decode("plan", pro), ids.decode("plan", lite)])  # fmt: skip


async def test_a_subscription_is_created_updated_paid_and_canceled(
    gql: GQL,
    client: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    fake: FakeStripe,
    receiver: Receiver,
    plans: tuple[SignedIn, str, str],
) -> None:
    admin, pro, lite = plans
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    h = await hook(gql, services, receiver, owner, pid)
    schema = Schema(gql)

    session = await checkout(gql, owner, pid, planId=pro)
    stripe_events = fake.complete_checkout(session)  # subscription created, invoice paid, checkout completed
    await stripe(client, services, *stripe_events)
    got = await h.next(len(await outbox_types(settings, pid)))
    types = [e["type"] for e in got]
    assert types.count("subscription.created") == 1 and types[0] == "subscription.created"
    assert types.count("payment.succeeded") == 1 and types.count("transaction.posted") == 1
    assert types.count("invoice.created") == 1 and types.count("invoice.paid") == 1
    assert set(types) <= {
        "subscription.created", "subscription.updated", "payment.succeeded", "transaction.posted",
        "invoice.created", "invoice.paid",
    }  # fmt: skip
    subscription = [e["data"] for e in got if e["type"].startswith("subscription.")][-1]
    assert (subscription["status"], subscription["plan"]["id"]) == ("ACTIVE", pro)
    assert subscription["plan"]["monthlyQuotas"] == [{"metric": "api_calls", "limit": "100"}]
    await schema.check("PlanSubscription", subscription, owner.token, SUBSCRIPTION_OF.format(pid))
    payment = next(e["data"] for e in got if e["type"] == "payment.succeeded")
    assert (payment["kind"], payment["amount"]["amount"], payment["planId"]) == ("SUBSCRIPTION", "2000", pro)
    await schema.check("Payment", payment, owner.token, PAYMENTS_OF.format(pid), "{ nodes {} }")
    # Stripe sends them all again, they are replayed, and new events repeat the same state: nothing new.
    await again(gql, client, services, admin, *stripe_events)
    sub_id = fake.get(session)["subscription"]
    await stripe(
        client,
        services,
        fake.event("customer.subscription.updated", fake.get(sub_id)),
        fake.event("invoice.paid", fake.of_type("invoice")[-1]),
    )
    await h.nothing_more()

    # A downgrade waits for the period end: the subscription shows the pending plan.
    assert (await gql.ok(CHANGE, {"i": {"projectId": pid, "planId": lite}}, token=owner.token))["changePlan"][
        "immediate"
    ] is False
    data = await h.one("subscription.updated")
    assert (data["plan"]["id"], data["pendingPlan"]["id"]) == (pro, lite)
    await schema.check("PlanSubscription", data, owner.token, SUBSCRIPTION_OF.format(pid))

    # Canceled at once.
    assert (await gql.ok(CANCEL, {"i": {"projectId": pid, "atPeriodEnd": False}}, token=owner.token))[
        "cancelSubscription"
    ]["status"] == "CANCELED"
    data = await h.one("subscription.canceled")
    assert data["status"] == "CANCELED" and data["endedAt"] is not None
    await schema.check("PlanSubscription", data, owner.token, SUBSCRIPTION_OF.format(pid))
    await h.nothing_more()


INVOICES_OF = 'invoices(projectId: "{}", first: 50)'


def of_type(events: list[dict[str, Any]], event_type: str) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["type"] == event_type]


async def test_invoices_are_created_paid_and_failed_once_each(
    gql: GQL,
    client: httpx.AsyncClient,
    services: Services,
    settings: Settings,
    fake: FakeStripe,
    receiver: Receiver,
    plans: tuple[SignedIn, str, str],
) -> None:
    """A subscription's first invoice (paid at checkout), an upgrade's proration invoice (charged by
    changePlan), and a renewal invoice whose first two attempts fail and the third pays: each
    invoice is created once, paid once, and each failed attempt announced once, whatever Stripe
    sends again, late or replayed."""
    admin, pro, lite = plans
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    h = await hook(gql, services, receiver, owner, pid)
    schema = Schema(gql)
    t0 = services.payments.clock()

    def at(when: dt.datetime) -> None:
        services.payments.clock = lambda: when
        fake.now = int(when.timestamp())

    async def check(data: dict[str, Any]) -> None:
        await schema.check("Invoice", data, owner.token, INVOICES_OF.format(pid), "{ nodes {} }")

    async def received() -> list[dict[str, Any]]:
        """Everything the outbox holds for the project that has not arrived yet."""
        return await h.next(len(await outbox_types(settings, pid)) - h.seen)

    # Checkout: Stripe's invoice.paid is the first sight of the invoice; created and paid, in order.
    session = await checkout(gql, owner, pid, planId=lite)
    first_events = fake.complete_checkout(session)
    await stripe(client, services, *first_events)
    got = await received()
    created, paid = of_type(got, "invoice.created"), of_type(got, "invoice.paid")
    assert len(created) == len(paid) == 1 and not of_type(got, "invoice.payment_failed")
    assert [e["type"] for e in got if e["type"].startswith("invoice.")] == ["invoice.created", "invoice.paid"]
    data = paid[0]
    assert created[0] == data  # the invoice as the transaction that recorded it left it
    assert (data["kind"], data["status"], data["billingReason"]) == ("SUBSCRIPTION", "PAID", "subscription_create")
    assert (data["total"], data["amountPaid"]) == ({"amount": "1000", "currency": "USD"},) * 2
    assert (data["planId"], data["credits"], data["attemptCount"]) == (lite, "500", 1)
    assert data["paidAt"] is not None and data["stripeInvoiceId"].startswith("in_")
    [line] = data["lines"]
    assert (line["planId"], line["amount"]["amount"], line["proration"]) == (lite, "1000", False)
    await check(data)
    await again(gql, client, services, admin, *first_events)
    await h.nothing_more()

    # An upgrade a day later: changePlan charges the proration at once and records its invoice.
    at(t0 + dt.timedelta(days=1))
    assert (await gql.ok(CHANGE, {"i": {"projectId": pid, "planId": pro}}, token=owner.token))["changePlan"][
        "immediate"
    ] is True
    got = await received()
    created, paid = of_type(got, "invoice.created"), of_type(got, "invoice.paid")
    assert len(created) == len(paid) == 1 and created[0] == paid[0]
    data = paid[0]
    assert (data["kind"], data["status"], data["planId"]) == ("PRORATION", "PAID", pro)
    [line] = data["lines"]
    assert line["proration"] is True and line["amount"] == data["total"] == data["amountPaid"]
    await check(data)
    # Stripe's own events about that invoice (it was created and paid on Stripe too): nothing new.
    proration_invoice = fake.get(data["stripeInvoiceId"])
    await stripe(client, services, fake.event("invoice.paid", proration_invoice))
    await h.nothing_more()

    # The renewal's first attempt fails: the invoice is first seen through invoice.payment_failed.
    sub_id = fake.get(session)["subscription"]
    renewal_at = dt.datetime.fromtimestamp(fake.get(sub_id)["current_period_end"], dt.UTC)
    at(renewal_at)
    failure = fake.renew(sub_id, pay=False)
    await stripe(client, services, *failure)
    got = await received()
    created, failed = of_type(got, "invoice.created"), of_type(got, "invoice.payment_failed")
    assert len(created) == len(failed) == 1 and created[0] == failed[0] and not of_type(got, "invoice.paid")
    data = failed[0]
    assert (data["kind"], data["status"], data["billingReason"]) == ("SUBSCRIPTION", "OPEN", "subscription_cycle")
    assert (data["attemptCount"], data["paidAt"], data["amountPaid"]["amount"]) == (1, None, "0")
    assert data["nextPaymentAttempt"] == (renewal_at + dt.timedelta(days=3)).isoformat()
    assert data["planId"] == pro and data["total"]["amount"] == "2000"
    await check(data)
    invoice_id = data["id"]
    await again(gql, client, services, admin, *failure)
    await h.nothing_more()

    # The second attempt fails three days later: one more event, for attempt 2 only.
    at(renewal_at + dt.timedelta(days=3))
    second = fake.fail_invoice(data["stripeInvoiceId"])
    await stripe(client, services, *second)
    got = await received()
    assert [e["type"] for e in got if e["type"].startswith("invoice.")] == ["invoice.payment_failed"]
    data = of_type(got, "invoice.payment_failed")[0]
    assert (data["id"], data["status"], data["attemptCount"]) == (invoice_id, "OPEN", 2)
    await check(data)
    # A new Stripe event carrying the first attempt (late) and the second again: not new attempts.
    first_attempt = failure[0]["data"]["object"]
    await stripe(client, services, fake.event("invoice.payment_failed", first_attempt))
    await again(gql, client, services, admin, *second)
    await h.nothing_more()

    # The third attempt pays it: invoice.paid once; failures reported after that are stale.
    at(renewal_at + dt.timedelta(days=4))
    paying = fake.pay_invoice(data["stripeInvoiceId"])
    await stripe(client, services, *paying)
    got = await received()
    assert [e["type"] for e in got if e["type"].startswith("invoice.")] == ["invoice.paid"]
    data = of_type(got, "invoice.paid")[0]
    assert (data["id"], data["status"], data["attemptCount"], data["nextPaymentAttempt"]) == (
        invoice_id,
        "PAID",
        3,
        None,
    )
    assert data["amountPaid"]["amount"] == "2000" and data["paidAt"] is not None
    await check(data)
    await again(gql, client, services, admin, *paying)
    await stripe(
        client,
        services,
        fake.event("invoice.payment_failed", second[0]["data"]["object"]),
        fake.event("invoice.payment_succeeded", fake.get(data["stripeInvoiceId"])),
    )
    await h.nothing_more()
    invoice_types = [t for t in await outbox_types(settings, pid) if t.startswith("invoice.")]
    assert invoice_types == [
        "invoice.created", "invoice.paid",  # checkout
        "invoice.created", "invoice.paid",  # proration
        "invoice.created", "invoice.payment_failed", "invoice.payment_failed", "invoice.paid",  # renewal
    ]  # fmt: skip


async def test_concurrent_stripe_events_create_and_pay_an_invoice_once(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe, receiver: Receiver
) -> None:
    """Six Stripe events about one new invoice (paid and payment_succeeded, each three times with
    its own event id) are handled at once, their inserts lined up behind a lock on the invoices
    table so that all of them find no row: one handler's insert makes it (invoice.created) and
    moves it to PAID (invoice.paid); the others, and the inbox processing all six again, add
    nothing. An invoice outside any subscription (metadata names the project): no subscription
    row lock serializes its handlers."""
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    h = await hook(gql, services, receiver, owner, pid)
    line = {
        "id": fake.new_id("il"), "object": "line_item", "amount": 700, "currency": "usd", "description": "Setup",
        "quantity": 1, "proration": False, "period": {"start": fake.time(), "end": fake.time()}, "price": None,
    }  # fmt: skip
    inv = fake._store(
        fake._invoice(
            fake.new_id("cus"), None, [line], 700, "usd", billing_reason="manual",
            metadata={objects.META_PROJECT: pid},
        )
    )  # fmt: skip
    fake._mark_paid(inv)
    events = [fake.event(t, inv) for t in ("invoice.paid", "invoice.payment_succeeded") * 3]
    for ev in events:
        assert (await deliver(client, ev)).status_code == 200  # stored; processed below

    assert settings.database_url
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        lock = conn.transaction()
        await lock.start()
        await conn.execute("LOCK TABLE invoices IN EXCLUSIVE MODE")  # reads pass, inserts wait
        handlers = [asyncio.create_task(dispatch.handle(services.payments, ev)) for ev in events]
        waiting = 0
        for _ in range(500):
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE relation = 'invoices'::regclass AND NOT granted"
            )
            if waiting == len(events):
                break
            await asyncio.sleep(0.01)
        assert waiting == len(events), "every handler reaches its insert before any commits"
        await lock.rollback()
        await asyncio.gather(*handlers)
    finally:
        await conn.close()
    await inbox.drain(services.payments)  # the inbox processes all six again: replays

    got = await h.next(len(await outbox_types(settings, pid)))
    assert sorted(e["type"] for e in got) == ["invoice.created", "invoice.paid", "payment.succeeded"]
    created, paid = of_type(got, "invoice.created")[0], of_type(got, "invoice.paid")[0]
    assert created == paid
    assert (paid["kind"], paid["status"], paid["stripeInvoiceId"], paid["amountPaid"]["amount"]) == (
        "OTHER",
        "PAID",
        inv["id"],
        "700",
    )
    await Schema(gql).check("Invoice", paid, owner.token, INVOICES_OF.format(pid), "{ nodes {} }")
    await h.nothing_more()
