"""Reads of wallets and transactions, each in a transaction scoped to one project (RLS)."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence

import asyncpg

from ledgerx.domain.ledger import store
from ledgerx.domain.ledger.service import LedgerService
from ledgerx.domain.ledger.types import EntryRecord, TransactionRecord, WalletRecord

MAX_PAGE = 100

# TXN_COLS qualified with the transactions' alias (the join shares column names with entries).
_TXN_COLS_T = ", ".join(f"t.{c.strip()}" for c in store.TXN_COLS.split(","))

# One page per wallet of $1, in one statement (GraphQL's `Wallet.transactions` on a list of wallets).
WALLET_TRANSACTIONS = (
    "SELECT w.for_wallet, p.* FROM unnest($1::uuid[]) AS w(for_wallet) CROSS JOIN LATERAL ("  # noqa: S608
    f" SELECT e.seq AS cursor_seq, {_TXN_COLS_T} FROM ledger_entries e"
    " JOIN ledger_transactions t ON t.id = e.transaction_id"
    " WHERE e.wallet_id = w.for_wallet AND e.seq < $2 ORDER BY e.seq DESC LIMIT $3) p"
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
    return (await get_transactions(ledger, project_id, [transaction_id])).get(transaction_id)


async def get_transactions(
    ledger: LedgerService, project_id: uuid.UUID, transaction_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, TransactionRecord]:
    """The project's transactions among `transaction_ids` (with their entries), by id; two statements."""
    async with ledger.db.raw(project_id=project_id) as conn:
        return await transactions_on(conn, project_id, transaction_ids)


async def transactions_on(
    conn: asyncpg.Connection, project_id: uuid.UUID, transaction_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, TransactionRecord]:
    """`get_transactions` on the caller's transaction (it sees that transaction's own postings)."""
    rows = await conn.fetch(
        f"SELECT {store.TXN_COLS} FROM ledger_transactions WHERE id = ANY($1::uuid[]) AND project_id = $2",  # noqa: S608
        list(transaction_ids),
        project_id,
    )
    found = await store.load_transactions(conn, list(rows))
    return {t.id: t for t in found}


async def wallet_transactions(
    ledger: LedgerService, project_id: uuid.UUID, wallet_id: uuid.UUID, *, first: int, before_seq: int | None
) -> Page:
    """Transactions touching the wallet, newest first, keyset-paginated on the wallet's entry seq."""
    pages = await wallets_transactions(ledger, project_id, [wallet_id], first=first, before_seq=before_seq)
    return pages[wallet_id]


async def wallets_transactions(
    ledger: LedgerService,
    project_id: uuid.UUID,
    wallet_ids: Sequence[uuid.UUID],
    *,
    first: int,
    before_seq: int | None,
) -> dict[uuid.UUID, Page]:
    """`wallet_transactions` of each wallet (the same page size and cursor), in two statements."""
    limit = max(0, min(first, MAX_PAGE))
    async with ledger.db.raw(project_id=project_id) as conn:
        before = 2**62 if before_seq is None else before_seq
        rows = await conn.fetch(WALLET_TRANSACTIONS, list(wallet_ids), before, limit + 1)
        by_wallet: dict[uuid.UUID, list[asyncpg.Record]] = {w: [] for w in wallet_ids}
        for row in rows:
            by_wallet[row["for_wallet"]].append(row)
        shown = [row for found in by_wallet.values() for row in found[:limit]]
        records = await store.load_transactions(conn, shown)
    items: dict[uuid.UUID, list[WalletTransaction]] = {w: [] for w in wallet_ids}
    for row, rec in zip(shown, records, strict=True):
        wallet_id, seq = row["for_wallet"], row["cursor_seq"]
        entry = next((e for e in rec.entries if e.wallet_id == wallet_id and e.seq == seq), None)
        items[wallet_id].append(WalletTransaction(seq, rec, entry))
    return {w: Page(items[w], len(by_wallet[w]) > limit) for w in wallet_ids}


async def refunded_total(ledger: LedgerService, project_id: uuid.UUID, transaction_id: uuid.UUID) -> int:
    return (await refunded_totals(ledger, project_id, [transaction_id]))[transaction_id]


async def refunded_totals(
    ledger: LedgerService, project_id: uuid.UUID, transaction_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    """How much of each transaction has been refunded so far (0 for none), in one statement."""
    async with ledger.db.raw(project_id=project_id) as conn:
        rows = await conn.fetch(
            "SELECT refund_of, coalesce(sum(amount), 0)::bigint AS total FROM ledger_transactions"
            " WHERE refund_of = ANY($1::uuid[]) GROUP BY refund_of",
            list(transaction_ids),
        )
    totals = {t: 0 for t in transaction_ids}
    totals.update({r["refund_of"]: int(r["total"]) for r in rows})
    return totals


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
