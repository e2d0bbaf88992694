"""`post_many`: many postings, each with its own outcome, decided in order; on the caller's
transaction (all commit or none), or through the batcher (bulk posting's independent mode)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from ledgerx.domain.errors import BadInput, IdempotencyConflict, InsufficientFunds
from ledgerx.domain.ledger import Kind, Leg, Posted, Posting, SystemAccount, WalletRef, posting, reads
from ledgerx.services import Services
from tests.ledger_helpers import ACTOR, check_invariants, new_project, new_wallet


def debit(w: WalletRef, amount: int, key: str) -> Posting:
    return Posting(
        project_id=w.project_id,
        wallet_id=w.id,
        kind=Kind.BILLING,
        currency=w.currency,
        legs=(Leg(-amount, wallet_id=w.id), Leg(amount, system=SystemAccount.BILLING_REVENUE)),
        idempotency_key=key,
        actor=ACTOR,
    )


async def balance(services: Services, w: WalletRef) -> int:
    found = await reads.get_wallet(services.ledger, w.project_id, w.id)
    assert found is not None
    return found.balance


async def count_transactions(services: Services, project_id: uuid.UUID) -> int:
    async with services.db.raw(project_id=project_id) as conn:
        n: int = await conn.fetchval("SELECT count(*) FROM ledger_transactions WHERE kind = 'BILLING'")
    return n


async def test_each_posting_is_decided_in_order_and_a_refused_one_writes_nothing(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = await new_project(services)
    a, b = await new_wallet(services, pid, name="a"), await new_wallet(services, pid, name="b")
    await posting.credit_wallet(services.ledger, ACTOR, a, 10, "seed-a")
    await posting.credit_wallet(services.ledger, ACTOR, b, 5, "seed-b")
    published: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(services.ledger, "publish", published.extend)

    done = await posting.post_many(
        services.ledger,
        [
            debit(a, 6, "p1"),
            debit(a, 6, "p2"),  # 4 left after p1: refused, writes nothing
            debit(a, 4, "p3"),  # sees p1's balance, not p2's
            debit(b, 5, " "),  # an invalid key: refused before the transaction
            debit(b, 5, "p4"),
        ],
    )
    assert [type(o) for o in done.outcomes] == [Posted, InsufficientFunds, Posted, BadInput, Posted]
    assert done.events == []  # through the batcher: committed and published already
    first, third = done.outcomes[0], done.outcomes[2]
    assert isinstance(first, Posted) and isinstance(third, Posted)
    assert (first.transaction.balance_after, third.transaction.balance_after) == (4, 0)
    assert (await balance(services, a), await balance(services, b)) == (0, 0)
    assert await count_transactions(services, pid) == 3
    posted = [e for t, e in published if t == f"project:{pid}:transactions"]
    assert [e["transaction"]["idempotencyKey"] for e in posted] == ["p1", "p3", "p4"]

    # A replay answers with the same transactions and moves nothing; a key reused for another
    # request is refused on its own.
    again = await posting.post_many(services.ledger, [debit(a, 6, "p1"), debit(a, 4, "p3"), debit(b, 1, "p4")])
    replayed = [o for o in again.outcomes if isinstance(o, Posted)]
    assert [o.replayed for o in replayed] == [True, True]
    assert [o.transaction.id for o in replayed] == [first.transaction.id, third.transaction.id]
    assert isinstance(again.outcomes[2], IdempotencyConflict)
    assert await count_transactions(services, pid) == 3
    await check_invariants(services.ledger, pid)


async def test_concurrent_calls_share_wallets_and_keep_each_calls_order(services: Services) -> None:
    """Eight calls at once, 30 debits each over the same 6 wallets, more than the wallets hold:
    they share batches (never two in flight on one wallet), no wallet goes below zero, exactly
    what the wallets held is taken, and within each call a wallet's debits are decided in the
    call's order (a refusal is never followed by a success of the same size on that wallet)."""
    pid = await new_project(services)
    wallets = [await new_wallet(services, pid, name=f"w{i}") for i in range(6)]
    for i, w in enumerate(wallets):
        await posting.credit_wallet(services.ledger, ACTOR, w, 100, f"seed-{i}")
    batches_before = services.ledger.batcher.batches

    async def call(c: int) -> list[tuple[WalletRef, Posted | Exception]]:
        plan = [(wallets[(c + i) % 6], f"c{c}-{i}") for i in range(30)]
        done = await posting.post_many(services.ledger, [debit(w, 5, key) for w, key in plan])
        return [(w, o) for (w, _), o in zip(plan, done.outcomes, strict=True)]

    results = await asyncio.gather(*(call(c) for c in range(8)))
    taken = {w.id: 0 for w in wallets}
    for outcomes in results:
        refused_on: set[uuid.UUID] = set()
        last_after: dict[uuid.UUID, int] = {}
        for w, o in outcomes:
            if isinstance(o, Posted):
                assert w.id not in refused_on, "a debit succeeded after an equal one on its wallet was refused"
                after = o.transaction.balance_after
                assert after >= 0 and after < last_after.get(w.id, 101)
                last_after[w.id] = after
                taken[w.id] += 5
            else:
                assert isinstance(o, InsufficientFunds)
                refused_on.add(w.id)
    assert taken == {w.id: 100 for w in wallets}  # 8 x 30 x 5 = 1,200 asked of 600 held
    assert [await balance(services, w) for w in wallets] == [0] * 6
    assert 0 < services.ledger.batcher.batches - batches_before < 8 * 30  # batched, and shared
    await check_invariants(services.ledger, pid)


async def test_on_the_callers_transaction_all_commit_or_none(services: Services) -> None:
    pid = await new_project(services)
    w = await new_wallet(services, pid)
    await posting.credit_wallet(services.ledger, ACTOR, w, 10, "seed")

    async def post_then_fail() -> None:
        async with services.db.raw(project_id=pid) as conn:
            done = await posting.post_many(services.ledger, [debit(w, 3, "x1"), debit(w, 3, "x2")], conn=conn)
            assert all(isinstance(o, Posted) for o in done.outcomes)
            assert done.events  # the caller's to publish after its commit
            raise RuntimeError("caller failed")

    # The caller's transaction fails after post_many: none of its postings exist.
    with pytest.raises(RuntimeError, match="caller failed"):
        await post_then_fail()
    assert await balance(services, w) == 10
    assert await count_transactions(services, pid) == 0

    # The same postings again, committed by the caller: new transactions, not replays.
    async with services.db.raw(project_id=pid) as conn:
        done = await posting.post_many(services.ledger, [debit(w, 3, "x1"), debit(w, 3, "x2")], conn=conn)
    assert [isinstance(o, Posted) and not o.replayed for o in done.outcomes] == [True, True]
    assert await balance(services, w) == 4
    assert await count_transactions(services, pid) == 2
    await check_invariants(services.ledger, pid)
