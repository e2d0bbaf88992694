"""What the handlers of every Stripe object family look up: the project an object belongs to, the
plan and subscription rows it names, and the audit row of what an event did."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import PaymentCustomer, Plan, PlanSubscription, Project
from ledgerx.domain import audit
from ledgerx.domain.payments import objects, subscriptions
from ledgerx.domain.payments.handlers.event import Event, Permanent
from ledgerx.domain.payments.objects import Obj
from ledgerx.domain.payments.service import PaymentsService


async def project_for(
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


async def require_plan(s: AsyncSession, plan_id: uuid.UUID) -> None:
    if await s.scalar(select(Plan.id).where(Plan.id == plan_id)) is None:
        raise Permanent(f"plan {ids.encode('plan', plan_id)} not found")


async def subscription_row(s: AsyncSession, stripe_subscription_id: str | None) -> PlanSubscription | None:
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


async def ensure_subscription(
    s: AsyncSession,
    obj: Obj,
    meta: Mapping[str, str],
    *,
    stripe_subscription_id: str,
    project_id: uuid.UUID,
    plan_id: uuid.UUID,
) -> tuple[PlanSubscription, bool]:
    """The (locked) subscription row a Stripe object names, created on first sight with the
    object's customer and the wallet named in `meta`; True when this call created it."""
    return await subscriptions.ensure_row(
        s,
        stripe_subscription_id=stripe_subscription_id,
        project_id=project_id,
        plan_id=plan_id,
        customer_id=objects.ref(obj.get("customer")),
        wallet_id=objects.decode_meta(meta, objects.META_WALLET, "wallet"),
    )


async def audit_event(
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
