"""`checkout.session.*`: a paid credit-pack checkout credits the wallet and records its Payment; a
subscription checkout records the subscription row (its state follows from `customer.subscription.*`)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ledgerx import ids
from ledgerx.db.models import CreditPack, Payment
from ledgerx.domain.invoicing import purchases
from ledgerx.domain.ledger.types import Kind
from ledgerx.domain.payments import grants, objects, redemptions, webhook_events
from ledgerx.domain.payments.handlers.event import Event, Outcome, Permanent
from ledgerx.domain.payments.handlers.lookups import audit_event, ensure_subscription, project_for, require_plan
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.ids import uuid7


async def on_checkout_completed(svc: PaymentsService, ev: Event) -> Outcome:
    sess = ev.obj
    if sess.get("payment_status") not in ("paid", "no_payment_required"):
        return Outcome("waiting: the payment has not succeeded yet (async_payment_succeeded follows)")
    meta = objects.metadata(sess)
    project_id = await project_for(svc, [meta], customer=objects.ref(sess.get("customer")))
    if project_id is None:
        return Outcome("ignored: not a LedgerX checkout session", ignored=True)
    if sess.get("mode") == "payment":
        out = await _pack_purchase(svc, ev, meta, project_id)
    elif sess.get("mode") == "subscription":
        out = await _subscription_checkout(svc, ev, meta, project_id)
    else:
        return Outcome(f"ignored: checkout mode {sess.get('mode')!r}", project_id, ignored=True)
    # The coupon after the purchase it was used on (its redemption names the Payment).
    coupon = await redemptions.complete_checkout(svc, ev.actor, project_id, sess)
    if coupon is not None:
        out.result = f"{out.result}; {coupon}"
    return out


async def on_checkout_unpaid(svc: PaymentsService, ev: Event) -> Outcome:
    """`checkout.session.expired` / `async_payment_failed`: a coupon slot the session held is free again."""
    sess = ev.obj
    meta = objects.metadata(sess)
    project_id = await project_for(svc, [meta], customer=objects.ref(sess.get("customer")))
    if project_id is None:
        return Outcome("ignored: not a LedgerX checkout session", ignored=True)
    released = await redemptions.release_checkout(svc, ev.actor, project_id, sess)
    if released is None:
        return Outcome("ignored: no coupon on this session", project_id, ignored=True)
    return Outcome(released, project_id)


async def _pack_purchase(svc: PaymentsService, ev: Event, meta: Mapping[str, str], project_id: uuid.UUID) -> Outcome:
    sess = ev.obj
    session_id = str(sess["id"])
    pack_id = objects.decode_meta(meta, objects.META_PACK, "credit_pack")
    if pack_id is None:
        return Outcome("ignored: no credit pack in the session metadata", project_id, ignored=True)
    async with svc.db.read() as s:
        pack = (
            await s.execute(
                select(CreditPack.name, CreditPack.credits, CreditPack.validity_days).where(CreditPack.id == pack_id)
            )
        ).first()
    if pack is None:
        raise Permanent(f"credit pack {meta[objects.META_PACK]} not found")
    pack_credits = pack.credits
    credits = objects.integer(meta.get(objects.META_CREDITS))
    if credits <= 0:
        credits = int(pack_credits)
    if credits <= 0:
        return Outcome("ignored: unknown credit pack", project_id, ignored=True)
    wallet_id = await grants.wallet_for(svc, project_id, objects.decode_meta(meta, objects.META_WALLET, "wallet"))
    out = Outcome("", project_id)
    async with svc.db.transaction(system=True) as s:
        posted = await grants.post_credits(
            svc,
            s,
            project_id=project_id,
            wallet_id=wallet_id,
            credits=credits,
            kind=Kind.PURCHASE,
            key=f"stripe:checkout:{session_id}",
            reference=session_id,
            reason="Credit pack purchase",
            metadata={"stripeCheckoutSessionId": session_id, "creditPackId": meta[objects.META_PACK]},
            terms=grants.pack_credit_terms(objects.validity_days(meta, pack.validity_days), svc.ledger.now()),
        )
        payment = (
            await s.execute(
                pg_insert(Payment)
                .values(
                    id=uuid7(),
                    project_id=project_id,
                    kind="CREDIT_PACK",
                    status="SUCCEEDED",
                    amount=objects.integer(sess.get("amount_total")),
                    currency=objects.currency(sess.get("currency")) or "USD",
                    credits=credits,
                    credit_pack_id=pack_id,
                    wallet_id=wallet_id,
                    transaction_id=posted.transaction.id,
                    stripe_checkout_session_id=session_id,
                    stripe_payment_intent_id=objects.ref(sess.get("payment_intent")),
                    discount=objects.integer(objects.obj(sess.get("total_details")).get("amount_discount")),
                    coupon_id=objects.decode_meta(meta, objects.META_COUPON, "coupon"),
                )
                .on_conflict_do_nothing()
                .returning(Payment)
            )
        ).scalar()
        if payment is not None:
            await audit_event(
                s,
                ev,
                "payment.succeeded",
                project_id,
                ("payment", ids.encode("payment", payment.id)),
                amount=str(payment.amount),
                currency=payment.currency,
                credits=str(credits),
                transactionId=ids.encode("transaction", posted.transaction.id),
            )
            # The invoice first: the payment event then names it (`invoiceId`).
            await purchases.pack_invoice(svc, s, payment, sess, pack_name=pack.name)
            out.events.append(grants.payment_event("payment.succeeded", payment))
            await webhook_events.payment(s, "payment.succeeded", payment)
    out.result = f"already credited {credits} credits" if posted.replayed else f"credited {credits} credits"
    return out


async def _subscription_checkout(
    svc: PaymentsService, ev: Event, meta: Mapping[str, str], project_id: uuid.UUID
) -> Outcome:
    sess = ev.obj
    stripe_sub = objects.ref(sess.get("subscription"))
    plan_id = objects.decode_meta(meta, objects.META_PLAN, "plan")
    if stripe_sub is None or plan_id is None:
        return Outcome("ignored: no subscription or plan in the session", project_id, ignored=True)
    async with svc.db.transaction(system=True) as s:
        await require_plan(s, plan_id)
        sub, created = await ensure_subscription(
            s, sess, meta, stripe_subscription_id=stripe_sub, project_id=project_id, plan_id=plan_id
        )
        if created:
            await webhook_events.subscription_changed(s, sub, None, svc.now())
        await audit_event(
            s, ev, "subscription.checkout_completed", project_id, ("subscription", ids.encode("subscription", sub.id))
        )
    return Outcome("subscription recorded", project_id)
