"""Bulk posting (postTransactions, POST /v1/transactions): per-operation results with codes,
atomic and independent modes, idempotent per operation, the guarantees of single postings."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from ledgerx import ids
from ledgerx.services import Services
from tests.conftest import GQL, SignedIn, sign_up
from tests.ledger_helpers import check_invariants
from tests.tenancy_helpers import create_project, owner_sql
from tests.test_live_support import CREATE_WALLET, CREDIT
from tests.test_usage_helpers import api_key, balance
from tests.webhooks_out_receiver import running_receiver

POST = """mutation($i: PostTransactionsInput!) { postTransactions(input: $i) {
  results { index replayed error { code message field }
            transaction { id kind amount balanceBefore balanceAfter walletId idempotencyKey } } } }"""
CREATE_ENDPOINT = """mutation($i: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $i) { secret } }"""
AUDIT = "query($p: ID!) { auditLog(projectId: $p, first: 100) { edges { node { action } } } }"


def key() -> str:
    return secrets.token_hex(8)


def op(kind: str, wallet: str, amount: int | str, **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "walletId": wallet, "amount": str(amount), "idempotencyKey": key(), **extra}


async def project_with_wallets(gql: GQL, owner: SignedIn, *balances: int) -> tuple[str, list[str]]:
    pid = await create_project(gql, owner)
    wallets = []
    for i, amount in enumerate(balances):
        w = (await gql.ok(CREATE_WALLET, {"i": {"projectId": pid, "name": f"w{i}"}}, token=owner.token))["createWallet"]
        if amount:
            await gql.ok(
                CREDIT, {"i": {"walletId": w["id"], "amount": amount, "idempotencyKey": key()}}, token=owner.token
            )
        wallets.append(w["id"])
    return pid, wallets


async def post(gql: GQL, who: SignedIn, ops: list[dict[str, Any]], atomic: bool = False) -> list[dict[str, Any]]:
    data = await gql.ok(POST, {"i": {"operations": ops, "atomic": atomic}}, token=who.token)
    results: list[dict[str, Any]] = data["postTransactions"]["results"]
    return results


async def txn_count(services: Services, project_id: str) -> int:
    rows = await owner_sql(
        services.settings,
        "SELECT count(*) AS n FROM ledger_transactions WHERE project_id = $1",
        ids.decode("project", project_id),
    )
    return int(rows[0]["n"])


async def test_independent_batch_each_operation_stands_alone(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid, (a, b) = await project_with_wallets(gql, owner, 100, 0)
    ops = [
        op("DEBIT", a, 30, reason="api calls", reference="inv-1"),
        op("DEBIT", a, 500),  # past the balance
        op("TRANSFER", a, 50, toWalletId=b),
        op("CREDIT", b, 5, metadata={"source": "promo"}),
        op("DEBIT", "wal_not_an_id", 1),
        op("DEBIT", a, 0),
        op("CREDIT", b, 1, toWalletId=a),
        op("DEBIT", a, 30),  # 100 - 30 - 50 = 20 left: refused, nothing partial
        op("DEBIT", a, 20),
    ]
    results = await post(gql, owner, ops)
    assert [r["index"] for r in results] == list(range(len(ops)))
    codes = [r["error"]["code"] if r["error"] else None for r in results]
    assert codes == [
        None,
        "INSUFFICIENT_FUNDS",
        None,
        None,
        "BAD_USER_INPUT",
        "BAD_USER_INPUT",
        "BAD_USER_INPUT",
        "INSUFFICIENT_FUNDS",
        None,
    ]
    assert results[4]["error"]["field"] == "operations[4].walletId"
    assert results[5]["error"]["field"] == "operations[5].amount"
    assert results[6]["error"]["field"] == "operations[6].toWalletId"
    first = results[0]["transaction"]
    assert (first["balanceBefore"], first["balanceAfter"], first["amount"]) == ("100", "70", "30")
    assert results[2]["transaction"]["kind"] == "TRANSFER"
    assert results[8]["transaction"]["balanceAfter"] == "0"
    assert all(r["transaction"] is None for r in results if r["error"])
    assert await balance(gql, owner, a) == 0
    assert await balance(gql, owner, b) == 55
    await check_invariants(services.ledger, ids.decode("project", pid))


async def test_atomic_batch_is_all_or_nothing(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid, (a, b) = await project_with_wallets(gql, owner, 100, 10)
    before = await txn_count(services, pid)
    ops = [op("DEBIT", a, 60), op("TRANSFER", b, 5, toWalletId=a), op("DEBIT", a, 60)]
    results = await post(gql, owner, ops, atomic=True)
    assert [r["error"]["code"] for r in results] == ["ABORTED", "ABORTED", "INSUFFICIENT_FUNDS"]
    assert "operation 2" in results[0]["error"]["message"]
    assert all(r["transaction"] is None for r in results)
    assert (await balance(gql, owner, a), await balance(gql, owner, b)) == (100, 10)
    assert await txn_count(services, pid) == before

    # A refusal found before the database (a bad id) aborts the batch the same way.
    bad = await post(gql, owner, [op("CREDIT", a, 1), op("CREDIT", "wal_x", 1)], atomic=True)
    assert [r["error"]["code"] for r in bad] == ["ABORTED", "BAD_USER_INPUT"]
    assert await txn_count(services, pid) == before

    # The same keys again once the batch can pass: every operation posts (an atomic refusal
    # consumed nothing, not even the keys).
    ops[2]["amount"] = "40"
    done = await post(gql, owner, ops, atomic=True)
    assert [r["error"] for r in done] == [None, None, None]
    assert [r["replayed"] for r in done] == [False, False, False]
    assert (await balance(gql, owner, a), await balance(gql, owner, b)) == (5, 5)
    await check_invariants(services.ledger, ids.decode("project", pid))


async def test_a_retried_batch_returns_the_first_results(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid, (a, b) = await project_with_wallets(gql, owner, 100, 0)
    ops = [op("DEBIT", a, 10), op("TRANSFER", a, 20, toWalletId=b), op("DEBIT", a, 1_000)]
    first = await post(gql, owner, ops)
    again = await post(gql, owner, ops)
    assert [r["transaction"] and r["transaction"]["id"] for r in again] == [
        r["transaction"] and r["transaction"]["id"] for r in first
    ]
    assert [r["replayed"] for r in again] == [True, True, False]
    # The refused operation wrote nothing, so its retry is decided afresh (and refused again).
    assert again[2]["error"]["code"] == "INSUFFICIENT_FUNDS"
    assert await balance(gql, owner, a) == 70
    assert await balance(gql, owner, b) == 20

    # A key reused for another request is that operation's conflict; a key repeated inside one
    # batch for the same request is posted once.
    dup = op("DEBIT", a, 3)
    results = await post(gql, owner, [{**ops[0], "amount": "11"}, dup, dict(dup)])
    assert results[0]["error"]["code"] == "IDEMPOTENCY_CONFLICT"
    assert results[1]["transaction"]["id"] == results[2]["transaction"]["id"]
    assert [results[1]["replayed"], results[2]["replayed"]] == [False, True]
    assert await balance(gql, owner, a) == 67
    await check_invariants(services.ledger, ids.decode("project", pid))


async def test_concurrent_batches_on_the_same_wallets_never_overdraw_or_double_post(
    gql: GQL, services: Services
) -> None:
    owner = await sign_up(gql)
    pid, wallets = await project_with_wallets(gql, owner, 100, 100, 100)
    batches = [[op("DEBIT", w, 7) for w in wallets for _ in range(2)] for _ in range(12)]  # 24 of 7 each
    # Each batch is sent twice at once: the same keys, racing.
    answers = await asyncio.gather(*(post(gql, owner, b) for b in batches + batches))
    posted: dict[str, set[str]] = {}
    for batch, results in zip(batches + batches, answers, strict=True):
        for o, r in zip(batch, results, strict=True):
            if r["error"] is None:
                posted.setdefault(o["idempotencyKey"], set()).add(r["transaction"]["id"])
            else:
                assert r["error"]["code"] == "INSUFFICIENT_FUNDS", r["error"]
    assert all(len(t) == 1 for t in posted.values())  # one transaction per key, whoever won
    for w in wallets:
        spent = 7 * sum(1 for b in batches for o in b if o["walletId"] == w and o["idempotencyKey"] in posted)
        assert spent == 98  # 14 debits of 7 fit in 100, the 15th would not
        assert await balance(gql, owner, w) == 100 - spent
    await check_invariants(services.ledger, ids.decode("project", pid))


async def test_bulk_postings_announce_and_audit_like_single_ones(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    pid, (a, b) = await project_with_wallets(gql, owner, 50, 0)
    async with running_receiver() as receiver:
        await gql.ok(
            CREATE_ENDPOINT,
            {"i": {"projectId": pid, "url": receiver.url("/bulk"), "events": ["transaction.posted"]}},
            token=owner.token,
        )
        await post(gql, owner, [op("DEBIT", a, 5), op("CREDIT", b, 7), op("DEBIT", a, 99)])
    rows = await owner_sql(
        services.settings,
        "SELECT payload->>'amount' AS amount FROM webhook_outbox WHERE project_id = $1"
        " AND type = 'transaction.posted' ORDER BY id",
        ids.decode("project", pid),
    )
    assert [r["amount"] for r in rows] == ["5", "7"]
    actions = [e["node"]["action"] for e in (await gql.ok(AUDIT, {"p": pid}, token=owner.token))["auditLog"]["edges"]]
    assert actions.count("ledger.debit") == 1 and actions.count("ledger.credit") == 2  # the setup's credit too


async def test_who_may_post_and_bad_requests(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    stranger = await sign_up(gql)
    _, (a,) = await project_with_wallets(gql, owner, 10)
    results = await post(gql, stranger, [op("CREDIT", a, 1)])
    assert results[0]["error"]["code"] == "NOT_FOUND"  # another project's wallet is not there
    assert await balance(gql, owner, a) == 10

    empty = await gql.error(POST, {"i": {"operations": []}}, token=owner.token)
    assert (empty["code"], empty["field"]) == ("BAD_USER_INPUT", "operations")
    too_many = await gql.error(POST, {"i": {"operations": [op("CREDIT", a, 1)] * 1001}}, token=owner.token)
    assert too_many["code"] == "BAD_USER_INPUT" and "1000" in too_many["message"].replace(",", "")
    assert await balance(gql, owner, a) == 10
    anonymous = await gql.error(POST, {"i": {"operations": [op("CREDIT", a, 1)]}})
    assert anonymous["code"] == "UNAUTHENTICATED"
    meta = await post(gql, owner, [op("CREDIT", a, 1, metadata=[1, 2])])
    assert meta[0]["error"]["field"] == "operations[0].metadata"


async def test_post_v1_transactions_with_an_api_key(gql: GQL, client: httpx.AsyncClient, services: Services) -> None:
    owner = await sign_up(gql)
    pid, (a, b) = await project_with_wallets(gql, owner, 100, 0)
    secret = await api_key(gql, owner, pid, ["wallets:write", "wallets:read"])
    body = {"operations": [op("DEBIT", a, 25), {**op("TRANSFER", a, 10), "toWalletId": b, "amount": 10}]}
    r = await client.post("/v1/transactions", json=body, headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["error"] for x in results] == [None, None]
    t = results[0]["transaction"]
    assert (t["amount"], t["balanceBefore"], t["balanceAfter"], t["walletId"]) == ("25", "100", "75", a)
    assert t["id"].startswith("txn_") and len(t["entries"]) == 2
    again = await client.post("/v1/transactions", json=body, headers={"X-Api-Key": secret})
    assert [x["transaction"]["id"] for x in again.json()["results"]] == [x["transaction"]["id"] for x in results]
    assert [x["replayed"] for x in again.json()["results"]] == [True, True]
    assert await balance(gql, owner, a) == 65

    atomic = await client.post(
        "/v1/transactions",
        json={"atomic": True, "operations": [op("DEBIT", a, 1), op("DEBIT", a, 1_000)]},
        headers={"X-Api-Key": secret},
    )
    assert [x["error"]["code"] for x in atomic.json()["results"]] == ["ABORTED", "INSUFFICIENT_FUNDS"]

    read_only = await api_key(gql, owner, pid, ["wallets:read"])
    denied = await client.post("/v1/transactions", json=body, headers={"X-Api-Key": read_only})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "FORBIDDEN"
    cases: list[tuple[Any, str]] = [
        ({"operations": "x"}, "operations"),
        ({"operations": [{"kind": "BURN", "walletId": a, "amount": 1, "idempotencyKey": "k"}]}, "operations[0].kind"),
        (
            {"operations": [{"kind": "DEBIT", "walletId": a, "amount": 1.5, "idempotencyKey": "k"}]},
            "operations[0].amount",
        ),
        (
            {"operations": [{"kind": "DEBIT", "walletId": a, "amount": 1, "idempotencyKey": "k", "x": 1}]},
            "operations[0].x",
        ),
        ({"operations": [op("DEBIT", a, 1)], "atomic": "yes"}, "atomic"),
        ({"operations": []}, "operations"),
    ]
    for bad, field in cases:
        r = await client.post("/v1/transactions", json=bad, headers={"X-Api-Key": secret})
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["code"] == "BAD_USER_INPUT" and r.json()["error"]["field"] == field
    assert (await client.post("/v1/transactions", json=body)).status_code == 401
    assert await balance(gql, owner, a) == 65
    await check_invariants(services.ledger, ids.decode("project", pid))


OPS = st.lists(
    st.tuples(
        st.sampled_from(["CREDIT", "DEBIT", "TRANSFER"]), st.integers(0, 2), st.integers(0, 2), st.integers(1, 60)
    ),
    min_size=1,
    max_size=25,
)


async def test_a_batch_does_what_its_operations_would_do_one_by_one(gql: GQL, services: Services) -> None:
    """Property: a batch's results and balances are those of its operations applied in order,
    each refused exactly when it would overdraw (independent); atomic, nothing at all unless
    every one passes."""
    loop = asyncio.get_running_loop()
    owner = await sign_up(gql)

    async def round_of(plan: list[tuple[str, int, int, int]], atomic: bool) -> None:
        start = [40, 40, 40]
        pid, wallets = await project_with_wallets(gql, owner, *start)
        ops = []
        model = list(start)
        expected: list[str | None] = []
        for kind, src, dst, amount in plan:
            if kind == "TRANSFER":
                ops.append(op(kind, wallets[src], amount, toWalletId=wallets[dst]))
                if src == dst:
                    expected.append("BAD_USER_INPUT")
                    continue
            else:
                ops.append(op(kind, wallets[src], amount))
            delta = amount if kind == "CREDIT" else -amount
            if model[src] + delta < 0:
                expected.append("INSUFFICIENT_FUNDS")
                continue
            model[src] += delta
            if kind == "TRANSFER":
                model[dst] += amount
            expected.append(None)
        results = await post(gql, owner, ops, atomic=atomic)
        codes = [r["error"]["code"] if r["error"] else None for r in results]
        if atomic and "BAD_USER_INPUT" in expected:  # refused before any database work
            assert codes == [e if e == "BAD_USER_INPUT" else "ABORTED" for e in expected]
            model = list(start)
        elif atomic and any(expected):
            assert codes == [e or "ABORTED" for e in expected]
            model = list(start)
        else:
            assert codes == expected
        assert [await balance(gql, owner, w) for w in wallets] == model
        await check_invariants(services.ledger, ids.decode("project", pid))

    @hsettings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    @given(plan=OPS, atomic=st.booleans())
    def check(plan: list[tuple[str, int, int, int]], atomic: bool) -> None:
        asyncio.run_coroutine_threadsafe(round_of(plan, atomic), loop).result(timeout=120)

    await asyncio.to_thread(check)
