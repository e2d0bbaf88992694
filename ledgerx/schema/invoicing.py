"""GraphQL types of tax rates, refunds and wallet statements (the invoice and credit note types are
in schema/payments.py, next to the payments they document)."""

from __future__ import annotations

import datetime as dt

import strawberry

from ledgerx import ids
from ledgerx.domain.invoicing.refunds import RefundRequested
from ledgerx.domain.invoicing.statements import StatementLine
from ledgerx.domain.invoicing.tax_rates import TaxRateRecord
from ledgerx.schema.payments import Money, money_of
from ledgerx.schema.scalars import BigInt


@strawberry.type(name="TaxRate")
class TaxRateType:
    id: strawberry.ID
    name: str
    percentage: str = strawberry.field(description='A decimal string: "20" is 20 %, "7.25" is 7.25 %.')
    inclusive: bool = strawberry.field(description="True: prices include this tax; false: it is added on top.")
    country: str
    state: str | None
    archived_at: dt.datetime | None
    created_at: dt.datetime

    @classmethod
    def of(cls, r: TaxRateRecord) -> TaxRateType:
        return cls(
            id=strawberry.ID(ids.encode("tax_rate", r.id)),
            name=r.name,
            percentage=format(r.percentage.normalize(), "f"),
            inclusive=r.inclusive,
            country=r.country,
            state=r.state,
            archived_at=r.archived_at,
            created_at=r.created_at,
        )


@strawberry.input
class CreateTaxRateInput:
    name: str = strawberry.field(description="What invoices print: VAT, GST, Sales tax …")
    percentage: str = strawberry.field(description='0 to 100, at most 4 decimals, as a decimal string ("19").')
    inclusive: bool = False
    country: str = strawberry.field(description="ISO 3166-1 alpha-2.")
    state: str | None = strawberry.field(default=None, description="A rate of the state beats the country's.")


@strawberry.input
class RefundInvoiceInput:
    invoice_id: strawberry.ID
    amount: BigInt | None = strawberry.field(default=None, description="Minor units; default: all that is left.")
    reason: str | None = None


@strawberry.type(name="InvoiceRefund")
class InvoiceRefundType:
    invoice_id: strawberry.ID
    stripe_refund_id: str
    amount: Money
    status: str = strawberry.field(
        description="Stripe's refund status; the credit note follows with Stripe's charge.refunded event."
    )

    @classmethod
    def of(cls, r: RefundRequested) -> InvoiceRefundType:
        return cls(
            invoice_id=strawberry.ID(ids.encode("invoice", r.invoice_id)),
            stripe_refund_id=r.stripe_refund_id,
            amount=money_of(r.amount, r.currency),
            status=r.status,
        )


@strawberry.type(name="StatementEntry")
class StatementEntryType:
    at: dt.datetime
    transaction_id: strawberry.ID
    kind: str
    description: str
    amount: BigInt = strawberry.field(description="Signed credits: positive in, negative out.")
    balance_after: BigInt

    @classmethod
    def of(cls, x: StatementLine) -> StatementEntryType:
        return cls(
            at=x.at,
            transaction_id=strawberry.ID(ids.encode("transaction", x.transaction_id)),
            kind=x.kind,
            description=x.description,
            amount=BigInt(x.amount),
            balance_after=BigInt(x.balance_after),
        )
