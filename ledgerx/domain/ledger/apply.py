"""Apply a batch of postings inside one database transaction, with per-posting outcomes.

Order of work (each numbered step is one statement):
1. lock every wallet the batch touches, in id order (no deadlocks between batches);
2. read the batch's idempotency keys that already exist (after the lock: a fresh snapshot sees
   what committed while we waited), and for refunds what was refunded so far;
3. read the wallets' spendable credit grants (and, for refunds and grant expiries/voids, the
   grants and draws they name), in a statement after the lock for the same reason;
4. decide each posting in arrival order in memory (idempotency, credit limits, refund caps, which
   grants a debit draws: grantbook.py), so a posting that fails writes nothing and later postings
   see earlier ones' balances and grants;
5. write everything that succeeded in one statement (grants made and changed, draws included).

A race on an idempotency key with a transaction that locks other wallets surfaces in step 4 as a
unique violation; the caller retries (and then finds the key in step 2).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from ledgerx import ids
from ledgerx.domain import audit, topics
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import AppError, BadInput, Conflict, IdempotencyConflict, InsufficientFunds, NotFound
from ledgerx.domain.ledger import alerts, codec, grantbook, hashing, payloads, store, top_ups
from ledgerx.domain.ledger.grantbook import Book, LiveGrant
from ledgerx.domain.ledger.types import (
    MAX_BIGINT,
    PAID_TERMS,
    EntryRecord,
    GrantStatus,
    GrantTerms,
    Kind,
    Posted,
    TransactionRecord,
    TxnType,
    WalletRecord,
)
from ledgerx.domain.webhooks import outbox
from ledgerx.ids import uuid7

# Kinds whose crossing of an auto top-up threshold starts no purchase (see _chain_entries).
_NO_TOP_UP = frozenset({Kind.REFUND.value, Kind.DISPUTE.value})


@dataclasses.dataclass(frozen=True, slots=True)
class ResolvedLeg:
    amount: int
    wallet_id: uuid.UUID | None
    system_account_id: uuid.UUID | None
    system_code: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class RefundSpec:
    """A refund's legs depend on what is left to refund, known only under the lock."""

    original: TransactionRecord
    amount: int | None  # None: everything still refundable
    refunds_account_id: uuid.UUID  # the REFUNDS system account of the original's currency


@dataclasses.dataclass(frozen=True, slots=True)
class GrantOp:
    """An expiry or a void of one grant: its remainder, known only under the lock, leaves the
    wallet to `account_id` (EXPIRATIONS, or ADJUSTMENTS for a void)."""

    grant_id: uuid.UUID
    wallet_id: uuid.UUID
    ends_as: GrantStatus  # EXPIRED or VOIDED
    account_id: uuid.UUID
    system_code: str
    # An expiry: the grant must be due by this instant (the project's clock when it was claimed).
    due_by: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Prepared:
    """A validated posting with system accounts resolved, ready for `apply`."""

    project_id: uuid.UUID
    wallet_id: uuid.UUID
    kind: str
    currency: str
    legs: tuple[ResolvedLeg, ...]  # empty for refunds (computed from `refund`)
    idempotency_key: str
    request_hash: bytes
    actor: Actor
    action: str
    reference: str | None
    reason: str | None
    metadata_json: str
    refund: RefundSpec | None = None
    # The terms of the grant the primary wallet's credit makes (None: PAID_TERMS).
    terms: GrantTerms | None = None
    grant_op: GrantOp | None = None

    def wallet_ids(self) -> set[uuid.UUID]:
        if self.grant_op is not None:
            return {self.grant_op.wallet_id}
        if self.refund is not None:
            return {e.wallet_id for e in self.refund.original.entries if e.wallet_id is not None}
        return {leg.wallet_id for leg in self.legs if leg.wallet_id is not None}


Outcome = Posted | AppError
_CONFLICT = "idempotency key already used for a different request"


@dataclasses.dataclass(slots=True)
class _Wallet:
    """A locked wallet's running state while the batch is decided."""

    row: WalletRecord
    balance: int
    seq: int
    head: bytes
    touched: bool = False
    top_up_below: int | None = None  # auto top-up's threshold while it is on (top_ups.py)

    def snapshot(self, now: dt.datetime) -> WalletRecord:
        r = self.row  # (dataclasses.replace costs several times this constructor)
        return WalletRecord(
            r.id,
            r.project_id,
            r.name,
            r.owner_user_id,
            r.currency,
            self.balance,
            r.credit_limit,
            r.low_balance_threshold,
            r.created_at,
            now,
        )


_TXN_WIDTH, _ENTRY_WIDTH = 19, 13
_NO_CHAIN = (None, None, None, None)  # a system entry's balances, seq and previous hash


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows -> one list per column (WRITE_BATCH takes a parameter array per column)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]


@dataclasses.dataclass(slots=True)
class _Writes:
    """The rows of the batch write (WRITE_BATCH's parameters), one tuple per row, turned into
    column arrays once for the whole batch."""

    txn: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    ent: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    aud: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    top_ups: list[top_ups.Crossing] = dataclasses.field(default_factory=list)

    def sorted_txn_columns(self) -> list[list[Any]]:
        """Transactions in (project, key) order: concurrent batches claim keys in one global
        order, so waits on the idempotency index cannot form a cycle."""
        rows = sorted(self.txn, key=lambda r: (str(r[1]), r[9]))
        return _columns(rows, _TXN_WIDTH)

    def entry_columns(self) -> list[list[Any]]:
        return _columns(self.ent, _ENTRY_WIDTH)

    def audit_columns(self) -> list[list[Any]]:
        return _columns(self.aud, len(audit.COLUMNS))


@dataclasses.dataclass(slots=True)
class Result:
    outcomes: list[Outcome]
    # Per new transaction: the event payloads to publish after commit.
    events: list[tuple[str, dict[str, Any]]]


@dataclasses.dataclass(slots=True)
class _State:
    """What the batch is decided against, read under the wallets' locks."""

    wallets: dict[uuid.UUID, _Wallet]
    existing: dict[tuple[uuid.UUID, str], asyncpg.Record]  # idempotency key -> stored transaction row
    refunded: dict[uuid.UUID, int]  # original transaction -> refunded so far (running, in-batch too)
    webhooks: dict[uuid.UUID, list[str] | None]  # project -> event types its webhook endpoints want
    book: Book  # the grants of the locked wallets


@dataclasses.dataclass(slots=True)
class _Decisions:
    outcomes: list[Outcome | None] = dataclasses.field(default_factory=list)
    claimed: dict[tuple[uuid.UUID, str], tuple[bytes, int]] = dataclasses.field(default_factory=dict)
    duplicates: dict[int, int] = dataclasses.field(default_factory=dict)  # index -> earlier same request
    replays: dict[int, asyncpg.Record] = dataclasses.field(default_factory=dict)
    new: list[tuple[int, Posted, list[uuid.UUID]]] = dataclasses.field(default_factory=list)
    writes: _Writes = dataclasses.field(default_factory=_Writes)


async def apply(conn: asyncpg.Connection, items: Sequence[Prepared], now: dt.datetime) -> Result:
    """Decide and write `items` on `conn`, which must already be inside a transaction."""
    state = await _load_state(conn, items)
    d = _Decisions()
    for i, p in enumerate(items):
        _decide_one(d, state, i, p, now)
    if d.replays:
        records = await store.load_transactions(conn, list(d.replays.values()))
        for i, rec in zip(d.replays, records, strict=True):
            d.outcomes[i] = Posted(rec, replayed=True)
    events: list[tuple[str, dict[str, Any]]] = []
    if d.new:
        hooks = webhook_events(state.webhooks, items, d.new)
        stored_metadata = await _write(conn, d.writes, state.wallets, state.book, now, hooks)
        for i, posted, low in d.new:
            done = posted
            stored = stored_metadata.get(posted.transaction.id)
            if stored is not None:  # metadata other than {} (the record has {} until now)
                rec = dataclasses.replace(posted.transaction, metadata=stored)
                done = dataclasses.replace(posted, transaction=rec)
                d.outcomes[i] = done
            events.extend(ledger_events(done, low))
            if low:  # a crossing below a threshold (rare): mail it in this transaction
                await alerts.low_balance(conn, done, low)
        if d.writes.top_ups:  # a crossing of an auto top-up threshold (rare)
            await top_ups.wanted(conn, d.writes.top_ups, now)
    for i, first in d.duplicates.items():
        original = d.outcomes[first]
        assert isinstance(original, Posted)
        d.outcomes[i] = Posted(original.transaction, replayed=True, wallets=original.wallets)
    final: list[Outcome] = []
    for o in d.outcomes:
        assert o is not None
        final.append(o)
    return Result(final, events)


async def _load_state(conn: asyncpg.Connection, items: Sequence[Prepared]) -> _State:
    wallet_ids = sorted({w for p in items for w in p.wallet_ids()})
    locked = await conn.fetch(store.LOCK_WALLETS, wallet_ids)
    rows = await conn.fetch(store.EXISTING_TXNS, [p.project_id for p in items], [p.idempotency_key for p in items])
    refund_ids = [p.refund.original.id for p in items if p.refund is not None]
    refunded: dict[uuid.UUID, int] = {}
    book = Book()
    named: list[uuid.UUID] = [p.grant_op.grant_id for p in items if p.grant_op is not None]
    if refund_ids:
        refunded = {r["refund_of"]: r["total"] for r in await conn.fetch(store.REFUNDED_TOTALS, refund_ids)}
        owed = await conn.fetch(store.REFUND_DRAWS, refund_ids)
        book.load_owed(owed)
        named.extend(r["grant_id"] for r in owed)
    if named or refund_ids:
        book.load(await conn.fetch(store.GRANTS_NAMED, wallet_ids, named, refund_ids))
    elif any(_takes(p) for p in items):
        book.load(await _spendable(conn, items))
    return _State(
        wallets={r["id"]: _wallet_state(r) for r in locked},
        existing={(r["project_id"], r["idempotency_key"]): r for r in rows},
        refunded=refunded,
        webhooks={r["project_id"]: r["webhook_events"] for r in locked},
        book=book,
    )


HEAD_GRANTS = 8


async def _spendable(conn: asyncpg.Connection, items: Sequence[Prepared]) -> list[asyncpg.Record]:
    """The grants the batch's debits can draw (no refunds or grant ends in it): of each wallet,
    the prefix of its draw order that holds what the batch takes out of it in total (read from
    its first HEAD_GRANTS, or all of them when those do not hold enough). Draws never go past that
    prefix (they take at most that total; a grant made in the batch only lessens what the prefix
    gives), so the order is kept exactly while a wallet with many grants costs no more to debit."""
    need: dict[uuid.UUID, int] = {}
    for p in items:
        for leg in p.legs:
            if leg.wallet_id is not None and leg.amount < 0:
                need[leg.wallet_id] = need.get(leg.wallet_id, 0) - leg.amount
    wallets = sorted(need)
    rows: list[asyncpg.Record] = await conn.fetch(store.GRANTS_HEAD, wallets, [need[w] for w in wallets], HEAD_GRANTS)
    seen: dict[uuid.UUID, tuple[int, int]] = {}
    for r in rows:
        count, upto = seen.get(r["wallet_id"], (0, 0))
        seen[r["wallet_id"]] = (count + 1, max(upto, r["upto"]))
    short = [w for w, (count, upto) in seen.items() if count == HEAD_GRANTS and upto < need[w]]
    if not short:
        return rows
    rest = [r for r in rows if r["wallet_id"] not in short]
    whole: list[asyncpg.Record] = await conn.fetch(store.ACTIVE_GRANTS, short)
    return rest + whole


def _takes(p: Prepared) -> bool:
    """Whether the posting may take money out of a wallet (only then are existing grants read:
    money in repays the overdraft, which the balance tells, and makes new grants)."""
    return p.refund is not None or p.grant_op is not None or any(leg.amount < 0 and leg.wallet_id for leg in p.legs)


def _decide_one(d: _Decisions, state: _State, i: int, p: Prepared, now: dt.datetime) -> None:
    """Idempotency first (a replay must answer even when the request would now be refused),
    then the posting itself against the running balances."""
    key = (p.project_id, p.idempotency_key)
    seen = d.claimed.get(key)
    row = state.existing.get(key)
    stored_hash = seen[0] if seen is not None else bytes(row["request_hash"]) if row is not None else None
    if stored_hash is not None and stored_hash != p.request_hash:
        d.outcomes.append(IdempotencyConflict(_CONFLICT, field="idempotencyKey"))
        return
    d.outcomes.append(None)  # filled below, or after the write / the replay read
    if seen is not None:
        d.duplicates[i] = seen[1]
        return
    if row is not None:
        d.replays[i] = row
        return
    try:
        posted, low = _decide(p, state, d.writes, now)
    except AppError as exc:
        d.outcomes[i] = exc
        return
    d.claimed[key] = (p.request_hash, i)
    d.outcomes[i] = posted
    d.new.append((i, posted, low))


def _wallet_state(r: asyncpg.Record) -> _Wallet:
    return _Wallet(
        store.wallet_from_row(r),
        r["balance"],
        r["entry_seq"],
        bytes(r["head_hash"]) if r["head_hash"] is not None else hashing.GENESIS,
        top_up_below=r["auto_top_up_below"],
    )


def _refund_legs(spec: RefundSpec, refunded: dict[uuid.UUID, int]) -> tuple[tuple[ResolvedLeg, ...], int]:
    """The reversing legs of a (partial) refund: wallet legs negated and scaled, every system
    leg replaced by one leg on the REFUNDS account so the original revenue stays as recorded."""
    orig = spec.original
    remaining = orig.amount - refunded.get(orig.id, 0)
    if remaining <= 0:
        raise Conflict("transaction is already fully refunded", field="transactionId")
    amount = remaining if spec.amount is None else spec.amount
    if amount > remaining:
        raise BadInput(f"refund exceeds what is left to refund ({remaining})", field="amount", remaining=str(remaining))
    legs: list[ResolvedLeg] = []
    for e in orig.entries:
        if e.wallet_id is None:
            continue
        scaled = -e.amount * amount
        if scaled % orig.amount:
            raise BadInput("this transaction can only be refunded in full", field="amount")
        legs.append(ResolvedLeg(scaled // orig.amount, e.wallet_id, None, None))
    rest = -sum(leg.amount for leg in legs)
    if rest:
        legs.append(ResolvedLeg(rest, None, spec.refunds_account_id, "REFUNDS"))
    return tuple(legs), amount


def _grant_op_legs(op: GrantOp, book: Book) -> tuple[tuple[ResolvedLeg, ...], LiveGrant]:
    """The legs of an expiry or void: the grant's remainder, as it is under the lock."""
    g = book.grants.get(op.grant_id)
    if g is None or g.wallet_id != op.wallet_id:
        raise NotFound("credit grant not found", field="id")
    if g.status is not GrantStatus.ACTIVE:
        raise Conflict(
            f"the credit grant is {g.status.value}: nothing is left of it", field="id", status=g.status.value
        )
    if op.due_by is not None and (g.expires_at is None or g.expires_at > op.due_by):
        raise Conflict("the credit grant is not due to expire", field="id")
    legs = (
        ResolvedLeg(-g.remaining, g.wallet_id, None, None),
        ResolvedLeg(g.remaining, None, op.account_id, op.system_code),
    )
    return legs, g


def _decide(p: Prepared, state: _State, writes: _Writes, now: dt.datetime) -> tuple[Posted, list[uuid.UUID]]:
    """Check one posting against the running wallet states; on success record its rows.

    Raises before touching any state, so a refused posting leaves no trace in the batch.
    """
    wallets, refunded, book = state.wallets, state.refunded, state.book
    ended: LiveGrant | None = None
    if p.grant_op is not None:
        legs, ended = _grant_op_legs(p.grant_op, book)
        refund_amount = 0
    elif p.refund is not None:
        legs, refund_amount = _refund_legs(p.refund, refunded)
    else:
        legs, refund_amount = p.legs, 0
    after: dict[uuid.UUID, int] = {}
    for leg in legs:
        if leg.wallet_id is None:
            continue
        w = wallets.get(leg.wallet_id)
        if w is None or w.row.project_id != p.project_id:
            raise NotFound("wallet not found", field="walletId")
        if w.row.currency != p.currency:
            raise BadInput(f"wallet holds {w.row.currency}, not {p.currency}", field="walletId")
        new_balance = w.balance + leg.amount
        if new_balance > MAX_BIGINT:
            raise BadInput("amount would overflow the wallet balance", field="amount")
        if leg.amount < 0 and new_balance < -w.row.credit_limit:
            raise InsufficientFunds(
                "insufficient funds",
                walletId=ids.encode("wallet", w.row.id),
                balance=str(w.balance),
                creditLimit=str(w.row.credit_limit),
            )
        after[leg.wallet_id] = new_balance

    primary = next(leg for leg in legs if leg.wallet_id == p.wallet_id)
    pw = wallets[p.wallet_id]
    txn_id = uuid7()
    ttype = TxnType.CREDIT if primary.amount > 0 else TxnType.DEBIT
    refund_of = p.refund.original.id if p.refund is not None else None
    t_hash = hashing.txn_hash(
        id=txn_id,
        project_id=p.project_id,
        wallet_id=p.wallet_id,
        type=ttype.value,
        kind=p.kind,
        currency=p.currency,
        amount=abs(primary.amount),
        balance_before=pw.balance,
        balance_after=after[p.wallet_id],
        idempotency_key=p.idempotency_key,
        request_hash=p.request_hash,
        reference=p.reference,
        reason=p.reason,
        refund_of=refund_of,
        actor_type=p.actor.type,
        actor_id=p.actor.id,
        created_at=now,
    )
    writes.txn.append(
        (
            txn_id,
            p.project_id,
            p.wallet_id,
            ttype.value,
            p.kind,
            p.currency,
            abs(primary.amount),
            pw.balance,
            after[p.wallet_id],
            p.idempotency_key,
            p.request_hash,
            p.reference,
            p.reason,
            p.metadata_json,
            refund_of,
            p.actor.type,
            p.actor.id,
            now,
            t_hash,
        )
    )
    primary_before = pw.balance
    made = _move_grants(p, legs, wallets, book, ended, txn_id, now)
    entries, low = _chain_entries(p, legs, wallets, writes, txn_id, t_hash, now)
    if p.refund is not None:
        refunded[p.refund.original.id] = refunded.get(p.refund.original.id, 0) + refund_amount
    record = TransactionRecord(
        id=txn_id,
        project_id=p.project_id,
        wallet_id=p.wallet_id,
        type=ttype,
        kind=p.kind,
        currency=p.currency,
        amount=abs(primary.amount),
        balance_before=primary_before,
        balance_after=after[p.wallet_id],
        idempotency_key=p.idempotency_key,
        reference=p.reference,
        reason=p.reason,
        metadata={},
        refund_of=refund_of,
        created_at=now,
        entries=tuple(entries),
    )
    _audit(writes, p, record)
    snapshots = tuple(wallets[w].snapshot(now) for w in after)
    grants = tuple(g.record(now) for g in made)
    return Posted(record, wallets=snapshots, grants=grants, draws=tuple(book.draws_of(txn_id))), low


def _move_grants(
    p: Prepared,
    legs: tuple[ResolvedLeg, ...],
    wallets: dict[uuid.UUID, _Wallet],
    book: Book,
    ended: LiveGrant | None,
    txn_id: uuid.UUID,
    now: dt.datetime,
) -> list[LiveGrant]:
    """The grants side of a decided posting (grantbook.py has the rules), before its entries
    move the balances: money out first (a transfer's target gets what the source gave up)."""
    moved: list[grantbook.Moved] = []
    for leg in legs:
        if leg.wallet_id is None or leg.amount > 0:
            continue
        before = wallets[leg.wallet_id].balance
        if ended is not None:
            book.end(txn_id, ended, p.grant_op.ends_as if p.grant_op is not None else GrantStatus.EXPIRED)
            continue
        first = book.made_by(p.refund.original.id, leg.wallet_id) if p.refund is not None else ()
        moved.extend(book.take(txn_id, leg.wallet_id, -leg.amount, before, first=first))
    made: list[LiveGrant] = []
    for leg in legs:
        if leg.wallet_id is None or leg.amount < 0:
            continue
        pieces: list[tuple[LiveGrant | GrantTerms, int]]
        if p.refund is not None:
            pieces = book.give_back(p.refund.original.id, leg.wallet_id, leg.amount)
        elif moved and p.kind == Kind.TRANSFER.value:
            pieces = _split(moved, leg.amount)
        else:
            pieces = [(p.terms or PAID_TERMS, leg.amount)]
        before = wallets[leg.wallet_id].balance
        made.extend(book.give(txn_id, p.project_id, leg.wallet_id, leg.amount, before, pieces, now))
    return made


def _split(moved: list[grantbook.Moved], amount: int) -> list[tuple[LiveGrant | GrantTerms, int]]:
    """Take `amount` off the front of what left the source wallets, keeping each part's terms."""
    pieces: list[tuple[LiveGrant | GrantTerms, int]] = []
    left = amount
    while left and moved:
        m = moved[0]
        n = min(left, m.amount)
        pieces.append((m.terms, n))
        left -= n
        m.amount -= n
        if m.amount == 0:
            moved.pop(0)
    if left:
        pieces.append((PAID_TERMS, left))
    return pieces


def _chain_entries(
    p: Prepared,
    legs: tuple[ResolvedLeg, ...],
    wallets: dict[uuid.UUID, _Wallet],
    writes: _Writes,
    txn_id: uuid.UUID,
    t_hash: bytes,
    now: dt.datetime,
) -> tuple[list[EntryRecord], list[uuid.UUID]]:
    """Append each leg as an entry; wallet entries extend their wallet's hash chain."""
    entries: list[EntryRecord] = []
    low: list[uuid.UUID] = []
    for leg in legs:
        eid = uuid7()
        if leg.wallet_id is None:
            h = hashing.entry_hash(
                hashing.GENESIS,
                id=eid,
                transaction_id=txn_id,
                transaction_hash=t_hash,
                wallet_id=None,
                system_account_id=leg.system_account_id,
                currency=p.currency,
                amount=leg.amount,
                balance_before=None,
                balance_after=None,
                seq=None,
                created_at=now,
            )
            writes.ent.append(
                (eid, txn_id, p.project_id, None, leg.system_account_id, p.currency, leg.amount, *_NO_CHAIN, h, now)
            )
            entries.append(
                EntryRecord(eid, txn_id, None, leg.system_code, p.currency, leg.amount, None, None, None, h, now)
            )
            continue
        w = wallets[leg.wallet_id]
        before, seq, prev = w.balance, w.seq + 1, w.head
        bal = before + leg.amount
        h = hashing.entry_hash(
            prev,
            id=eid,
            transaction_id=txn_id,
            transaction_hash=t_hash,
            wallet_id=leg.wallet_id,
            system_account_id=None,
            currency=p.currency,
            amount=leg.amount,
            balance_before=before,
            balance_after=bal,
            seq=seq,
            created_at=now,
        )
        row = (eid, txn_id, p.project_id, leg.wallet_id, None, p.currency, leg.amount, before, bal, seq, prev, h, now)
        writes.ent.append(row)
        entries.append(EntryRecord(eid, txn_id, leg.wallet_id, None, p.currency, leg.amount, before, bal, seq, h, now))
        w.balance, w.seq, w.head, w.touched = bal, seq, h, True
        threshold = w.row.low_balance_threshold
        # A downward crossing of the threshold: at most one event per crossing, by construction.
        if threshold is not None and before >= threshold > w.balance:
            low.append(leg.wallet_id)
        # Money taken back (a refund, a dispute hold) never buys more: re-charging the card that was
        # just refunded or disputed is the one thing the customer did not ask for.
        if w.top_up_below is not None and before >= w.top_up_below > w.balance and p.kind not in _NO_TOP_UP:
            writes.top_ups.append((p.project_id, leg.wallet_id, txn_id))
    return entries, low


def _audit(writes: _Writes, p: Prepared, rec: TransactionRecord) -> None:
    before = {"balance": str(rec.balance_before)}
    after = {
        "balance": str(rec.balance_after),
        "amount": str(rec.amount),
        "type": rec.type.value,
        "kind": rec.kind,
        "walletId": ids.encode("wallet", rec.wallet_id),
        "idempotencyKey": rec.idempotency_key,
    }
    if rec.refund_of is not None:
        after["refundOf"] = ids.encode("transaction", rec.refund_of)
    target = ids.encode("transaction", rec.id)
    writes.aud.append(audit.values(audit.Entry(p.actor, p.action, p.project_id, "transaction", target, before, after)))


def _grant_columns(book: Book, now: dt.datetime) -> list[list[Any]]:
    """WRITE_BATCH's grant parameters: grants made (their final state), grants changed, draws."""
    made, changed = book.changed()
    new_cols: list[list[Any]] = [[] for _ in range(13)]
    for g in made:
        for col, v in zip(
            new_cols,
            (
                g.id,
                g.project_id,
                g.wallet_id,
                g.amount,
                g.remaining,
                g.category.value,
                g.priority,
                g.expires_at,
                g.status.value,
                g.source_transaction_id,
                g.ended_transaction_id,
                g.reason,
                g.metadata_json,
            ),
            strict=True,
        ):
            col.append(v)
    upd_cols: list[list[Any]] = [[g.id for g in changed], [g.remaining for g in changed]]
    upd_cols += [[g.status.value for g in changed], [g.ended_transaction_id for g in changed]]
    draw_cols: list[list[Any]] = [[] for _ in range(5)]
    for txn_id, mine in book.draws.items():
        for i, (gid, n) in enumerate(mine.items()):
            row: tuple[Any, ...] = (txn_id, gid, book.grants[gid].project_id, n, i)
            for dcol, dv in zip(draw_cols, row, strict=True):
                dcol.append(dv)
    return [*new_cols, *upd_cols, *draw_cols]


async def _write(
    conn: asyncpg.Connection,
    writes: _Writes,
    wallets: dict[uuid.UUID, _Wallet],
    book: Book,
    now: dt.datetime,
    hooks: outbox.Batch,
) -> dict[uuid.UUID, dict[str, Any]]:
    """One statement for the whole batch (its webhook events, grants and draws too); returns the
    metadata as stored of each transaction whose metadata is not {}."""
    touched = [w for w in wallets.values() if w.touched]
    wallet_cols = [[w.row.id for w in touched], [w.balance for w in touched], [w.seq for w in touched]]
    wallet_cols.append([w.head for w in touched])
    args = [*writes.sorted_txn_columns(), *writes.entry_columns(), now, *wallet_cols, *hooks.args()]
    args += writes.audit_columns()
    args += _grant_columns(book, now)
    rows = await conn.fetch(store.WRITE_BATCH, *args)
    return {r["id"]: store.parse_metadata(r["metadata"]) for r in rows}


def webhook_events(
    wanted: dict[uuid.UUID, list[str] | None],
    items: Sequence[Prepared],
    new: list[tuple[int, Posted, list[uuid.UUID]]],
) -> outbox.Batch:
    """The outbound webhook events of the batch's new transactions, written by its one statement:
    `transaction.posted` for each, `wallet.low_balance` for each wallet it took below its
    threshold. `data` is built only for projects whose endpoints want the type (`wanted`, read
    with the wallets' lock): a project without endpoints costs nothing here."""
    batch = outbox.Batch()
    for i, posted, low in new:
        project = posted.transaction.project_id
        types = wanted.get(project)
        if types is None:
            continue
        # The metadata as it will be stored (jsonb normalizes the payload's copy the same way).
        rec = dataclasses.replace(posted.transaction, metadata=json.loads(items[i].metadata_json))
        if outbox.wants(types, "transaction.posted"):
            batch.add(project, "transaction.posted", payloads.transaction(rec))
        if low and outbox.wants(types, "wallet.low_balance"):
            for w in posted.wallets:
                if w.id in low:
                    batch.add(project, "wallet.low_balance", payloads.wallet_update(w, rec, low_balance=True))
    return batch


def ledger_events(posted: Posted, low: list[uuid.UUID]) -> list[tuple[str, dict[str, Any]]]:
    """The pub/sub events of one new transaction (topics are relative to the bus prefix)."""
    txn = codec.txn_to_json(posted.transaction)
    out = [topics.transaction_posted(posted.transaction.project_id, txn)]
    for w in posted.wallets:
        is_low = w.id in low
        out.append(topics.wallet_updated(w.id, codec.wallet_to_json(w), txn, low_balance=is_low))
        if is_low:
            out.append(topics.low_balance(w.project_id, codec.wallet_to_json(w), posted.transaction.id))
    return out
