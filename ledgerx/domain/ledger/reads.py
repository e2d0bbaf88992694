"""Reads of wallets and transactions, each in a transaction scoped to one project (RLS)."""

from __future__ import annotations

import dataclasses
import uuid

from ledgerx.domain.ledger import store
from ledgerx.domain.ledger.service import LedgerService
from ledgerx.domain.ledger.types import EntryRecord, TransactionRecord, WalletRecord

MAX_PAGE = 100

# TXN_COLS qualified with the transactions' alias (the join shares column names with entries).
_TXN_COLS_T = ", ".join(f"t.{c.strip()}" for c in store.TXN_COLS.split(","))

WALLET_TRANSACTIONS = (
    f"SELECT e.seq AS cursor_seq, {_TXN_COLS_T} FROM ledger_entries e"  # noqa: S608
    " JOIN ledger_transactions t ON t.id = e.transaction_id"
    " WHERE e.wallet_id = $1 AND e.seq < $2 ORDER BY e.seq DESC LIMIT $3"
)


@dataclasses.dataclass(frozen=True, slots=True)
class WalletTransaction:
    """A transaction as seen from one wallet: `entry` is that wallet's leg (its cursor is `seq`)."""

    seq: int
    transaction: TransactionRecord
    entry: EntryRecord | None


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    items: list[WalletTransaction]
    has_next: bool


async def get_wallet(ledger: LedgerService, project_id: uuid.UUID, wallet_id: uuid.UUID) -> WalletRecord | None:
    async with ledger.db.raw(project_id=project_id) as conn:
        row = await conn.fetchrow(
            f"SELECT {store.WALLET_COLS} FROM wallets WHERE id = $1 AND project_id = $2",  # noqa: S608
            wallet_id,
            project_id,
        )
    return store.wallet_from_row(row) if row is not None else None


async def get_transaction(
    ledger: LedgerService, project_id: uuid.UUID, transaction_id: uuid.UUID
) -> TransactionRecord | None:
    async with ledger.db.raw(project_id=project_id) as conn:
        row = await conn.fetchrow(
            f"SELECT {store.TXN_COLS} FROM ledger_transactions WHERE id = $1 AND project_id = $2",  # noqa: S608
            transaction_id,
            project_id,
        )
        found = await store.load_transactions(conn, [row] if row is not None else [])
    return found[0] if found else None


async def wallet_transactions(
    ledger: LedgerService, project_id: uuid.UUID, wallet_id: uuid.UUID, *, first: int, before_seq: int | None
) -> Page:
    """Transactions touching the wallet, newest first, keyset-paginated on the wallet's entry seq."""
    limit = max(0, min(first, MAX_PAGE))
    async with ledger.db.raw(project_id=project_id) as conn:
        before = 2**62 if before_seq is None else before_seq
        rows = await conn.fetch(WALLET_TRANSACTIONS, wallet_id, before, limit + 1)
        records = await store.load_transactions(conn, rows[:limit])
    items = []
    for row, rec in zip(rows[:limit], records, strict=True):
        seq = row["cursor_seq"]
        entry = next((e for e in rec.entries if e.wallet_id == wallet_id and e.seq == seq), None)
        items.append(WalletTransaction(seq, rec, entry))
    return Page(items, len(rows) > limit)


async def refunded_total(ledger: LedgerService, project_id: uuid.UUID, transaction_id: uuid.UUID) -> int:
    async with ledger.db.raw(project_id=project_id) as conn:
        total = await conn.fetchval(
            "SELECT coalesce(sum(amount), 0)::bigint FROM ledger_transactions WHERE refund_of = $1", transaction_id
        )
    return int(total)


async def list_wallets(
    ledger: LedgerService, project_id: uuid.UUID, *, limit: int, after: uuid.UUID | None
) -> list[WalletRecord]:
    """The project's wallets, oldest first; up to `limit + 1` rows (the extra one means "more")."""
    async with ledger.db.raw(project_id=project_id) as conn:
        rows = await conn.fetch(
            f"SELECT {store.WALLET_COLS} FROM wallets WHERE project_id = $1 AND id > $2 ORDER BY id LIMIT $3",  # noqa: S608
            project_id,
            after or uuid.UUID(int=0),
            limit + 1,
        )
    return [store.wallet_from_row(r) for r in rows]
