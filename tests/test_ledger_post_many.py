"""`post_many`: many postings in one database transaction, each with its own outcome."""

from __future__ import annotations

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
    assert done.events == []  # its own transaction: committed and published already
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
