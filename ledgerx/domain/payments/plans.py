"""Plans (platform admins): tiers, intervals, included credits, rate limit, monthly quotas,
features, entitlements (domain/entitlements/features.py) and trial days; a paid plan sells
through a recurring Stripe Price (`prices`).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select

from ledgerx import ids
from ledgerx.db.models import Plan
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.entitlements import features as entitlement_features
from ledgerx.domain.errors import BadInput, NotFound
from ledgerx.domain.payments import records
from ledgerx.domain.payments.catalog import archive_item, clean_name, positive
from ledgerx.domain.payments.money import Money
from ledgerx.domain.payments.prices import StripeChanges, record_price, retire_price, save_new, stripe_price
from ledgerx.domain.payments.records import PlanRecord
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.ids import uuid7

TIERS = ("FREE", "PRO", "ENTERPRISE")


INTERVALS = ("MONTH", "YEAR")


_METRIC = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


MAX_FEATURES = 50


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
        out[metric] = positive(limit, "monthlyQuotas.limit", allow_zero=True)
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


def _rollover(value: bool) -> bool:
    if not isinstance(value, bool):
        raise BadInput("rolloverCredits must be true or false", field="rolloverCredits")
    return value


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
        "entitlements": p.entitlements,
        "trialDays": p.trial_days,
        "rolloverCredits": p.rollover_credits,
        "stripePriceId": p.stripe_price_id,
        "archived": p.archived_at is not None,
    }


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
    rollover_credits: bool = False,
    entitlements: Sequence[Mapping[str, Any]] = (),
) -> PlanRecord:
    # Every check before Stripe is asked, so refused input never leaves Stripe objects behind.
    clean = clean_name(name)
    _tier(tier, price)
    _interval(interval)
    positive(included_credits, "includedCredits", allow_zero=True)
    quotas = quotas_json(monthly_quotas or {})
    feature_list = _features(features)
    granted = entitlement_features.parse(entitlements)
    trial = _trial_days(trial_days)
    rollover = _rollover(rollover_credits)
    plan_id = uuid7()
    stripe_ids = None
    if price.amount > 0:
        stripe_ids = await stripe_price(
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
        entitlements=granted,
        trial_days=trial,
        rollover_credits=rollover,
        stripe_product_id=stripe_ids[0] if stripe_ids else None,
        stripe_price_id=stripe_ids[1] if stripe_ids else None,
    )
    plan = await save_new(
        svc, actor, plan, kind="plan", stripe_ids=stripe_ids, price=price, interval=interval, snapshot=plan_snapshot
    )
    await svc.changes.plan_changed(None, "catalog.plan.create")
    return records.of(PlanRecord, plan)


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
    rollover_credits: bool | None = None,
    entitlements: Sequence[Mapping[str, Any]] | None = None,
) -> PlanRecord:
    """Edit a plan. New entitlements apply to its projects at once (every instance forgets its
    checks). A new price applies to new subscriptions; existing ones keep theirs. A change
    of `rollover_credits` applies to credits granted from then on."""
    changes = StripeChanges()
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
            rollover_credits=rollover_credits,
            entitlements=entitlements,
            changes=changes,
        )
    except BaseException:
        await changes.undo(svc)
        raise
    await changes.finish(svc)
    return records.of(PlanRecord, plan)


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
    rollover_credits: bool | None,
    entitlements: Sequence[Mapping[str, Any]] | None,
    changes: StripeChanges,
) -> Plan:
    async with svc.db.transaction(system=True) as s:
        plan = (await s.execute(select(Plan).where(Plan.id == plan_id).with_for_update())).scalar()
        if plan is None:
            raise NotFound("plan not found", field="id")
        before = plan_snapshot(plan)
        if name is not None:
            plan.name = clean_name(name)
            if svc.stripe is not None and plan.stripe_product_id and plan.name != before["name"]:
                await svc.stripe.update_product(plan.stripe_product_id, {"name": plan.name})
        if included_credits is not None:
            plan.included_credits = positive(included_credits, "includedCredits", allow_zero=True)
        if rate_limit is not _UNSET:
            plan.rate_limit = rate_limit
        if monthly_quotas is not None:
            plan.monthly_quotas = quotas_json(monthly_quotas)
        if features is not None:
            plan.features = _features(features)
        if entitlements is not None:
            plan.entitlements = entitlement_features.parse(entitlements)
        if trial_days is not None:
            plan.trial_days = _trial_days(trial_days)
        if rollover_credits is not None:
            plan.rollover_credits = _rollover(rollover_credits)
        if price is not None and (price.amount, price.currency) != (plan.price_amount, plan.currency):
            _tier(plan.tier, price)
            created = None
            if price.amount > 0:
                created = await stripe_price(
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
            await retire_price(s, plan.stripe_price_id, changes)
            plan.price_amount, plan.currency = price.amount, price.currency
            plan.stripe_price_id = None
            if created:
                plan.stripe_product_id, plan.stripe_price_id = created
                await record_price(s, created[1], plan_id=plan.id, pack_id=None, price=price, interval=plan.interval)
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
    await svc.changes.plan_changed(None, "catalog.plan.update")
    return plan


async def archive_plan(svc: PaymentsService, actor: Actor, plan_id: uuid.UUID) -> PlanRecord:
    """No new subscriptions; existing ones continue on it until they change or end."""
    plan = await archive_item(svc, actor, Plan, plan_id, "plan", plan_snapshot)
    await svc.changes.plan_changed(None, "catalog.plan.archive")
    return records.of(PlanRecord, plan)
