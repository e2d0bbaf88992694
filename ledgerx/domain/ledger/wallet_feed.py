"""A wallet's stream (`walletUpdated`): every transaction that changed the wallet, once each, in
order, from a cursor on, whatever the event bus lost.

Order is the wallet's entry `seq`. Entries get a contiguous seq under the wallet's row lock, so
entry n+1 commits after entry n: any snapshot that sees n+1 sees n, the database can replay the
order, and a hole in it is a lost message. The stream subscribes to the wallet's topic first
(gap-aware, events.GAP), then replays from the database what follows the cursor, then goes live:

- a live message with seq == last + 1 is delivered as it is (no database work: the fast path);
- seq <= last is a duplicate (the message of a transaction the replay already gave): dropped;
- seq > last + 1, a message without a seq, or GAP (a Redis reconnect, an overflowing queue): the
  entries after `last` are read from the database, in order, a page at a time, before going on;
- nothing for IDLE_RECHECK_S: the wallet's head seq is read, and what follows `last` filled (a
  publisher that could not reach Redis leaves no hole for the next message to show).

A replayed update shows the wallet as it is now with the balance right after the transaction,
and `lowBalance` against today's threshold (the wallet's other fields keep no history).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from ledgerx.domain import events, topics
from ledgerx.domain.errors import BadInput
from ledgerx.domain.ledger import codec, store
from ledgerx.domain.ledger.service import LedgerService
from ledgerx.domain.ledger.types import WalletRecord, WalletUpdateRecord

PAGE = 200
IDLE_RECHECK_S = 30.0

_TXN_COLS_T = ", ".join(f"t.{c.strip()}" for c in store.TXN_COLS.split(","))

# The wallet's transactions after an entry seq, in seq order (the (wallet_id, seq) unique index).
_AFTER = (
    "SELECT e.seq AS cursor_seq, e.balance_before AS cursor_before, e.balance_after AS cursor_after,"  # noqa: S608
    f" e.created_at AS cursor_at, {_TXN_COLS_T}"
    " FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id"
    " WHERE e.wallet_id = $1 AND e.project_id = $2 AND e.seq > $3 ORDER BY e.seq LIMIT $4"
)
_SEQ_OF = "SELECT seq FROM ledger_entries WHERE transaction_id = $1 AND wallet_id = $2 AND project_id = $3"
_HEAD = "SELECT entry_seq FROM wallets WHERE id = $1 AND project_id = $2"
_WALLET = f"SELECT {store.WALLET_COLS} FROM wallets WHERE id = $1 AND project_id = $2"  # noqa: S608


async def cursor_seq(ledger: LedgerService, project_id: uuid.UUID, wallet_id: uuid.UUID, txn_id: uuid.UUID) -> int:
    """The wallet's seq in transaction `txn_id` (a client's `after`). A transaction that does not
    exist, is another project's (RLS hides it) or did not touch the wallet is one same answer."""
    async with ledger.db.raw(project_id=project_id) as conn:
        seq = await conn.fetchval(_SEQ_OF, txn_id, wallet_id, project_id)
    if not isinstance(seq, int):
        raise BadInput("after is not a transaction of this wallet", field="after")
    return seq


async def updates_after(
    ledger: LedgerService, project_id: uuid.UUID, wallet_id: uuid.UUID, after_seq: int, limit: int = PAGE
) -> list[WalletUpdateRecord]:
    """Up to `limit` updates with seq > `after_seq`, in order (three statements, one transaction)."""
    async with ledger.db.raw(project_id=project_id) as conn:
        rows = await conn.fetch(_AFTER, wallet_id, project_id, after_seq, limit)
        if not rows:
            return []
        wallet_row = await conn.fetchrow(_WALLET, wallet_id, project_id)
        txns = await store.load_transactions(conn, list(rows))
    assert wallet_row is not None  # it has entries; wallets are never deleted
    now = store.wallet_from_row(wallet_row)
    return [_replayed(now, row, txn) for row, txn in zip(rows, txns, strict=True)]


def _replayed(now: WalletRecord, row: Mapping[str, Any], txn: Any) -> WalletUpdateRecord:
    before, after = row["cursor_before"], row["cursor_after"]
    threshold = now.low_balance_threshold
    wallet = WalletRecord(
        id=now.id,
        project_id=now.project_id,
        name=now.name,
        owner_user_id=now.owner_user_id,
        currency=now.currency,
        balance=after,
        credit_limit=now.credit_limit,
        low_balance_threshold=threshold,
        created_at=now.created_at,
        updated_at=row["cursor_at"],
    )
    low = threshold is not None and before >= threshold > after
    return WalletUpdateRecord(row["cursor_seq"], wallet, txn, low)


def from_event(event: events.Event) -> WalletUpdateRecord | None:
    """A live `ledger.wallet_updated` event as an update; None when it carries no seq."""
    seq = event.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        return None
    return WalletUpdateRecord(
        seq,
        codec.wallet_from_json(event["wallet"]),
        codec.txn_from_json(event["transaction"]),
        bool(event.get("lowBalance")),
    )


async def head_seq(ledger: LedgerService, project_id: uuid.UUID, wallet_id: uuid.UUID) -> int:
    """The seq of the wallet's latest committed entry (0: none yet)."""
    async with ledger.db.raw(project_id=project_id) as conn:
        seq = await conn.fetchval(_HEAD, wallet_id, project_id)
    return int(seq or 0)


async def wallet_updates(
    ledger: LedgerService, project_id: uuid.UUID, wallet_id: uuid.UUID, after_seq: int | None
) -> AsyncIterator[WalletUpdateRecord]:
    """The wallet's updates after `after_seq` (None: from now on), each once, in seq order, for as
    long as the caller iterates. The caller authorized the wallet (and keeps re-checking)."""
    async with ledger.bus.subscribe(topics.wallet(wallet_id), gaps=True) as live:
        # Subscribed before reading where to start: whatever commits from here on is either in
        # the replay or comes live (or both: the seq check drops the second).
        last = after_seq if after_seq is not None else await head_seq(ledger, project_id, wallet_id)
        fill = after_seq is not None
        while True:
            while fill:
                page = await updates_after(ledger, project_id, wallet_id, last)
                for replayed in page:
                    yield replayed
                    last = replayed.seq
                fill = len(page) == PAGE
            try:
                event = await asyncio.wait_for(anext(live, None), IDLE_RECHECK_S)
            except TimeoutError:
                # Quiet for long: a publisher that could not reach Redis leaves no hole to see
                # until the next message, so look at the wallet's head (one index lookup).
                fill = await head_seq(ledger, project_id, wallet_id) > last
                continue
            if event is None:  # the bus closed
                return
            update = None if event is events.GAP else from_event(event)
            if update is None or update.seq > last + 1:
                fill = True  # something may be missing before it: the database has it
            elif update.seq == last + 1:
                yield update
                last = update.seq
