"""Charging usage to a wallet: priced exactly, with the sub-unit remainder carried (`carry.py`).

Each charge is priced at the tiers its wallet's units of the metric reach in the period (the UTC
calendar month of the project's now) by the pricing in effect at the period's start
(price_versions.py): the increment its units add to the period's price, so the charges of a
period add up to the price of its total exactly, whatever the model (a VOLUME tier crossing gives
back what earlier events paid above the new tier's price: `_give_back` refunds their debits).

Exactly once, under concurrency and retries:
- The carry row of (wallet, metric) is locked first (`carry.Carries.lock`), so charges of one
  wallet and metric are serialized; the idempotency key is looked up after the lock, so a retry
  that waited on the first attempt sees its committed charge and returns it.
- The ledger posting (`post_transaction(..., session=)`), the append-only `usage_charges` row and
  the new remainder are written in the caller's database transaction: all of them or none.
- The ledger's own idempotency key (`usage:<key>`, kind USAGE) is a second wall: a posting can
  never be replayed under another charge.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import hashlib
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx.db.engine import Database, driver
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import IdempotencyConflict, NotFound
from ledgerx.domain.ledger import Kind, LedgerService, Leg, Posting, SystemAccount, WalletRef, refunds
from ledgerx.domain.ledger import reads as ledger_reads
from ledgerx.domain.ledger.posting import post_transaction, submit
from ledgerx.domain.usage import carry, price_versions, validate
from ledgerx.domain.usage.types import ChargeRecord, ChargeResult, MetricRecord
from ledgerx.ids import uuid7

CHARGE_COLS = (
    "id, project_id, idempotency_key, wallet_id, metric_id, event_id, units, unit_price, remainder_before, total,"
    " amount, remainder_after, transaction_id, created_at, price"
)

EXISTING_CHARGES = (
    f"SELECT {CHARGE_COLS} FROM usage_charges WHERE project_id = $1 AND idempotency_key = ANY($2::text[])"  # noqa: S608
)
INSERT_CHARGES = """
INSERT INTO usage_charges (id, project_id, idempotency_key, wallet_id, metric_id, event_id, units, unit_price,
  remainder_before, total, amount, remainder_after, transaction_id, actor_type, actor_id, price)
SELECT u.id, $1, u.key, u.wallet_id, u.metric_id, u.event_id, u.units, u.unit_price, u.rb, u.total, u.amount, u.ra,
       u.txn, $2, $3, u.price
FROM unnest($4::uuid[], $5::text[], $6::uuid[], $7::uuid[], $8::uuid[], $9::numeric[], $10::numeric[],
            $11::numeric[], $12::numeric[], $13::int8[], $14::numeric[], $15::uuid[], $16::numeric[])
  AS u(id, key, wallet_id, metric_id, event_id, units, unit_price, rb, total, amount, ra, txn, price)
RETURNING created_at
"""


def ledger_key(key: str) -> str:
    """The ledger idempotency key of a usage charge (255 characters at most, like every key)."""
    candidate = "usage:" + key
    if len(candidate) <= 255:
        return candidate
    return "usage:sha256:" + hashlib.sha256(key.encode()).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class ChargeRequest:
    wallet: WalletRef
    metric: MetricRecord
    units: decimal.Decimal
    idempotency_key: str
    event_id: uuid.UUID | None = None


def charge_from_row(r: Any) -> ChargeRecord:
    return ChargeRecord(
        id=r["id"],
        project_id=r["project_id"],
        idempotency_key=r["idempotency_key"],
        wallet_id=r["wallet_id"],
        metric_id=r["metric_id"],
        event_id=r["event_id"],
        units=r["units"],
        unit_price=r["unit_price"],
        remainder_before=r["remainder_before"],
        total=r["total"],
        amount=r["amount"],
        remainder_after=r["remainder_after"],
        transaction_id=r["transaction_id"],
        created_at=r["created_at"],
        # Charges made before tier pricing stored no price: theirs was units x unit_price.
        price=r["price"] if r["price"] is not None else r["units"] * r["unit_price"],
    )


def _same_request(
    a: ChargeRecord | ChargeRequest, wallet_id: uuid.UUID, metric_id: uuid.UUID, units: decimal.Decimal
) -> bool:
    if isinstance(a, ChargeRecord):
        return a.wallet_id == wallet_id and a.metric_id == metric_id and a.units == units
    return a.wallet.id == wallet_id and a.metric.id == metric_id and a.units == units


async def charge_in_session(
    session: AsyncSession,
    ledger: LedgerService,
    actor: Actor,
    project_id: uuid.UUID,
    requests: Sequence[ChargeRequest],
) -> list[tuple[ChargeRecord, bool]]:
    """Charge each request, in order, inside the caller's transaction (RLS scoped to `project_id`).

    Returns (charge, replayed) per request. A key already charged returns its first charge (or
    IDEMPOTENCY_CONFLICT if it was for another wallet, metric or units); a key repeated inside
    `requests` is charged once. INSUFFICIENT_FUNDS from the ledger propagates: the caller's
    transaction then rolls back and nothing is charged.
    """
    if not requests:
        return []
    conn = await driver(session)
    for req in requests:
        if req.wallet.project_id != project_id or req.metric.project_id != project_id:
            raise NotFound("wallet or metric not found in this project", field="walletId")

    # 1. Lock the carry rows (carry.py: before the ledger locks wallets).
    carries = await carry.Carries.lock(conn, [(r.wallet.id, r.metric.id, project_id) for r in requests])
    # 2. Keys already charged (read after the lock: sees charges committed while we waited).
    keys = list({r.idempotency_key for r in requests})
    existing = {r["idempotency_key"]: charge_from_row(r) for r in await conn.fetch(EXISTING_CHARGES, project_id, keys)}

    # 3. Price each new charge in order, at the tiers the wallet's units of the period reach; post
    #    the whole units through the ledger.
    to_price = {r.metric.id for r in requests if r.idempotency_key not in existing}
    # A batch of replays prices nothing: no statement for the period and its prices.
    period_start, prices = (
        await price_versions.for_events(conn, project_id, to_price) if to_price else (dt.datetime.min, {})
    )
    results: list[ChargeRecord | int] = []  # a charge found, or an index into `new`
    new: list[_New] = []
    seen: dict[str, int] = {}
    for req in requests:
        prior = existing.get(req.idempotency_key)
        if prior is not None:
            if not _same_request(prior, req.wallet.id, req.metric.id, req.units):
                raise _conflict()
            results.append(prior)
            continue
        if req.idempotency_key in seen:
            first = new[seen[req.idempotency_key]].req
            if not _same_request(req, first.wallet.id, first.metric.id, first.units):
                raise _conflict()
            results.append(seen[req.idempotency_key])
            continue
        before = carries.remainder(req.wallet.id, req.metric.id)
        pricing = prices.get(req.metric.id, req.metric.pricing)
        e = carries.price_event(req.wallet.id, req.metric.id, req.units, pricing, period_start)
        txn_id = None
        if e.split.amount > 0:
            posted = await post_transaction(ledger, _posting(project_id, actor, req, e), session=session)
            txn_id = posted.transaction.id
        elif e.split.amount < 0:
            txn_id = await _give_back(session, ledger, actor, project_id, req, e)
        seen[req.idempotency_key] = len(new)
        results.append(len(new))
        new.append(_New(req, uuid7(), before, e, txn_id))

    records: list[ChargeRecord] = []
    if new:
        # 4. The charges (append-only) and the carried remainders, one statement each.
        try:
            created = await conn.fetch(
                INSERT_CHARGES,
                project_id,
                actor.type,
                actor.id,
                [n.id for n in new],
                [n.req.idempotency_key for n in new],
                [n.req.wallet.id for n in new],
                [n.req.metric.id for n in new],
                [n.req.event_id for n in new],
                [n.req.units for n in new],
                [n.priced.unit_price for n in new],
                [n.before for n in new],
                [n.priced.split.total for n in new],
                [n.priced.split.amount for n in new],
                [n.priced.split.remainder for n in new],
                [n.txn_id for n in new],
                [n.priced.price for n in new],
            )
        except asyncpg.UniqueViolationError:
            # The same key raced in for another wallet or metric (the same pair would have waited
            # on the remainder lock): the two requests differ, so this one conflicts.
            raise _conflict() from None
        at = created[0]["created_at"]
        records = [n.record(project_id, at) for n in new]
        await carries.save(conn)
    return [(r, True) if isinstance(r, ChargeRecord) else (records[r], False) for r in results]


@dataclasses.dataclass(frozen=True, slots=True)
class _New:
    req: ChargeRequest
    id: uuid.UUID
    before: decimal.Decimal
    priced: carry.EventPrice
    txn_id: uuid.UUID | None

    def record(self, project_id: uuid.UUID, created_at: dt.datetime) -> ChargeRecord:
        return ChargeRecord(
            id=self.id,
            project_id=project_id,
            idempotency_key=self.req.idempotency_key,
            wallet_id=self.req.wallet.id,
            metric_id=self.req.metric.id,
            event_id=self.req.event_id,
            units=self.req.units,
            unit_price=self.priced.unit_price,
            remainder_before=self.before,
            total=self.priced.split.total,
            amount=self.priced.split.amount,
            remainder_after=self.priced.split.remainder,
            transaction_id=self.txn_id,
            created_at=created_at,
            price=self.priced.price,
        )


# How many earlier debits one give-back refunds at most (a crossing after very many small charges
# credits the rest plainly, rather than post thousands of refunds in one request).
GIVE_BACK_MAX = 100

# The wallet's debits of the metric, newest first, with what is left to refund of each (its own
# refunds and earlier give-backs subtracted), on the charge's transaction: it holds the carry lock,
# so no other charge of this wallet and metric moves them meanwhile.
_REFUNDABLE = """
SELECT c.transaction_id AS id, t.amount - coalesce((SELECT sum(x.amount) FROM ledger_transactions x
                                                   WHERE x.refund_of = t.id), 0) AS left
FROM usage_charges c JOIN ledger_transactions t ON t.id = c.transaction_id
WHERE c.project_id = $1 AND c.wallet_id = $2 AND c.metric_id = $3 AND c.amount > 0
ORDER BY c.id DESC LIMIT $4
"""


async def _give_back(
    session: AsyncSession,
    ledger: LedgerService,
    actor: Actor,
    project_id: uuid.UUID,
    req: ChargeRequest,
    e: carry.EventPrice,
) -> uuid.UUID:
    """A negative charge (a VOLUME tier crossing lowers the period's price): refunds of the
    wallet's latest debits of the metric, newest first, so the money goes back to the grants those
    debits drew, with their categories and expiries (a plain credit would turn promotional credit
    into paid credit that never expires). What no debit has left to refund is credited plainly.
    Returns the first transaction posted (the charge's)."""
    conn = await driver(session)
    owed = -e.split.amount
    rows = [
        r
        for r in await conn.fetch(_REFUNDABLE, project_id, req.wallet.id, req.metric.id, GIVE_BACK_MAX)
        if r["left"] > 0
    ]
    originals = await ledger_reads.transactions_on(conn, project_id, [r["id"] for r in rows])
    first: uuid.UUID | None = None
    for n, r in enumerate(rows):
        if owed == 0:
            break
        take = min(owed, int(r["left"]))
        key = ledger_key(f"{req.idempotency_key}|give-back|{n}")
        refund = await refunds.prepared(
            ledger,
            actor,
            originals[r["id"]],
            take,
            key,
            reason=f"{req.metric.key}: a volume tier lowered the period's price",
            action="usage.give_back",
        )
        posted = await submit(ledger, refund, session=session)
        first = first or posted.transaction.id
        owed -= take
    if owed > 0:
        rest = dataclasses.replace(e, split=dataclasses.replace(e.split, amount=-owed))
        posted = await post_transaction(ledger, _posting(project_id, actor, req, rest), session=session)
        first = first or posted.transaction.id
    assert first is not None
    return first


def _conflict() -> IdempotencyConflict:
    return IdempotencyConflict("this idempotencyKey was already used for another charge", field="idempotencyKey")


def _posting(project_id: uuid.UUID, actor: Actor, req: ChargeRequest, e: carry.EventPrice) -> Posting:
    """The debit of a charge (negative: the plain credit of a give-back no debit could take)."""
    amount = e.split.amount
    return Posting(
        project_id=project_id,
        wallet_id=req.wallet.id,
        kind=Kind.USAGE,
        currency=req.wallet.currency,
        legs=(Leg(-amount, wallet_id=req.wallet.id), Leg(amount, system=SystemAccount.USAGE_REVENUE)),
        idempotency_key=ledger_key(req.idempotency_key),
        actor=actor,
        reference=req.metric.key,
        metadata={
            "metricKey": req.metric.key,
            "units": format(req.units, "f"),
            "unitPrice": format(e.unit_price, "f"),
            "price": format(e.price, "f"),
            "periodUnitsBefore": format(e.period_units_before, "f"),
        },
        action="usage.charge",
    )


async def wallet_ref(ledger: LedgerService, wallet_id: uuid.UUID) -> WalletRef:
    ref = await ledger.wallet_ref(wallet_id)
    if ref is None:
        raise NotFound("wallet not found", field="walletId")
    return ref


async def transaction_of(ledger: LedgerService, charge: ChargeRecord) -> Any:
    if charge.transaction_id is None:
        return None
    return await ledger_reads.get_transaction(ledger, charge.project_id, charge.transaction_id)


async def charge_usage(
    db: Database,
    ledger: LedgerService,
    actor: Actor,
    wallet: WalletRef,
    metric: MetricRecord,
    units: Any,
    idempotency_key: str,
) -> ChargeResult:
    """chargeUsage: price `units` of `metric` and debit the whole credits from `wallet`."""
    req = ChargeRequest(wallet, metric, validate.units(units), validate.idempotency_key(idempotency_key))
    async with db.transaction(project_id=wallet.project_id) as session:
        [(charge, replayed)] = await charge_in_session(session, ledger, actor, wallet.project_id, [req])
    return ChargeResult(charge, await transaction_of(ledger, charge), replayed)


async def charge_usage_batch(
    db: Database, ledger: LedgerService, actor: Actor, project_id: uuid.UUID, requests: Sequence[ChargeRequest]
) -> list[ChargeResult]:
    """Many charges in one database transaction (all or none), priced in order: the same result
    as charging them one by one, in a fraction of the round trips."""
    for r in requests:
        validate.units(r.units)
        validate.idempotency_key(r.idempotency_key)
    async with db.transaction(project_id=project_id) as session:
        done = await charge_in_session(session, ledger, actor, project_id, requests)
    return [ChargeResult(c, None, replayed) for c, replayed in done]


async def get_charge(db: Database, project_id: uuid.UUID, idempotency_key: str) -> ChargeRecord | None:
    async with db.raw(project_id=project_id) as conn:
        row = await conn.fetchrow(EXISTING_CHARGES, project_id, [idempotency_key])
    return charge_from_row(row) if row is not None else None


async def remainder(db: Database, project_id: uuid.UUID, wallet_id: uuid.UUID, metric_id: uuid.UUID) -> decimal.Decimal:
    """The fraction of a unit carried for (wallet, metric): owed, not yet debited."""
    async with db.raw(project_id=project_id) as conn:
        return await carry.remainder(conn, wallet_id, metric_id)


@dataclasses.dataclass(frozen=True, slots=True)
class ChargePreview:
    """What `chargeUsage` of `units` would post now (previewUsageCharge)."""

    units: decimal.Decimal
    period_start: dt.datetime
    period_units: decimal.Decimal  # the wallet's units of the metric in the period so far
    priced: carry.EventPrice


async def preview_charge(db: Database, wallet: WalletRef, metric: MetricRecord, units: Any) -> ChargePreview:
    """previewUsageCharge: the amount the next charge of `units` would post (a dry run)."""
    n = validate.units(units)
    if metric.project_id != wallet.project_id:
        raise NotFound("wallet or metric not found in this project", field="walletId")
    async with db.raw(project_id=wallet.project_id) as conn:
        period_start, prices = await price_versions.for_events(conn, wallet.project_id, [metric.id])
        pricing = prices.get(metric.id, metric.pricing)
        e = await carry.preview_event(conn, wallet.id, metric.id, n, pricing, period_start)
    return ChargePreview(n, period_start, e.period_units_before, e)
