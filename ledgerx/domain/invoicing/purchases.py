"""The invoices of money Stripe moved outside a Stripe invoice: a credit pack bought through
Checkout. (Subscription periods and prorations have a Stripe invoice: payments/handlers/invoice.py
and plan_changes.py write theirs; auto top-ups: payments/top_up_intents.py.)"""

from __future__ import annotations

import decimal

from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx.db.models import Coupon, Invoice, Payment
from ledgerx.domain.invoicing import composing, issuing
from ledgerx.domain.payments import objects, webhook_events
from ledgerx.domain.payments.objects import Obj
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.ids import uuid7


async def discount_label(s: AsyncSession, coupon_id: object) -> str | None:
    if coupon_id is None:
        return None
    coupon = await s.get(Coupon, coupon_id)
    return None if coupon is None else f"Coupon {coupon.code}: {coupon.name}"


def stripe_tax(obj: Obj) -> tuple[int, bool, str | None, decimal.Decimal | None]:
    """The tax Stripe computed on a Checkout session: amount, inclusive, its name and rate if said."""
    details = objects.obj(obj.get("total_details"))
    amount = objects.integer(details.get("amount_tax"))
    taxes = objects.obj(details.get("breakdown")).get("taxes") or []
    inclusive, name, pct = False, None, None
    for t in taxes[:1]:
        rate = objects.obj(objects.obj(t).get("rate"))
        inclusive = bool(rate.get("inclusive"))
        name = str(rate.get("display_name") or "") or None
        try:
            pct = decimal.Decimal(str(rate.get("percentage"))) if rate.get("percentage") is not None else None
        except decimal.InvalidOperation:
            pct = None
    return amount, inclusive, name, pct


async def pack_invoice(
    svc: PaymentsService, s: AsyncSession, payment: Payment, session: Obj, *, pack_name: str
) -> Invoice:
    """The PAID, issued invoice of a credit pack bought through Checkout (the caller inserted the
    Payment in this transaction, so this runs once per purchase)."""
    meta = objects.metadata(session)
    subtotal = objects.integer(session.get("amount_subtotal"), payment.amount + payment.discount)
    charged = objects.integer(session.get("amount_total"), payment.amount)
    tax_amount, inclusive, tax_name, tax_rate = stripe_tax(session)
    items = [composing.item(f"{pack_name} ({payment.credits:,} credits)", subtotal)]
    comp, choice = await composing.charged(
        svc,
        s,
        payment.project_id,
        items,
        payment.discount,
        charged_total=charged,
        stripe_tax=tax_amount,
        stripe_tax_inclusive=inclusive,
        stripe_tax_name=tax_name,
        stripe_tax_rate=tax_rate,
        tax_ref=meta.get(objects.META_TAX),
    )
    invoice = Invoice(
        id=uuid7(),
        project_id=payment.project_id,
        kind="CREDIT_PACK",
        billing_reason="credit_pack",
        status="PAID",
        currency=payment.currency,
        amount_paid=charged,
        paid_at=svc.now(),
        credits=payment.credits,
        grant_transaction_id=payment.transaction_id,
        stripe_charge_id=payment.stripe_charge_id,
        stripe_payment_intent_id=payment.stripe_payment_intent_id,
        coupon_id=payment.coupon_id,
    )
    await composing.write(s, invoice, comp, choice=choice, discount_label=await discount_label(s, payment.coupon_id))
    payment.invoice_id = invoice.id
    await issuing.issue(svc, s, invoice)
    await webhook_events.invoice(s, invoice, ["invoice.created", "invoice.paid"])
    return invoice
