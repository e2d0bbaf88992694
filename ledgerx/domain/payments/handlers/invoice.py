"""`invoice.*`: record the invoice and its lines once, move its status forward only, grant a paid
period's included credits once, and recompute the subscription's dunning state.

Outbound webhooks, each from what this event's own statements did (so a stale, repeated or replayed
Stripe event announces nothing): `invoice.created` when this insert made the row, `invoice.paid`
when this event moved it to PAID, `invoice.payment_failed` when it records a Stripe attempt higher
than any recorded before."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import Invoice, Plan, PlanSubscription
from ledgerx.domain.invoicing import composing, issuing, tax_rates
from ledgerx.domain.payments import catalog, dunning, grants, notices, objects, webhook_events
from ledgerx.domain.payments.handlers.event import Event, Outcome
from ledgerx.domain.payments.handlers.lookups import audit_event, ensure_subscription, project_for, subscription_row
from ledgerx.domain.payments.objects import Obj
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.ids import uuid7

# Invoices whose payment grants the plan's included credits for the period they cover.
GRANTING_REASONS = frozenset({"subscription_create", "subscription_cycle", "subscription", "manual", ""})
INVOICE_RANK = {"DRAFT": 0, "OPEN": 1, "UNCOLLECTIBLE": 2, "PAID": 3, "VOID": 3}


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


async def _compose(svc: PaymentsService, s: AsyncSession, row: Invoice, inv: Obj, meta: Mapping[str, str]) -> None:
    """The new invoice's lines, discount and tax (invoicing/composing.py) from Stripe's lines: a
    negative line (a credit for unused time) counts as a discount, so tax applies after it."""
    items, extras, credit = [], [], 0
    tax_ref = meta.get(objects.META_TAX) or objects.invoice_subscription_metadata(inv).get(objects.META_TAX)
    for line in objects.invoice_lines(inv):
        amount = objects.integer(line.get("amount"))
        if amount < 0:
            credit -= amount
            continue
        ls, le = objects.line_period(line)
        quantity = max(objects.integer(line.get("quantity"), 1), 1)
        items.append(
            composing.item(
                str(line.get("description") or "")[:500], amount, quantity=quantity, period_start=ls, period_end=le
            )
        )
        extras.append((await catalog.plan_for_price(s, objects.line_price(line)), bool(line.get("proration"))))
        rate = await tax_rates.rate_by_stripe_id(s, objects.line_tax_rates(line))
        if rate is not None:
            tax_ref = ids.encode("tax_rate", rate.id)
    stripe_tax, inclusive = objects.invoice_tax(inv)
    comp, choice = await composing.charged(
        svc,
        s,
        row.project_id,
        items,
        objects.invoice_discount(inv) + credit,
        charged_total=objects.integer(inv.get("total")),
        stripe_tax=stripe_tax,
        stripe_tax_inclusive=inclusive,
        tax_ref=tax_ref,
    )
    await composing.write(
        s,
        row,
        comp,
        choice=choice,
        discount_label="Discount" if credit == 0 else "Discounts and credits",
        extras=extras,
    )


async def _upsert_invoice(
    svc: PaymentsService,
    s: AsyncSession,
    ev: Event,
    project_id: uuid.UUID,
    sub: PlanSubscription | None,
    plan_id: uuid.UUID | None,
) -> tuple[Invoice, bool]:
    """The (locked) invoice row of the event's invoice, with its lines when first seen; True when
    this call inserted it (exactly one of concurrent callers does: the others' inserts do nothing)."""
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
    row = (
        await s.execute(
            select(Invoice)
            .where(Invoice.stripe_invoice_id == stripe_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    if inserted is not None:
        await _compose(svc, s, row, inv, meta)
    if row.subscription_id is None and sub is not None:
        row.subscription_id = sub.id
    row.stripe_charge_id = row.stripe_charge_id or objects.invoice_charge(inv)
    row.stripe_payment_intent_id = row.stripe_payment_intent_id or objects.invoice_payment_intent(inv)
    return row, inserted is not None


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
    project_id = await project_for(
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
    now = svc.now()
    async with svc.db.transaction(system=True) as s:
        sub = await subscription_row(s, stripe_sub)
        sub_before = await webhook_events.subscription_data(s, sub, now) if sub is not None else None
        plan_id = await _invoice_plan(s, inv, meta, sub)
        if sub is None and stripe_sub and plan_id is not None:
            sub, created = await ensure_subscription(
                s, inv, sub_meta, stripe_subscription_id=stripe_sub, project_id=project_id, plan_id=plan_id
            )
            sub_before = None if created else await webhook_events.subscription_data(s, sub, now)
        row, created = await _upsert_invoice(svc, s, ev, project_id, sub, plan_id)
        announce = ["invoice.created"] if created else []
        changed = False
        attempts = objects.integer(inv.get("attempt_count"))
        recorded_attempts = row.attempt_count
        if paid or ev.type == "invoice.payment_failed":
            # Stripe's attempt count only grows; keep the highest seen, whatever the order.
            row.attempt_count = max(row.attempt_count, attempts)
        if paid:
            changed = _advance(row, "PAID")
            if changed:
                announce.append("invoice.paid")
            if row.status == "PAID":
                row.next_payment_attempt = None
                row.amount_paid = max(row.amount_paid, objects.integer(inv.get("amount_paid")))
                transitions = objects.obj(inv.get("status_transitions"))
                row.paid_at = row.paid_at or objects.ts(transitions.get("paid_at")) or ev.created
                assert wallet_id is not None
                discount = objects.invoice_discount(inv)
                posted = await grants.grant_invoice(svc, s, row, wallet_id=wallet_id, discount=discount)
                if posted is not None and not posted.replayed:
                    changed = True
                await issuing.issue(svc, s, row)
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
                # Stripe numbers its attempts: a higher one than recorded is a new failure; the same
                # event again, or an older attempt arriving late, is not.
                if attempts > recorded_attempts:
                    announce.append("invoice.payment_failed")
            out.result = f"payment failed (attempt {row.attempt_count}); invoice {row.status.lower()}"
        elif ev.type == "invoice.voided":
            changed = _advance(row, "VOID")
            out.result = f"invoice {row.status.lower()}"
        elif ev.type == "invoice.marked_uncollectible":
            changed = _advance(row, "UNCOLLECTIBLE")
            out.result = f"invoice {row.status.lower()}"
        row.updated_at = func.now()
        await webhook_events.invoice(s, row, announce)
        if sub is not None:
            await dunning.recompute_dunning(svc, s, sub, out.events)
            if ev.type == "invoice.payment_failed" and changed and row.kind == "SUBSCRIPTION":
                await notices.payment_failed(svc, s, row, sub, attempt=attempts, event_id=ev.id)
            await webhook_events.subscription_changed(s, sub, sub_before, now)
        if changed:
            await audit_event(
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
