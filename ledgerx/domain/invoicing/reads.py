"""Reads of invoices and credit notes: one invoice (for its PDF and `invoice(id)`), the credit notes
of invoices, every project's invoices for platform admins, and the accountant's CSV export."""

from __future__ import annotations

import csv
import datetime as dt
import io
import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import CreditNote, Invoice, Project
from ledgerx.domain.invoicing.credit_notes import CreditNoteRecord, record
from ledgerx.domain.payments import reads as payment_reads
from ledgerx.domain.payments.records import InvoiceLineRecord, InvoiceRecord
from ledgerx.domain.payments.service import PaymentsService

MAX_EXPORT = dt.timedelta(days=370)


async def invoice_project(svc: PaymentsService, invoice_id: uuid.UUID) -> uuid.UUID | None:
    """Whose invoice it is (the system path: the caller checks access before reading it)."""
    async with svc.db.transaction(system=True) as s:
        return await s.scalar(select(Invoice.project_id).where(Invoice.id == invoice_id))


async def credit_note_project(svc: PaymentsService, note_id: uuid.UUID) -> uuid.UUID | None:
    async with svc.db.transaction(system=True) as s:
        return await s.scalar(select(CreditNote.project_id).where(CreditNote.id == note_id))


async def project_name(s: AsyncSession, project_id: uuid.UUID) -> str:
    return str(await s.scalar(select(Project.name).where(Project.id == project_id)) or "")


async def get_invoice(
    svc: PaymentsService, project_id: uuid.UUID, invoice_id: uuid.UUID
) -> tuple[InvoiceRecord, list[InvoiceLineRecord], list[CreditNoteRecord], str] | None:
    """The invoice, its lines, its credit notes and the project's name, in the project's transaction."""
    async with svc.db.transaction(project_id=project_id) as s:
        found, lines_of = await payment_reads.invoices_with_lines(
            s, select(Invoice).where(Invoice.id == invoice_id, Invoice.project_id == project_id)
        )
        if not found:
            return None
        inv, lines = found[0], lines_of[invoice_id]
        notes = [
            record(n)
            for n in (
                await s.execute(
                    select(CreditNote).where(CreditNote.invoice_id == invoice_id).order_by(CreditNote.issued_at)
                )
            ).scalars()
        ]
        name = await project_name(s, project_id)
    return inv, lines, notes, name


async def get_credit_note(
    svc: PaymentsService, project_id: uuid.UUID, note_id: uuid.UUID
) -> tuple[CreditNoteRecord, str, str] | None:
    """The credit note, its invoice's number and the project's name."""
    async with svc.db.transaction(project_id=project_id) as s:
        row = await s.get(CreditNote, note_id)
        if row is None or row.project_id != project_id:
            return None
        number = await s.scalar(select(Invoice.number).where(Invoice.id == row.invoice_id))
        return record(row), str(number or ""), await project_name(s, project_id)


async def credit_notes_of(
    svc: PaymentsService, project_ids: Sequence[uuid.UUID], invoice_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[CreditNoteRecord]]:
    found: dict[uuid.UUID, list[CreditNoteRecord]] = {i: [] for i in invoice_ids}
    if not invoice_ids:
        return found
    async with svc.db.transaction(project_ids=list(set(project_ids))) as s:
        rows = await s.execute(
            select(CreditNote).where(CreditNote.invoice_id.in_(list(invoice_ids))).order_by(CreditNote.issued_at)
        )
        for n in rows.scalars():
            found[n.invoice_id].append(record(n))
    return found


async def list_all_invoices(
    svc: PaymentsService, *, status: str | None, limit: int, before: uuid.UUID | None
) -> tuple[list[InvoiceRecord], dict[uuid.UUID, list[InvoiceLineRecord]]]:
    """Platform admins: a page of every project's invoices, newest first, optionally of one status."""
    async with svc.db.transaction(system=True) as s:
        return await payment_reads.invoices_with_lines(s, payment_reads.newest_first(limit, before, status))


CSV_COLUMNS = (
    "document",
    "number",
    "issued_at",
    "project_id",
    "buyer",
    "buyer_country",
    "buyer_tax_ids",
    "currency",
    "subtotal",
    "discount",
    "tax",
    "total",
    "tax_note",
    "invoice_number",
    "invoice_id",
)


def _cell(value: object) -> str:
    """A spreadsheet cell that cannot run as a formula (CSV injection: =, +, -, @ lead a formula)."""
    text = "" if value is None else str(value)
    if text and text[0] in "=+-@\t\r" and not text.lstrip("-").isdigit():
        return "'" + text
    return text


def _csv_row(
    document: str,
    row: Invoice | CreditNote,
    project_name: str,
    amounts: tuple[int, int, int, int],
    note: str | None,
    invoice_number: str | None,
    invoice_id: uuid.UUID,
) -> list[str]:
    """One document's row (CSV_COLUMNS): the buyer as frozen on it, `amounts` signed as booked."""
    d = row.billing_details or {}
    addr = d.get("address") or {}
    return [
        _cell(x)
        for x in (
            document,
            row.number,
            row.issued_at.isoformat() if row.issued_at else None,
            ids.encode("project", row.project_id),
            d.get("legalName") or project_name,
            addr.get("country") if isinstance(addr, dict) else None,
            " ".join(f"{t.get('type')}:{t.get('value')}" for t in d.get("taxIds") or []),
            row.currency,
            *amounts,
            note,
            invoice_number,
            ids.encode("invoice", invoice_id),
        )
    ]


async def export_csv(svc: PaymentsService, start: dt.datetime, end: dt.datetime) -> str:
    """Issued invoices and credit notes of [start, end), in number order (credit notes signed
    negative), one row each, for the accountant. Amounts are minor units."""
    async with svc.db.transaction(system=True) as s:
        invs = (
            await s.execute(
                select(Invoice, Project.name)
                .join(Project, Project.id == Invoice.project_id)
                .where(Invoice.issued_at >= start, Invoice.issued_at < end)
                .order_by(Invoice.issued_at, Invoice.number)
            )
        ).all()
        notes = (
            await s.execute(
                select(CreditNote, Invoice.number, Project.name)
                .join(Invoice, Invoice.id == CreditNote.invoice_id)
                .join(Project, Project.id == CreditNote.project_id)
                .where(CreditNote.issued_at >= start, CreditNote.issued_at < end)
                .order_by(CreditNote.issued_at, CreditNote.number)
            )
        ).all()
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for inv, project_name in invs:
        amounts = (inv.subtotal, inv.discount, inv.tax, inv.total)
        w.writerow(_csv_row("INVOICE", inv, project_name, amounts, inv.tax_note, inv.number, inv.id))
    for cn, invoice_number, project_name in notes:
        amounts = (-cn.subtotal, 0, -cn.tax, -cn.total)
        w.writerow(_csv_row("CREDIT_NOTE", cn, project_name, amounts, cn.reason, invoice_number, cn.invoice_id))
    return out.getvalue()
