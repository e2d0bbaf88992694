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
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from ledgerx import ids
from ledgerx.domain.actor import Actor
from ledgerx.domain.ledger import posting
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, sign_up
from tests.ledger_helpers import new_project, new_wallet
from tests.tenancy_helpers import create_project, owner_sql
from tests.webhooks_out_receiver import Receiver, running_receiver

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

CREATE_ENDPOINT = """mutation($i: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $i) {
  secret endpoint { id } } }"""
TYPE = """query($n: String!) { __type(name: $n) { kind fields { name type { ...T } } } }
fragment T on __Type { kind name ofType { kind name ofType { kind name ofType { kind name } } } }"""


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
