"""Dunning: a subscription is past due from the earliest failure of an unpaid period invoice and
falls back to the free plan `grace` later; `run_dunning` announces that moment once.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import Invoice, PlanSubscription
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.payments import catalog, notices, webhook_events
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.domain.payments.subscriptions import snapshot_json, topic

UNPAID_INVOICE = ("OPEN", "UNCOLLECTIBLE")


async def recompute_dunning(
    svc: PaymentsService, s: AsyncSession, sub: PlanSubscription, events: list[tuple[str, dict[str, Any]]]
) -> None:
    """past_due_since = the earliest failure of an unpaid period invoice; grace ends `grace` after it."""
    await s.flush()  # the session does not autoflush: the invoice changes must be visible below
    since = await s.scalar(
        select(func.min(Invoice.first_failed_at)).where(
            Invoice.subscription_id == sub.id,
            Invoice.kind == "SUBSCRIPTION",  # a declined upgrade charge is not a missed period
            Invoice.status.in_(UNPAID_INVOICE),
            Invoice.first_failed_at.is_not(None),
        )
    )
    if since == sub.past_due_since:
        return
    was = sub.past_due_since
    sub.past_due_since = since
    sub.grace_until = since + svc.grace if since is not None else None
    payload = {"subscriptionId": ids.encode("subscription", sub.id), "projectId": ids.encode("project", sub.project_id)}
    if since is None:
        restored = sub.downgraded_at is not None
        sub.downgraded_at = None
        events.append((topic(sub.project_id), {"type": "subscription.recovered", "restored": restored, **payload}))
    elif was is None:
        events.append(
            (
                topic(sub.project_id),
                {
                    "type": "subscription.past_due",
                    "graceUntil": sub.grace_until.isoformat() if sub.grace_until else None,
                    **payload,
                },
            )
        )


async def run_dunning(svc: PaymentsService, *, limit: int = 200) -> int:
    """Announce every subscription whose grace period ran out: the project is on the free plan now.

    The effective plan already changes at `grace_until` without this (it is a function of the
    clock); this marks the moment once, writes the audit row and emits the event.
    """
    now = svc.now()
    events: list[tuple[str, dict[str, Any]]] = []
    touched: list[uuid.UUID] = []
    free = catalog.default_free_plan(await catalog.list_plans(svc))
    async with svc.db.transaction(system=True) as s:
        rows = (
            await s.execute(
                select(PlanSubscription)
                .where(
                    PlanSubscription.grace_until <= now,
                    PlanSubscription.downgraded_at.is_(None),
                    PlanSubscription.past_due_since.is_not(None),
                    PlanSubscription.ended_at.is_(None),
                )
                .order_by(PlanSubscription.grace_until)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        ).scalars()
        for sub in rows:
            before = snapshot_json(sub)
            data_before = await webhook_events.subscription_data(s, sub, now)
            sub.downgraded_at = now
            after = {**snapshot_json(sub), "effectivePlanId": ids.encode("plan", free.id) if free else None}
            await audit.record(
                s,
                Actor.system(),
                "subscription.downgrade_to_free",
                project_id=sub.project_id,
                target_type="subscription",
                target_id=ids.encode("subscription", sub.id),
                before=before,
                after=after,
            )
            await notices.downgraded(svc, s, sub, free)
            await webhook_events.subscription_changed(s, sub, data_before, now)
            events.append(
                (
                    topic(sub.project_id),
                    {
                        "type": "subscription.downgraded",
                        "reason": "grace_period_expired",
                        "subscriptionId": ids.encode("subscription", sub.id),
                        "projectId": ids.encode("project", sub.project_id),
                        "planId": after["effectivePlanId"],
                        "at": now.isoformat(),
                    },
                )
            )
            touched.append(sub.project_id)
    for p in touched:
        await svc.changes.plan_changed(p, "subscription.downgrade_to_free")
    svc.publish(events)
    return len(touched)
