"""Credit grants: the draw order, refunds back to the grants drawn, the overdraft, transfers, voids,
expiry exactly once (two passes at once, a test clock) with its webhook event and warning mail,
bad input, 200 concurrent debits, and the migration of existing balances."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import os
import secrets
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from ledgerx.db.engine import asyncpg_dsn
from ledgerx.db.migrate import upgrade
from ledgerx.domain.errors import AppError, BadInput, Conflict, IdempotencyConflict, InsufficientFunds, NotFound
from ledgerx.domain.ledger import WalletRef, expiry, grants, posting, reads
from ledgerx.domain.ledger.refunds import refund_transaction
from ledgerx.domain.ledger.types import GrantCategory, GrantStatus
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.ids import uuid7
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL
from tests.ledger_helpers import ACTOR, legacy_ledger, new_project, new_wallet, owner_conn
from tests.test_ledger_api import balance as api_balance
from tests.test_ledger_api import credit as api_credit
from tests.test_ledger_api import new_wallet as api_wallet
from tests.test_ledger_api import owner_and_project
from tests.test_ledger_api import verify as api_verify

DAY = dt.timedelta(days=1)


def key() -> str:
    return f"k-{uuid7()}"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def grant(services: Services, w: WalletRef, amount: int, **kw: object) -> grants.GrantRecord:
    return await grants.grant_credits(services.ledger, ACTOR, w, amount, key(), **kw)  # type: ignore[arg-type]


async def state(services: Services, pid: uuid.UUID, *gs: grants.GrantRecord) -> list[tuple[int, str]]:
    found = {g.id: g for g in await grants.get_grants(services.ledger, pid, [g.id for g in gs])}
    return [(found[g.id].remaining, found[g.id].status.value) for g in gs]


async def draws(services: Services, pid: uuid.UUID, txn_id: uuid.UUID) -> list[tuple[uuid.UUID, int]]:
    got = await grants.draws_of(services.ledger, pid, [txn_id])
    return [(d.grant_id, d.amount) for d in got[txn_id]]


async def balance(services: Services, pid: uuid.UUID, w: WalletRef) -> int:
    found = await reads.get_wallet(services.ledger, pid, w.id)
    assert found is not None
    return found.balance


async def assert_clean(services: Services, pid: uuid.UUID) -> None:
    report = await verify_ledger(services.ledger, pid)
    assert report.ok, report.mismatches


async def test_debits_draw_by_priority_then_expiry_then_age(services: Services) -> None:
    pid = await new_project(services)
    w = await new_wallet(services, pid)
    t = now()
    late = await grant(services, w, 10, expires_at=t + 9 * DAY)  # priority 50
    never = await grant(services, w, 10)  # priority 50, no expiry: after every dated grant
    soon = await grant(services, w, 10, expires_at=t + 2 * DAY)
    older = await grant(services, w, 10, priority=50, expires_at=t + 2 * DAY)  # same terms, newer than soon
    first = await grant(services, w, 10, priority=1, category="PAID")
    paid = await posting.credit_wallet(services.ledger, ACTOR, w, 5, key())  # PAID, 50, no expiry: the newest
    assert [g.category for g in (late, first)] == [GrantCategory.PROMOTIONAL, GrantCategory.PAID]
    assert paid.grants and paid.grants[0].category is GrantCategory.PAID and paid.grants[0].expires_at is None

    d1 = await posting.debit_wallet(services.ledger, ACTOR, w, 15, key())
    assert d1.draws and [(d.grant_id, d.amount) for d in d1.draws] == [(first.id, 10), (soon.id, 5)]
    assert await draws(services, pid, d1.transaction.id) == [(first.id, 10), (soon.id, 5)]
    d2 = await posting.debit_wallet(services.ledger, ACTOR, w, 22, key())
    assert await draws(services, pid, d2.transaction.id) == [(soon.id, 5), (older.id, 10), (late.id, 7)]
    d3 = await posting.debit_wallet(services.ledger, ACTOR, w, 10, key())
    assert await draws(services, pid, d3.transaction.id) == [(late.id, 3), (never.id, 7)]
    assert await state(services, pid, first, soon, older, late, never) == [
        (0, "DEPLETED"),
        (0, "DEPLETED"),
        (0, "DEPLETED"),
        (0, "DEPLETED"),
        (3, "ACTIVE"),
    ]
    assert await balance(services, pid, w) == 8
    await assert_clean(services, pid)


async def test_bad_input_names_its_field_and_writes_nothing(services: Services) -> None:
    pid = await new_project(services)
    w = await new_wallet(services, pid)
    cases: list[tuple[dict[str, object], type[AppError], str]] = [
        ({"amount": 0}, BadInput, "amount"),
        ({"amount": -5}, BadInput, "amount"),
        ({"priority": 101}, BadInput, "priority"),
        ({"priority": -1}, BadInput, "priority"),
        ({"category": "FREE"}, BadInput, "category"),
        ({"expires_at": now() - DAY}, BadInput, "expiresAt"),
        ({"expires_at": dt.datetime(2030, 1, 1)}, BadInput, "expiresAt"),  # no offset
        ({"metadata": {"x": float("nan")}}, BadInput, "metadata"),
        ({"idempotency_key": ""}, BadInput, "idempotencyKey"),
    ]
    for change, error, field in cases:
        args: dict[str, object] = {"amount": 10, "idempotency_key": key(), **change}
        amount, k = args.pop("amount"), args.pop("idempotency_key")
        with pytest.raises(error) as info:
            await grants.grant_credits(services.ledger, ACTOR, w, amount, k, **args)  # type: ignore[arg-type]
        assert info.value.field == field, change
    g = await grant(services, w, 10)
    await posting.debit_wallet(services.ledger, ACTOR, w, 10, key())
    with pytest.raises(Conflict) as conflict:
        await grants.void_grant(services.ledger, ACTOR, pid, g.id, key())
    assert conflict.value.field == "id" and conflict.value.code == "CONFLICT"
    with pytest.raises(NotFound) as missing:
        await grants.void_grant(services.ledger, ACTOR, pid, uuid7(), key())
    assert missing.value.field == "id"
    other = await new_project(services)
    with pytest.raises(NotFound):  # a grant of another project is not found either
        await grants.void_grant(services.ledger, ACTOR, other, g.id, key())
    conn = await owner_conn(services)
    try:
        assert await conn.fetchval("SELECT count(*) FROM credit_grants WHERE project_id = $1", pid) == 1
        assert await conn.fetchval("SELECT count(*) FROM ledger_transactions WHERE project_id = $1", pid) == 2
    finally:
        await conn.close()
    await assert_clean(services, pid)


async def test_grant_replay_and_conflict(services: Services) -> None:
    pid = await new_project(services)
    w = await new_wallet(services, pid)
    k = key()
    g1 = await grants.grant_credits(services.ledger, ACTOR, w, 10, k, priority=7, metadata={"campaign": "x"})
    g2 = await grants.grant_credits(services.ledger, ACTOR, w, 10, k, priority=7, metadata={"campaign": "x"})
    assert g1.id == g2.id and g2.metadata == {"campaign": "x"} and g2.priority == 7
    with pytest.raises(IdempotencyConflict):
        await grants.grant_credits(services.ledger, ACTOR, w, 10, k, priority=8, metadata={"campaign": "x"})
    assert await balance(services, pid, w) == 10


async def test_refunds_give_back_to_the_grants_drawn(services: Services) -> None:
    pid = await new_project(services)
    w = await new_wallet(services, pid)
    a = await grant(services, w, 10, priority=10)
    b = await grant(services, w, 10, priority=20)
    c = await grant(services, w, 10, priority=30)
    debit = await posting.debit_wallet(services.ledger, ACTOR, w, 25, key())
    assert await state(services, pid, a, b, c) == [(0, "DEPLETED"), (0, "DEPLETED"), (5, "ACTIVE")]
    # Latest draw first: c gets its 5 back, then b 3.
    r1 = await refund_transaction(services.ledger, ACTOR, pid, debit.transaction.id, 8, key())
    assert await draws(services, pid, r1.transaction.id) == [(c.id, -5), (b.id, -3)]
    assert await state(services, pid, a, b, c) == [(0, "DEPLETED"), (3, "ACTIVE"), (10, "ACTIVE")]
    # b is voided meanwhile: what the debit took from it comes back as a new grant with b's terms.
    await grants.void_grant(services.ledger, ACTOR, pid, b.id, key())
    r2 = await refund_transaction(services.ledger, ACTOR, pid, debit.transaction.id, None, key())
    got = await draws(services, pid, r2.transaction.id)
    assert got == [(a.id, -10)]  # a is DEPLETED (alive): given back; b's 7 became a new grant
    made = await grants.wallet_grants(services.ledger, pid, [w.id], status=None, first=50, after=None)
    new = [g for g in made[w.id].items if g.source_transaction_id == r2.transaction.id]
    assert [(g.amount, g.priority, g.category) for g in new] == [(7, 20, GrantCategory.PROMOTIONAL)]
    assert await state(services, pid, a, b, c) == [(10, "ACTIVE"), (0, "VOIDED"), (10, "ACTIVE")]
    assert await balance(services, pid, w) == 27
    await assert_clean(services, pid)


async def test_refund_of_a_credit_takes_back_its_own_grant_first(services: Services) -> None:
    pid = await new_project(services)
    w = await new_wallet(services, pid)
    cheap = await grant(services, w, 10, priority=0)
    bought = await posting.credit_wallet(services.ledger, ACTOR, w, 20, key())
    r = await refund_transaction(services.ledger, ACTOR, pid, bought.transaction.id, 20, key())
    assert await draws(services, pid, r.transaction.id) == [(bought.grants[0].id, 20)]
    assert await state(services, pid, cheap) == [(10, "ACTIVE")]
    await assert_clean(services, pid)


async def test_an_overdraft_is_repaid_by_the_next_credit(services: Services) -> None:
    pid = await new_project(services)
    w = await new_wallet(services, pid, credit_limit=100)
    g = await grant(services, w, 10)
    d = await posting.debit_wallet(services.ledger, ACTOR, w, 30, key())
    assert await draws(services, pid, d.transaction.id) == [(g.id, 10)]  # 20 more went below zero
    assert await balance(services, pid, w) == -20
    await assert_clean(services, pid)
    small = await grant(services, w, 15)  # all of it repays the overdraft
    assert (small.amount, small.remaining, small.status) == (15, 0, GrantStatus.DEPLETED)
    big = await grant(services, w, 25)
    assert (big.amount, big.remaining) == (25, 20)
    assert await balance(services, pid, w) == 20
    # Refunding the debit: 20 of it came from the overdraft (a PAID grant now), 10 back to g.
    r = await refund_transaction(services.ledger, ACTOR, pid, d.transaction.id, None, key())
    assert (g.id, -10) in await draws(services, pid, r.transaction.id)
    assert await balance(services, pid, w) == 50
    await assert_clean(services, pid)
    with pytest.raises(InsufficientFunds):
        await posting.debit_wallet(services.ledger, ACTOR, w, 151, key())
    await assert_clean(services, pid)


async def test_a_transfer_keeps_the_terms_of_what_moved(services: Services) -> None:
    pid = await new_project(services)
    src = await new_wallet(services, pid)
    dst = await new_wallet(services, pid)
    exp = now() + 5 * DAY
    a = await grant(services, src, 10, priority=5, expires_at=exp)
    await grant(services, src, 10, priority=60, category="PAID")
    t = await posting.transfer_credits(services.ledger, ACTOR, src, dst, 15, key())
    assert [(g.amount, g.priority, g.category, g.expires_at) for g in t.grants] == [
        (10, 5, GrantCategory.PROMOTIONAL, exp),
        (5, 60, GrantCategory.PAID, None),
    ]
    assert all(g.wallet_id == dst.id for g in t.grants)
    assert await state(services, pid, a) == [(0, "DEPLETED")]
    # Refunding the transfer takes the target's grants back and gives the source's back.
    r = await refund_transaction(services.ledger, ACTOR, pid, t.transaction.id, None, key())
    assert await state(services, pid, a) == [(10, "ACTIVE")]
    assert {x[0] for x in await draws(services, pid, r.transaction.id)} >= {g.id for g in t.grants}
    await assert_clean(services, pid)


async def test_void_posts_the_remainder_through_the_ledger(services: Services) -> None:
    pid = await new_project(services)
    w = await new_wallet(services, pid)
    g = await grant(services, w, 10)
    await grant(services, w, 5, priority=90)
    await posting.debit_wallet(services.ledger, ACTOR, w, 4, key())
    k = key()
    voided = await grants.void_grant(services.ledger, ACTOR, pid, g.id, k)
    assert (voided.status, voided.remaining, voided.amount) == (GrantStatus.VOIDED, 0, 10)
    again = await grants.void_grant(services.ledger, ACTOR, pid, g.id, k)  # the same request: its outcome
    assert again.ended_transaction_id == voided.ended_transaction_id is not None
    txn = await reads.get_transaction(services.ledger, pid, voided.ended_transaction_id)
    assert txn is not None and txn.kind == "ADJUSTMENT" and txn.amount == 6
    assert {e.system_account for e in txn.entries} == {None, "ADJUSTMENTS"}
    assert await balance(services, pid, w) == 5
    await assert_clean(services, pid)


async def _webhook_endpoint(services: Services, pid: uuid.UUID) -> None:
    conn = await owner_conn(services)
    try:
        await conn.execute(
            "INSERT INTO webhook_endpoints (id, project_id, url, events, secret) VALUES ($1, $2, $3, $4, $5)",
            uuid7(),
            pid,
            "https://example.com/hook",
            ["credit_grant.expired"],
            b"0" * 32,
        )
        await conn.execute("INSERT INTO billing_details (project_id, email) VALUES ($1, 'billing@example.com')", pid)
    finally:
        await conn.close()


async def test_expiry_posts_once_with_two_passes_at_once_emits_and_mails(services: Services) -> None:
    pid = await new_project(services)
    await _webhook_endpoint(services, pid)
    w = await new_wallet(services, pid)
    exp = now() + 2 * DAY
    g = await grant(services, w, 10, expires_at=exp)
    keep = await grant(services, w, 7)
    await posting.debit_wallet(services.ledger, ACTOR, w, 4, key())

    # Within 3 days of the expiry: one warning mail, however many passes run.
    for _ in range(2):
        await expiry.run(services.ledger, now())
    conn = await owner_conn(services)
    try:
        mails = await conn.fetch(
            "SELECT to_addr, occurrence_key FROM mail_outbox WHERE project_id = $1 AND kind = 'credits_expiring'", pid
        )
        assert [(m["to_addr"], m["occurrence_key"]) for m in mails] == [
            ("billing@example.com", f"credits_expiring:{grants.ids.encode('credit_grant', g.id)}")
        ]
    finally:
        await conn.close()
    assert (await expiry.run(services.ledger, now())).expired == 0  # not due yet

    later = exp + dt.timedelta(seconds=1)
    results = await asyncio.gather(*(expiry.run(services.ledger, later) for _ in range(4)))
    assert sum(r.expired for r in results) == 1
    assert await state(services, pid, g, keep) == [(0, "EXPIRED"), (7, "ACTIVE")]
    assert await balance(services, pid, w) == 7
    conn = await owner_conn(services)
    try:
        txns = await conn.fetch(
            "SELECT kind, amount, idempotency_key FROM ledger_transactions WHERE project_id = $1 AND kind = 'EXPIRATION'",
            pid,
        )
        assert [(t["kind"], t["amount"]) for t in txns] == [("EXPIRATION", 6)]
        events = await conn.fetch(
            "SELECT payload::text AS p FROM webhook_outbox WHERE project_id = $1 AND type = $2",
            pid,
            "credit_grant.expired",
        )
        assert len(events) == 1
        data = json.loads(events[0]["p"])
        assert data["id"] == grants.ids.encode("credit_grant", g.id)
        assert (data["status"], data["remaining"], data["amount"]) == ("EXPIRED", "0", "10")
    finally:
        await conn.close()
    assert (await expiry.run(services.ledger, later + DAY)).expired == 0
    await assert_clean(services, pid)


async def test_expiry_follows_the_test_clock(services: Services) -> None:
    pid = await new_project(services)
    conn = await owner_conn(services)
    clock = now() - 30 * DAY  # a test clock well behind the real time
    try:
        await conn.execute("UPDATE projects SET test_mode = true WHERE id = $1", pid)
        await conn.execute("INSERT INTO billing_test_clocks (project_id, now) VALUES ($1, $2)", pid, clock)
    finally:
        await conn.close()
    w = await new_wallet(services, pid)
    # "In the past" is the project's clock: a date before the real now is fine if after the clock.
    g = await grant(services, w, 10, expires_at=clock + DAY)
    with pytest.raises(BadInput) as info:
        await grant(services, w, 10, expires_at=clock - DAY)
    assert info.value.field == "expiresAt"
    assert (await expiry.run(services.ledger, now())).expired == 0  # the clock has not got there
    from ledgerx.domain.billing import clocks

    await clocks.advance(services.billing, ACTOR, pid, clock + 2 * DAY)
    assert (await expiry.run(services.ledger, now())).expired == 1
    assert await state(services, pid, g) == [(0, "EXPIRED")]
    await assert_clean(services, pid)


async def test_200_concurrent_debits_over_several_grants(services: Services) -> None:
    pid = await new_project(services)
    w = await new_wallet(services, pid)
    gs = [await grant(services, w, 300, priority=p % 3 * 10) for p in range(7)]  # 2,100 in 7 grants
    results = await asyncio.gather(
        *(posting.debit_wallet(services.ledger, ACTOR, w, 11, key()) for _ in range(200)), return_exceptions=True
    )
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, InsufficientFunds)]
    assert len(ok) + len(refused) == 200
    assert len(ok) == 2100 // 11 and await balance(services, pid, w) == 2100 - 11 * len(ok)
    left = await state(services, pid, *gs)
    assert sum(r for r, _ in left) == 2100 - 11 * len(ok)
    assert all(r >= 0 for r, _ in left)
    # The lower priority numbers went first: at most one grant is partly drawn, and every grant
    # before it in the order is spent.
    order = sorted(range(7), key=lambda i: (gs[i].priority, gs[i].created_at, gs[i].id))
    remaining = [left[i][0] for i in order]
    assert remaining == sorted(remaining)
    assert sum(1 for r in remaining if 0 < r < 300) <= 1
    await assert_clean(services, pid)


@pytest.fixture
async def migration_db(admin_database_url: str) -> AsyncIterator[str]:
    """An empty database of the test's own, which the test migrates itself."""
    name = f"lxmig_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(asyncpg_dsn(admin_database_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = admin_database_url.split("?", 1)
    cut = base[0].rfind("/")
    yield base[0][: cut + 1] + name + ("?" + base[1] if len(base) > 1 else "")
    admin = await asyncpg.connect(asyncpg_dsn(admin_database_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_migration_0013_turns_balances_into_grants_with_the_books_unchanged(
    migration_db: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch_database = migration_db
    await asyncio.to_thread(upgrade, scratch_database, "0012_coupons")
    scratch = dataclasses.replace(settings, database_url=scratch_database)
    legacy_ledger(monkeypatch)
    old = Services.build(scratch)
    try:
        pid = await new_project(old)
        rich = await new_wallet(old, pid)
        empty = await new_wallet(old, pid)
        owing = await new_wallet(old, pid, credit_limit=50)
        await posting.credit_wallet(old.ledger, ACTOR, rich, 100, key())
        await posting.debit_wallet(old.ledger, ACTOR, rich, 30, key())
        await posting.credit_wallet(old.ledger, ACTOR, empty, 5, key())
        await posting.debit_wallet(old.ledger, ACTOR, empty, 5, key())
        await posting.debit_wallet(old.ledger, ACTOR, owing, 20, key())
    finally:
        await old.close()
    monkeypatch.undo()
    await asyncio.to_thread(upgrade, scratch_database)
    svc = Services.build(scratch)
    try:
        await assert_clean(svc, pid)
        conn = await owner_conn(svc)
        try:
            rows = await conn.fetch(
                "SELECT wallet_id, amount, remaining, category, status, expires_at, source_transaction_id"
                " FROM credit_grants WHERE project_id = $1",
                pid,
            )
            assert [dict(r) for r in rows] == [
                {
                    "wallet_id": rich.id,
                    "amount": 70,
                    "remaining": 70,
                    "category": "PAID",
                    "status": "ACTIVE",
                    "expires_at": None,
                    "source_transaction_id": None,
                }
            ]
            assert await conn.fetchval("SELECT count(*) FROM ledger_transactions WHERE project_id = $1", pid) == 5
        finally:
            await conn.close()
        # The ledger goes on from there: the opening grant is drawn, the overdraft repaid.
        await posting.debit_wallet(svc.ledger, ACTOR, rich, 20, key())
        g = await grants.grant_credits(svc.ledger, ACTOR, owing, 30, key())
        assert (g.amount, g.remaining) == (30, 10)
        await assert_clean(svc, pid)
    finally:
        await svc.close()


GRANT_FIELDS = "id walletId amount remaining category priority expiresAt status createdAt"
GRANT = f"mutation($i: GrantCreditsInput!) {{ grantCredits(input: $i) {{ {GRANT_FIELDS} }} }}"
VOID = f"mutation($i: VoidCreditGrantInput!) {{ voidCreditGrant(input: $i) {{ {GRANT_FIELDS} }} }}"
WALLET_GRANTS = f"""
query($id: ID!, $status: CreditGrantStatus, $first: Int, $after: String) {{ wallet(id: $id) {{
  grants(status: $status, first: $first, after: $after) {{
    edges {{ cursor node {{ {GRANT_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }} }} }} }}
"""
DEBIT_DRAWS = """
mutation($i: DebitWalletInput!) { debitWallet(input: $i) { id grantDraws { grantId amount } } }
"""


async def test_the_api_grants_lists_draws_and_voids(gql: GQL) -> None:
    owner, pid = await owner_and_project(gql)
    wid = await api_wallet(gql, owner.token, pid)
    exp = (now() + 3 * DAY).replace(microsecond=0)
    promo = (
        await gql.ok(
            GRANT,
            {
                "i": {
                    "walletId": wid,
                    "amount": "50",
                    "idempotencyKey": key(),
                    "priority": 10,
                    "expiresAt": exp.isoformat(),
                    "metadata": {"campaign": "launch"},
                }
            },
            token=owner.token,
        )
    )["grantCredits"]
    assert promo["id"].startswith("grt_")
    assert (promo["walletId"], promo["amount"], promo["remaining"], promo["category"], promo["priority"]) == (
        wid,
        "50",
        "50",
        "PROMOTIONAL",
        10,
    )
    assert dt.datetime.fromisoformat(promo["expiresAt"]) == exp and promo["status"] == "ACTIVE"
    paid = await api_credit(gql, owner.token, wid, 30)  # creditWallet: a PAID grant
    debit = (
        await gql.ok(DEBIT_DRAWS, {"i": {"walletId": wid, "amount": "60", "idempotencyKey": key()}}, token=owner.token)
    )["debitWallet"]
    listed = (await gql.ok(WALLET_GRANTS, {"id": wid}, token=owner.token))["wallet"]["grants"]
    nodes = [e["node"] for e in listed["edges"]]
    assert [(n["category"], n["remaining"], n["status"]) for n in nodes] == [
        ("PROMOTIONAL", "0", "DEPLETED"),
        ("PAID", "20", "ACTIVE"),
    ]
    assert debit["grantDraws"] == [
        {"grantId": promo["id"], "amount": "50"},
        {"grantId": nodes[1]["id"], "amount": "10"},
    ]
    assert paid["id"]
    active = (await gql.ok(WALLET_GRANTS, {"id": wid, "status": "ACTIVE", "first": 1}, token=owner.token))["wallet"]
    assert [e["node"]["id"] for e in active["grants"]["edges"]] == [nodes[1]["id"]]
    page = (await gql.ok(WALLET_GRANTS, {"id": wid, "first": 1}, token=owner.token))["wallet"]["grants"]
    assert page["pageInfo"]["hasNextPage"]
    nxt = await gql.ok(
        WALLET_GRANTS, {"id": wid, "first": 1, "after": page["pageInfo"]["endCursor"]}, token=owner.token
    )
    assert [e["node"]["id"] for e in nxt["wallet"]["grants"]["edges"]] == [nodes[1]["id"]]

    voided = (await gql.ok(VOID, {"i": {"id": nodes[1]["id"], "idempotencyKey": key()}}, token=owner.token))[
        "voidCreditGrant"
    ]
    assert (voided["status"], voided["remaining"], voided["amount"]) == ("VOIDED", "0", "30")
    err = await gql.error(VOID, {"i": {"id": nodes[1]["id"], "idempotencyKey": key()}}, token=owner.token)
    assert (err["code"], err["field"]) == ("CONFLICT", "id")
    assert await api_balance(gql, owner.token, wid) == -0
    assert (await api_verify(gql, owner.token, pid))["ok"]


async def test_the_api_refuses_bad_grants_with_codes_and_fields(gql: GQL) -> None:
    owner, pid = await owner_and_project(gql)
    wid = await api_wallet(gql, owner.token, pid)
    base = {"walletId": wid, "amount": "10"}
    cases = [
        ({"amount": "0"}, "amount"),
        ({"amount": "-3"}, "amount"),
        ({"priority": 101}, "priority"),
        ({"priority": -1}, "priority"),
        ({"expiresAt": (now() - DAY).isoformat()}, "expiresAt"),
        ({"metadata": [1]}, "metadata"),
    ]
    for change, field in cases:
        err = await gql.error(GRANT, {"i": {**base, "idempotencyKey": key(), **change}}, token=owner.token)
        assert (err["code"], err["field"]) == ("BAD_USER_INPUT", field), change
    err = await gql.error(VOID, {"i": {"id": "grt_nope", "idempotencyKey": key()}}, token=owner.token)
    assert err["code"] == "BAD_USER_INPUT" and err["field"] == "id"
    # Another tenant's grant is NOT_FOUND, exactly like a missing one; a member cannot void.
    g = (await gql.ok(GRANT, {"i": {**base, "idempotencyKey": key()}}, token=owner.token))["grantCredits"]
    stranger, _ = await owner_and_project(gql)
    err = await gql.error(VOID, {"i": {"id": g["id"], "idempotencyKey": key()}}, token=stranger.token)
    assert (err["code"], err["field"]) == ("NOT_FOUND", "id")
    assert await api_balance(gql, owner.token, wid) == 10


def test_plan_credits_are_promotional_and_expire_at_the_period_end() -> None:
    from ledgerx.db.models import Invoice
    from ledgerx.domain.payments.grants import plan_credit_terms

    t = now()
    current = plan_credit_terms(Invoice(period_end=t + 20 * DAY), t)
    assert (current.category, current.expires_at, current.priority) == (GrantCategory.PROMOTIONAL, t + 20 * DAY, 50)
    late = plan_credit_terms(Invoice(period_end=t - DAY), t)  # paid after its period: kept
    assert (late.category, late.expires_at) == (GrantCategory.PROMOTIONAL, None)


async def test_a_debit_past_the_first_grants_read_draws_in_order(services: Services) -> None:
    """A batch reads a wallet's first grants in draw order (8); a debit needing more reads them all."""
    pid = await new_project(services)
    w = await new_wallet(services, pid)
    gs = [await grant(services, w, 2, priority=90 - i) for i in range(12)]  # the newest first in order
    d = await posting.debit_wallet(services.ledger, ACTOR, w, 21, key())
    assert await draws(services, pid, d.transaction.id) == [(g.id, 2) for g in reversed(gs[2:])] + [(gs[1].id, 1)]
    small = await posting.debit_wallet(services.ledger, ACTOR, w, 2, key())
    assert await draws(services, pid, small.transaction.id) == [(gs[1].id, 1), (gs[0].id, 1)]
    await assert_clean(services, pid)


async def test_verify_ledger_finds_grants_that_disagree_with_the_books(services: Services) -> None:
    pid = await new_project(services)
    w = await new_wallet(services, pid)
    a = await grant(services, w, 10, priority=10)
    b = await grant(services, w, 10, priority=20)
    await posting.debit_wallet(services.ledger, ACTOR, w, 5, key())
    await assert_clean(services, pid)
    conn = await owner_conn(services)
    try:
        # b now looks as if it came first: the debit that drew a broke the order.
        await conn.execute("UPDATE credit_grants SET priority = 0 WHERE id = $1", b.id)
        kinds = {m.kind for m in (await verify_ledger(services.ledger, pid)).mismatches}
        assert kinds == {"GRANT_ORDER"}
        await conn.execute("UPDATE credit_grants SET priority = 20, remaining = 9 WHERE id = $1", b.id)
        kinds = {m.kind for m in (await verify_ledger(services.ledger, pid)).mismatches}
        assert kinds == {"GRANT_REMAINING", "GRANTS_BALANCE"}
        await conn.execute("UPDATE credit_grants SET remaining = 10 WHERE id = $1", b.id)
        await conn.execute("UPDATE credit_grants SET status = 'EXPIRED', remaining = 0 WHERE id = $1", a.id)
        kinds = {m.kind for m in (await verify_ledger(services.ledger, pid)).mismatches}
        assert "GRANT_ENDED" in kinds and "GRANT_REMAINING" in kinds
    finally:
        await conn.close()


async def test_two_scheduler_instances_expire_each_grant_once_on_each_clock(services: Services) -> None:
    from ledgerx.domain.billing import clocks
    from ledgerx.scheduler.loop import Scheduler

    live = await new_project(services)
    test_mode = await new_project(services)
    clock = now() - 30 * DAY
    conn = await owner_conn(services)
    try:
        await conn.execute("UPDATE projects SET test_mode = true WHERE id = $1", test_mode)
        await conn.execute("INSERT INTO billing_test_clocks (project_id, now) VALUES ($1, $2)", test_mode, clock)
    finally:
        await conn.close()
    lw, tw = await new_wallet(services, live), await new_wallet(services, test_mode)
    lg = await grant(services, lw, 10, expires_at=now() + DAY)
    tg = await grant(services, tw, 10, expires_at=clock + DAY)
    later = now() + 2 * DAY
    name = f"grants-{uuid7()}"
    a, b = (Scheduler(services.billing, name=name, holder=h, clock=lambda: later) for h in ("a", "b"))
    for _ in range(3):
        ticks = await asyncio.gather(a.tick(), b.tick())
        assert sum(t.leader for t in ticks) == 1
    # The live grant expired on the real time; the test-mode one waits for its clock.
    assert await state(services, live, lg) == [(0, "EXPIRED")]
    assert await state(services, test_mode, tg) == [(10, "ACTIVE")]
    await clocks.advance(services.billing, ACTOR, test_mode, clock + 2 * DAY)
    await asyncio.gather(a.tick(), b.tick())
    await a.stop(grace=1)  # a restart: the other instance takes over and finds nothing left
    await b.tick()
    assert await state(services, test_mode, tg) == [(0, "EXPIRED")]
    conn = await owner_conn(services)
    try:
        n = await conn.fetchval(
            "SELECT count(*) FROM ledger_transactions WHERE project_id = ANY($1::uuid[]) AND kind = 'EXPIRATION'",
            [live, test_mode],
        )
    finally:
        await conn.close()
    assert n == 2
    await assert_clean(services, live)
    await assert_clean(services, test_mode)
