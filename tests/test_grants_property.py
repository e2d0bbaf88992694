"""State-machine test of credit grants: random grant / debit / refund / expire / void sequences on a
wallet that may go below zero, against a model, with every invariant checked after each step:
the grants hold max(balance, 0), none is below zero, debits draw in the designed order (predicted
exactly), refunds give back only to the grants their debit drew and never more, nothing expires
twice, and verifyLedger is clean.

Hypothesis drives the machine synchronously in a worker thread; each step runs its coroutines on
the test's event loop (where the services live)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from ledgerx.domain.errors import AppError
from ledgerx.domain.ledger import WalletRef, expiry, grants, posting, reads
from ledgerx.domain.ledger.refunds import refund_transaction
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.services import Services
from tests.ledger_helpers import ACTOR, new_project, new_wallet, owner_conn

T = TypeVar("T")
DAY = dt.timedelta(days=1)
LIMIT = 40
_keys = itertools.count()


def key() -> str:
    return f"gp{next(_keys)}-{uuid.uuid4().hex[:8]}"


@dataclasses.dataclass
class G:
    id: uuid.UUID
    amount: int
    remaining: int
    priority: int
    expires_at: dt.datetime | None
    seq: int  # creation order
    status: str

    def key(self) -> tuple[int, bool, dt.datetime, int]:
        never = dt.datetime.max.replace(tzinfo=dt.UTC)
        return (self.priority, self.expires_at is None, self.expires_at or never, self.seq)


@dataclasses.dataclass
class Debit:
    id: uuid.UUID
    amount: int
    drawn: dict[uuid.UUID, int]
    returned: dict[uuid.UUID, int]
    refunded: int = 0


def machine(services: Services, loop: asyncio.AbstractEventLoop) -> type[RuleBasedStateMachine]:
    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)

    class Grants(RuleBasedStateMachine):
        pid: uuid.UUID
        wallet: WalletRef

        @initialize()
        def start(self) -> None:
            self.pid = run(new_project(services))
            self.wallet = run(new_wallet(services, self.pid, credit_limit=LIMIT))
            self.base = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
            self.clock = self.base  # the expiry passes' "now": only moves forward
            self.balance = 0
            self.grants: dict[uuid.UUID, G] = {}
            self.debits: list[Debit] = []
            self.seq = 0

        def _refresh(self) -> None:
            """Read the grants back (refunds and repayments are checked by invariants, not predicted)."""
            for rec in run(grants.get_grants(services.ledger, self.pid, list(self.grants))):
                g = self.grants[rec.id]
                g.remaining, g.status = rec.remaining, rec.status.value

        @rule(
            amount=st.integers(1, 60),
            priority=st.sampled_from([0, 10, 50, 50, 100]),
            days=st.none() | st.integers(1, 6),
            paid=st.booleans(),
        )
        def grant(self, amount: int, priority: int, days: int | None, paid: bool) -> None:
            expires = self.base + days * DAY if days is not None else None
            category = "PAID" if paid else "PROMOTIONAL"
            rec = run(
                grants.grant_credits(
                    services.ledger,
                    ACTOR,
                    self.wallet,
                    amount,
                    key(),
                    category=category,
                    priority=priority,
                    expires_at=expires,
                )
            )
            repaid = min(max(-self.balance, 0), amount)
            assert (rec.amount, rec.remaining) == (amount, amount - repaid)
            self.balance += amount
            self.seq += 1
            self.grants[rec.id] = G(rec.id, amount, rec.remaining, priority, expires, self.seq, rec.status.value)

        @rule(amount=st.integers(1, 80))
        def debit(self, amount: int) -> None:
            allowed = self.balance - amount >= -LIMIT
            p = run(_attempt(posting.debit_wallet(services.ledger, ACTOR, self.wallet, amount, key())))
            if isinstance(p, AppError):
                assert not allowed and p.code == "INSUFFICIENT_FUNDS", p.code
                return
            assert allowed
            # The predicted draws: the order, as much as the grants hold.
            expected: list[tuple[uuid.UUID, int]] = []
            left = min(amount, max(self.balance, 0))
            for g in sorted((g for g in self.grants.values() if g.remaining > 0), key=G.key):
                if left == 0:
                    break
                n = min(left, g.remaining)
                expected.append((g.id, n))
                left -= n
            assert [(d.grant_id, d.amount) for d in p.draws] == expected
            for gid, n in expected:
                self.grants[gid].remaining -= n
            self.balance -= amount
            self.debits.append(Debit(p.transaction.id, amount, dict(expected), {}))
            self._refresh()

        @rule(pick=st.integers(0, 1000), part=st.none() | st.integers(1, 80))
        def refund(self, pick: int, part: int | None) -> None:
            if not self.debits:
                return
            d = self.debits[pick % len(self.debits)]
            left = d.amount - d.refunded
            p = run(_attempt(refund_transaction(services.ledger, ACTOR, self.pid, d.id, part, key())))
            if isinstance(p, AppError):
                assert left == 0 or (part is not None and part > left), p.code
                return
            take = left if part is None else part
            assert take <= left
            given = {x.grant_id: -x.amount for x in p.draws if x.amount < 0}
            for gid, n in given.items():
                # Only to grants the debit drew, never more than it took less what came back.
                assert n <= d.drawn.get(gid, 0) - d.returned.get(gid, 0), (gid, n, d)
                d.returned[gid] = d.returned.get(gid, 0) + n
            for rec in p.grants:  # new grants (for ended grants or the overdraft part)
                self.seq += 1
                self.grants[rec.id] = G(
                    rec.id, rec.amount, rec.remaining, rec.priority, rec.expires_at, self.seq, rec.status.value
                )
            d.refunded += take
            self.balance += take
            self._refresh()

        @rule(days=st.integers(0, 3))
        def expire(self, days: int) -> None:
            self.clock += days * DAY
            due = [
                g for g in self.grants.values() if g.status == "ACTIVE" and g.expires_at and g.expires_at <= self.clock
            ]
            # Two passes at once (other examples' projects' grants may expire in them too): each of
            # this wallet's due grants expires once (verifyLedger and the test's end count that).
            run(_both(expiry.run(services.ledger, self.clock), expiry.run(services.ledger, self.clock)))
            for g in due:
                self.balance -= g.remaining
                g.remaining, g.status = 0, "EXPIRED"
            self._refresh()
            assert all(self.grants[g.id].status == "EXPIRED" for g in due)

        @rule(pick=st.integers(0, 1000))
        def void(self, pick: int) -> None:
            if not self.grants:
                return
            g = list(self.grants.values())[pick % len(self.grants)]
            rec = run(_attempt(grants.void_grant(services.ledger, ACTOR, self.pid, g.id, key())))
            if isinstance(rec, AppError):
                assert g.remaining == 0 and rec.code == "CONFLICT" and rec.field == "id"
                return
            assert g.remaining > 0 and rec.status.value == "VOIDED"
            self.balance -= g.remaining
            g.remaining, g.status = 0, "VOIDED"

        @invariant()
        def books_and_grants_agree(self) -> None:
            if not hasattr(self, "pid"):
                return
            w = run(reads.get_wallet(services.ledger, self.pid, self.wallet.id))
            assert w is not None and w.balance == self.balance
            held = [g.remaining for g in self.grants.values()]
            assert all(r >= 0 for r in held)
            assert sum(held) == max(self.balance, 0)
            report = run(verify_ledger(services.ledger, self.pid))
            assert report.ok, report.mismatches

    return Grants


async def _attempt(coro: Coroutine[Any, Any, T]) -> T | AppError:
    try:
        return await coro
    except AppError as exc:
        return exc


async def _both(a: Coroutine[Any, Any, T], b: Coroutine[Any, Any, T]) -> list[T]:
    return list(await asyncio.gather(a, b))


async def test_grant_sequences_keep_every_invariant(services: Services) -> None:
    loop = asyncio.get_running_loop()
    cls = machine(services, loop)
    cls.TestCase.settings = settings(
        max_examples=60,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    await asyncio.to_thread(run_state_machine_as_test, cls, settings=cls.TestCase.settings)
    # Nothing expired twice, as the owner counts it.
    conn = await owner_conn(services)
    try:
        twice = await conn.fetchval(
            "SELECT count(*) FROM (SELECT d.grant_id FROM credit_grant_draws d"
            " JOIN ledger_transactions t ON t.id = d.transaction_id WHERE t.kind = 'EXPIRATION'"
            " GROUP BY d.grant_id HAVING count(*) > 1) x"
        )
    finally:
        await conn.close()
    assert twice == 0
