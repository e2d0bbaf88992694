"""Credit notes: the document of money given back. Every Stripe refund of an issued invoice's
payment (full or partial, refunded by `refundInvoice` or in Stripe's dashboard) issues one credit
note, in the transaction that records the refund, with its own gapless sequence
(`<prefix>CN-<year>-<000007>`). It credits the refund's share of the invoice's tax, rounded half-even;
the last credit note of an invoice takes whatever tax is left, so an invoice refunded in full is
credited its whole tax, to the cent. The invoice's `amount_credited` adds the note's total and its
`amount_due` drops by it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import CreditNote, Invoice
from ledgerx.domain import records
from ledgerx.domain.invoicing import issuing, numbering, tax
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.ids import uuid7

MAX_REASON = 500


@dataclasses.dataclass(frozen=True, slots=True)
class CreditNoteRecord:
    id: uuid.UUID
    project_id: uuid.UUID
    invoice_id: uuid.UUID
    number: str
    currency: str
    subtotal: int
    tax: int
    total: int
    lines: list[dict[str, Any]]
    reason: str
    stripe_refund_id: str | None
    billing_details: dict[str, Any] | None
    issued_at: dt.datetime


def record(row: CreditNote) -> CreditNoteRecord:
    return records.of(CreditNoteRecord, row, lines=list(row.lines))


def tax_share(amount: int, *, left: int, invoice_total: int, invoice_tax: int, tax_left: int) -> int:
    """The tax credited by a refund of `amount` when `left` of the invoice is not credited yet."""
    if amount >= left:
        # The last refund takes the tax left, never more than its own amount (many small refunds
        # may each have credited 0 tax; the note's subtotal must stay >= 0).
        return max(0, min(tax_left, amount))
    if invoice_total <= 0:
        return 0
    return max(0, min(tax.round_half_even(amount * invoice_tax, invoice_total), tax_left))


async def for_refund(
    svc: PaymentsService,
    s: AsyncSession,
    invoice_id: uuid.UUID | None,
    *,
    refund_id: str,
    amount: int,
    reason: str,
) -> CreditNote | None:
    """The credit note of a Stripe refund of `amount` (once per refund id: the caller records each
    refund once), or None when the invoice was never issued or is fully credited already."""
    if invoice_id is None or amount <= 0:
        return None
    inv = await s.get(Invoice, invoice_id, with_for_update=True, populate_existing=True)
    if inv is None or inv.number is None:
        return None
    left = inv.total - inv.amount_credited
    money = min(amount, left)
    if money <= 0:
        return None
    credited_tax = int(
        await s.scalar(select(func.coalesce(func.sum(CreditNote.tax), 0)).where(CreditNote.invoice_id == inv.id)) or 0
    )
    tax_part = tax_share(
        money, left=left, invoice_total=inv.total, invoice_tax=inv.tax, tax_left=inv.tax - credited_tax
    )
    subtotal = money - tax_part
    lines = [
        {
            "description": f"Refund of invoice {inv.number}",
            "quantity": 1,
            "unitAmount": subtotal,
            "amount": subtotal,
        }
    ]
    inv.amount_credited += money
    inv.amount_due = inv.total - inv.amount_credited
    inv.updated_at = func.now()
    details = await issuing.details_snapshot(s, inv.project_id)
    number, at = await numbering.take(s, numbering.DocumentKind.CREDIT_NOTE, svc.settings.invoice_number_prefix)
    note = CreditNote(
        id=uuid7(),
        project_id=inv.project_id,
        invoice_id=inv.id,
        number=number,
        currency=inv.currency,
        subtotal=subtotal,
        tax=tax_part,
        total=money,
        lines=lines,
        reason=(reason or "Refund")[:MAX_REASON],
        stripe_refund_id=refund_id,
        billing_details=details,
        issued_at=at,
    )
    s.add(note)
    await s.flush()
    return note


def public_id(note_id: uuid.UUID) -> str:
    return ids.encode("credit_note", note_id)
