"""Documents to print, from what was frozen at issue: the invoice's or credit note's lines and
totals, the buyer's billing details as they were, the seller as this server is configured
(SELLER_*). The PDF (pdf.py, fpdf2) is rendered on a worker thread: it is CPU work that must not
stall the event loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
from collections.abc import Mapping, Sequence
from typing import Any

from ledgerx import ids
from ledgerx.domain.invoicing import pdf
from ledgerx.domain.invoicing.credit_notes import CreditNoteRecord
from ledgerx.domain.invoicing.documents import (
    DocLine,
    DocTaxLine,
    InvoiceDocument,
    Party,
    StatementDocument,
    StatementEntry,
)
from ledgerx.domain.invoicing.statements import Statement, StatementLine
from ledgerx.domain.payments.records import InvoiceLineRecord, InvoiceRecord
from ledgerx.settings import Settings


def seller(settings: Settings) -> Party:
    address = list(settings.seller_address)
    if settings.seller_country and settings.seller_country not in address:
        address.append(settings.seller_country)
    tax_ids = (f"VAT {settings.seller_tax_id}",) if settings.seller_tax_id else ()
    return Party(settings.seller_name, tuple(address), tax_ids, settings.seller_email)


def buyer(details: Mapping[str, Any] | None, project_name: str) -> Party:
    """The buyer as `billing_details.snapshot()` froze them (the project's name without a legal name)."""
    d = details or {}
    name = str(d.get("legalName") or project_name)
    addr = d.get("address") or {}
    lines: list[str] = []
    if isinstance(addr, Mapping):
        for key in ("line1", "line2"):
            if addr.get(key):
                lines.append(str(addr[key]))
        city = " ".join(str(addr[k]) for k in ("postal_code", "city") if addr.get(k))
        if city:
            lines.append(city)
        region = ", ".join(str(addr[k]) for k in ("state", "country") if addr.get(k))
        if region:
            lines.append(region)
    tax_ids = tuple(f"{t.get('type')} {t.get('value')}" for t in (d.get("taxIds") or []) if isinstance(t, Mapping))
    email = d.get("email")
    return Party(name, tuple(lines), tax_ids, str(email) if email else None)


def tax_lines(raw: Sequence[Mapping[str, Any]]) -> tuple[DocTaxLine, ...]:
    return tuple(
        DocTaxLine(
            str(t.get("name") or "Tax"),
            decimal.Decimal(str(t.get("rate") or "0")),
            bool(t.get("inclusive")),
            int(t.get("amount") or 0),
        )
        for t in raw
    )


def invoice_document(
    settings: Settings,
    inv: InvoiceRecord,
    lines: Sequence[InvoiceLineRecord],
    project_name: str,
    credit_notes: Sequence[CreditNoteRecord] = (),
) -> InvoiceDocument:
    assert inv.number is not None, "only issued invoices are printed"
    assert inv.issued_at is not None
    notes = [n for n in (inv.tax_note,) if n]
    for cn in credit_notes:
        notes.append(f"Credit note {cn.number} of {cn.issued_at.date().isoformat()}: {cn.reason}")
    return InvoiceDocument(
        title="Invoice",
        number=inv.number,
        issued_at=inv.issued_at,
        seller=seller(settings),
        buyer=buyer(inv.billing_details, project_name),
        currency=inv.currency,
        lines=tuple(
            DocLine(
                line.description,
                line.quantity,
                line.unit_amount if line.unit_amount is not None else line.amount,
                line.amount,
                line.period_start,
                line.period_end,
            )
            for line in lines
        ),
        subtotal=inv.subtotal,
        discount=inv.discount,
        tax=inv.tax,
        total=inv.total,
        tax_lines=tax_lines(inv.tax_lines),
        amount_paid=inv.amount_paid,
        amount_due=max(inv.amount_due - inv.amount_paid, 0) if inv.status != "PAID" else 0,
        status=inv.status,
        notes=tuple(notes),
        period_start=inv.period_start,
        period_end=inv.period_end,
    )


def credit_note_document(
    settings: Settings, cn: CreditNoteRecord, invoice_number: str, project_name: str
) -> InvoiceDocument:
    return InvoiceDocument(
        title="Credit note",
        number=cn.number,
        issued_at=cn.issued_at,
        seller=seller(settings),
        buyer=buyer(cn.billing_details, project_name),
        currency=cn.currency,
        lines=tuple(
            DocLine(str(x["description"]), int(x["quantity"]), int(x["unitAmount"]), int(x["amount"])) for x in cn.lines
        ),
        subtotal=cn.subtotal,
        discount=0,
        tax=cn.tax,
        total=cn.total,
        tax_lines=(DocTaxLine("Tax credited", decimal.Decimal(0), False, cn.tax),) if cn.tax else (),
        amount_paid=0,
        amount_due=0,
        status="ISSUED",
        notes=(f"Credits invoice {invoice_number}.", f"Reason: {cn.reason}"),
    )


def statement_document(
    settings: Settings,
    st: Statement,
    lines: Sequence[StatementLine],
    details: Mapping[str, Any] | None,
    project_name: str,
    now: dt.datetime,
) -> StatementDocument:
    return StatementDocument(
        seller=seller(settings),
        buyer=buyer(details, project_name),
        wallet_name=st.wallet_name,
        wallet_id=ids.encode("wallet", st.wallet_id),
        period_start=st.period_start,
        period_end=st.period_end,
        generated_at=now,
        opening_balance=st.opening_balance,
        closing_balance=st.closing_balance,
        credits=st.credits,
        debits=st.debits,
        entries=tuple(StatementEntry(x.at, x.description, x.amount, x.balance_after) for x in lines),
        truncated=max(st.entry_count - len(lines), 0),
    )


async def render_invoice(doc: InvoiceDocument) -> bytes:
    return await asyncio.to_thread(pdf.render_invoice, doc)


async def render_statement(doc: StatementDocument) -> bytes:
    return await asyncio.to_thread(pdf.render_statement, doc)
