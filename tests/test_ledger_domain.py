"""The ledger below the API: the database's own walls, posting inside a caller's transaction,
batch fallback, low-balance events and the event bus."""

from __future__ import annotations

import asyncio
import dataclasses

import asyncpg
import pytest
from sqlalchemy import text

from ledgerx.domain.errors import InsufficientFunds
from ledgerx.domain.ledger import Kind, Leg, Posting, SystemAccount, posting, reads
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.schema.ledger import TransactionKind
from ledgerx.services import Services
from tests.ledger_helpers import ACTOR, new_project, new_wallet, owner_conn


async def test_transactions_and_entries_refuse_update_and_delete_as_the_app_role(services: Services) -> None:
    pid = await new_project(services)
    w = await new_wallet(services, pid)
    await posting.credit_wallet(services.ledger, ACTOR, w, 10, "c1")
    statements = [
        "UPDATE ledger_transactions SET amount = 1",
        "DELETE FROM ledger_transactions",
        "UPDATE ledger_entries SET amount = 1",
        "DELETE FROM ledger_entries",
        "TRUNCATE ledger_entries",
        "DELETE FROM wallets",
    ]
    for sql in statements:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            async with services.db.raw(project_id=pid) as conn:
                await conn.execute(sql)
    # The triggers hold even for the owner (who has every grant).
    conn = await owner_conn(services)
    try:
        for sql in statements[:4]:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await conn.execute(sql)
    finally:
        await conn.close()
    assert (await reads.get_wallet(services.ledger, pid, w.id)).balance == 10  # type: ignore[union-attr]


async def test_the_database_refuses_unbalanced_entries_and_overdrafts(services: Services) -> None:
    """Second walls, below the domain code: a balance trigger and a check constraint."""
    pid = await new_project(services)
    w = await new_wallet(services, pid)
    done = await posting.credit_wallet(services.ledger, ACTOR, w, 10, "c1")
    with pytest.raises(asyncpg.CheckViolationError, match="not balanced"):
        async with services.db.raw(project_id=pid) as conn:
            await conn.execute(
                "INSERT INTO ledger_entries (id, transaction_id, project_id, system_account_id, currency, amount,"
                " hash, created_at) SELECT gen_random_uuid(), $1, $2, system_account_id, currency, 5, hash, now()"
                " FROM ledger_entries WHERE transaction_id = $1 AND system_account_id IS NOT NULL",
                done.transaction.id,
                pid,
            )
    with pytest.raises(asyncpg.CheckViolationError):
        async with services.db.raw(project_id=pid) as conn:
            await conn.execute("UPDATE wallets SET balance = -1 WHERE id = $1", w.id)
    # Without the project in the transaction's settings the rows are invisible (RLS).
    async with services.db.raw() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ledger_entries") == 0
        assert await conn.fetchval("SELECT count(*) FROM wallets") == 0


async def test_post_inside_a_callers_transaction_is_atomic_with_it(services: Services) -> None:
    pid = await new_project(services)
    w = await new_wallet(services, pid)
    await posting.credit_wallet(services.ledger, ACTOR, w, 50, "seed")

    def usage(key: str, amount: int) -> Posting:
        return Posting(
            project_id=pid,
            wallet_id=w.id,
            kind=Kind.USAGE,
            currency=w.currency,
            legs=(Leg(-amount, wallet_id=w.id), Leg(amount, system=SystemAccount.USAGE_REVENUE)),
            idempotency_key=key,
            actor=ACTOR,
        )

    class Boom(Exception):
        pass

    async def post_then_fail() -> None:
        async with services.db.transaction(project_id=pid) as s:
            await posting.post_transaction(services.ledger, usage("u1", 20), session=s)
            raise Boom

    # Rolled back with the caller: nothing stays.
    with pytest.raises(Boom):
        await post_then_fail()
    assert (await reads.get_wallet(services.ledger, pid, w.id)).balance == 50  # type: ignore[union-attr]
    # Committed with the caller, alongside the caller's own statement.
    async with services.db.transaction(project_id=pid) as s:
        p = await posting.post_transaction(services.ledger, usage("u1", 20), session=s)
        with pytest.raises(InsufficientFunds):
            await posting.post_transaction(services.ledger, usage("u2", 31), session=s)
        assert (await s.execute(text("SELECT 1"))).scalar() == 1  # the caller's transaction is still usable
    assert p.transaction.balance_after == 30
    assert (await reads.get_wallet(services.ledger, pid, w.id)).balance == 30  # type: ignore[union-attr]
    # Then the batched path sees the key as used.
    again = await posting.post_transaction(services.ledger, usage("u1", 20))
    assert again.replayed and again.transaction.id == p.transaction.id
    assert (await verify_ledger(services.ledger, pid)).ok


async def test_one_bad_posting_does_not_fail_its_batch(services: Services) -> None:
    """A posting the database rejects (here: a kind that breaks a CHECK, bypassing validation)
    fails alone; the postings batched with it are retried one by one and succeed."""
    pid = await new_project(services)
    w = await new_wallet(services, pid)
    await posting.credit_wallet(services.ledger, ACTOR, w, 100, "seed")

    async def good(i: int) -> int:
        p = await posting.debit_wallet(services.ledger, ACTOR, w, 1, f"g{i}")
        return p.transaction.balance_after

    prepared = await posting.prepare(
        services.ledger,
        Posting(
            project_id=pid,
            wallet_id=w.id,
            kind=Kind.USAGE,
            currency="CREDITS",
            legs=(Leg(-1, wallet_id=w.id), Leg(1, system=SystemAccount.USAGE_REVENUE)),
            idempotency_key="bad",
            actor=ACTOR,
        ),
    )
    bad = dataclasses.replace(prepared, kind="not valid")
    results = await asyncio.gather(
        *(good(i) for i in range(10)),
        services.ledger.batcher.submit(bad),
        *(good(i) for i in range(10, 20)),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1
    assert isinstance(errors[0], asyncpg.CheckViolationError)
    assert sorted(r for r in results if isinstance(r, int)) == list(range(80, 100))
    assert (await verify_ledger(services.ledger, pid)).ok


async def test_a_batch_stuck_on_a_lock_holds_back_only_its_own_wallets(services: Services) -> None:
    """A row lock held elsewhere (another instance, an operator) stalls the batch that needs it;
    postings on other wallets go ahead beside it, and the stuck wallet's postings keep their order."""
    pid = await new_project(services)
    a = await new_wallet(services, pid)
    b = await new_wallet(services, pid)
    await posting.credit_wallet(services.ledger, ACTOR, a, 1, "ca")
    await posting.credit_wallet(services.ledger, ACTOR, b, 5, "cb")
    conn = await owner_conn(services)
    tx = conn.transaction()
    await tx.start()
    await conn.execute("SELECT 1 FROM wallets WHERE id = $1 FOR UPDATE", a.id)
    try:
        first = asyncio.create_task(posting.debit_wallet(services.ledger, ACTOR, a, 1, "a1"))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(posting.debit_wallet(services.ledger, ACTOR, a, 1, "a2"))
        on_b = await asyncio.wait_for(posting.debit_wallet(services.ledger, ACTOR, b, 2, "b1"), 5)
        assert on_b.transaction.balance_after == 3
        assert not first.done()
        assert not second.done()
    finally:
        await tx.rollback()
        await conn.close()
    assert (await first).transaction.balance_after == 0
    with pytest.raises(InsufficientFunds):
        await second  # decided after a1, in arrival order


async def test_low_balance_event_once_per_downward_crossing(services: Services) -> None:
    pid = await new_project(services)
    w = await new_wallet(services, pid, low_balance_threshold=10)
    received: list[dict[str, object]] = []
    async with services.events.subscribe(f"project:{pid}:low_balance") as low:

        async def collect() -> None:
            async for ev in low:
                received.append(ev)

        task = asyncio.create_task(collect())
        led = services.ledger
        await posting.credit_wallet(led, ACTOR, w, 30, "c1")  # 0 -> 30: up, no event
        await posting.debit_wallet(led, ACTOR, w, 15, "d1")  # 30 -> 15: still above
        await posting.debit_wallet(led, ACTOR, w, 6, "d2")  # 15 -> 9: crossing #1
        await posting.debit_wallet(led, ACTOR, w, 4, "d3")  # 9 -> 5: already below
        await posting.credit_wallet(led, ACTOR, w, 20, "c2")  # 5 -> 25: back up
        await posting.debit_wallet(led, ACTOR, w, 15, "d4")  # 25 -> 10: at the threshold, not below
        await posting.debit_wallet(led, ACTOR, w, 1, "d5")  # 10 -> 9: crossing #2
        for _ in range(500):
            if len(received) >= 2:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # room for a wrong third event to show up
        task.cancel()
    assert [ev["wallet"]["balance"] for ev in received] == [9, 9]  # type: ignore[index]


async def test_event_bus_fans_out_and_bounds_slow_subscribers(services: Services) -> None:
    bus = services.events
    total = bus.queue_size + 10
    async with bus.subscribe("t:1") as a, bus.subscribe("t:1") as b:
        assert "t:1" in bus.active_topics()
        await bus.publish_many([("t:1", {"n": i}) for i in range(total)])
        # Neither subscriber reads: each keeps the newest queue_size events, the oldest are dropped.
        for _ in range(500):
            if all(s.dropped + s.queue.qsize() == total for s in (a, b)):
                break
            await asyncio.sleep(0.02)
        for s in (a, b):
            assert (s.dropped, s.queue.qsize()) == (10, bus.queue_size)
            assert (await asyncio.wait_for(s.__anext__(), 5))["n"] == 10
    assert "t:1" not in bus.active_topics()


def test_graphql_transaction_kinds_mirror_the_domain() -> None:
    assert {k.value for k in TransactionKind} == {k.value for k in Kind}
