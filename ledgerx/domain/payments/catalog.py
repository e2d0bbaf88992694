"""The catalog: credit packs and plans (platform admins), kept in sync with Stripe Products/Prices.

Stripe Prices are immutable, so a price change creates a new Price and deactivates the old one;
`catalog_prices` remembers every price a plan ever had, so subscriptions still on an old price map
back to their plan. Without STRIPE_API_KEY the catalog works locally and its Stripe objects are
created on first checkout once Stripe is configured.

This module holds what plans and credit packs share (name and amount checks, reads, archiving);
`plans` and `credit_packs` change them, `prices` keeps their Stripe Products and Prices.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import CatalogPrice, CreditPack, Plan
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput, NotFound
from ledgerx.domain.payments import records
from ledgerx.domain.payments.records import CreditPackRecord, PlanRecord
from ledgerx.domain.payments.service import PaymentsService

# A catalog model with `id`, `archived_at`, `updated_at` and `stripe_product_id`.
Archivable = TypeVar("Archivable", CreditPack, Plan)


def clean_name(name: str) -> str:
    clean = (name or "").strip()
    if not 1 <= len(clean) <= 200 or "\x00" in clean:
        raise BadInput("name must be 1 to 200 characters", field="name")
    return clean


def positive(value: int, field: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
        raise BadInput(f"{field} must be {'zero or ' if allow_zero else ''}a positive integer", field=field)
    if value >= 2**63:
        raise BadInput(f"{field} is out of range", field=field)
    return value


async def list_plans(svc: PaymentsService, *, include_archived: bool = False) -> list[PlanRecord]:
    async with svc.db.read() as s:
        q = select(Plan).order_by(Plan.price_amount, Plan.id)
        if not include_archived:
            q = q.where(Plan.archived_at.is_(None))
        return [records.of(PlanRecord, p) for p in (await s.execute(q)).scalars()]


async def list_credit_packs(svc: PaymentsService, *, include_archived: bool = False) -> list[CreditPackRecord]:
    async with svc.db.read() as s:
        q = select(CreditPack).order_by(CreditPack.price_amount, CreditPack.id)
        if not include_archived:
            q = q.where(CreditPack.archived_at.is_(None))
        return [records.of(CreditPackRecord, p) for p in (await s.execute(q)).scalars()]


async def get_plan(svc: PaymentsService, plan_id: uuid.UUID) -> PlanRecord:
    async with svc.db.read() as s:
        plan = await s.get(Plan, plan_id)
    if plan is None:
        raise NotFound("plan not found", field="planId")
    return records.of(PlanRecord, plan)


async def get_credit_pack(svc: PaymentsService, pack_id: uuid.UUID) -> CreditPackRecord:
    async with svc.db.read() as s:
        pack = await s.get(CreditPack, pack_id)
    if pack is None:
        raise NotFound("credit pack not found", field="creditPackId")
    return records.of(CreditPackRecord, pack)


async def plans_by_id(svc: PaymentsService, plan_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, PlanRecord]:
    if not plan_ids:
        return {}
    async with svc.db.read() as s:
        rows = (await s.execute(select(Plan).where(Plan.id.in_(set(plan_ids))))).scalars()
        return {p.id: records.of(PlanRecord, p) for p in rows}


async def plan_for_price(s: AsyncSession, stripe_price_id: str | None) -> uuid.UUID | None:
    if not stripe_price_id:
        return None
    return await s.scalar(select(CatalogPrice.plan_id).where(CatalogPrice.stripe_price_id == stripe_price_id))


def default_free_plan(plans: Sequence[PlanRecord]) -> PlanRecord | None:
    """The plan of a project without a subscription (or after dunning): the newest active FREE
    plan (an admin replaces the free plan by creating the new one, then archiving the old)."""
    free = [p for p in plans if p.tier == "FREE" and p.archived_at is None]
    return max(free, key=lambda p: p.id) if free else None


async def archive_item(
    svc: PaymentsService,
    actor: Actor,
    model: type[Archivable],
    item_id: uuid.UUID,
    kind: str,
    snapshot: Callable[[Archivable], dict[str, Any]],
) -> Archivable:
    """Archive a catalog item once (idempotent): deactivate its Stripe product, audit the change."""
    async with svc.db.transaction(system=True) as s:
        item = (await s.execute(select(model).where(model.id == item_id).with_for_update())).scalar()
        if item is None:
            raise NotFound(f"{kind.replace('_', ' ')} not found", field="id")
        if item.archived_at is None:
            before = snapshot(item)
            item.archived_at = item.updated_at = svc.now()
            if svc.stripe is not None and item.stripe_product_id:
                await svc.stripe.update_product(item.stripe_product_id, {"active": False})
            await audit.record(
                s,
                actor,
                f"catalog.{kind}.archive",
                target_type=kind,
                target_id=ids.encode(kind, item.id),
                before=before,
                after=snapshot(item),
            )
    return item
