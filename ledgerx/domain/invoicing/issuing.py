"""Issuing an invoice: the moment money moved for it (a paid Checkout, a paid Stripe invoice, a
succeeded top-up). In the transaction that records the payment, the invoice takes its gapless
number and issue instant (numbering.py), freezes the buyer's billing details as they are, and
queues the "invoice issued" mail with a signed link to its PDF. Issuing twice is a no-op: a
replayed Stripe event finds the number and issues nothing new.

Unpaid invoices (an OPEN subscription invoice, a top-up waiting for Stripe) have no number: a
payment that never happens leaves no hole in the sequence and no document to cancel.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import BillingDetails, Invoice
from ledgerx.domain import mail
from ledgerx.domain.invoicing import numbering
from ledgerx.domain.notifications import amounts, billing_details
from ledgerx.domain.notifications.kinds import Kind as Mail
from ledgerx.domain.notifications.notify import notify
from ledgerx.domain.payments.service import PaymentsService


async def details_snapshot(s: AsyncSession, project_id: uuid.UUID) -> dict[str, object] | None:
    row = await s.get(BillingDetails, project_id, populate_existing=True)
    return None if row is None else billing_details.snapshot(billing_details.record_of(row))


def pdf_path(invoice_id: uuid.UUID) -> str:
    return f"/invoices/{ids.encode('invoice', invoice_id)}.pdf"


def credit_note_pdf_path(credit_note_id: uuid.UUID) -> str:
    return f"/credit-notes/{ids.encode('credit_note', credit_note_id)}.pdf"


def pdf_url(svc: PaymentsService, invoice_id: uuid.UUID) -> str | None:
    return None if svc.documents is None else svc.documents.sign(pdf_path(invoice_id), svc.now())


async def issue(svc: PaymentsService, s: AsyncSession, invoice: Invoice) -> bool:
    """Number and freeze `invoice` (locked by the caller) if it is not issued yet; True if this did.
    An invoice of zero (a trial's period, a pack a coupon made free) moved no money: it is never
    numbered."""
    if invoice.number is not None or invoice.total <= 0:
        return False
    invoice.billing_details = await details_snapshot(s, invoice.project_id)
    # The number last: issuers serialize on the sequence row from here to their commit.
    number, at = await numbering.take(s, numbering.DocumentKind.INVOICE, svc.settings.invoice_number_prefix)
    invoice.number, invoice.issued_at = number, at
    await s.flush()
    await notify(
        s,
        invoice.project_id,
        Mail.INVOICE_ISSUED,
        f"invoice:{invoice.id}",
        {
            "invoice_number": number,
            "amount": amounts.amount(invoice.total, invoice.currency),
            "issued_on": mail.instant(at),
            "pdf_url": pdf_url(svc, invoice.id) or "(ask the project's admins: document links are off)",
        },
    )
    return True
