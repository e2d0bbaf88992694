"""`customer.subscription.*`: apply Stripe's snapshot of a subscription when it is newer than the
one applied before (`subscriptions.apply_snapshot`)."""

from __future__ import annotations

from ledgerx import ids
from ledgerx.domain.payments import catalog, objects, subscriptions, webhook_events
from ledgerx.domain.payments.handlers.event import Event, Outcome
from ledgerx.domain.payments.handlers.lookups import (
    audit_event,
    ensure_subscription,
    project_for,
    require_plan,
    subscription_row,
)
from ledgerx.domain.payments.service import PaymentsService


async def on_subscription(svc: PaymentsService, ev: Event) -> Outcome:
    snap = ev.obj
    stripe_sub = objects.ref(snap.get("id"))
    if stripe_sub is None:
        return Outcome("ignored: no subscription id", ignored=True)
    meta = objects.metadata(snap)
    project_id = await project_for(
        svc, [meta], stripe_subscription_id=stripe_sub, customer=objects.ref(snap.get("customer"))
    )
    if project_id is None:
        return Outcome("ignored: not a LedgerX subscription", ignored=True)
    out = Outcome("", project_id)
    now = svc.now()
    async with svc.db.transaction(system=True) as s:
        sub = await subscription_row(s, stripe_sub)
        created = False
        if sub is None:
            plan_id = await catalog.plan_for_price(s, objects.subscription_price(snap)) or objects.decode_meta(
                meta, objects.META_PLAN, "plan"
            )
            if plan_id is None:
                return Outcome("ignored: the subscription's price is not a LedgerX plan", project_id, ignored=True)
            await require_plan(s, plan_id)
            sub, created = await ensure_subscription(
                s, snap, meta, stripe_subscription_id=stripe_sub, project_id=project_id, plan_id=plan_id
            )
        data_before = None if created else await webhook_events.subscription_data(s, sub, now)
        before = subscriptions.snapshot_json(sub)
        applied = await subscriptions.apply_snapshot(s, sub, snap, at=ev.created, event_id=ev.id)
        if not applied:
            out.result = "stale: a newer state of this subscription was applied already"
            return out
        await webhook_events.subscription_changed(s, sub, data_before, now)
        after = subscriptions.snapshot_json(sub)
        if after != before:
            await audit_event(
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
