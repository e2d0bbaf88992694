"""The catalog: credit packs and plans (platform admins), kept in sync with Stripe Products/Prices.

Stripe Prices are immutable, so a price change creates a new Price and deactivates the old one;
`catalog_prices` remembers every price a plan ever had, so subscriptions still on an old price map
back to their plan. Without STRIPE_API_KEY the catalog works locally and its Stripe objects are
created on first checkout once Stripe is configured.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import CatalogPrice, CreditPack, Plan
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import AppError, BadInput, NotFound
from ledgerx.domain.payments import objects
from ledgerx.domain.payments.money import Money
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.ids import uuid7

log = logging.getLogger("ledgerx.payments.catalog")

# A catalog model with `id`, `archived_at`, `updated_at` and `stripe_product_id`.
_Archivable = TypeVar("_Archivable", CreditPack, Plan)

TIERS = ("FREE", "PRO", "ENTERPRISE")
INTERVALS = ("MONTH", "YEAR")
_METRIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MAX_FEATURES = 50


# -- validation ---------------------------------------------------------------------------------


def _name(name: str) -> str:
    clean = (name or "").strip()
    if not 1 <= len(clean) <= 200 or "\x00" in clean:
        raise BadInput("name must be 1 to 200 characters", field="name")
    return clean


def _positive(value: int, field: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or (value == 0 and not allow_zero):
        raise BadInput(f"{field} must be {'zero or ' if allow_zero else ''}a positive integer", field=field)
    if value >= 2**63:
        raise BadInput(f"{field} is out of range", field=field)
    return value


def rate_limit_json(burst: int, per_second: float) -> dict[str, Any]:
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1 or burst > 1_000_000:
        raise BadInput("rateLimit.burst must be between 1 and 1000000", field="rateLimit.burst")
    if not 0 < float(per_second) <= 1_000_000:
        raise BadInput("rateLimit.perSecond must be positive", field="rateLimit.perSecond")
    return {"burst": burst, "perSecond": float(per_second)}


def quotas_json(quotas: Mapping[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for metric, limit in quotas.items():
        if not _METRIC.match(metric):
            raise BadInput(f"invalid metric key {metric!r}", field="monthlyQuotas")
        out[metric] = _positive(limit, "monthlyQuotas.limit", allow_zero=True)
    return out


def _features(features: Sequence[str]) -> list[str]:
    clean = []
    for f in features:
        s = f.strip()
        if not 1 <= len(s) <= 100:
            raise BadInput("each feature must be 1 to 100 characters", field="features")
        if s not in clean:
            clean.append(s)
    if len(clean) > MAX_FEATURES:
        raise BadInput(f"at most {MAX_FEATURES} features", field="features")
    return clean


def _tier(tier: str, price: Money) -> str:
    if tier not in TIERS:
        raise BadInput("tier must be FREE, PRO or ENTERPRISE", field="tier")
    if tier == "FREE" and price.amount != 0:
        raise BadInput("a FREE plan costs nothing", field="price.amount")
    if tier != "FREE" and price.amount == 0:
        raise BadInput("a paid tier needs a price above zero", field="price.amount")
    return tier


def _interval(interval: str) -> str:
    if interval not in INTERVALS:
        raise BadInput("interval must be MONTH or YEAR", field="interval")
    return interval


def _trial_days(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= 730:
        raise BadInput("trialDays must be between 0 and 730", field="trialDays")
    return days


def plan_snapshot(p: Plan) -> dict[str, Any]:
    return {
        "name": p.name,
        "tier": p.tier,
        "interval": p.interval,
        "price": str(p.price_amount),
        "currency": p.currency,
        "includedCredits": str(p.included_credits),
        "rateLimit": p.rate_limit,
        "monthlyQuotas": {k: str(v) for k, v in (p.monthly_quotas or {}).items()},
        "features": p.features,
        "trialDays": p.trial_days,
        "stripePriceId": p.stripe_price_id,
        "archived": p.archived_at is not None,
    }


def pack_snapshot(p: CreditPack) -> dict[str, Any]:
    return {
        "name": p.name,
        "credits": str(p.credits),
        "price": str(p.price_amount),
        "currency": p.currency,
        "stripePriceId": p.stripe_price_id,
        "archived": p.archived_at is not None,
    }


# -- reads --------------------------------------------------------------------------------------


async def list_plans(svc: PaymentsService, *, include_archived: bool = False) -> list[Plan]:
    async with svc.db.read() as s:
        q = select(Plan).order_by(Plan.price_amount, Plan.id)
        if not include_archived:
            q = q.where(Plan.archived_at.is_(None))
        return list((await s.execute(q)).scalars())


async def list_credit_packs(svc: PaymentsService, *, include_archived: bool = False) -> list[CreditPack]:
    async with svc.db.read() as s:
        q = select(CreditPack).order_by(CreditPack.price_amount, CreditPack.id)
        if not include_archived:
            q = q.where(CreditPack.archived_at.is_(None))
        return list((await s.execute(q)).scalars())


async def get_plan(svc: PaymentsService, plan_id: uuid.UUID) -> Plan:
    async with svc.db.read() as s:
        plan = await s.get(Plan, plan_id)
    if plan is None:
        raise NotFound("plan not found", field="planId")
    return plan


async def get_credit_pack(svc: PaymentsService, pack_id: uuid.UUID) -> CreditPack:
    async with svc.db.read() as s:
        pack = await s.get(CreditPack, pack_id)
    if pack is None:
        raise NotFound("credit pack not found", field="creditPackId")
    return pack


async def plans_by_id(svc: PaymentsService, plan_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Plan]:
    if not plan_ids:
        return {}
    async with svc.db.read() as s:
        rows = (await s.execute(select(Plan).where(Plan.id.in_(set(plan_ids))))).scalars()
        return {p.id: p for p in rows}


async def plan_for_price(s: AsyncSession, stripe_price_id: str | None) -> uuid.UUID | None:
    if not stripe_price_id:
        return None
    return await s.scalar(select(CatalogPrice.plan_id).where(CatalogPrice.stripe_price_id == stripe_price_id))


# -- Stripe objects ---------------------------------------------------------------------------------


async def _stripe_price(
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


async def _record_price(
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
    item: _Archivable,
    *,
    kind: str,
    stripe_ids: tuple[str, str] | None,
    price: Money,
    interval: str | None,
    snapshot: Callable[[_Archivable], dict[str, Any]],
) -> _Archivable:
    """Save a new catalog item with its Stripe Price (when one was made) and its audit row. When
    the save fails, the Product and Price made for it are undone (`discard`): nothing refers to them."""
    try:
        async with svc.db.transaction(system=True) as s:
            s.add(item)
            await s.flush()
            if stripe_ids:
                await _record_price(
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
class _StripeChanges:
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


async def _retire_price(s: AsyncSession, price_id: str | None, changes: _StripeChanges) -> None:
    if price_id is None:
        return
    await s.execute(update(CatalogPrice).where(CatalogPrice.stripe_price_id == price_id).values(active=False))
    changes.retired.append(price_id)


async def ensure_plan_price(svc: PaymentsService, plan: Plan) -> Plan:
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
            await _record_price(
                s, row.stripe_price_id, plan_id=row.id, pack_id=None, price=price, interval=row.interval
            )
        return row


async def _ensure_product(svc: PaymentsService, model: type[_Archivable], kind: str, item_id: uuid.UUID) -> None:
    """Give a saved catalog item its Stripe Product, committed before any Price is made: a Price
    that then fails leaves a Product the item owns (reused by the retry), never an orphan."""
    async with svc.db.transaction(system=True) as s:
        row = (await s.execute(select(model).where(model.id == item_id).with_for_update())).scalar_one()
        if row.stripe_product_id is None:
            row.stripe_product_id = await _stripe_product(svc, kind=kind, item_id=row.id, name=row.name)


async def ensure_pack_price(svc: PaymentsService, pack: CreditPack) -> CreditPack:
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
            await _record_price(s, row.stripe_price_id, plan_id=None, pack_id=row.id, price=price, interval=None)
        return row


# -- credit packs -------------------------------------------------------------------------------------


async def create_credit_pack(
    svc: PaymentsService, actor: Actor, *, name: str, credits: int, price: Money
) -> CreditPack:
    clean = _name(name)
    _positive(credits, "credits")
    if price.amount <= 0:
        raise BadInput("a credit pack needs a price above zero", field="price.amount")
    pack_id = uuid7()
    stripe_ids = await _stripe_price(
        svc,
        kind="credit_pack",
        item_id=pack_id,
        name=clean,
        product_id=None,
        price=price,
        interval=None,
        nonce=f"{price.amount}:{price.currency}",
    )
    pack = CreditPack(
        id=pack_id,
        name=clean,
        credits=credits,
        price_amount=price.amount,
        currency=price.currency,
        stripe_product_id=stripe_ids[0] if stripe_ids else None,
        stripe_price_id=stripe_ids[1] if stripe_ids else None,
    )
    return await save_new(
        svc, actor, pack, kind="credit_pack", stripe_ids=stripe_ids, price=price, interval=None, snapshot=pack_snapshot
    )


async def update_credit_pack(
    svc: PaymentsService,
    actor: Actor,
    pack_id: uuid.UUID,
    *,
    name: str | None = None,
    credits: int | None = None,
    price: Money | None = None,
) -> CreditPack:
    changes = _StripeChanges()
    try:
        pack = await _update_credit_pack(svc, actor, pack_id, name=name, credits=credits, price=price, changes=changes)
    except BaseException:
        await changes.undo(svc)
        raise
    await changes.finish(svc)
    return pack


async def _update_credit_pack(
    svc: PaymentsService,
    actor: Actor,
    pack_id: uuid.UUID,
    *,
    name: str | None,
    credits: int | None,
    price: Money | None,
    changes: _StripeChanges,
) -> CreditPack:
    async with svc.db.transaction(system=True) as s:
        pack = (await s.execute(select(CreditPack).where(CreditPack.id == pack_id).with_for_update())).scalar()
        if pack is None:
            raise NotFound("credit pack not found", field="id")
        before = pack_snapshot(pack)
        if name is not None:
            pack.name = _name(name)
            if svc.stripe is not None and pack.stripe_product_id and pack.name != before["name"]:
                await svc.stripe.update_product(pack.stripe_product_id, {"name": pack.name})
        if credits is not None:
            pack.credits = _positive(credits, "credits")
        if price is not None and (price.amount, price.currency) != (pack.price_amount, pack.currency):
            if price.amount <= 0:
                raise BadInput("a credit pack needs a price above zero", field="price.amount")
            created = await _stripe_price(
                svc,
                kind="credit_pack",
                item_id=pack.id,
                name=pack.name,
                product_id=pack.stripe_product_id,
                price=price,
                interval=None,
                nonce=uuid7().hex,
            )
            if created:
                changes.made.append((None if pack.stripe_product_id else created[0], created[1]))
            await _retire_price(s, pack.stripe_price_id, changes)
            pack.price_amount, pack.currency = price.amount, price.currency
            pack.stripe_product_id, pack.stripe_price_id = created if created else (pack.stripe_product_id, None)
            if created:
                await _record_price(s, created[1], plan_id=None, pack_id=pack.id, price=price, interval=None)
        pack.updated_at = svc.now()
        await audit.record(
            s,
            actor,
            "catalog.credit_pack.update",
            target_type="credit_pack",
            target_id=ids.encode("credit_pack", pack.id),
            before=before,
            after=pack_snapshot(pack),
        )
    return pack


async def archive_credit_pack(svc: PaymentsService, actor: Actor, pack_id: uuid.UUID) -> CreditPack:
    return await _archive(svc, actor, CreditPack, pack_id, "credit_pack", pack_snapshot)


async def _archive(
    svc: PaymentsService,
    actor: Actor,
    model: type[_Archivable],
    item_id: uuid.UUID,
    kind: str,
    snapshot: Callable[[_Archivable], dict[str, Any]],
) -> _Archivable:
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


# -- plans -------------------------------------------------------------------------------------------


async def create_plan(
    svc: PaymentsService,
    actor: Actor,
    *,
    name: str,
    tier: str,
    interval: str,
    price: Money,
    included_credits: int = 0,
    rate_limit: dict[str, Any] | None = None,
    monthly_quotas: Mapping[str, int] | None = None,
    features: Sequence[str] = (),
    trial_days: int = 0,
) -> Plan:
    # Every check before Stripe is asked, so refused input never leaves Stripe objects behind.
    clean = _name(name)
    _tier(tier, price)
    _interval(interval)
    _positive(included_credits, "includedCredits", allow_zero=True)
    quotas = quotas_json(monthly_quotas or {})
    feature_list = _features(features)
    trial = _trial_days(trial_days)
    plan_id = uuid7()
    stripe_ids = None
    if price.amount > 0:
        stripe_ids = await _stripe_price(
            svc,
            kind="plan",
            item_id=plan_id,
            name=clean,
            product_id=None,
            price=price,
            interval=interval,
            nonce=f"{price.amount}:{price.currency}:{interval}",
        )
    plan = Plan(
        id=plan_id,
        name=clean,
        tier=tier,
        interval=interval,
        price_amount=price.amount,
        currency=price.currency,
        included_credits=included_credits,
        rate_limit=rate_limit,
        monthly_quotas=quotas,
        features=feature_list,
        trial_days=trial,
        stripe_product_id=stripe_ids[0] if stripe_ids else None,
        stripe_price_id=stripe_ids[1] if stripe_ids else None,
    )
    plan = await save_new(
        svc, actor, plan, kind="plan", stripe_ids=stripe_ids, price=price, interval=interval, snapshot=plan_snapshot
    )
    svc.forget_plan()
    return plan


_UNSET: Any = object()


async def update_plan(
    svc: PaymentsService,
    actor: Actor,
    plan_id: uuid.UUID,
    *,
    name: str | None = None,
    price: Money | None = None,
    included_credits: int | None = None,
    rate_limit: dict[str, Any] | None = _UNSET,
    monthly_quotas: Mapping[str, int] | None = None,
    features: Sequence[str] | None = None,
    trial_days: int | None = None,
) -> Plan:
    """Edit a plan. A new price applies to new subscriptions; existing ones keep theirs."""
    changes = _StripeChanges()
    try:
        plan = await _update_plan(
            svc,
            actor,
            plan_id,
            name=name,
            price=price,
            included_credits=included_credits,
            rate_limit=rate_limit,
            monthly_quotas=monthly_quotas,
            features=features,
            trial_days=trial_days,
            changes=changes,
        )
    except BaseException:
        await changes.undo(svc)
        raise
    await changes.finish(svc)
    return plan


async def _update_plan(
    svc: PaymentsService,
    actor: Actor,
    plan_id: uuid.UUID,
    *,
    name: str | None,
    price: Money | None,
    included_credits: int | None,
    rate_limit: dict[str, Any] | None,
    monthly_quotas: Mapping[str, int] | None,
    features: Sequence[str] | None,
    trial_days: int | None,
    changes: _StripeChanges,
) -> Plan:
    async with svc.db.transaction(system=True) as s:
        plan = (await s.execute(select(Plan).where(Plan.id == plan_id).with_for_update())).scalar()
        if plan is None:
            raise NotFound("plan not found", field="id")
        before = plan_snapshot(plan)
        if name is not None:
            plan.name = _name(name)
            if svc.stripe is not None and plan.stripe_product_id and plan.name != before["name"]:
                await svc.stripe.update_product(plan.stripe_product_id, {"name": plan.name})
        if included_credits is not None:
            plan.included_credits = _positive(included_credits, "includedCredits", allow_zero=True)
        if rate_limit is not _UNSET:
            plan.rate_limit = rate_limit
        if monthly_quotas is not None:
            plan.monthly_quotas = quotas_json(monthly_quotas)
        if features is not None:
            plan.features = _features(features)
        if trial_days is not None:
            plan.trial_days = _trial_days(trial_days)
        if price is not None and (price.amount, price.currency) != (plan.price_amount, plan.currency):
            _tier(plan.tier, price)
            created = None
            if price.amount > 0:
                created = await _stripe_price(
                    svc,
                    kind="plan",
                    item_id=plan.id,
                    name=plan.name,
                    product_id=plan.stripe_product_id,
                    price=price,
                    interval=plan.interval,
                    nonce=uuid7().hex,
                )
                if created:
                    changes.made.append((None if plan.stripe_product_id else created[0], created[1]))
            await _retire_price(s, plan.stripe_price_id, changes)
            plan.price_amount, plan.currency = price.amount, price.currency
            plan.stripe_price_id = None
            if created:
                plan.stripe_product_id, plan.stripe_price_id = created
                await _record_price(s, created[1], plan_id=plan.id, pack_id=None, price=price, interval=plan.interval)
        plan.updated_at = svc.now()
        await audit.record(
            s,
            actor,
            "catalog.plan.update",
            target_type="plan",
            target_id=ids.encode("plan", plan.id),
            before=before,
            after=plan_snapshot(plan),
        )
    svc.forget_plan()
    return plan


async def archive_plan(svc: PaymentsService, actor: Actor, plan_id: uuid.UUID) -> Plan:
    """No new subscriptions; existing ones continue on it until they change or end."""
    plan = await _archive(svc, actor, Plan, plan_id, "plan", plan_snapshot)
    svc.forget_plan()
    return plan


def default_free_plan(plans: Sequence[Plan]) -> Plan | None:
    """The plan of a project without a subscription (or after dunning): the newest active FREE
    plan (an admin replaces the free plan by creating the new one, then archiving the old)."""
    free = [p for p in plans if p.tier == "FREE" and p.archived_at is None]
    return max(free, key=lambda p: p.id) if free else None
