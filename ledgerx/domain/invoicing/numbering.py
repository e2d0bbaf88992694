"""Gapless document numbers: `<prefix><year>-<000042>` for invoices, `<prefix>CN-<year>-<000007>`
for credit notes, one sequence per kind and calendar year (UTC).

A number is taken inside the transaction that issues the document, by an upsert that increments
`document_sequences`' row of the kind and year and holds that row's lock until the transaction
ends. So concurrent issuers, on any number of instances, take numbers one after another in commit
order; a transaction that rolls back gives its increment back with everything else it wrote, so
no number is skipped; and no two documents share one (the row lock, and the UNIQUE columns behind
it). The price is that issuers of one kind serialize from the take to their commit, so callers
take the number after everything slow (ledger postings, Stripe calls, other transactions): what
follows it is only the rows that must carry the number (the invoice-issued mail, the webhook
events, the audit row). bench/invoices.py measures the rate: 0.67x of the same transaction
without a number under 16 concurrent issuers on this 2-core machine. Every issuer locks its wallet
(ledger posting) before the number, never after, so the two locks cannot deadlock.

The issue instant is the database's clock when the lock was granted, so numbers and `issuedAt`
ascend together across instances.
"""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


class DocumentKind(enum.StrEnum):
    INVOICE = "INVOICE"
    CREDIT_NOTE = "CREDIT_NOTE"


_TAKE = text(
    """
    INSERT INTO document_sequences AS d (kind, year, last_value)
    VALUES (:kind, extract(year FROM clock_timestamp() AT TIME ZONE 'UTC')::int, 1)
    ON CONFLICT (kind, year) DO UPDATE SET last_value = d.last_value + 1
    RETURNING d.year, d.last_value,
              -- An issuer that waited for the lock across New Year's midnight keeps its number's year.
              least(clock_timestamp(), make_timestamptz(d.year, 12, 31, 23, 59, 59.999999, 'UTC')) AS at
    """
)


def format_number(prefix: str, kind: DocumentKind, year: int, value: int) -> str:
    # Six digits keep numbers sortable as text for the first million a year; more digits, not a wrap.
    middle = "CN-" if kind is DocumentKind.CREDIT_NOTE else ""
    return f"{prefix}{middle}{year}-{value:06d}"


async def take(s: AsyncSession, kind: DocumentKind, prefix: str) -> tuple[str, dt.datetime]:
    """The next number of `kind` and the issue instant, in `s`'s transaction (see the module doc)."""
    row = (await s.execute(_TAKE, {"kind": kind.value})).one()
    return format_number(prefix, kind, int(row.year), int(row.last_value)), row.at
