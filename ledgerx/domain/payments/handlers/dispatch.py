"""Which handler applies each Stripe event type, and the one entry point that applies an event."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ledgerx.domain.payments.handlers import charge, checkout_session, invoice, payment_intent, subscription
from ledgerx.domain.payments.handlers.event import Event, Handler, Outcome
from ledgerx.domain.payments.service import PaymentsService

HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": checkout_session.on_checkout_completed,
    "checkout.session.async_payment_succeeded": checkout_session.on_checkout_completed,
    "checkout.session.expired": checkout_session.on_checkout_unpaid,
    "checkout.session.async_payment_failed": checkout_session.on_checkout_unpaid,
    "customer.subscription.created": subscription.on_subscription,
    "customer.subscription.updated": subscription.on_subscription,
    "customer.subscription.deleted": subscription.on_subscription,
    "customer.subscription.paused": subscription.on_subscription,
    "customer.subscription.resumed": subscription.on_subscription,
    "invoice.paid": invoice.on_invoice,
    "invoice.payment_succeeded": invoice.on_invoice,
    "invoice.payment_failed": invoice.on_invoice,
    "invoice.voided": invoice.on_invoice,
    "invoice.marked_uncollectible": invoice.on_invoice,
    "payment_intent.succeeded": payment_intent.on_succeeded,
    "payment_intent.payment_failed": payment_intent.on_failed,
    "charge.refunded": charge.on_charge_refunded,
    "charge.dispute.created": charge.on_dispute,
    "charge.dispute.updated": charge.on_dispute,
    "charge.dispute.funds_withdrawn": charge.on_dispute,
    "charge.dispute.closed": charge.on_dispute,
}


def handles(event_type: str) -> bool:
    return event_type in HANDLERS


async def handle(svc: PaymentsService, payload: Mapping[str, Any]) -> Outcome:
    """Apply one Stripe event (any number of times: the effects happen once)."""
    ev = Event.of(payload)
    handler = HANDLERS.get(ev.type)
    if handler is None:
        return Outcome(f"ignored: {ev.type} is not handled", ignored=True)
    out = await handler(svc, ev)
    if out.project_id is not None:
        await svc.changes.plan_changed(out.project_id, f"stripe.{ev.type}")
    svc.publish(out.events)
    return out
