"""`refundInvoice`: give money back through Stripe. LedgerX checks the amount against what is left
to refund (the payment's amount less its refunds, and the invoice's total less its credit notes)
and asks Stripe for the refund; the `charge.refunded` event that follows reverses the credits
(handlers/charge.py) and issues the credit note (credit_notes.py), once per refund however often
it is delivered.

The Stripe idempotency key names the invoice, the amount and what was credited so far: a retry
after a lost answer, or a second click before the first refund is recorded, returns the same
refund instead of refunding twice.
"""

from __future__ import annotations

import dataclasses
import uuid

from sqlalchemy import select

from ledgerx import ids
from ledgerx.db.models import Invoice, Payment
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput, Conflict, NotFound
from ledgerx.domain.payments.service import PaymentsService

META_REASON = "ledgerx_reason"
MAX_REASON = 500


@dataclasses.dataclass(frozen=True, slots=True)
class RefundRequested:
    invoice_id: uuid.UUID
    stripe_refund_id: str
    amount: int
    currency: str
    status: str  # Stripe's: pending | succeeded | failed | …


async def refund_invoice(
    svc: PaymentsService, actor: Actor, invoice_id: uuid.UUID, *, amount: int | None, reason: str | None
) -> RefundRequested:
    text = (reason or "").strip() or "Refund"
    if len(text) > MAX_REASON or any(ord(c) < 32 for c in text):
        raise BadInput(f"reason is at most {MAX_REASON} characters on one line", field="reason")
    if amount is not None and (isinstance(amount, bool) or amount <= 0):
        raise BadInput("amount must be a positive integer in minor units", field="amount")
    stripe = svc.require_stripe()
    async with svc.db.transaction(system=True) as s:
        inv = await s.get(Invoice, invoice_id)
        if inv is None:
            raise NotFound("invoice not found", field="invoiceId")
        if inv.status != "PAID" or inv.number is None:
            raise Conflict("only a paid, issued invoice can be refunded", field="invoiceId")
        payment = (
            await s.execute(select(Payment).where(Payment.invoice_id == inv.id).order_by(Payment.id).limit(1))
        ).scalar()
        paid = payment.amount - payment.amount_refunded if payment is not None else inv.amount_paid
        left = max(min(paid, inv.total - inv.amount_credited), 0)
        intent = (payment.stripe_payment_intent_id if payment else None) or inv.stripe_payment_intent_id
        charge = (payment.stripe_charge_id if payment else None) or inv.stripe_charge_id
        credited, currency, project_id = inv.amount_credited, inv.currency, inv.project_id
    if left <= 0:
        raise BadInput("nothing is left to refund on this invoice", field="amount")
    money = left if amount is None else amount
    if money > left:
        raise BadInput(f"at most {left} is left to refund on this invoice", field="amount", left=str(left))
    if intent is None and charge is None:
        raise Conflict("this invoice's payment is not known to Stripe", field="invoiceId")
    public = ids.encode("invoice", invoice_id)
    params: dict[str, object] = {
        "amount": money,
        "metadata": {"ledgerx_invoice_id": public, META_REASON: text},
    }
    params["payment_intent" if intent is not None else "charge"] = intent or charge
    made = await stripe.create_refund(params, f"ledgerx:refund:{invoice_id}:{money}:{credited}")
    async with svc.db.transaction(system=True) as s:
        await audit.record(
            s,
            actor,
            "invoice.refund",
            project_id=project_id,
            target_type="invoice",
            target_id=public,
            after={"amount": str(money), "reason": text, "stripeRefundId": str(made.get("id"))},
        )
    return RefundRequested(invoice_id, str(made["id"]), money, currency, str(made.get("status") or "pending"))
