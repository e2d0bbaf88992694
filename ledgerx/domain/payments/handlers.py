"""What each Stripe event does to LedgerX, independent of the order events arrive in.

Every handler can run any number of times for the same event (replays, redeliveries,
reconciliation) without changing the books twice:
- money moves only through ledger postings keyed by Stripe ids, inside the transaction that
  writes the Payment/Invoice rows recording them (so the rows and the books agree);
- state rows only move forward: invoices by status rank (PAID and VOID are final), subscriptions
  by snapshot time, refunds and disputes once per Stripe refund/dispute id;
- an event that refers to something not recorded yet (a refund that overtook its checkout) fails
  with `NotReady` and is retried with backoff, by when the earlier event has been processed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import (
    CreditPack,
    Invoice,
    InvoiceLine,
    LedgerTransaction,
    Payment,
    PaymentCustomer,
    PaymentDispute,
    PaymentRefund,
    Plan,
    PlanSubscription,
    Project,
)
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.ledger.posting import post_transaction
from ledgerx.domain.ledger.refunds import refund_transaction
from ledgerx.domain.ledger.types import CREDITS, Kind, Leg, Posting, SystemAccount
from ledgerx.domain.payments import catalog, grants, objects, subscriptions
from ledgerx.domain.payments.objects import Obj
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.ids import uuid7

log = logging.getLogger("ledgerx.payments.handlers")

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# Invoices whose payment grants the plan's included credits for the period they cover.
GRANTING_REASONS = frozenset({"subscription_create", "subscription_cycle", "subscription", "manual", ""})
INVOICE_RANK = {"DRAFT": 0, "OPEN": 1, "UNCOLLECTIBLE": 2, "PAID": 3, "VOID": 3}


class NotReady(Exception):
    """The event refers to something LedgerX has not recorded yet: retry later."""


class Permanent(Exception):
    """The event can never apply as it is (it names a credit pack, plan or project LedgerX does not
    have): fail it once with this readable reason, no retries (the inbox keeps it as DEAD)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    id: str
    type: str
    created: dt.datetime
    obj: Obj

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> Event:
        return cls(
            id=str(payload.get("id") or ""),
            type=str(payload.get("type") or ""),
            created=objects.ts(payload.get("created")) or EPOCH,
            obj=objects.data_object(payload),
        )

    @property
    def actor(self) -> Actor:
        return Actor.system(request_id=f"stripe:{self.id}")


@dataclasses.dataclass(slots=True)
class Outcome:
    result: str
    project_id: uuid.UUID | None = None
    ignored: bool = False
    events: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)


Handler = Callable[[PaymentsService, Event], Awaitable[Outcome]]


# -- lookups ---------------------------------------------------------------------------------------------


async def _project_for(
    svc: PaymentsService,
    metas: list[Mapping[str, str]],
    *,
    stripe_subscription_id: str | None = None,
    customer: str | None = None,
) -> uuid.UUID | None:
    """The LedgerX project an object belongs to: from our metadata, our subscription row or the
    customer (one per project, created by LedgerX). None: not a LedgerX object."""
    for m in metas:
        found = objects.decode_meta(m, objects.META_PROJECT, "project")
        if found is not None:
            async with svc.db.transaction(system=True) as s:
                if await s.scalar(select(Project.id).where(Project.id == found)) is None:
                    raise Permanent(f"project {m[objects.META_PROJECT]} not found")
            return found
    async with svc.db.transaction(system=True) as s:
        if stripe_subscription_id:
            found = await s.scalar(
                select(PlanSubscription.project_id).where(
                    PlanSubscription.stripe_subscription_id == stripe_subscription_id
                )
            )
            if found is not None:
                return found
        if customer:
            return await s.scalar(
                select(PaymentCustomer.project_id).where(PaymentCustomer.stripe_customer_id == customer)
            )
    return None


async def _require_plan(s: AsyncSession, plan_id: uuid.UUID) -> None:
    if await s.scalar(select(Plan.id).where(Plan.id == plan_id)) is None:
        raise Permanent(f"plan {ids.encode('plan', plan_id)} not found")


async def _subscription_row(s: AsyncSession, stripe_subscription_id: str | None) -> PlanSubscription | None:
    if not stripe_subscription_id:
        return None
    return (
        await s.execute(
            select(PlanSubscription)
            .where(PlanSubscription.stripe_subscription_id == stripe_subscription_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar()


async def _audit(
    s: AsyncSession, ev: Event, action: str, project_id: uuid.UUID, target: tuple[str, str], **after: Any
) -> None:
    await audit.record(
        s,
        ev.actor,
        action,
        project_id=project_id,
        target_type=target[0],
        target_id=target[1],
        after={"stripeEventId": ev.id, "stripeEventType": ev.type, **after},
    )


# -- checkout ---------------------------------------------------------------------------------------------


async def on_checkout_completed(svc: PaymentsService, ev: Event) -> Outcome:
    sess = ev.obj
    if sess.get("payment_status") not in ("paid", "no_payment_required"):
        return Outcome("waiting: the payment has not succeeded yet (async_payment_succeeded follows)")
    meta = objects.metadata(sess)
    project_id = await _project_for(svc, [meta], customer=objects.ref(sess.get("customer")))
    if project_id is None:
        return Outcome("ignored: not a LedgerX checkout session", ignored=True)
    if sess.get("mode") == "payment":
        return await _pack_purchase(svc, ev, meta, project_id)
    if sess.get("mode") == "subscription":
        return await _subscription_checkout(svc, ev, meta, project_id)
    return Outcome(f"ignored: checkout mode {sess.get('mode')!r}", project_id, ignored=True)


async def _pack_purchase(svc: PaymentsService, ev: Event, meta: Mapping[str, str], project_id: uuid.UUID) -> Outcome:
    sess = ev.obj
    session_id = str(sess["id"])
    pack_id = objects.decode_meta(meta, objects.META_PACK, "credit_pack")
    if pack_id is None:
        return Outcome("ignored: no credit pack in the session metadata", project_id, ignored=True)
    async with svc.db.read() as s:
        pack_credits = await s.scalar(select(CreditPack.credits).where(CreditPack.id == pack_id))
    if pack_credits is None:
        raise Permanent(f"credit pack {meta[objects.META_PACK]} not found")
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
                )
                .on_conflict_do_nothing()
                .returning(Payment)
            )
        ).scalar()
        if payment is not None:
            await _audit(
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
            out.events.append(grants.payment_event("payment.succeeded", payment))
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
        await _require_plan(s, plan_id)
        sub = await subscriptions.ensure_row(
            s,
            stripe_subscription_id=stripe_sub,
            project_id=project_id,
            plan_id=plan_id,
            customer_id=objects.ref(sess.get("customer")),
            wallet_id=objects.decode_meta(meta, objects.META_WALLET, "wallet"),
        )
        await _audit(
            s, ev, "subscription.checkout_completed", project_id, ("subscription", ids.encode("subscription", sub.id))
        )
    return Outcome("subscription recorded", project_id)


# -- subscriptions ------------------------------------------------------------------------------------------


async def on_subscription(svc: PaymentsService, ev: Event) -> Outcome:
    snap = ev.obj
    stripe_sub = objects.ref(snap.get("id"))
    if stripe_sub is None:
        return Outcome("ignored: no subscription id", ignored=True)
    meta = objects.metadata(snap)
    project_id = await _project_for(
        svc, [meta], stripe_subscription_id=stripe_sub, customer=objects.ref(snap.get("customer"))
    )
    if project_id is None:
        return Outcome("ignored: not a LedgerX subscription", ignored=True)
    out = Outcome("", project_id)
    async with svc.db.transaction(system=True) as s:
        sub = await _subscription_row(s, stripe_sub)
        if sub is None:
            plan_id = await catalog.plan_for_price(s, objects.subscription_price(snap)) or objects.decode_meta(
                meta, objects.META_PLAN, "plan"
            )
            if plan_id is None:
                return Outcome("ignored: the subscription's price is not a LedgerX plan", project_id, ignored=True)
            await _require_plan(s, plan_id)
            sub = await subscriptions.ensure_row(
                s,
                stripe_subscription_id=stripe_sub,
                project_id=project_id,
                plan_id=plan_id,
                customer_id=objects.ref(snap.get("customer")),
                wallet_id=objects.decode_meta(meta, objects.META_WALLET, "wallet"),
            )
        before = subscriptions.snapshot_json(sub)
        applied = await subscriptions.apply_snapshot(s, sub, snap, at=ev.created, event_id=ev.id)
        if not applied:
            out.result = "stale: a newer state of this subscription was applied already"
            return out
        after = subscriptions.snapshot_json(sub)
        if after != before:
            await _audit(
                s, ev, "subscription.sync", project_id, ("subscription", ids.encode("subscription", sub.id)), **after
            )
            out.events.append(
                (
                    subscriptions.topic(project_id),
                    {"type": "subscription.updated", **after, "projectId": ids.encode("project", project_id)},
                )
            )
    out.result = f"subscription is {subscriptions.public_status(sub)}"
    return out


# -- invoices -------------------------------------------------------------------------------------------------


async def _invoice_plan(
    s: AsyncSession, inv: Obj, meta: Mapping[str, str], sub: PlanSubscription | None
) -> uuid.UUID | None:
    if meta.get(objects.META_KIND) == "proration":
        return objects.decode_meta(meta, objects.META_PLAN, "plan")
    for line in objects.invoice_lines(inv):
        if line.get("proration"):
            continue
        found = await catalog.plan_for_price(s, objects.line_price(line))
        if found is not None:
            return found
    sub_meta = objects.invoice_subscription_metadata(inv)
    return objects.decode_meta(sub_meta, objects.META_PLAN, "plan") or (sub.plan_id if sub else None)


async def _upsert_invoice(
    s: AsyncSession, ev: Event, project_id: uuid.UUID, sub: PlanSubscription | None, plan_id: uuid.UUID | None
) -> Invoice:
    inv = ev.obj
    stripe_id = str(inv["id"])
    meta = objects.metadata(inv)
    reason = str(inv.get("billing_reason") or "")
    kind = "PRORATION" if meta.get(objects.META_KIND) == "proration" else ("SUBSCRIPTION" if sub else "OTHER")
    credits = 0
    if kind == "PRORATION":
        credits = max(objects.integer(meta.get(objects.META_CREDITS)), 0)
    elif kind == "SUBSCRIPTION" and plan_id is not None and reason in GRANTING_REASONS:
        credits = int(await s.scalar(select(Plan.included_credits).where(Plan.id == plan_id)) or 0)
    start, end = objects.invoice_period(inv)
    currency = objects.currency(inv.get("currency")) or "USD"
    invoice_id = objects.decode_meta(meta, objects.META_INVOICE, "invoice") or uuid7()
    inserted = (
        await s.execute(
            pg_insert(Invoice)
            .values(
                id=invoice_id,
                project_id=project_id,
                subscription_id=sub.id if sub else None,
                stripe_invoice_id=stripe_id,
                kind=kind,
                billing_reason=reason or None,
                status="OPEN",
                currency=currency,
                total=objects.integer(inv.get("total")),
                amount_due=objects.integer(inv.get("amount_due")),
                period_start=start,
                period_end=end,
                plan_id=plan_id,
                credits=credits,
                stripe_charge_id=objects.invoice_charge(inv),
                stripe_payment_intent_id=objects.invoice_payment_intent(inv),
            )
            .on_conflict_do_nothing()
            .returning(Invoice.id)
        )
    ).scalar()
    if inserted is not None:
        for pos, line in enumerate(objects.invoice_lines(inv)):
            ls, le = objects.line_period(line)
            s.add(
                InvoiceLine(
                    id=uuid7(),
                    invoice_id=inserted,
                    project_id=project_id,
                    position=pos,
                    description=str(line.get("description") or "")[:500],
                    amount=objects.integer(line.get("amount")),
                    currency=objects.currency(line.get("currency")) or currency,
                    quantity=objects.integer(line.get("quantity"), 1),
                    period_start=ls,
                    period_end=le,
                    plan_id=await catalog.plan_for_price(s, objects.line_price(line)),
                    proration=bool(line.get("proration")),
                )
            )
        await s.flush()
    row = (
        await s.execute(
            select(Invoice)
            .where(Invoice.stripe_invoice_id == stripe_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    if row.subscription_id is None and sub is not None:
        row.subscription_id = sub.id
    row.stripe_charge_id = row.stripe_charge_id or objects.invoice_charge(inv)
    row.stripe_payment_intent_id = row.stripe_payment_intent_id or objects.invoice_payment_intent(inv)
    return row


def _advance(row: Invoice, status: str) -> bool:
    if INVOICE_RANK[status] > INVOICE_RANK[row.status]:
        row.status = status
        return True
    return False


async def on_invoice(svc: PaymentsService, ev: Event) -> Outcome:
    inv = ev.obj
    if not objects.ref(inv.get("id")):
        return Outcome("ignored: no invoice id", ignored=True)
    meta = objects.metadata(inv)
    sub_meta = objects.invoice_subscription_metadata(inv)
    stripe_sub = objects.invoice_subscription(inv)
    project_id = await _project_for(
        svc, [meta, sub_meta], stripe_subscription_id=stripe_sub, customer=objects.ref(inv.get("customer"))
    )
    if project_id is None:
        return Outcome("ignored: not a LedgerX invoice", ignored=True)
    paid = ev.type in ("invoice.paid", "invoice.payment_succeeded")
    wallet_id: uuid.UUID | None = None
    if paid:
        async with svc.db.transaction(system=True) as s:
            sub_wallet = await s.scalar(
                select(PlanSubscription.wallet_id).where(PlanSubscription.stripe_subscription_id == stripe_sub)
            )
        sub_wallet = sub_wallet or objects.decode_meta(sub_meta, objects.META_WALLET, "wallet")
        wallet_id = await grants.wallet_for(svc, project_id, sub_wallet)
    out = Outcome("", project_id)
    async with svc.db.transaction(system=True) as s:
        sub = await _subscription_row(s, stripe_sub)
        plan_id = await _invoice_plan(s, inv, meta, sub)
        if sub is None and stripe_sub and plan_id is not None:
            sub = await subscriptions.ensure_row(
                s,
                stripe_subscription_id=stripe_sub,
                project_id=project_id,
                plan_id=plan_id,
                customer_id=objects.ref(inv.get("customer")),
                wallet_id=objects.decode_meta(sub_meta, objects.META_WALLET, "wallet"),
            )
        row = await _upsert_invoice(s, ev, project_id, sub, plan_id)
        changed = False
        attempts = objects.integer(inv.get("attempt_count"))
        if paid or ev.type == "invoice.payment_failed":
            # Stripe's attempt count only grows; keep the highest seen, whatever the order.
            row.attempt_count = max(row.attempt_count, attempts)
        if paid:
            changed = _advance(row, "PAID")
            if row.status == "PAID":
                row.next_payment_attempt = None
                row.amount_paid = max(row.amount_paid, objects.integer(inv.get("amount_paid")))
                transitions = objects.obj(inv.get("status_transitions"))
                row.paid_at = row.paid_at or objects.ts(transitions.get("paid_at")) or ev.created
                assert wallet_id is not None
                posted = await grants.grant_invoice(svc, s, row, wallet_id=wallet_id)
                if posted is not None and not posted.replayed:
                    changed = True
                if sub is not None and sub.synced_at is None:
                    # No subscription snapshot yet: the paid invoice is the best evidence of its state.
                    sub.stripe_status = "active"
                    sub.current_period_start = sub.current_period_start or row.period_start
                    sub.current_period_end = sub.current_period_end or row.period_end
            out.result = f"invoice paid; {row.credits} credits granted" if row.status == "PAID" else "invoice is void"
        elif ev.type == "invoice.payment_failed":
            if row.status not in ("PAID", "VOID"):
                if attempts >= row.attempt_count:
                    row.next_payment_attempt = objects.ts(inv.get("next_payment_attempt"))
                row.first_failed_at = min(row.first_failed_at or ev.created, ev.created)
                row.last_failed_at = max(row.last_failed_at or ev.created, ev.created)
                changed = True
            out.result = f"payment failed (attempt {row.attempt_count}); invoice {row.status.lower()}"
        elif ev.type == "invoice.voided":
            changed = _advance(row, "VOID")
            out.result = f"invoice {row.status.lower()}"
        elif ev.type == "invoice.marked_uncollectible":
            changed = _advance(row, "UNCOLLECTIBLE")
            out.result = f"invoice {row.status.lower()}"
        row.updated_at = func.now()
        if sub is not None:
            await subscriptions.recompute_dunning(svc, s, sub, out.events)
        if changed:
            await _audit(
                s,
                ev,
                f"invoice.{ev.type.split('.', 1)[1]}",
                project_id,
                ("invoice", ids.encode("invoice", row.id)),
                status=row.status,
                attemptCount=row.attempt_count,
                amountPaid=str(row.amount_paid),
            )
    return out


# -- refunds and disputes ------------------------------------------------------------------------------------


async def _find_payment(
    s: AsyncSession, *, charge: str | None, payment_intent: str | None, invoice: str | None
) -> Payment | None:
    conds = []
    if charge:
        conds.append(Payment.stripe_charge_id == charge)
    if payment_intent:
        conds.append(Payment.stripe_payment_intent_id == payment_intent)
    if invoice:
        conds.append(Payment.stripe_invoice_id == invoice)
    if not conds:
        return None
    return (
        await s.execute(
            select(Payment)
            .where(or_(*conds))
            .order_by(Payment.id)
            .limit(1)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar()


async def _not_found(s: AsyncSession, ev: Event, customer: str | None) -> Outcome:
    if customer and await s.scalar(
        select(PaymentCustomer.project_id).where(PaymentCustomer.stripe_customer_id == customer)
    ):
        raise NotReady("the payment this event refers to is not recorded yet")
    if not customer:
        # Disputes name no customer: wait for the payment for a while (the processor gives up
        # after its retries and the event stays visible as DEAD to platform admins).
        raise NotReady("no recorded payment matches this charge yet")
    return Outcome("ignored: not a LedgerX payment", ignored=True)


def _credits_for(p: Payment, money: int) -> int:
    """Credits bought by `money` of the payment (floor; the whole payment buys all its credits)."""
    if p.amount <= 0:
        return p.credits if money > 0 else 0
    return p.credits * min(money, p.amount) // p.amount


async def _posted_amount(s: AsyncSession, project_id: uuid.UUID, key: str) -> tuple[uuid.UUID, int] | None:
    row = (
        await s.execute(
            select(LedgerTransaction.id, LedgerTransaction.amount).where(
                LedgerTransaction.project_id == project_id, LedgerTransaction.idempotency_key == key
            )
        )
    ).first()
    return (row.id, row.amount) if row is not None else None


async def on_charge_refunded(svc: PaymentsService, ev: Event) -> Outcome:
    ch = ev.obj
    charge_id = objects.ref(ch.get("id"))
    total = objects.integer(ch.get("amount_refunded"))
    async with svc.db.transaction(system=True) as s:
        payment = await _find_payment(
            s,
            charge=charge_id,
            payment_intent=objects.ref(ch.get("payment_intent")),
            invoice=objects.ref(ch.get("invoice")),
        )
        if payment is None:
            return await _not_found(s, ev, objects.ref(ch.get("customer")))
        out = Outcome("", payment.project_id)
        payment.stripe_charge_id = payment.stripe_charge_id or charge_id
        refunds = sorted(
            (
                (objects.integer(r.get("created")), str(r.get("id")), objects.integer(r.get("amount")))
                for r in (objects.obj(r) for r in (objects.obj(ch.get("refunds")).get("data") or []))
                if r.get("id") and r.get("status") in ("succeeded", "pending", None)
            ),
        )
        if not refunds and total > payment.amount_refunded:
            # Newer API versions do not embed the refunds: name the refund by the cumulative total.
            refunds = [(0, f"{charge_id}@{total}", total - payment.amount_refunded)]
        known = set(
            (
                await s.execute(select(PaymentRefund.stripe_refund_id).where(PaymentRefund.payment_id == payment.id))
            ).scalars()
        )
        reversed_now = 0
        for _, refund_id, amount in refunds:
            if refund_id in known:
                continue
            money = min(amount, total - payment.amount_refunded)
            if money <= 0:
                continue
            credits = _credits_for(payment, payment.amount_refunded + money) - _credits_for(
                payment, payment.amount_refunded
            )
            credits = min(credits, payment.credits - payment.credits_reversed - payment.credits_held)
            key = f"stripe:refund:{refund_id}"
            txn_id: uuid.UUID | None = None
            # The ledger's refund runs in its own transaction: after a crash between it and this
            # one, the retry finds the posting by its key and records what it reversed.
            done = await _posted_amount(s, payment.project_id, key)
            if done is not None:
                txn_id, credits = done
            elif credits > 0 and payment.transaction_id is not None:
                posted = await refund_transaction(
                    svc.ledger,
                    ev.actor,
                    payment.project_id,
                    payment.transaction_id,
                    credits,
                    key,
                    reason="Stripe refund",
                )
                txn_id = posted.transaction.id
            else:
                credits = 0
            s.add(
                PaymentRefund(
                    stripe_refund_id=refund_id,
                    payment_id=payment.id,
                    project_id=payment.project_id,
                    amount=money,
                    credits=credits,
                    transaction_id=txn_id,
                )
            )
            payment.amount_refunded += money
            payment.credits_reversed += credits
            reversed_now += credits
        if reversed_now or refunds:
            payment.status = (
                "REFUNDED"
                if payment.amount_refunded >= payment.amount
                else ("PARTIALLY_REFUNDED" if payment.amount_refunded > 0 else payment.status)
            )
        payment.updated_at = func.now()
        await s.flush()
        if reversed_now:
            await _audit(
                s,
                ev,
                "payment.refunded",
                payment.project_id,
                ("payment", ids.encode("payment", payment.id)),
                amountRefunded=str(payment.amount_refunded),
                creditsReversed=str(payment.credits_reversed),
            )
            out.events.append(grants.payment_event("payment.refunded", payment))
    out.result = f"refunded {payment.amount_refunded} of {payment.amount}; {payment.credits_reversed} credits reversed"
    return out


async def on_dispute(svc: PaymentsService, ev: Event) -> Outcome:
    d = ev.obj
    dispute_id = objects.ref(d.get("id"))
    if dispute_id is None:
        return Outcome("ignored: no dispute id", ignored=True)
    async with svc.db.transaction(system=True) as s:
        payment = await _find_payment(
            s, charge=objects.ref(d.get("charge")), payment_intent=objects.ref(d.get("payment_intent")), invoice=None
        )
        if payment is None:
            return await _not_found(s, ev, None)
        out = Outcome("", payment.project_id)
        payment.stripe_charge_id = payment.stripe_charge_id or objects.ref(d.get("charge"))
        row = await s.get(PaymentDispute, dispute_id, with_for_update=True)
        if row is None:
            amount = objects.integer(d.get("amount"))
            hold = min(_credits_for(payment, amount), payment.credits - payment.credits_reversed - payment.credits_held)
            hold_txn = None
            if hold > 0 and payment.wallet_id is not None:
                posted = await post_transaction(
                    svc.ledger,
                    Posting(
                        project_id=payment.project_id,
                        wallet_id=payment.wallet_id,
                        kind=Kind.DISPUTE,
                        currency=CREDITS,
                        legs=(Leg(-hold, wallet_id=payment.wallet_id), Leg(hold, system=SystemAccount.DISPUTES)),
                        idempotency_key=f"stripe:dispute:{dispute_id}",
                        actor=ev.actor,
                        reference=dispute_id,
                        reason="Held while the payment is disputed",
                        metadata={"stripeDisputeId": dispute_id, "paymentId": ids.encode("payment", payment.id)},
                        action="payments.dispute_hold",
                    ),
                    session=s,
                )
                hold_txn = posted.transaction.id
            else:
                hold = 0
            row = PaymentDispute(
                stripe_dispute_id=dispute_id,
                payment_id=payment.id,
                project_id=payment.project_id,
                amount=amount,
                credits_held=hold,
                status="OPEN",
                hold_transaction_id=hold_txn,
            )
            s.add(row)
            payment.credits_held += hold
            await _audit(
                s,
                ev,
                "payment.dispute_opened",
                payment.project_id,
                ("payment", ids.encode("payment", payment.id)),
                disputeId=dispute_id,
                creditsHeld=str(hold),
            )
            out.events.append(grants.payment_event("payment.disputed", payment))
        final = {"won": "WON", "lost": "LOST"}.get(str(d.get("status")))
        if final is not None and row.status == "OPEN":
            if final == "WON" and row.credits_held > 0 and payment.wallet_id is not None:
                posted = await post_transaction(
                    svc.ledger,
                    Posting(
                        project_id=payment.project_id,
                        wallet_id=payment.wallet_id,
                        kind=Kind.DISPUTE,
                        currency=CREDITS,
                        legs=(
                            Leg(row.credits_held, wallet_id=payment.wallet_id),
                            Leg(-row.credits_held, system=SystemAccount.DISPUTES),
                        ),
                        idempotency_key=f"stripe:dispute:{dispute_id}:release",
                        actor=ev.actor,
                        reference=dispute_id,
                        reason="Dispute won: held credits released",
                        metadata={"stripeDisputeId": dispute_id, "paymentId": ids.encode("payment", payment.id)},
                        action="payments.dispute_release",
                    ),
                    session=s,
                )
                row.release_transaction_id = posted.transaction.id
                payment.credits_held -= row.credits_held
            row.status = final
            row.updated_at = func.now()
            await _audit(
                s,
                ev,
                "payment.dispute_closed",
                payment.project_id,
                ("payment", ids.encode("payment", payment.id)),
                disputeId=dispute_id,
                outcome=final,
            )
        payment.updated_at = func.now()
        out.result = f"dispute {row.status.lower()}; {row.credits_held} credits held"
    return out


HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": on_checkout_completed,
    "checkout.session.async_payment_succeeded": on_checkout_completed,
    "customer.subscription.created": on_subscription,
    "customer.subscription.updated": on_subscription,
    "customer.subscription.deleted": on_subscription,
    "customer.subscription.paused": on_subscription,
    "customer.subscription.resumed": on_subscription,
    "invoice.paid": on_invoice,
    "invoice.payment_succeeded": on_invoice,
    "invoice.payment_failed": on_invoice,
    "invoice.voided": on_invoice,
    "invoice.marked_uncollectible": on_invoice,
    "charge.refunded": on_charge_refunded,
    "charge.dispute.created": on_dispute,
    "charge.dispute.updated": on_dispute,
    "charge.dispute.funds_withdrawn": on_dispute,
    "charge.dispute.closed": on_dispute,
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
        svc.forget_plan(out.project_id)
    svc.publish(out.events)
    return out
