"""Reads of a project's invoices (with their lines) and payments, newest first."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from ledgerx.db.models import Invoice, InvoiceLine, Payment
from ledgerx.domain.payments import records
from ledgerx.domain.payments.records import InvoiceLineRecord, InvoiceRecord, PaymentRecord
from ledgerx.domain.payments.service import PaymentsService


async def list_invoices(
    svc: PaymentsService, project_id: uuid.UUID, *, limit: int, before: uuid.UUID | None, status: str | None = None
) -> tuple[list[InvoiceRecord], dict[uuid.UUID, list[InvoiceLineRecord]]]:
    """Up to `limit + 1` invoices (the extra one only tells that more exist) and their lines."""
    async with svc.db.transaction(project_id=project_id) as s:
        q = select(Invoice).where(Invoice.project_id == project_id).order_by(Invoice.id.desc()).limit(limit + 1)
        if status is not None:
            q = q.where(Invoice.status == status)
        if before is not None:
            q = q.where(Invoice.id < before)
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
