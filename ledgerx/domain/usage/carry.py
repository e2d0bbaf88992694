"""The sub-unit carry: what is left of a unit after pricing usage, owed per wallet and metric.

Every priced charge of usage (`chargeUsage`, `recordUsage` with a wallet, and billing rules that
charge usage) computes

    total  = price + remainder                      (exact decimals, never floats)
    amount = floor(total)                           (whole minor units: posted through the ledger)
    remainder' = total - amount                     (0 <= remainder' < 1, carried to the next charge)

where `price` is exact (price_models.py): a rule prices its period's units, a per-event charge the
increment its units add to the price of the period so far (the period's units are carried here
too, `period_start` and `period_units`, so the tier an event reaches is known under the same
lock). Over any sequence of charges the sum posted is floor(sum of prices) and what is left over
is below one unit: never dropped, never charged twice. A negative price (a VOLUME tier crossing
lowers the period's price) gives back through the same split. The carry lives in
`usage_charge_remainders`, one row per (wallet, metric), and this module is the only one that
reads or writes it.

Lock order, for every transaction that charges usage: the carry rows first, then the wallets.
`Carries.lock` is the one way to take the carry rows (one statement, sorted by wallet then
metric, so two transactions never wait on each other in a cycle); the ledger posting that locks
the wallets comes after it, and `Carries.save` writes the new remainders last:

    carries = await Carries.lock(conn, pairs)    # 1. carry rows, in (wallet, metric) order
    split = carries.price(wallet, metric, units, unit_price)   # 2. in memory
    ... post the whole units through the ledger ...             # 3. wallets, in id order
    await carries.save(conn)                     # 4. the new remainders
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from collections.abc import Iterable

import asyncpg

from ledgerx.domain.errors import BadInput
from ledgerx.domain.ledger.types import MAX_BIGINT
from ledgerx.domain.usage.price_models import Pricing

# Units < 10^15 with 9 places times prices < 10^9 with 12 places need at most 45 digits: with 100
# no operation ever rounds (and Inexact is trapped to prove it).
# Half-even, not floor: nothing ever rounds here, and a floor context makes x - x a "-0" that
# answers would show; the floor of a split is explicit (to_integral_value).
_EXACT = decimal.Context(prec=100, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.Inexact, decimal.InvalidOperation])
_ONE = decimal.Decimal(1)
ZERO = decimal.Decimal(0)

Pair = tuple[uuid.UUID, uuid.UUID]  # (wallet, metric)

# Creates missing rows and locks all of them, in (wallet, metric) order (the DO UPDATE is what
# takes the row lock of an existing row; it changes nothing).
_LOCK = """
INSERT INTO usage_charge_remainders AS r (wallet_id, metric_id, project_id)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS t(w, m, p) ORDER BY w, m
ON CONFLICT (wallet_id, metric_id) DO UPDATE SET remainder = r.remainder
RETURNING wallet_id, metric_id, remainder, period_start, period_units
"""
_SAVE = """
UPDATE usage_charge_remainders r
SET remainder = v.remainder, period_start = v.period_start, period_units = v.period_units, updated_at = now()
FROM unnest($1::uuid[], $2::uuid[], $3::numeric[], $4::timestamptz[], $5::numeric[])
  AS v(w, m, remainder, period_start, period_units)
WHERE r.wallet_id = v.w AND r.metric_id = v.m
"""
_PEEK = """
SELECT wallet_id, metric_id, remainder FROM usage_charge_remainders
WHERE (wallet_id, metric_id) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Split:
    total: decimal.Decimal
    amount: int
    remainder: decimal.Decimal


def split(units: decimal.Decimal, unit_price: decimal.Decimal, remainder: decimal.Decimal) -> Split:
    """Price `units` with the carried `remainder`: whole units to debit and the new remainder."""
    return split_price(_EXACT.multiply(units, unit_price), remainder)


def split_price(price: decimal.Decimal, remainder: decimal.Decimal) -> Split:
    """An exact `price` with the carried `remainder`: whole units to post (negative: to give back)
    and the new remainder."""
    if not (0 <= remainder < _ONE):
        raise ValueError(f"remainder out of range: {remainder}")
    total = _EXACT.add(price, remainder)
    whole = total.to_integral_value(rounding=decimal.ROUND_FLOOR)
    rest = _EXACT.subtract(total, whole)
    amount = int(whole)
    if abs(amount) > MAX_BIGINT:
        raise BadInput("this charge is too large for one transaction", field="units")
    return Split(total, amount, rest)


@dataclasses.dataclass(frozen=True, slots=True)
class EventPrice:
    """A per-event charge: its exact price, the split, and the period's units before it."""

    price: decimal.Decimal
    split: Split
    period_units_before: decimal.Decimal
    unit_price: decimal.Decimal  # of the tier the period's units reach with this event


@dataclasses.dataclass(slots=True)
class _Row:
    remainder: decimal.Decimal
    period_start: dt.datetime | None
    period_units: decimal.Decimal

    @classmethod
    def of(cls, r: asyncpg.Record) -> _Row:
        return cls(r["remainder"], r["period_start"], r["period_units"])


class Carries:
    """The locked carry rows of one transaction and their running remainders."""

    def __init__(self, rows: dict[Pair, _Row]) -> None:
        self._rows = rows
        self._priced = False

    @classmethod
    async def lock(cls, conn: asyncpg.Connection, pairs: Iterable[tuple[uuid.UUID, uuid.UUID, uuid.UUID]]) -> Carries:
        """Lock (creating at zero) the carry of each (wallet, metric, project): the first lock a
        usage charge takes, before the ledger locks wallets."""
        rows = sorted({(w, m): p for w, m, p in pairs}.items())
        if not rows:
            return cls({})
        found = await conn.fetch(_LOCK, [k[0] for k, _ in rows], [k[1] for k, _ in rows], [p for _, p in rows])
        return cls({(r["wallet_id"], r["metric_id"]): _Row.of(r) for r in found})

    def remainder(self, wallet_id: uuid.UUID, metric_id: uuid.UUID) -> decimal.Decimal:
        return self._rows[(wallet_id, metric_id)].remainder

    def price(
        self, wallet_id: uuid.UUID, metric_id: uuid.UUID, units: decimal.Decimal, unit_price: decimal.Decimal
    ) -> Split:
        """Price `units` against the (locked) carry and move it; a refused price moves nothing."""
        return self.price_exact(wallet_id, metric_id, _EXACT.multiply(units, unit_price))

    def price_exact(self, wallet_id: uuid.UUID, metric_id: uuid.UUID, price: decimal.Decimal) -> Split:
        """Split an exact `price` against the (locked) carry and move it; a refused price moves nothing."""
        row = self._rows[(wallet_id, metric_id)]
        s = split_price(price, row.remainder)
        self._priced = True
        row.remainder = s.remainder
        return s

    def price_event(
        self,
        wallet_id: uuid.UUID,
        metric_id: uuid.UUID,
        units: decimal.Decimal,
        pricing: Pricing,
        period_start: dt.datetime,
    ) -> EventPrice:
        """Price one event's `units` at the tiers the period-to-date units reach: the increment
        pricing.increment(before, units), so the period's events add up to the period's price."""
        row = self._rows[(wallet_id, metric_id)]
        before = row.period_units if row.period_start == period_start else ZERO
        price = pricing.increment(before, units)
        s = self.price_exact(wallet_id, metric_id, price)
        after = _EXACT.add(before, units)
        row.period_start, row.period_units = period_start, after
        return EventPrice(price, s, before, pricing.unit_price_at(after))

    async def save(self, conn: asyncpg.Connection) -> None:
        """Write the remainders back (every locked row, once anything was priced)."""
        if not self._priced:
            return
        changed = sorted(self._rows.items())
        await conn.execute(
            _SAVE,
            [p for (p, _), _r in changed],
            [m for (_, m), _r in changed],
            [r.remainder for _, r in changed],
            [r.period_start for _, r in changed],
            [r.period_units for _, r in changed],
        )


async def peek(conn: asyncpg.Connection, pairs: Iterable[Pair]) -> dict[Pair, decimal.Decimal]:
    """The carried remainders of (wallet, metric) pairs, without locking (previews); absent pairs
    carry nothing."""
    ps = sorted(set(pairs))
    if not ps:
        return {}
    rows = await conn.fetch(_PEEK, [p[0] for p in ps], [p[1] for p in ps])
    return {(r["wallet_id"], r["metric_id"]): r["remainder"] for r in rows}


async def remainder(conn: asyncpg.Connection, wallet_id: uuid.UUID, metric_id: uuid.UUID) -> decimal.Decimal:
    """The fraction of a unit carried for (wallet, metric): owed, not yet debited."""
    found = await peek(conn, [(wallet_id, metric_id)])
    return found.get((wallet_id, metric_id), ZERO)


_PEEK_ROW = (
    "SELECT remainder, period_start, period_units FROM usage_charge_remainders WHERE wallet_id = $1 AND metric_id = $2"
)


async def preview_event(
    conn: asyncpg.Connection,
    wallet_id: uuid.UUID,
    metric_id: uuid.UUID,
    units: decimal.Decimal,
    pricing: Pricing,
    period_start: dt.datetime,
) -> EventPrice:
    """What a per-event charge of `units` would be now (Carries.price_event without the lock or
    any write: a dry run)."""
    r = await conn.fetchrow(_PEEK_ROW, wallet_id, metric_id)
    row = _Row.of(r) if r is not None else _Row(ZERO, None, ZERO)
    return Carries({(wallet_id, metric_id): row}).price_event(wallet_id, metric_id, units, pricing, period_start)
