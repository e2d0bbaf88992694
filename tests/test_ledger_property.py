"""Property test: random sequences of credits, debits, transfers, refunds, replays and concurrent
bursts, checked against a model and against every ledger invariant after each step."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgerx.domain.errors import AppError
from ledgerx.domain.ledger import Posted, WalletRef, posting, reads, refunds
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.services import Services
from tests.ledger_helpers import ACTOR, new_project, new_wallet, owner_conn

WALLETS = 3
amounts = st.integers(min_value=1, max_value=300)
wallet = st.integers(min_value=0, max_value=WALLETS - 1)
ops = st.one_of(
    st.tuples(st.just("credit"), wallet, amounts),
    st.tuples(st.just("debit"), wallet, amounts),
    st.tuples(st.just("transfer"), wallet, wallet, amounts),
    st.tuples(st.just("refund"), st.integers(min_value=0, max_value=1000), st.none() | amounts),
    st.tuples(st.just("replay"), st.integers(min_value=0, max_value=1000)),
    st.tuples(
        st.just("burst"), st.lists(st.tuples(wallet, st.integers(-150, 150).filter(bool)), min_size=2, max_size=8)
    ),
)


@dataclasses.dataclass
class Model:
    wallets: list[WalletRef]
    limits: list[int]
    balances: list[int]
    # Successful transactions: id -> (amount, {wallet index: signed amount}, refunded so far, is refund)
    txns: dict[uuid.UUID, tuple[int, dict[int, int], int, bool]] = dataclasses.field(default_factory=dict)
    done: list[tuple[Any, Posted]] = dataclasses.field(default_factory=list)  # (request, its answer)

    def index(self, wallet_id: uuid.UUID) -> int:
        return next(i for i, w in enumerate(self.wallets) if w.id == wallet_id)

    def allows(self, deltas: dict[int, int]) -> bool:
        return all(self.balances[i] + d >= -self.limits[i] for i, d in deltas.items() if d < 0)

    def apply(self, p: Posted, deltas: dict[int, int], refund_of: uuid.UUID | None) -> None:
        for i, d in deltas.items():
            self.balances[i] += d
        self.txns[p.transaction.id] = (p.transaction.amount, deltas, 0, refund_of is not None)
        if refund_of is not None:
            amount, legs, refunded, is_refund = self.txns[refund_of]
            self.txns[refund_of] = (amount, legs, refunded + p.transaction.amount, is_refund)


_keys = itertools.count()


async def _run(led: Any, m: Model, op: tuple[Any, ...]) -> None:
    kind = op[0]
    k = f"p{next(_keys)}"
    if kind in ("credit", "debit"):
        _, wi, amount = op
        deltas = {wi: amount if kind == "credit" else -amount}
        call = posting.credit_wallet if kind == "credit" else posting.debit_wallet
        await _expect(m, deltas, None, (kind, wi, amount, k), call(led, ACTOR, m.wallets[wi], amount, k))
    elif kind == "transfer":
        _, a, b, amount = op
        if a == b:
            return
        deltas = {a: -amount, b: amount}
        coro = posting.transfer_credits(led, ACTOR, m.wallets[a], m.wallets[b], amount, k)
        await _expect(m, deltas, None, (kind, a, b, amount, k), coro)
    elif kind == "refund":
        await _refund(led, m, op, k)
    elif kind == "replay":
        await _replay(led, m, op)
    else:
        await _burst(led, m, op)


async def _attempt(coro: Any) -> Posted | AppError:
    try:
        p: Posted = await coro
    except AppError as exc:
        return exc
    return p


async def _expect(m: Model, deltas: dict[int, int], refund_of: uuid.UUID | None, request: Any, coro: Any) -> None:
    """Run a posting whose outcome the model predicts exactly."""
    allowed = m.allows(deltas)
    p = await _attempt(coro)
    if isinstance(p, AppError):
        assert not allowed, f"refused but the model allows it: {p.code} {p.message}"
        assert p.code == "INSUFFICIENT_FUNDS"
        return
    assert allowed, "posted past a credit limit"
    assert not p.replayed
    got = {m.index(e.wallet_id): e.amount for e in p.transaction.entries if e.wallet_id is not None}
    assert got == deltas
    assert sum(e.amount for e in p.transaction.entries) == 0
    m.apply(p, deltas, refund_of)
    m.done.append((request, p))


async def _refund(led: Any, m: Model, op: tuple[Any, ...], k: str) -> None:
    if not m.txns:
        return
    _, pick, amount = op
    tid = list(m.txns)[pick % len(m.txns)]
    orig_amount, legs, refunded, is_refund = m.txns[tid]
    coro = refunds.refund_transaction(led, ACTOR, m.wallets[0].project_id, tid, amount, k)
    remaining = orig_amount - refunded
    if is_refund or remaining == 0 or (amount is not None and amount > remaining):
        refused = await _attempt(coro)
        assert isinstance(refused, AppError), "refund beyond the original was accepted"
        assert refused.code in ("BAD_USER_INPUT", "CONFLICT"), refused.code
        return
    take = remaining if amount is None else amount
    deltas = {i: -d * take // orig_amount for i, d in legs.items()}
    await _expect(m, deltas, tid, ("refund", tid, amount, k), coro)


async def _replay(led: Any, m: Model, op: tuple[Any, ...]) -> None:
    if not m.done:
        return
    request, first = m.done[op[1] % len(m.done)]
    kind = request[0]
    if kind == "credit":
        p = await posting.credit_wallet(led, ACTOR, m.wallets[request[1]], request[2], request[3])
    elif kind == "debit":
        p = await posting.debit_wallet(led, ACTOR, m.wallets[request[1]], request[2], request[3])
    elif kind == "transfer":
        p = await posting.transfer_credits(
            led, ACTOR, m.wallets[request[1]], m.wallets[request[2]], request[3], request[4]
        )
    else:
        p = await refunds.refund_transaction(led, ACTOR, m.wallets[0].project_id, request[1], request[2], request[3])
    assert p.replayed
    assert p.transaction == first.transaction


async def _burst(led: Any, m: Model, op: tuple[Any, ...]) -> None:
    """Concurrent postings (batched together): order is not predictable, invariants are."""

    async def one(wi: int, signed: int) -> tuple[int, int] | None:
        call = posting.credit_wallet if signed > 0 else posting.debit_wallet
        p = await _attempt(call(led, ACTOR, m.wallets[wi], abs(signed), f"p{next(_keys)}"))
        if isinstance(p, AppError):
            assert p.code == "INSUFFICIENT_FUNDS"
            return None
        m.txns[p.transaction.id] = (p.transaction.amount, {wi: signed}, 0, False)
        return wi, signed

    for r in await asyncio.gather(*(one(wi, s) for wi, s in op[1])):
        if r is not None:
            m.balances[r[0]] += r[1]


async def _check(led: Any, m: Model) -> None:
    report = await verify_ledger(led, m.wallets[0].project_id)
    assert report.ok, report.mismatches
    for i, w in enumerate(m.wallets):
        rec = await reads.get_wallet(led, w.project_id, w.id)
        assert rec is not None
        assert rec.balance == m.balances[i]
        assert rec.balance >= -m.limits[i]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    sequence=st.lists(ops, min_size=1, max_size=25),
    limits=st.lists(st.sampled_from([0, 0, 50, 500]), min_size=WALLETS, max_size=WALLETS),
)
async def test_random_sequences_keep_every_invariant(
    services: Services, sequence: list[Any], limits: list[int]
) -> None:
    led = services.ledger
    pid = await new_project(services)
    ws = [await new_wallet(services, pid, credit_limit=lim) for lim in limits]
    m = Model(ws, limits, [0] * WALLETS)
    for op in sequence:
        await _run(led, m, op)
        await _check(led, m)
    # Independently of verifyLedger: refunds never exceed originals, as the owner sees the table.
    conn = await owner_conn(services)
    try:
        over = await conn.fetchval(
            "SELECT count(*) FROM (SELECT o.id FROM ledger_transactions o JOIN ledger_transactions r ON r.refund_of = o.id"
            " WHERE o.project_id = $1 GROUP BY o.id, o.amount HAVING sum(r.amount) > o.amount) x",
            pid,
        )
    finally:
        await conn.close()
    assert over == 0
