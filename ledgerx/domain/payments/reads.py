"""Reads of a project's invoices (with their lines) and payments, newest first."""

from __future__ import annotations

import uuid

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx.db.models import Invoice, InvoiceLine, Payment
from ledgerx.domain.payments import records
from ledgerx.domain.payments.records import InvoiceLineRecord, InvoiceRecord, PaymentRecord
from ledgerx.domain.payments.service import PaymentsService


async def invoices_with_lines(
    s: AsyncSession, q: Select[Invoice]
) -> tuple[list[InvoiceRecord], dict[uuid.UUID, list[InvoiceLineRecord]]]:
    """The invoices `q` selects and their lines (one statement for all the lines)."""
    invoices = [records.of(InvoiceRecord, i) for i in (await s.execute(q)).scalars()]
    lines: dict[uuid.UUID, list[InvoiceLineRecord]] = {i.id: [] for i in invoices}
    if invoices:
        rows = await s.execute(
            select(InvoiceLine)
            .where(InvoiceLine.invoice_id.in_(list(lines)))
            .order_by(InvoiceLine.invoice_id, InvoiceLine.position)
        )
        for line in rows.scalars():
            lines[line.invoice_id].append(records.of(InvoiceLineRecord, line))
    return invoices, lines


def newest_first(limit: int, before: uuid.UUID | None, status: str | None) -> Select[Invoice]:
    """A page of invoices, newest first: up to `limit + 1` (the extra one only tells that more exist)."""
    q = select(Invoice).order_by(Invoice.id.desc()).limit(limit + 1)
    if before is not None:
        q = q.where(Invoice.id < before)
    if status is not None:
        q = q.where(Invoice.status == status)
    return q


async def list_invoices(
    svc: PaymentsService, project_id: uuid.UUID, *, limit: int, before: uuid.UUID | None, status: str | None = None
) -> tuple[list[InvoiceRecord], dict[uuid.UUID, list[InvoiceLineRecord]]]:
    """A page of the project's invoices and their lines."""
    async with svc.db.transaction(project_id=project_id) as s:
        return await invoices_with_lines(s, newest_first(limit, before, status).where(Invoice.project_id == project_id))


async def lines_of(svc: PaymentsService, project_id: uuid.UUID, invoice_id: uuid.UUID) -> list[InvoiceLineRecord]:
    async with svc.db.transaction(project_id=project_id) as s:
        q = select(InvoiceLine).where(InvoiceLine.invoice_id == invoice_id).order_by(InvoiceLine.position)
        return [records.of(InvoiceLineRecord, line) for line in (await s.execute(q)).scalars()]


async def list_payments(
    svc: PaymentsService, project_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> list[PaymentRecord]:
    async with svc.db.transaction(project_id=project_id) as s:
        q = select(Payment).where(Payment.project_id == project_id).order_by(Payment.id.desc()).limit(limit + 1)
        if before is not None:
            q = q.where(Payment.id < before)
        return [records.of(PaymentRecord, p) for p in (await s.execute(q)).scalars()]
