"""An invoice's lines and totals, from what was charged and the tax that applies.

Every money movement writes its invoice through `write`: ITEM lines with their share of the
discount and their tax, one DISCOUNT line per discount (a coupon shows as a negative line), and
the totals, which are sums of the line values (tax.py rounds per line, half-even). The invoice's
total is what the buyer pays; `amount_due` is what is left to pay of it.

TAX_MODE=stripe: Stripe Tax computed the tax at Checkout (or on the Stripe invoice); `from_stripe`
copies its figure and spreads it over the lines in proportion to their net (largest remainder),
so the lines still add up to the cent.
"""

from __future__ import annotations

import decimal
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx.db.models import Invoice, InvoiceLine
from ledgerx.domain.invoicing import tax, tax_rates
from ledgerx.domain.invoicing.tax_rates import TaxChoice
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.ids import uuid7

log = logging.getLogger("ledgerx.invoicing")

STRIPE_TAX_NAME = "Tax"


def compute(items: Sequence[tax.Item], discount: int, choice: TaxChoice) -> tax.Computation:
    """TAX_MODE none or rates: LedgerX's computation."""
    return tax.compute(items, discount=discount, rate=choice.rate, reverse_charge=choice.reverse_charge)


def from_stripe(
    items: Sequence[tax.Item],
    discount: int,
    tax_amount: int,
    *,
    inclusive: bool,
    name: str | None = None,
    percentage: decimal.Decimal | None = None,
) -> tax.Computation:
    """TAX_MODE=stripe: the lines and discount as charged, with the tax Stripe computed."""
    base = tax.compute(items, discount=discount)
    if tax_amount <= 0:
        return base
    shares = tax.allocate(tax_amount, [t.net for t in base.items])
    taxed = tuple(tax.TaxedItem(t.item, t.discount, t.net, share) for t, share in zip(base.items, shares, strict=True))
    net = base.subtotal - base.discount
    if percentage is None and net > 0:
        # Stripe did not say its rate: print the effective one (two decimals).
        shown = decimal.Decimal(tax_amount * 100) / decimal.Decimal(net - tax_amount if inclusive else net)
        percentage = shown.quantize(decimal.Decimal("0.01"), rounding=decimal.ROUND_HALF_EVEN)
    line = tax.TaxLine(name or STRIPE_TAX_NAME, percentage or decimal.Decimal(0), inclusive, tax_amount)
    total = net if inclusive else net + tax_amount
    return tax.Computation(taxed, base.subtotal, base.discount, tax_amount, total, (line,), False, None)


def rate_text(rate: decimal.Decimal) -> str:
    """A percentage as the API shows it: "19", "7.25" (no trailing zeros, no exponent)."""
    return format(rate.normalize(), "f")


def tax_lines_json(lines: Sequence[tax.TaxLine]) -> list[dict[str, Any]]:
    return [{"name": t.name, "rate": rate_text(t.rate), "inclusive": t.inclusive, "amount": t.amount} for t in lines]


async def write(
    s: AsyncSession,
    invoice: Invoice,
    comp: tax.Computation,
    *,
    choice: TaxChoice | None = None,
    discount_label: str | None = None,
    plan_id: uuid.UUID | None = None,
    proration: bool = False,
    extras: Sequence[tuple[uuid.UUID | None, bool]] | None = None,
) -> None:
    """The invoice's totals from `comp`, and its lines (the invoice row must be new: no lines yet).
    `extras` gives each item line its plan and proration flag (else `plan_id`, `proration`)."""
    invoice.subtotal = comp.subtotal
    invoice.discount = comp.discount
    invoice.tax = comp.tax
    invoice.total = comp.total
    # What the invoice comes to after its credit notes (credit_notes.py lowers it).
    invoice.amount_due = comp.total - (invoice.amount_credited or 0)
    invoice.tax_lines = tax_lines_json(comp.tax_lines)
    invoice.tax_note = comp.note or (choice.note if choice is not None else None)
    invoice.tax_rate_id = choice.rate.id if choice is not None and choice.rate is not None else None
    s.add(invoice)
    await s.flush()
    lines: list[dict[str, Any]] = []
    for i, t in enumerate(comp.items):
        line_plan, line_proration = extras[i] if extras is not None else (plan_id, proration)
        lines.append(
            {
                "kind": "ITEM",
                "description": t.item.description,
                "quantity": t.item.quantity,
                "unit_amount": t.item.unit_amount,
                "amount": t.item.amount,
                "discount": t.discount,
                "tax": t.tax,
                "period_start": t.item.period_start,
                "period_end": t.item.period_end,
                "plan_id": line_plan,
                "proration": line_proration,
            }
        )
    if comp.discount:
        label = discount_label or "Discount"
        lines.append(
            {"kind": "DISCOUNT", "description": label, "unit_amount": -comp.discount, "amount": -comp.discount}
        )
    for position, values in enumerate(lines):
        values["description"] = values["description"][:500]
        s.add(
            InvoiceLine(
                id=uuid7(),
                invoice_id=invoice.id,
                project_id=invoice.project_id,
                position=position,
                currency=invoice.currency,
                **values,
            )
        )
    await s.flush()


def item(
    description: str, amount: int, *, quantity: int = 1, period_start: Any = None, period_end: Any = None
) -> tax.Item:
    """One charged line; its unit amount is exact when the quantity divides the amount."""
    unit = amount // quantity if quantity > 0 and amount % quantity == 0 else amount
    return tax.Item(description, max(quantity, 1), unit, amount, period_start, period_end)


async def charged(
    svc: PaymentsService,
    s: AsyncSession,
    project_id: uuid.UUID,
    items: Sequence[tax.Item],
    discount: int,
    *,
    charged_total: int | None,
    stripe_tax: int = 0,
    stripe_tax_inclusive: bool = False,
    stripe_tax_name: str | None = None,
    stripe_tax_rate: decimal.Decimal | None = None,
    tax_ref: str | None = None,
) -> tuple[tax.Computation, TaxChoice]:
    """The computation of a charge Stripe made (`charged_total`, with `stripe_tax` when Stripe
    computed a tax), under the TAX_MODE: stripe copies Stripe's tax; rates and none compute ours
    with the tax the buyer was charged (`tax_ref`, else the project's choice now).

    Stripe charged the same rate LedgerX prints (tax_rates.py mirrors it), so the figures agree;
    should Stripe's rounding of a tie ever differ from ours by a minor unit, the invoice states what
    was charged (the exclusive tax becomes the charge minus the net) and the difference is logged."""
    if svc.settings.tax_mode == "stripe":
        comp = from_stripe(
            items,
            discount,
            stripe_tax,
            inclusive=stripe_tax_inclusive,
            name=stripe_tax_name,
            percentage=stripe_tax_rate,
        )
        return comp, TaxChoice("stripe")
    choice = await tax_rates.choice_of(svc, s, project_id, tax_ref)
    comp = compute(items, discount, choice)
    if charged_total is not None and comp.total != charged_total:
        net = comp.subtotal - comp.discount
        log.warning(
            "invoice of project %s: computed total %s, Stripe charged %s; the invoice states the charge",
            project_id,
            comp.total,
            charged_total,
        )
        if choice.rate is not None and not choice.rate.inclusive and charged_total >= net:
            adjusted = from_stripe(
                items,
                discount,
                charged_total - net,
                inclusive=False,
                name=choice.rate.name,
                percentage=choice.rate.percentage,
            )
            return adjusted, choice
    return comp, choice
