"""The catalog's Stripe Products and Prices: made for a new or repriced item, undone when the
change is not saved, retired once a replacement is saved; `catalog_prices` remembers each one.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import CatalogPrice, CreditPack, Plan
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import AppError
from ledgerx.domain.payments import objects, records
from ledgerx.domain.payments.catalog import Archivable
from ledgerx.domain.payments.money import Money
from ledgerx.domain.payments.records import CreditPackRecord, PlanRecord
from ledgerx.domain.payments.service import PaymentsService

log = logging.getLogger("ledgerx.payments.catalog")


async def stripe_price(
    svc: PaymentsService,
    *,
    kind: str,
    item_id: uuid.UUID,
    name: str,
    product_id: str | None,
    price: Money,
    interval: str | None,
    nonce: str,
) -> tuple[str, str] | None:
    """Create (or reuse) the Product and create a Price; None when Stripe is not configured.

    A Product made here whose Price then fails is removed again (`discard`): the caller saves
    nothing, so nothing would ever refer to it. Its idempotency key holds the call's `nonce`, so a
    later attempt never gets the removed Product back from Stripe's idempotency cache. Callers that
    keep the item (`ensure_*_price`) save the Product first instead, and reuse it."""
    stripe = svc.stripe
    if stripe is None:
        return None
    made = product_id is None
    if product_id is None:
        product_id = await _stripe_product(svc, kind=kind, item_id=item_id, name=name, nonce=nonce)
    try:
        price_id = await _create_price(svc, kind, item_id, product_id, price, interval, nonce)
    except BaseException:
        if made:
            await discard(svc, product_id=product_id, price_id=None)
        raise
    return product_id, price_id


def _meta(kind: str, item_id: uuid.UUID) -> dict[str, str]:
    return {objects.META_PLAN if kind == "plan" else objects.META_PACK: ids.encode(kind, item_id)}


async def _stripe_product(
    svc: PaymentsService, *, kind: str, item_id: uuid.UUID, name: str, nonce: str | None = None
) -> str:
    public = ids.encode(kind, item_id)
    key = f"ledgerx:{public}:product" + (f":{nonce}" if nonce else "")
    product = await svc.require_stripe().create_product(name, _meta(kind, item_id), key)
    return str(product["id"])


async def _create_price(
    svc: PaymentsService,
    kind: str,
    item_id: uuid.UUID,
    product_id: str,
    price: Money,
    interval: str | None,
    nonce: str,
) -> str:
    public = ids.encode(kind, item_id)
    created = await svc.require_stripe().create_price(
        product_id, price.amount, price.currency, interval, _meta(kind, item_id), f"ledgerx:{public}:price:{nonce}"
    )
    return str(created["id"])


async def discard(svc: PaymentsService, *, product_id: str | None, price_id: str | None) -> None:
    """Undo Stripe objects made for a catalog change that was not saved, so no orphan stays on sale:
    the Price is archived, the Product deleted (or archived when it has a Price, which Stripe keeps).
    Never raises: the caller is already failing with the error that matters; what could not be
    undone is logged with its id for an operator."""
    stripe = svc.stripe
    if stripe is None:
        return
    if price_id is not None:
        try:
            await stripe.deactivate_price(price_id)
        except AppError:
            log.error("could not archive the unsaved Stripe price %s; archive it in the dashboard", price_id)
    if product_id is None:
        return
    if price_id is None:
        try:
            await stripe.delete_product(product_id)
            return
        except AppError:
            log.info("Stripe product %s could not be deleted; archiving it", product_id)
    try:
        await stripe.update_product(product_id, {"active": False})
    except AppError:
        log.error("could not archive the unsaved Stripe product %s; archive it in the dashboard", product_id)


async def record_price(
    s: AsyncSession,
    price_id: str,
    *,
    plan_id: uuid.UUID | None,
    pack_id: uuid.UUID | None,
    price: Money,
    interval: str | None,
) -> None:
    await s.execute(
        insert(CatalogPrice).values(
            stripe_price_id=price_id,
            plan_id=plan_id,
            credit_pack_id=pack_id,
            amount=price.amount,
            currency=price.currency,
            interval=interval,
            active=True,
        )
    )


async def save_new(
    svc: PaymentsService,
    actor: Actor,
    item: Archivable,
    *,
    kind: str,
    stripe_ids: tuple[str, str] | None,
    price: Money,
    interval: str | None,
    snapshot: Callable[[Archivable], dict[str, Any]],
) -> Archivable:
    """Save a new catalog item with its Stripe Price (when one was made) and its audit row. When
    the save fails, the Product and Price made for it are undone (`discard`): nothing refers to them."""
    try:
        async with svc.db.transaction(system=True) as s:
            s.add(item)
            await s.flush()
            if stripe_ids:
                await record_price(
                    s,
                    stripe_ids[1],
                    plan_id=item.id if kind == "plan" else None,
                    pack_id=item.id if kind == "credit_pack" else None,
                    price=price,
                    interval=interval,
                )
            await audit.record(
                s,
                actor,
                f"catalog.{kind}.create",
                target_type=kind,
                target_id=ids.encode(kind, item.id),
                after=snapshot(item),
            )
            await s.refresh(item)
    except BaseException:
        if stripe_ids:
            await discard(svc, product_id=stripe_ids[0], price_id=stripe_ids[1])
        raise
    return item


@dataclasses.dataclass(slots=True)
class StripeChanges:
    """Stripe work of one catalog change: Prices (and Products) made for it, undone if the change
    is not saved; replaced Prices, archived at Stripe only once the change is saved (archived
    earlier, a failed save would leave the item with a Price Stripe no longer sells)."""

    made: list[tuple[str | None, str]] = dataclasses.field(default_factory=list)
    retired: list[str] = dataclasses.field(default_factory=list)

    async def undo(self, svc: PaymentsService) -> None:
        for product_id, price_id in self.made:
            await discard(svc, product_id=product_id, price_id=price_id)

    async def finish(self, svc: PaymentsService) -> None:
        for price_id in self.retired:
            if svc.stripe is None:
                return
            try:
                await svc.stripe.deactivate_price(price_id)
            except AppError:
                # Saved already: LedgerX sells the new Price whatever Stripe says about the old one.
                log.error("could not archive the replaced Stripe price %s; archive it in the dashboard", price_id)


async def retire_price(s: AsyncSession, price_id: str | None, changes: StripeChanges) -> None:
    if price_id is None:
        return
    await s.execute(update(CatalogPrice).where(CatalogPrice.stripe_price_id == price_id).values(active=False))
    changes.retired.append(price_id)


async def ensure_plan_price(svc: PaymentsService, plan: PlanRecord) -> PlanRecord:
    """The plan with its Stripe Price, created now if the catalog was made without Stripe."""
    if plan.stripe_price_id is not None:
        return plan
    svc.require_stripe()
    await _ensure_product(svc, Plan, "plan", plan.id)
    async with svc.db.transaction(system=True) as s:
        row = (await s.execute(select(Plan).where(Plan.id == plan.id).with_for_update())).scalar_one()
        if row.stripe_price_id is None:
            assert row.stripe_product_id is not None
            price = Money(row.price_amount, row.currency)
            nonce = f"{row.price_amount}:{row.currency}:{row.interval}"
            row.stripe_price_id = await _create_price(
                svc, "plan", row.id, row.stripe_product_id, price, row.interval, nonce
            )
            await record_price(s, row.stripe_price_id, plan_id=row.id, pack_id=None, price=price, interval=row.interval)
        return records.of(PlanRecord, row)


async def _ensure_product(svc: PaymentsService, model: type[Archivable], kind: str, item_id: uuid.UUID) -> None:
    """Give a saved catalog item its Stripe Product, committed before any Price is made: a Price
    that then fails leaves a Product the item owns (reused by the retry), never an orphan."""
    async with svc.db.transaction(system=True) as s:
        row = (await s.execute(select(model).where(model.id == item_id).with_for_update())).scalar_one()
        if row.stripe_product_id is None:
            row.stripe_product_id = await _stripe_product(svc, kind=kind, item_id=row.id, name=row.name)


async def ensure_pack_price(svc: PaymentsService, pack: CreditPackRecord) -> CreditPackRecord:
    if pack.stripe_price_id is not None:
        return pack
    svc.require_stripe()
    await _ensure_product(svc, CreditPack, "credit_pack", pack.id)
    async with svc.db.transaction(system=True) as s:
        row = (await s.execute(select(CreditPack).where(CreditPack.id == pack.id).with_for_update())).scalar_one()
        if row.stripe_price_id is None:
            assert row.stripe_product_id is not None
            price = Money(row.price_amount, row.currency)
            nonce = f"{row.price_amount}:{row.currency}"
            row.stripe_price_id = await _create_price(
                svc, "credit_pack", row.id, row.stripe_product_id, price, None, nonce
            )
            await record_price(s, row.stripe_price_id, plan_id=None, pack_id=row.id, price=price, interval=None)
        return records.of(CreditPackRecord, row)
