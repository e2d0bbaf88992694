"""Plan changes and cancellation (project admins): an upgrade now with a prorated charge (and
prorated included credits), a downgrade at the period end, cancellation now or at the period end.
Each applies the snapshot Stripe returns with our clock as its time (`subscriptions.apply_snapshot`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from fractions import Fraction
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import Invoice, Plan, PlanSubscription
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput, Conflict
from ledgerx.domain.invoicing import composing, issuing, tax_rates
from ledgerx.domain.payments import catalog, grants, objects, prices, proration, records, webhook_events
from ledgerx.domain.payments.records import InvoiceRecord, PlanRecord, SubscriptionRecord
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.domain.payments.subscriptions import apply_snapshot, current_subscription, is_live, snapshot_json, topic
from ledgerx.ids import uuid7


@dataclasses.dataclass(frozen=True, slots=True)
class PlanChangeResult:
    subscription: SubscriptionRecord
    immediate: bool
    effective_at: dt.datetime
    amount: int
    currency: str
    credits: int
    invoice: InvoiceRecord | None


async def _live_subscription(s: AsyncSession, project_id: uuid.UUID) -> PlanSubscription:
    sub = await current_subscription(s, project_id, lock=True)
    if sub is None or not is_live(sub) or sub.stripe_subscription_id is None:
        raise Conflict(
            "the project has no active subscription; start one with createCheckoutSession", field="projectId"
        )
    return sub


async def _local_snapshot(s: AsyncSession, sub: PlanSubscription, snap: objects.Obj, now: dt.datetime) -> None:
    await apply_snapshot(s, sub, snap, at=now, event_id=f"local:{uuid7()}", force=True)


async def change_plan(
    svc: PaymentsService, actor: Actor, project_id: uuid.UUID, plan_id: uuid.UUID
) -> PlanChangeResult:
    """Upgrade now with a prorated charge (and prorated included credits); downgrade at period end."""
    stripe = svc.require_stripe()
    new = await catalog.get_plan(svc, plan_id)
    if new.archived_at is not None:
        raise BadInput("this plan is archived", field="planId")
    if new.price_amount > 0:
        new = await prices.ensure_plan_price(svc, new)
    now = svc.now()
    events: list[tuple[str, dict[str, Any]]] = []
    async with svc.db.transaction(project_id=project_id) as s:
        sub = await _live_subscription(s, project_id)
        assert sub.stripe_subscription_id is not None
        old = await s.get(Plan, sub.plan_id)
        assert old is not None
        before = snapshot_json(sub)
        data_before = await webhook_events.subscription_data(s, sub, now)
        sub_id = sub.stripe_subscription_id
        if sub.current_period_start is None or sub.current_period_end is None:
            raise Conflict("the subscription's billing period is not known yet; try again shortly", field="projectId")
        if new.id == old.id and sub.pending_plan_id is None and not sub.cancel_at_period_end:
            raise Conflict("the project is already on this plan", field="planId")
        change_key = f"ledgerx:change:{sub.id}:{uuid7()}"
        invoice: Invoice | None = None
        # Stripe's current view: the item to change, the price it bills, a planned change. Any new
        # change replaces the one planned for the period end.
        current = await stripe.retrieve_subscription(sub_id)
        for planned in {sub.stripe_schedule_id, objects.ref(current.get("schedule"))} - {None}:
            assert planned is not None
            await stripe.release_schedule(planned)
        sub.stripe_schedule_id = None
        sub.pending_plan_id = sub.pending_at = None
        if new.tier == "FREE":
            # Moving to the free plan is a cancellation at the period end.
            snap = await stripe.update_subscription(sub_id, {"cancel_at_period_end": True}, change_key)
            await _local_snapshot(s, sub, snap, now)
            change = proration.Change(False, 0, 0, sub.current_period_end, Fraction(0))
        else:
            change = proration.plan_change(
                _terms(old), _terms(new), sub.current_period_start, sub.current_period_end, now,
                trialing=sub.stripe_status == "trialing",
            )  # fmt: skip
            if new.id == old.id:
                change = proration.Change(True, 0, 0, now, change.remaining)  # undo a planned change
            if change.immediate:
                if change.amount > 0:
                    invoice = await _charge_proration(svc, s, sub, old, new, change, now, change_key)
                item_id = objects.subscription_item_id(current) or sub.stripe_item_id
                params: dict[str, Any] = {
                    "items": [{"id": item_id, "price": new.stripe_price_id}],
                    "proration_behavior": "none",
                    "cancel_at_period_end": False,
                    "metadata": {objects.META_PLAN: ids.encode("plan", new.id)},
                }
                snap = await stripe.update_subscription(sub_id, params, change_key + ":subscription")
                sub.plan_id, sub.pending_plan_id, sub.pending_at = new.id, None, None
                await _local_snapshot(s, sub, snap, now)
            else:
                current_price = objects.subscription_price(current) or old.stripe_price_id
                assert current_price is not None
                assert new.stripe_price_id is not None
                schedule = await stripe.schedule_price_change(
                    sub_id,
                    current_price,
                    new.stripe_price_id,
                    new.interval,
                    objects.unix(sub.current_period_end),
                    {
                        objects.META_PLAN: ids.encode("plan", new.id),
                        objects.META_PROJECT: ids.encode("project", project_id),
                    },
                    change_key,
                )
                sub.stripe_schedule_id = str(schedule["id"])
                sub.pending_plan_id, sub.pending_at = new.id, sub.current_period_end
            if invoice is not None and invoice.status == "PAID":
                wallet = await grants.wallet_for(svc, project_id, sub.wallet_id)
                await grants.grant_invoice(svc, s, invoice, wallet_id=wallet)
                # Numbered after Stripe's calls and the grant: the number's lock is held to commit,
                # and every issuer takes the wallet before the number (no lock-order deadlock).
                await issuing.issue(svc, s, invoice)
            if invoice is not None:
                # This transaction inserted the row (Stripe's events about the invoice wait on the
                # subscription's lock, then find it and announce nothing of what is said here).
                paid = ["invoice.paid"] if invoice.status == "PAID" else []
                await webhook_events.invoice(s, invoice, ["invoice.created", *paid])
        after = snapshot_json(sub)
        await audit.record(
            s,
            actor,
            "subscription.change_plan",
            project_id=project_id,
            target_type="subscription",
            target_id=ids.encode("subscription", sub.id),
            before={**before, "planId": ids.encode("plan", old.id)},
            after={
                **after,
                "requestedPlanId": ids.encode("plan", new.id),
                "immediate": change.immediate,
                "prorationAmount": str(change.amount),
                "prorationCredits": str(change.credits),
                "effectiveAt": change.effective_at.isoformat(),
            },
        )
        await webhook_events.subscription_changed(s, sub, data_before, now)
        events.append(
            (
                topic(project_id),
                {"type": "subscription.changed", **after, "projectId": ids.encode("project", project_id)},
            )
        )
    await svc.changes.plan_changed(project_id, "subscription.change_plan")
    svc.publish(events)
    return PlanChangeResult(
        records.of(SubscriptionRecord, sub),
        change.immediate,
        change.effective_at,
        change.amount,
        new.currency,
        change.credits,
        records.of(InvoiceRecord, invoice) if invoice is not None else None,
    )


def _terms(p: Plan | PlanRecord) -> proration.PlanTerms:
    return proration.PlanTerms(p.price_amount, p.interval, p.included_credits, p.currency)


async def _charge_proration(
    svc: PaymentsService,
    s: AsyncSession,
    sub: PlanSubscription,
    old: Plan,
    new: PlanRecord,
    change: proration.Change,
    now: dt.datetime,
    key: str,
) -> Invoice:
    """Invoice and charge the prorated difference at once; the line shows how it was computed."""
    stripe = svc.require_stripe()
    assert sub.current_period_start is not None
    assert sub.current_period_end is not None
    invoice_id = uuid7()
    public = ids.encode("invoice", invoice_id)
    share = proration.describe_share(sub.current_period_start, sub.current_period_end, now)
    description = f"Upgrade from {old.name} to {new.name}, prorated for {share} left in the period"
    choice = await tax_rates.ensure_stripe_rate(svc, await tax_rates.choose(svc, s, sub.project_id))
    meta = {
        objects.META_INVOICE: public,
        objects.META_KIND: "proration",
        objects.META_PROJECT: ids.encode("project", sub.project_id),
        objects.META_PLAN: ids.encode("plan", new.id),
        objects.META_CREDITS: str(change.credits),
        objects.META_TAX: tax_rates.reference(choice),
    }
    assert sub.stripe_customer_id is not None
    assert sub.stripe_subscription_id is not None
    paid = await stripe.charge_now(
        sub.stripe_customer_id,
        sub.stripe_subscription_id,
        change.amount,
        new.currency,
        description,
        meta,
        key,
        tax_rates=choice.stripe_rates,
        automatic_tax=choice.mode == "stripe",
    )
    status = "PAID" if paid.get("status") == "paid" else "OPEN"
    charged = objects.integer(paid.get("total"), change.amount)
    stripe_tax, inclusive = objects.invoice_tax(paid)
    comp, choice = await composing.charged(
        svc,
        s,
        sub.project_id,
        [composing.item(description, change.amount, period_start=now, period_end=sub.current_period_end)],
        0,
        charged_total=charged,
        stripe_tax=stripe_tax,
        stripe_tax_inclusive=inclusive,
        tax_ref=meta[objects.META_TAX],
    )
    invoice = Invoice(
        id=invoice_id,
        project_id=sub.project_id,
        subscription_id=sub.id,
        stripe_invoice_id=str(paid["id"]),
        kind="PRORATION",
        billing_reason="subscription_update",
        status=status,
        currency=new.currency,
        amount_paid=charged if status == "PAID" else 0,
        period_start=now,
        period_end=sub.current_period_end,
        paid_at=now if status == "PAID" else None,
        plan_id=new.id,
        credits=change.credits,
        stripe_charge_id=objects.invoice_charge(paid),
        stripe_payment_intent_id=objects.invoice_payment_intent(paid),
    )
    await composing.write(s, invoice, comp, choice=choice, plan_id=new.id, proration=True)
    await s.flush()
    return invoice


async def cancel_subscription(
    svc: PaymentsService, actor: Actor, project_id: uuid.UUID, *, at_period_end: bool
) -> SubscriptionRecord:
    stripe = svc.require_stripe()
    now = svc.now()
    async with svc.db.transaction(project_id=project_id) as s:
        sub = await _live_subscription(s, project_id)
        assert sub.stripe_subscription_id is not None
        before = snapshot_json(sub)
        data_before = await webhook_events.subscription_data(s, sub, now)
        if at_period_end:
            snap = await stripe.update_subscription(
                sub.stripe_subscription_id, {"cancel_at_period_end": True}, f"ledgerx:cancel:{sub.id}:{uuid7()}"
            )
        else:
            snap = await stripe.cancel_subscription(sub.stripe_subscription_id)
        await _local_snapshot(s, sub, snap, now)
        if not at_period_end and is_live(sub):
            sub.stripe_status, sub.ended_at = "canceled", sub.ended_at or now
        after = snapshot_json(sub)
        await audit.record(
            s,
            actor,
            "subscription.cancel",
            project_id=project_id,
            target_type="subscription",
            target_id=ids.encode("subscription", sub.id),
            before=before,
            after={**after, "atPeriodEnd": at_period_end},
        )
        await webhook_events.subscription_changed(s, sub, data_before, now)
    await svc.changes.plan_changed(project_id, "subscription.cancel")
    svc.publish(
        [
            (
                topic(project_id),
                {"type": "subscription.canceled", **after, "projectId": ids.encode("project", project_id)},
            )
        ]
    )
    return records.of(SubscriptionRecord, sub)
