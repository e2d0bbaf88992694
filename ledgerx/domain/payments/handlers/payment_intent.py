"""`payment_intent.*`: the outcome of an auto top-up's PaymentIntent, and the payment method a
Checkout saved for off-session use.

- `payment_intent.succeeded` of an auto top-up (our metadata names the attempt): the pack's credits
  as one PAID grant keyed by the intent (a replay credits nothing more), the TOP_UP invoice PAID,
  a Payment; `invoice.paid` and `payment.succeeded` once (top_up_intents.succeeded).
- `payment_intent.succeeded` of any other intent of a LedgerX customer with
  `setup_future_usage=off_session` (a credit-pack Checkout): its payment method becomes the
  project's saved one (the latest wins).
- `payment_intent.payment_failed` of an auto top-up: FAILED, `invoice.payment_failed`, a mail, once.
"""

from __future__ import annotations

from sqlalchemy import update

from ledgerx import ids
from ledgerx.db.models import PaymentCustomer
from ledgerx.domain.payments import grants, objects, top_up_intents
from ledgerx.domain.payments.handlers.event import Event, Outcome
from ledgerx.domain.payments.handlers.lookups import audit_event, project_for
from ledgerx.domain.payments.service import PaymentsService


async def on_succeeded(svc: PaymentsService, ev: Event) -> Outcome:
    intent = ev.obj
    if top_up_intents.META_ATTEMPT in objects.metadata(intent):
        return await _top_up_paid(svc, ev)
    return await _save_payment_method(svc, ev)


async def on_failed(svc: PaymentsService, ev: Event) -> Outcome:
    async with svc.db.transaction(system=True) as s:
        a = await top_up_intents.attempt_of(s, ev.obj)
        if a is None:
            return Outcome("ignored: not an auto top-up", ignored=True)
        recorded = await top_up_intents.failed(svc, s, a, ev.obj, ev.actor)
    if not recorded:
        return Outcome("already recorded", a.project_id)
    return Outcome("auto top-up failed: recorded and reported", a.project_id)


async def _top_up_paid(svc: PaymentsService, ev: Event) -> Outcome:
    async with svc.db.transaction(system=True) as s:
        a = await top_up_intents.attempt_of(s, ev.obj, lock=False)  # locked after the credit
        if a is None:
            return Outcome("ignored: unknown auto top-up", ignored=True)
        posted, payment = await top_up_intents.succeeded(svc, s, a, ev.obj, ev.actor)
    if posted is None:
        return Outcome("ignored: the auto top-up was never charged", a.project_id, ignored=True)
    out = Outcome(f"{'already credited' if posted.replayed else 'credited'} {a.credits} credits", a.project_id)
    if payment is not None:
        out.events.append(grants.payment_event("payment.succeeded", payment))
    return out


async def _save_payment_method(svc: PaymentsService, ev: Event) -> Outcome:
    intent = ev.obj
    method = objects.ref(intent.get("payment_method"))
    customer = objects.ref(intent.get("customer"))
    if intent.get("setup_future_usage") != "off_session" or method is None or customer is None:
        return Outcome("ignored: no payment method saved for off-session use", ignored=True)
    project_id = await project_for(svc, [objects.metadata(intent)], customer=customer)
    if project_id is None:
        return Outcome("ignored: not a LedgerX customer", ignored=True)
    async with svc.db.transaction(system=True) as s:
        changed = await s.execute(
            update(PaymentCustomer)
            .where(
                PaymentCustomer.project_id == project_id,
                PaymentCustomer.stripe_customer_id == customer,
                PaymentCustomer.default_payment_method.is_distinct_from(method),
            )
            .values(default_payment_method=method, payment_method_saved_at=ev.created)
        )
        if changed.rowcount:  # type: ignore[attr-defined]
            await audit_event(
                s, ev, "payments.payment_method.saved", project_id, ("project", ids.encode("project", project_id))
            )
    return Outcome("payment method saved for auto top-up", project_id)
