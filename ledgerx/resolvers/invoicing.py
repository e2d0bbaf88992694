"""Invoices across projects, one invoice, tax rates, refunds and wallet statements.

Authorization: a project's invoices and statements go to its admins (statements: any member, as
wallets); every project's invoices, tax rates' changes and refunds to platform admins."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated

import strawberry

from ledgerx import ids
from ledgerx.domain.errors import NotFound
from ledgerx.domain.invoicing import reads, refunds, statements, tax_rates
from ledgerx.domain.ledger import policy, wallets
from ledgerx.domain.pagination import decode_cursor, encode_cursor, page_size
from ledgerx.domain.payments import reads as payment_reads
from ledgerx.domain.tenancy.access import Need
from ledgerx.domain.tenancy.authorize import Rule
from ledgerx.resolvers.guards import authorizer, project_access, require_platform_admin
from ledgerx.schema.info import Info
from ledgerx.schema.invoicing import (
    CreateTaxRateInput,
    InvoiceRefundType,
    RefundInvoiceInput,
    StatementEntryType,
    TaxRateType,
)
from ledgerx.schema.pagination import Connection, Edge, PageInfo, connection
from ledgerx.schema.payments import InvoiceStatus, InvoiceType
from ledgerx.schema.scalars import BigInt


def _seq_cursor(seq: int) -> str:
    return encode_cursor(uuid.UUID(int=seq))


def _seq_of(cursor: str | None) -> int | None:
    found = decode_cursor(cursor)
    return None if found is None else found.int


@strawberry.type(name="WalletStatement")
class WalletStatementType:
    wallet_id: strawberry.ID
    period_start: dt.datetime = strawberry.field(name="from")
    period_end: dt.datetime = strawberry.field(name="to")
    opening_balance: BigInt
    closing_balance: BigInt
    credits: BigInt = strawberry.field(description="Credited in the period.")
    debits: BigInt = strawberry.field(description="Debited in the period (a positive figure).")
    pdf_url: str | None = strawberry.field(description="A signed link to the statement's PDF; it expires.")
    project: strawberry.Private[uuid.UUID]
    wallet: strawberry.Private[uuid.UUID]

    @strawberry.field(description="The period's entries in the order the ledger applied them.")
    async def entries(
        self, info: Info, first: int | None = 50, after: str | None = None
    ) -> Connection[StatementEntryType]:
        limit = page_size(first)
        async with info.context.services.db.transaction(project_id=self.project) as s:
            rows = await statements.entries(
                s, self.wallet, self.period_start, self.period_end, limit=limit + 1, after_seq=_seq_of(after)
            )
        page = rows[:limit]
        edges = [Edge(node=StatementEntryType.of(r), cursor=_seq_cursor(r.seq)) for r in page]
        return Connection(
            edges=edges,
            page_info=PageInfo(has_next_page=len(rows) > limit, end_cursor=edges[-1].cursor if edges else None),
        )


async def _invoice_types(info: Info, rows: list, lines: dict, limit: int) -> Connection[InvoiceType]:  # type: ignore[type-arg]
    svc = info.context.services.payments
    page = rows[:limit]
    notes = await reads.credit_notes_of(svc, [r.project_id for r in page], [r.id for r in page])
    now = svc.now()
    return connection(
        rows,
        limit,
        lambda i: i.id,
        lambda i: InvoiceType.of(
            i, lines.get(i.id, []), credit_notes=notes.get(i.id, []), links=svc.documents, now=now
        ),
    )


@strawberry.type
class Query:
    @strawberry.field(
        description="Invoices newest first: a project's (project admins), or with no projectId every project's "
        "(platform admins); optionally of one status."
    )
    async def invoices(
        self,
        info: Info,
        project_id: strawberry.ID | None = None,
        status: InvoiceStatus | None = None,
        first: int | None = 20,
        after: str | None = None,
    ) -> Connection[InvoiceType]:
        svc = info.context.services.payments
        limit = page_size(first)
        if project_id is None:
            await require_platform_admin(info)
            rows, lines = await reads.list_all_invoices(
                svc, status=status.value if status else None, limit=limit, before=decode_cursor(after)
            )
        else:
            access = await project_access(info, project_id, Need.ADMIN, write=False)
            rows, lines = await payment_reads.list_invoices(
                svc,
                access.project_id,
                limit=limit,
                before=decode_cursor(after),
                status=status.value if status else None,
            )
        return await _invoice_types(info, rows, lines, limit)

    @strawberry.field(description="One invoice with its lines, taxes and credit notes (project admins).")
    async def invoice(self, info: Info, id: strawberry.ID) -> InvoiceType:
        svc = info.context.services.payments
        invoice_id = ids.decode("invoice", id, "id")
        info.context.require_principal()
        project_id = await reads.invoice_project(svc, invoice_id)
        # A missing invoice and another tenant's answer alike (no id oracle).
        access = await authorizer(info).require_for(
            project_id, Rule(Need.ADMIN, write=False), what="invoice", field="id"
        )
        found = await reads.get_invoice(svc, access.project_id, invoice_id)
        if found is None:
            raise NotFound("invoice not found", field="id")
        inv, lines, notes, _ = found
        return InvoiceType.of(inv, lines, credit_notes=notes, links=svc.documents, now=svc.now())

    @strawberry.field(description="The tax rates of TAX_MODE=rates (archived ones on request).")
    async def tax_rates(self, info: Info, include_archived: bool = False) -> list[TaxRateType]:
        info.context.require_principal()
        found = await tax_rates.list_tax_rates(info.context.services.payments, include_archived=include_archived)
        return [TaxRateType.of(r) for r in found]

    @strawberry.field(
        description="A wallet's credits over [from, to): opening and closing balances, credits, debits, "
        "the entries, and a signed link to its PDF (project members)."
    )
    async def wallet_statement(
        self,
        info: Info,
        wallet_id: strawberry.ID,
        from_: Annotated[dt.datetime, strawberry.argument(name="from", description="Start (inclusive).")],
        to: Annotated[dt.datetime, strawberry.argument(description="End (exclusive).")],
    ) -> WalletStatementType:
        info.context.require_principal()
        ref = await wallets.find_wallet(
            info.context.services.ledger,
            authorizer(info),
            ids.decode("wallet", wallet_id, "walletId"),
            policy.READ,
            field="walletId",
        )
        start, end = statements.period(from_, to)
        async with info.context.services.db.transaction(project_id=ref.project_id) as s:
            st = await statements.summary(s, ref.project_id, ref.id, start, end)
        svc = info.context.services.payments
        public = ids.encode("wallet", ref.id)
        pdf_url = (
            svc.documents.sign(
                statements.pdf_path(ref.id), svc.now(), {"from": start.isoformat(), "to": end.isoformat()}
            )
            if svc.documents is not None
            else None
        )
        return WalletStatementType(
            wallet_id=strawberry.ID(public),
            period_start=start,
            period_end=end,
            opening_balance=BigInt(st.opening_balance),
            closing_balance=BigInt(st.closing_balance),
            credits=BigInt(st.credits),
            debits=BigInt(st.debits),
            pdf_url=pdf_url,
            project=ref.project_id,
            wallet=ref.id,
        )


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Platform admins: a tax rate for a country (or a state of it).")
    async def create_tax_rate(self, info: Info, input: CreateTaxRateInput) -> TaxRateType:
        await require_platform_admin(info)
        made = await tax_rates.create_tax_rate(
            info.context.services.payments,
            info.context.actor(),
            name=input.name,
            percentage=input.percentage,
            inclusive=input.inclusive,
            country=input.country,
            state=input.state,
        )
        return TaxRateType.of(made)

    @strawberry.mutation(description="Platform admins: retire a tax rate (issued invoices keep it).")
    async def archive_tax_rate(self, info: Info, id: strawberry.ID) -> TaxRateType:
        await require_platform_admin(info)
        done = await tax_rates.archive_tax_rate(
            info.context.services.payments, info.context.actor(), ids.decode("tax_rate", id, "id")
        )
        return TaxRateType.of(done)

    @strawberry.mutation(
        description="Platform admins: refund a paid invoice through Stripe, in full or in part; the credit "
        "note is issued when Stripe confirms (charge.refunded)."
    )
    async def refund_invoice(self, info: Info, input: RefundInvoiceInput) -> InvoiceRefundType:
        await require_platform_admin(info)
        done = await refunds.refund_invoice(
            info.context.services.payments,
            info.context.actor(),
            ids.decode("invoice", input.invoice_id, "invoiceId"),
            amount=int(input.amount) if input.amount is not None else None,
            reason=input.reason,
        )
        return InvoiceRefundType.of(done)
