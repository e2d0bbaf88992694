"""The ledger through GraphQL: wallets, postings, idempotency, concurrency, refunds, verification,
tenant isolation and authorization."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import asyncpg
import pytest

from ledgerx.db.engine import asyncpg_dsn
from ledgerx.services import Services
from tests.conftest import GQL, SignedIn, sign_up
from tests.tenancy_helpers import add_member, create_project

TXN_FIELDS = """
  id type kind amount currency balanceBefore balanceAfter idempotencyKey reference reason metadata refundOfId createdAt
  walletId projectId entries { id walletId systemAccount currency amount balanceBefore balanceAfter sequence hash }
"""
CREATE_WALLET = """
mutation($i: CreateWalletInput!) { createWallet(input: $i) {
  id projectId name currency balance creditLimit lowBalanceThreshold ownerUserId } }
"""
CREDIT = f"mutation($i: CreditWalletInput!) {{ creditWallet(input: $i) {{ {TXN_FIELDS} }} }}"
DEBIT = f"mutation($i: DebitWalletInput!) {{ debitWallet(input: $i) {{ {TXN_FIELDS} }} }}"
TRANSFER = f"mutation($i: TransferCreditsInput!) {{ transferCredits(input: $i) {{ {TXN_FIELDS} }} }}"
REFUND = f"mutation($i: RefundTransactionInput!) {{ refundTransaction(input: $i) {{ {TXN_FIELDS} refundedAmount }} }}"
WALLET = """
query($id: ID!, $first: Int, $after: String) { wallet(id: $id) {
  id balance currency creditLimit
  transactions(first: $first, after: $after) {
    edges { cursor node { id type kind amount balanceBefore balanceAfter } }
    pageInfo { hasNextPage endCursor } } } }
"""
TRANSACTION = f"query($id: ID!) {{ transaction(id: $id) {{ {TXN_FIELDS} refundedAmount }} }}"
VERIFY = """
query($p: ID!) { verifyLedger(projectId: $p) {
  ok walletsChecked entriesChecked transactionsChecked mismatches { kind message walletId transactionId entryId } } }
"""


def key() -> str:
    return f"k-{secrets.token_hex(8)}"


async def owner_and_project(gql: GQL) -> tuple[SignedIn, str]:
    owner = await sign_up(gql)
    return owner, await create_project(gql, owner)


async def new_wallet(gql: GQL, token: str, project_id: str, **extra: Any) -> str:
    data = await gql.ok(CREATE_WALLET, {"i": {"projectId": project_id, "name": "main", **extra}}, token=token)
    return str(data["createWallet"]["id"])


async def credit(gql: GQL, token: str, wallet_id: str, amount: int | str, k: str | None = None) -> dict[str, Any]:
    data = await gql.ok(
        CREDIT, {"i": {"walletId": wallet_id, "amount": amount, "idempotencyKey": k or key()}}, token=token
    )
    return dict(data["creditWallet"])


async def balance(gql: GQL, token: str, wallet_id: str) -> int:
    return int((await gql.ok(WALLET, {"id": wallet_id, "first": 1}, token=token))["wallet"]["balance"])


async def verify(gql: GQL, token: str, project_id: str) -> dict[str, Any]:
    return dict((await gql.ok(VERIFY, {"p": project_id}, token=token))["verifyLedger"])


async def test_wallet_credit_debit_and_history(gql: GQL) -> None:
    owner, pid = await owner_and_project(gql)
    created = (
        await gql.ok(
            CREATE_WALLET,
            {
                "i": {
                    "projectId": pid,
                    "name": " Main ",
                    "currency": "usd",
                    "creditLimit": "50",
                    "lowBalanceThreshold": 10,
                }
            },
            token=owner.token,
        )
    )["createWallet"]
    assert created["id"].startswith("wal_")
    assert created["currency"] == "USD"
    assert created["balance"] == "0"
    assert created["creditLimit"] == "50"
    assert created["lowBalanceThreshold"] == "10"
    assert created["name"] == "Main"
    wid = created["id"]

    c = await credit(gql, owner.token, wid, "100")
    assert c["id"].startswith("txn_")
    assert (c["type"], c["kind"], c["amount"], c["balanceBefore"], c["balanceAfter"]) == (
        "CREDIT",
        "ADJUSTMENT",
        "100",
        "0",
        "100",
    )
    assert c["currency"] == "USD"
    assert sum(int(e["amount"]) for e in c["entries"]) == 0
    wallet_leg = next(e for e in c["entries"] if e["walletId"] == wid)
    system_leg = next(e for e in c["entries"] if e["walletId"] is None)
    assert wallet_leg["sequence"] == 1
    assert (wallet_leg["balanceBefore"], wallet_leg["balanceAfter"]) == ("0", "100")
    assert system_leg["systemAccount"] == "EXTERNAL_FUNDING"
    assert len(wallet_leg["hash"]) == 64

    d = (
        await gql.ok(
            DEBIT,
            {"i": {"walletId": wid, "amount": 130, "idempotencyKey": key(), "reason": "usage", "metadata": {"job": 7}}},
            token=owner.token,
        )
    )["debitWallet"]
    assert (d["type"], d["balanceBefore"], d["balanceAfter"], d["reason"], d["metadata"]) == (
        "DEBIT",
        "100",
        "-30",
        "usage",
        {"job": 7},
    )
    # 20 more would pass the credit limit of 50.
    err = await gql.error(DEBIT, {"i": {"walletId": wid, "amount": 21, "idempotencyKey": key()}}, token=owner.token)
    assert err["code"] == "INSUFFICIENT_FUNDS"
    assert await balance(gql, owner.token, wid) == -30

    for i in range(3):
        await credit(gql, owner.token, wid, i + 1)
    page1 = (await gql.ok(WALLET, {"id": wid, "first": 3}, token=owner.token))["wallet"]["transactions"]
    assert [e["node"]["amount"] for e in page1["edges"]] == ["3", "2", "1"]  # newest first
    assert page1["pageInfo"]["hasNextPage"] is True
    page2 = (await gql.ok(WALLET, {"id": wid, "first": 3, "after": page1["pageInfo"]["endCursor"]}, token=owner.token))[
        "wallet"
    ]["transactions"]
    assert [e["node"]["amount"] for e in page2["edges"]] == ["130", "100"]
    assert page2["pageInfo"]["hasNextPage"] is False

    one = (await gql.ok(TRANSACTION, {"id": d["id"]}, token=owner.token))["transaction"]
    assert one == {**d, "refundedAmount": "0"}
    report = await verify(gql, owner.token, pid)
    assert report["ok"] is True, report
    assert report["walletsChecked"] == 1
    assert report["entriesChecked"] == 10


async def test_bad_input_is_bad_user_input_with_field(gql: GQL) -> None:
    owner, pid = await owner_and_project(gql)
    wid = await new_wallet(gql, owner.token, pid)
    cases: list[tuple[str, dict[str, Any], str]] = [
        (CREDIT, {"walletId": wid, "amount": 0, "idempotencyKey": key()}, "amount"),
        (CREDIT, {"walletId": wid, "amount": "-5", "idempotencyKey": key()}, "amount"),
        (DEBIT, {"walletId": wid, "amount": 1, "idempotencyKey": ""}, "idempotencyKey"),
        (DEBIT, {"walletId": pid, "amount": 1, "idempotencyKey": key()}, "walletId"),
        (CREDIT, {"walletId": wid, "amount": 1, "idempotencyKey": key(), "metadata": [1, 2]}, "metadata"),
        (TRANSFER, {"fromWalletId": wid, "toWalletId": wid, "amount": 1, "idempotencyKey": key()}, "toWalletId"),
        (REFUND, {"transactionId": wid, "idempotencyKey": key()}, "transactionId"),
        (CREATE_WALLET, {"projectId": pid, "name": "x", "currency": "DOGE"}, "currency"),
        (CREATE_WALLET, {"projectId": pid, "name": "x", "creditLimit": -1}, "creditLimit"),
        (CREATE_WALLET, {"projectId": pid, "name": "   "}, "name"),
    ]
    for query, variables, field in cases:
        err = await gql.error(query, {"i": variables}, token=owner.token)
        assert err["code"] == "BAD_USER_INPUT", (variables, err)
        assert err.get("field") == field, (variables, err)
    # Nothing was written by any of them.
    assert await balance(gql, owner.token, wid) == 0


async def test_200_concurrent_debits_on_100_leave_exactly_zero(gql: GQL) -> None:
    owner, pid = await owner_and_project(gql)
    wid = await new_wallet(gql, owner.token, pid)
    await credit(gql, owner.token, wid, 100)

    async def debit_one(i: int) -> dict[str, Any]:
        return await gql(DEBIT, {"i": {"walletId": wid, "amount": 1, "idempotencyKey": f"d-{i}"}}, token=owner.token)

    results = await asyncio.gather(*(debit_one(i) for i in range(200)))
    ok = [r for r in results if not r.get("errors")]
    refused = [r for r in results if r.get("errors")]
    assert len(ok) == 100
    assert len(refused) == 100
    assert {r["errors"][0]["extensions"]["code"] for r in refused} == {"INSUFFICIENT_FUNDS"}
    assert await balance(gql, owner.token, wid) == 0
    # Each success saw a distinct balance: 100 -> 99, …, 1 -> 0.
    afters = sorted(int(r["data"]["debitWallet"]["balanceAfter"]) for r in ok)
    assert afters == list(range(100))
    assert (await verify(gql, owner.token, pid))["ok"] is True


async def test_50_concurrent_requests_with_one_key_make_one_transaction(gql: GQL, services: Services) -> None:
    owner, pid = await owner_and_project(gql)
    wid = await new_wallet(gql, owner.token, pid)
    await credit(gql, owner.token, wid, 1000)
    variables = {"i": {"walletId": wid, "amount": 7, "idempotencyKey": "same-key", "metadata": {"b": 1.5, "a": [1]}}}
    results = await asyncio.gather(*(gql(DEBIT, variables, token=owner.token) for _ in range(50)))
    assert all(not r.get("errors") for r in results), [r for r in results if r.get("errors")][:1]
    answers = [r["data"]["debitWallet"] for r in results]
    assert all(a == answers[0] for a in answers)
    assert await balance(gql, owner.token, wid) == 993
    conn = await asyncpg.connect(asyncpg_dsn(services.settings.database_url or ""))
    try:
        n = await conn.fetchval("SELECT count(*) FROM ledger_transactions WHERE idempotency_key = 'same-key'")
    finally:
        await conn.close()
    assert n == 1
    # Later: the same request replays; a different one with the key is refused and writes nothing.
    assert (await gql.ok(DEBIT, variables, token=owner.token))["debitWallet"] == answers[0]
    other = {"i": {**variables["i"], "amount": 8}}
    err = await gql.error(DEBIT, other, token=owner.token)
    assert (err["code"], err["field"]) == ("IDEMPOTENCY_CONFLICT", "idempotencyKey")
    err = await gql.error(CREDIT, variables, token=owner.token)
    assert err["code"] == "IDEMPOTENCY_CONFLICT"
    assert await balance(gql, owner.token, wid) == 993


async def test_concurrent_same_key_on_different_wallets_is_one_transaction(gql: GQL) -> None:
    """Different wallets go through different batches: the unique index settles the race."""
    owner, pid = await owner_and_project(gql)
    wallets = [await new_wallet(gql, owner.token, pid) for _ in range(6)]
    results = await asyncio.gather(
        *(
            gql(CREDIT, {"i": {"walletId": w, "amount": 5, "idempotencyKey": "shared"}}, token=owner.token)
            for w in wallets
        )
    )
    ok = [r for r in results if not r.get("errors")]
    assert len(ok) == 1
    assert {r["errors"][0]["extensions"]["code"] for r in results if r.get("errors")} == {"IDEMPOTENCY_CONFLICT"}
    assert sum([await balance(gql, owner.token, w) for w in wallets]) == 5


async def test_concurrent_opposite_transfers_finish_without_deadlock(gql: GQL) -> None:
    owner, pid = await owner_and_project(gql)
    a = await new_wallet(gql, owner.token, pid)
    b = await new_wallet(gql, owner.token, pid)
    await credit(gql, owner.token, a, 1000)
    await credit(gql, owner.token, b, 1000)

    async def move(i: int) -> dict[str, Any]:
        src, dst = (a, b) if i % 2 else (b, a)
        v = {"i": {"fromWalletId": src, "toWalletId": dst, "amount": 1 + i % 5, "idempotencyKey": f"t-{i}"}}
        return await gql(TRANSFER, v, token=owner.token)

    results = await asyncio.wait_for(asyncio.gather(*(move(i) for i in range(120))), timeout=60)
    assert all(not r.get("errors") for r in results), [r["errors"] for r in results if r.get("errors")][:1]
    assert await balance(gql, owner.token, a) + await balance(gql, owner.token, b) == 2000
    first = results[1]["data"]["transferCredits"]
    assert (first["type"], first["kind"], first["walletId"]) == ("DEBIT", "TRANSFER", a)
    assert {e["walletId"] for e in first["entries"]} == {a, b}
    assert (await verify(gql, owner.token, pid))["ok"] is True


async def test_refunds_are_partial_linked_and_never_exceed_the_original(gql: GQL) -> None:
    owner, pid = await owner_and_project(gql)
    wid = await new_wallet(gql, owner.token, pid)
    await credit(gql, owner.token, wid, 500)
    d = (await gql.ok(DEBIT, {"i": {"walletId": wid, "amount": 100, "idempotencyKey": key()}}, token=owner.token))[
        "debitWallet"
    ]
    r1 = (
        await gql.ok(REFUND, {"i": {"transactionId": d["id"], "amount": 30, "idempotencyKey": "r1"}}, token=owner.token)
    )["refundTransaction"]
    assert (r1["type"], r1["kind"], r1["amount"], r1["refundOfId"], r1["reference"]) == (
        "CREDIT",
        "REFUND",
        "30",
        d["id"],
        d["id"],
    )
    assert r1["balanceAfter"] == "430"
    assert {e["systemAccount"] for e in r1["entries"]} == {None, "REFUNDS"}
    err = await gql.error(
        REFUND, {"i": {"transactionId": d["id"], "amount": 71, "idempotencyKey": key()}}, token=owner.token
    )
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "amount")

    # Concurrent refunds of the remaining 70 in pieces of 20: at most three fit.
    results = await asyncio.gather(
        *(
            gql(REFUND, {"i": {"transactionId": d["id"], "amount": 20, "idempotencyKey": f"rc-{i}"}}, token=owner.token)
            for i in range(8)
        )
    )
    assert sum(1 for r in results if not r.get("errors")) == 3
    rest = (await gql.ok(REFUND, {"i": {"transactionId": d["id"], "idempotencyKey": "rest"}}, token=owner.token))[
        "refundTransaction"
    ]
    assert rest["amount"] == "10"
    assert rest["refundedAmount"] == "0"
    original = (await gql.ok(TRANSACTION, {"id": d["id"]}, token=owner.token))["transaction"]
    assert original["refundedAmount"] == "100"
    err = await gql.error(REFUND, {"i": {"transactionId": d["id"], "idempotencyKey": key()}}, token=owner.token)
    assert err["code"] == "CONFLICT"
    # A replay of an earlier refund still answers with that refund.
    again = await gql.ok(
        REFUND, {"i": {"transactionId": d["id"], "amount": 30, "idempotencyKey": "r1"}}, token=owner.token
    )
    assert again["refundTransaction"]["id"] == r1["id"]
    err = await gql.error(REFUND, {"i": {"transactionId": r1["id"], "idempotencyKey": key()}}, token=owner.token)
    assert err["code"] == "BAD_USER_INPUT"
    assert await balance(gql, owner.token, wid) == 500
    assert (await verify(gql, owner.token, pid))["ok"] is True


async def test_refund_of_a_transfer_and_of_a_credit(gql: GQL) -> None:
    owner, pid = await owner_and_project(gql)
    a = await new_wallet(gql, owner.token, pid)
    b = await new_wallet(gql, owner.token, pid)
    c = await credit(gql, owner.token, a, 100)
    t = (
        await gql.ok(
            TRANSFER,
            {"i": {"fromWalletId": a, "toWalletId": b, "amount": 60, "idempotencyKey": key()}},
            token=owner.token,
        )
    )["transferCredits"]
    r = (
        await gql.ok(
            REFUND, {"i": {"transactionId": t["id"], "amount": 25, "idempotencyKey": key()}}, token=owner.token
        )
    )["refundTransaction"]
    assert {e["walletId"]: e["amount"] for e in r["entries"]} == {a: "25", b: "-25"}
    assert (await balance(gql, owner.token, a), await balance(gql, owner.token, b)) == (65, 35)
    # Refunding the credit takes money back out: refused while the wallet cannot cover it.
    err = await gql.error(REFUND, {"i": {"transactionId": c["id"], "idempotencyKey": key()}}, token=owner.token)
    assert err["code"] == "INSUFFICIENT_FUNDS"
    ok = await gql.ok(
        REFUND, {"i": {"transactionId": c["id"], "amount": 65, "idempotencyKey": key()}}, token=owner.token
    )
    assert ok["refundTransaction"]["type"] == "DEBIT"
    assert await balance(gql, owner.token, a) == 0
    assert (await verify(gql, owner.token, pid))["ok"] is True


async def test_tampering_as_the_owner_is_reported(gql: GQL, services: Services) -> None:
    owner, pid = await owner_and_project(gql)
    wid = await new_wallet(gql, owner.token, pid)
    await credit(gql, owner.token, wid, 100)
    d = (await gql.ok(DEBIT, {"i": {"walletId": wid, "amount": 40, "idempotencyKey": key()}}, token=owner.token))[
        "debitWallet"
    ]
    await credit(gql, owner.token, wid, 5)
    assert (await verify(gql, owner.token, pid))["ok"] is True

    conn = await asyncpg.connect(asyncpg_dsn(services.settings.database_url or ""))
    try:
        await conn.execute("SET session_replication_role = replica")  # triggers off: the append-only wall too
        await conn.execute(
            "UPDATE ledger_entries SET amount = -4, balance_after = balance_before - 4"
            " WHERE transaction_id = (SELECT id FROM ledger_transactions WHERE idempotency_key = $1) AND wallet_id IS NOT NULL",
            d["idempotencyKey"],
        )
    finally:
        await conn.close()
    report = await verify(gql, owner.token, pid)
    assert report["ok"] is False
    kinds = {m["kind"] for m in report["mismatches"]}
    assert {"ENTRY_HASH", "BALANCE_CHAIN", "WALLET_BALANCE", "UNBALANCED", "TRANSACTION_ENTRY"} <= kinds, kinds
    assert any(m["transactionId"] == d["id"] for m in report["mismatches"])


async def test_other_projects_wallets_and_transactions_are_not_found(gql: GQL) -> None:
    a_owner, a_pid = await owner_and_project(gql)
    b_owner, b_pid = await owner_and_project(gql)
    b_wallet = await new_wallet(gql, b_owner.token, b_pid)
    b_txn = (await credit(gql, b_owner.token, b_wallet, 10))["id"]
    a_wallet = await new_wallet(gql, a_owner.token, a_pid)
    a_member = await add_member(gql, a_owner, a_pid, "MEMBER")

    for token in (a_owner.token, a_member.token):
        assert (await gql.error(WALLET, {"id": b_wallet}, token=token))["code"] == "NOT_FOUND"
        assert (await gql.error(TRANSACTION, {"id": b_txn}, token=token))["code"] == "NOT_FOUND"
        assert (await gql.error(VERIFY, {"p": b_pid}, token=token))["code"] == "NOT_FOUND"
    for query, variables in [
        (CREDIT, {"walletId": b_wallet, "amount": 1, "idempotencyKey": key()}),
        (DEBIT, {"walletId": b_wallet, "amount": 1, "idempotencyKey": key()}),
        (TRANSFER, {"fromWalletId": b_wallet, "toWalletId": a_wallet, "amount": 1, "idempotencyKey": key()}),
        (TRANSFER, {"fromWalletId": a_wallet, "toWalletId": b_wallet, "amount": 1, "idempotencyKey": key()}),
        (REFUND, {"transactionId": b_txn, "idempotencyKey": key()}),
        (CREATE_WALLET, {"projectId": b_pid, "name": "x"}),
    ]:
        err = await gql.error(query, {"i": variables}, token=a_owner.token)
        assert err["code"] == "NOT_FOUND", (variables, err)
    # A missing wallet looks the same as another project's.
    missing = "wal_" + "0" * 26
    assert (await gql.error(WALLET, {"id": missing}, token=a_owner.token))["code"] == "NOT_FOUND"
    assert await balance(gql, b_owner.token, b_wallet) == 10


async def test_roles_viewers_read_admins_move_money(gql: GQL) -> None:
    owner, pid = await owner_and_project(gql)
    wid = await new_wallet(gql, owner.token, pid)
    await credit(gql, owner.token, wid, 10)
    admin = await add_member(gql, owner, pid, "ADMIN")
    member = await add_member(gql, owner, pid, "MEMBER")
    viewer = await add_member(gql, owner, pid, "VIEWER")
    for u in (admin, member, viewer):
        assert await balance(gql, u.token, wid) == 10
    await credit(gql, admin.token, wid, 1)
    for u in (member, viewer):
        err = await gql.error(CREDIT, {"i": {"walletId": wid, "amount": 1, "idempotencyKey": key()}}, token=u.token)
        assert err["code"] == "FORBIDDEN"
        err = await gql.error(CREATE_WALLET, {"i": {"projectId": pid, "name": "x"}}, token=u.token)
        assert err["code"] == "FORBIDDEN"
    assert (await gql.error(VERIFY, {"p": pid}, token=member.token))["code"] == "FORBIDDEN"
    assert (await gql.error(WALLET, {"id": wid}))["code"] == "UNAUTHENTICATED"
    # Owners can give a member a wallet of their own; non-members cannot own one.
    mine = await gql.ok(
        CREATE_WALLET, {"i": {"projectId": pid, "name": "m", "ownerUserId": member.user_id}}, token=owner.token
    )
    assert mine["createWallet"]["ownerUserId"] == member.user_id
    stranger = await sign_up(gql)
    err = await gql.error(
        CREATE_WALLET, {"i": {"projectId": pid, "name": "s", "ownerUserId": stranger.user_id}}, token=owner.token
    )
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "ownerUserId")


async def test_api_keys_need_wallet_scopes(gql: GQL) -> None:
    owner, pid = await owner_and_project(gql)
    wid = await new_wallet(gql, owner.token, pid)
    create_key = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }"
    writer = (
        await gql.ok(
            create_key,
            {"i": {"projectId": pid, "name": "w", "scopes": ["wallets:write", "wallets:read"]}},
            token=owner.token,
        )
    )["createApiKey"]["secret"]
    reader = (
        await gql.ok(create_key, {"i": {"projectId": pid, "name": "r", "scopes": ["wallets:read"]}}, token=owner.token)
    )["createApiKey"]["secret"]
    await credit(gql, writer, wid, 3)
    assert await balance(gql, reader, wid) == 3
    err = await gql.error(DEBIT, {"i": {"walletId": wid, "amount": 1, "idempotencyKey": key()}}, token=reader)
    assert err["code"] == "FORBIDDEN"


@pytest.mark.parametrize("amount", ["9223372036854775807"])
async def test_balance_overflow_is_refused(gql: GQL, amount: str) -> None:
    owner, pid = await owner_and_project(gql)
    wid = await new_wallet(gql, owner.token, pid)
    await credit(gql, owner.token, wid, amount)
    err = await gql.error(CREDIT, {"i": {"walletId": wid, "amount": 1, "idempotencyKey": key()}}, token=owner.token)
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "amount")
    assert (await gql.ok(WALLET, {"id": wid}, token=owner.token))["wallet"]["balance"] == amount
