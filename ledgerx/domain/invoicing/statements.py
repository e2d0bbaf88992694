"""Wallet statements: a wallet's credits over a period, for the customer's records (credits are not
money: no tax, no number). `walletStatement{walletId, from, to}` reads it; its PDF is served at
`/wallets/<id>/statement.pdf?from=&to=` to the project's members or through the signed link.

The period is [from, to) by entry time. The opening balance sums the wallet's entries before
`from`, the closing balance those before `to`; `credits` and `debits` sum the entries in between,
so opening + credits - debits = closing (sums, not the balance after the last entry: entry times
need not follow the ledger's order exactly, see `_balance_before`).
Entries are ordered and paged by the wallet's entry sequence (the order the ledger applied them).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import LedgerEntry, LedgerTransaction, Wallet
from ledgerx.domain.errors import BadInput, NotFound

MAX_PERIOD = dt.timedelta(days=3660)
PDF_ENTRIES = 2000  # a printed statement lists at most this many entries (the API pages through all)


@dataclasses.dataclass(frozen=True, slots=True)
class StatementLine:
    seq: int
    at: dt.datetime
    transaction_id: uuid.UUID
    kind: str
    description: str
    amount: int
    balance_after: int


@dataclasses.dataclass(frozen=True, slots=True)
class Statement:
    wallet_id: uuid.UUID
    project_id: uuid.UUID
    wallet_name: str
    currency: str
    period_start: dt.datetime
    period_end: dt.datetime
    opening_balance: int
    closing_balance: int
    credits: int
    debits: int
    entry_count: int


def pdf_path(wallet_id: uuid.UUID) -> str:
    """The statement PDF's route (http/documents.py); its signed link also names the period."""
    return f"/wallets/{ids.encode('wallet', wallet_id)}/statement.pdf"


def period(start: dt.datetime, end: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    if start.tzinfo is None or end.tzinfo is None:
        raise BadInput("from and to need a time zone", field="from")
    if end <= start:
        raise BadInput("to must be after from", field="to")
    if end - start > MAX_PERIOD:
        raise BadInput("a statement covers at most ten years", field="to")
    return start.astimezone(dt.UTC), end.astimezone(dt.UTC)


async def _balance_before(s: AsyncSession, wallet_id: uuid.UUID, at: dt.datetime) -> int:
    """The sum of the wallet's entries stamped before `at`. Summed rather than read off the last
    entry's balance: entry times need not follow the wallet's sequence (the time is read before the
    wallet's lock is taken, and instances' clocks differ), and only sums keep
    opening + credits - debits = closing whatever the order."""
    found = await s.scalar(
        select(func.coalesce(func.sum(LedgerEntry.amount), 0)).where(
            LedgerEntry.wallet_id == wallet_id, LedgerEntry.created_at < at
        )
    )
    return int(found or 0)


async def summary(
    s: AsyncSession, project_id: uuid.UUID, wallet_id: uuid.UUID, start: dt.datetime, end: dt.datetime
) -> Statement:
    """The statement's figures, in `s`'s (tenant) transaction."""
    start, end = period(start, end)
    wallet = await s.get(Wallet, wallet_id)
    if wallet is None or wallet.project_id != project_id:
        raise NotFound("wallet not found", field="walletId")
    in_period = (LedgerEntry.wallet_id == wallet_id, LedgerEntry.created_at >= start, LedgerEntry.created_at < end)
    row = (
        await s.execute(
            select(
                func.coalesce(func.sum(LedgerEntry.amount).filter(LedgerEntry.amount > 0), 0),
                func.coalesce(-func.sum(LedgerEntry.amount).filter(LedgerEntry.amount < 0), 0),
                func.count(),
            ).where(*in_period)
        )
    ).one()
    return Statement(
        wallet.id,
        wallet.project_id,
        wallet.name,
        wallet.currency,
        start,
        end,
        await _balance_before(s, wallet_id, start),
        await _balance_before(s, wallet_id, end),
        int(row[0]),
        int(row[1]),
        int(row[2]),
    )


async def entries(
    s: AsyncSession,
    wallet_id: uuid.UUID,
    start: dt.datetime,
    end: dt.datetime,
    *,
    limit: int,
    after_seq: int | None = None,
) -> list[StatementLine]:
    """Up to `limit` entries of the period after the entry `after_seq`, in sequence order."""
    start, end = period(start, end)
    q = (
        select(
            LedgerEntry.seq,
            LedgerEntry.created_at,
            LedgerEntry.transaction_id,
            LedgerEntry.amount,
            LedgerEntry.balance_after,
            LedgerTransaction.kind,
            LedgerTransaction.reason,
            LedgerTransaction.reference,
        )
        .join(LedgerTransaction, LedgerTransaction.id == LedgerEntry.transaction_id)
        .where(LedgerEntry.wallet_id == wallet_id, LedgerEntry.created_at >= start, LedgerEntry.created_at < end)
        .order_by(LedgerEntry.seq)
        .limit(limit)
    )
    if after_seq is not None:
        q = q.where(LedgerEntry.seq > after_seq)
    return [
        StatementLine(
            int(r.seq),
            r.created_at,
            r.transaction_id,
            r.kind,
            describe(r.kind, r.reason, r.reference),
            int(r.amount),
            int(r.balance_after),
        )
        for r in (await s.execute(q))
    ]


def describe(kind: str, reason: str | None, reference: str | None) -> str:
    label = kind.replace("_", " ").capitalize()
    detail = (reason or reference or "").strip()
    return f"{label}: {detail}" if detail else label
