"""What a printed document shows, as plain frozen values: the PDF renderer (pdf.py) draws these and
nothing else, so a document can be rendered again, identically, from what was frozen at issue.

Amounts are integers in minor units of `currency` (CREDITS for statements); instants are aware
datetimes (printed in UTC).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal


@dataclasses.dataclass(frozen=True, slots=True)
class Party:
    """The seller or the buyer: a name, the address lines to print, tax ids (`"eu_vat DE123..."`)."""

    name: str
    address: tuple[str, ...] = ()
    tax_ids: tuple[str, ...] = ()
    email: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class DocLine:
    description: str
    quantity: int
    unit_amount: int
    amount: int  # signed: discount lines are negative
    period_start: dt.datetime | None = None
    period_end: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class DocTaxLine:
    name: str  # "VAT", "Reverse charge", …
    rate: decimal.Decimal  # a percentage: Decimal("20") is 20 %
    inclusive: bool
    amount: int


@dataclasses.dataclass(frozen=True, slots=True)
class InvoiceDocument:
    """An invoice or a credit note (`title`), as issued."""

    title: str  # "Invoice" | "Credit note"
    number: str  # LX-2026-000042 / CN-2026-000007
    issued_at: dt.datetime
    seller: Party
    buyer: Party
    currency: str
    lines: tuple[DocLine, ...]
    subtotal: int
    discount: int  # positive: what the discount lines took off
    tax: int
    total: int
    tax_lines: tuple[DocTaxLine, ...] = ()
    amount_paid: int = 0
    amount_due: int = 0
    status: str = "PAID"
    # Free lines printed under the totals: reverse charge wording, "Credit note for LX-…", refunds.
    notes: tuple[str, ...] = ()
    period_start: dt.datetime | None = None
    period_end: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class StatementEntry:
    at: dt.datetime
    description: str
    amount: int  # signed credits: positive in, negative out
    balance_after: int


@dataclasses.dataclass(frozen=True, slots=True)
class StatementDocument:
    """A wallet's credits over [period_start, period_end): no tax, credits not money."""

    seller: Party
    buyer: Party
    wallet_name: str
    wallet_id: str  # the public id (wal_…)
    period_start: dt.datetime
    period_end: dt.datetime
    generated_at: dt.datetime
    opening_balance: int
    closing_balance: int
    credits: int  # total credited in the period
    debits: int  # total debited in the period (positive)
    entries: tuple[StatementEntry, ...]
    truncated: int = 0  # entries left out of the printed page list (the API pages through all)
