"""The ledger's one part in auto top-up: a debit that takes a wallet with auto top-up on from at
or above its threshold to below it records that a top-up is wanted, in the batch's transaction.

`wallets.auto_top_up_below` (the threshold while auto top-up is on, else NULL) comes with the lock
`apply` takes anyway, so a posting that crosses nothing pays nothing. Stripe is never called here:
payments/top_up_intents.py claims the row and creates the PaymentIntent after this commits. The
partial unique index on the wanted/pending rows keeps one per wallet (a crossing while one is in
flight adds nothing). Only a crossing counts: once the balance is below the threshold further
debits do not cross again, so a failed top-up is not retried until something credits the wallet
back above the threshold (or its settings are saved again).
"""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg

from ledgerx.ids import uuid7

WANT = """
INSERT INTO auto_top_up_attempts (id, project_id, wallet_id, status, trigger_transaction_id, created_at)
SELECT u.id, u.project_id, u.wallet_id, 'WANTED', u.txn, $5
FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[]) AS u(id, project_id, wallet_id, txn)
ON CONFLICT (wallet_id) WHERE status IN ('WANTED', 'PENDING') DO NOTHING
"""

# (project, wallet, the crossing transaction)
Crossing = tuple[uuid.UUID, uuid.UUID, uuid.UUID]


async def wanted(conn: asyncpg.Connection, crossings: list[Crossing], now: dt.datetime) -> None:
    """Record the batch's crossings (rare: one statement, only when there are some)."""
    await conn.execute(
        WANT,
        [uuid7() for _ in crossings],
        [c[0] for c in crossings],
        [c[1] for c in crossings],
        [c[2] for c in crossings],
        now,
    )
