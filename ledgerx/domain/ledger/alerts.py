"""Mail about a posting: a wallet that crossed below its low-balance threshold.

Called by `apply` in the batch's transaction, only for the wallets a new transaction took from at
or above their threshold to below it (`apply._chain_entries` finds them), so the common posting
pays nothing. The occurrence is (wallet, the crossing transaction): one mail per crossing, and a
retried batch mails nobody twice.
"""

from __future__ import annotations

import uuid

import asyncpg

from ledgerx.domain.ledger.types import Posted
from ledgerx.domain.notifications import amounts
from ledgerx.domain.notifications.kinds import Kind
from ledgerx.domain.notifications.notify import notify
from ledgerx.ids import encode


async def low_balance(conn: asyncpg.Connection, posted: Posted, low: list[uuid.UUID]) -> int:
    queued = 0
    for w in posted.wallets:
        if w.id not in low or w.low_balance_threshold is None:
            continue
        queued += await notify(
            conn,
            w.project_id,
            Kind.LOW_BALANCE,
            f"{w.id}:{posted.transaction.id}",
            {
                "wallet_name": w.name,
                "wallet_id": encode("wallet", w.id),
                "balance": amounts.amount(w.balance, w.currency),
                "threshold": amounts.amount(w.low_balance_threshold, w.currency),
            },
        )
    return queued
