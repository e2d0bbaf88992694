"""Subscriptions: state sync from Stripe snapshots, the effective plan, plan changes, cancellation,
dunning and platform-admin overrides.

Order independence:
- a Stripe subscription snapshot is applied only when it is newer than the one applied before,
  ordered by (event time, status rank, event id); local changes (changePlan, cancel) apply the
  snapshot Stripe returned with our clock as its time, so a stale event cannot undo them;
- dunning (past due since, grace end) is recomputed from the subscription's invoices, whose own
  state only moves forward (PAID and VOID are final, failures keep the earliest time seen);
- the effective plan is a function of that state and the clock, so it converges too.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import EntitlementOverride, Plan, PlanOverride, PlanSubscription
from ledgerx.domain import audit, topics
from ledgerx.domain.actor import Actor
from ledgerx.domain.entitlements import features
from ledgerx.domain.errors import BadInput
from ledgerx.domain.payments import catalog, objects, records
from ledgerx.domain.payments.records import OverrideRecord, PlanRecord, SubscriptionRecord
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.domain.ratelimit import Limit
from ledgerx.domain.usage.quotas import Meter, period_end, period_start
from ledgerx.ids import uuid7

ENDED = frozenset({"canceled", "incomplete_expired"})


# Tie-break between two snapshots of the same second: the later state in a subscription's life wins.
STATUS_RANK = {
    "incomplete": 0,
    "trialing": 1,
    "active": 2,
    "paused": 3,
    "past_due": 4,
    "unpaid": 5,
    "incomplete_expired": 6,
    "canceled": 7,
}


# The status rules read a row inside the domain's transactions and a record everywhere else.
Subscription = PlanSubscription | SubscriptionRecord


def topic(project_id: uuid.UUID) -> str:
    return topics.project_subscription(project_id)


def public_status(sub: Subscription) -> str:
    if sub.stripe_status in ENDED or sub.ended_at is not None:
        return "CANCELED"
    if sub.stripe_status == "unpaid":
        return "UNPAID"
    if sub.past_due_since is not None or sub.stripe_status == "past_due":
        return "PAST_DUE"
    return sub.stripe_status.upper() if sub.stripe_status.upper() in _PUBLIC else "INCOMPLETE"


_PUBLIC = {"INCOMPLETE", "TRIALING", "ACTIVE", "PAUSED"}


def is_live(sub: Subscription) -> bool:
    return sub.stripe_status not in ENDED and sub.ended_at is None


def in_grace(sub: Subscription, now: dt.datetime) -> bool:
    return sub.grace_until is not None and now < sub.grace_until


def subscription_plan_at(sub: Subscription | None, now: dt.datetime) -> uuid.UUID | None:
    """The plan a subscription provides at `now`, or None (ended, unpaid past grace, not started)."""
    if sub is None or not is_live(sub) or sub.stripe_status in ("incomplete", "paused"):
        return None
    if sub.cancel_at_period_end and sub.current_period_end is not None and now >= sub.current_period_end:
        return None
    if sub.grace_until is not None and now >= sub.grace_until:
        return None  # dunning: the grace period is over
    if sub.pending_plan_id is not None and sub.pending_at is not None and now >= sub.pending_at:
        return sub.pending_plan_id
    return sub.plan_id


def snapshot_json(sub: Subscription) -> dict[str, Any]:
    def iso(v: dt.datetime | None) -> str | None:
        return v.isoformat() if v else None

    return {
        "status": public_status(sub),
        "planId": ids.encode("plan", sub.plan_id),
        "pendingPlanId": ids.encode("plan", sub.pending_plan_id) if sub.pending_plan_id else None,
        "currentPeriodEnd": iso(sub.current_period_end),
        "cancelAtPeriodEnd": sub.cancel_at_period_end,
        "graceUntil": iso(sub.grace_until),
    }


@dataclasses.dataclass(frozen=True, slots=True)
class PlanState:
    """Everything the effective plan depends on except the clock (cached briefly per project)."""

    override: OverrideRecord | None
    subscription: SubscriptionRecord | None
    plans: Mapping[uuid.UUID, PlanRecord]
    free_plan: PlanRecord | None
    # The project's per-feature overrides (entitlement_overrides), expired ones included: the
    # clock decides (features.effective).
    feature_overrides: tuple[features.Override, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class EffectivePlan:
    plan: PlanRecord | None
    source: str  # OVERRIDE | SUBSCRIPTION | DEFAULT
    rate_limit: dict[str, Any] | None
    monthly_quotas: dict[str, int]
    subscription: SubscriptionRecord | None
    override: OverrideRecord | None
    # What the project may use now (entitlements and quotas: one set, features.py).
    features: dict[str, features.Feature] = dataclasses.field(default_factory=dict)


async def current_subscription(
    s: AsyncSession, project_id: uuid.UUID, *, lock: bool = False
) -> PlanSubscription | None:
    """The project's live subscription (the newest), else its newest ended one."""
    q = (
        select(PlanSubscription)
        .where(PlanSubscription.project_id == project_id)
        .order_by((PlanSubscription.ended_at.is_(None) & PlanSubscription.stripe_status.notin_(ENDED)).desc())
        .order_by(PlanSubscription.id.desc())
        .limit(1)
    )
    if lock:
        q = q.with_for_update()
    return (await s.execute(q)).scalar()


async def load_state(svc: PaymentsService, project_id: uuid.UUID) -> PlanState:
    cached = svc.cached_plan(project_id)
    if isinstance(cached, PlanState):
        return cached
    epoch = svc.plan_epoch
    async with svc.db.transaction(project_id=project_id) as s:
        override = await s.get(PlanOverride, project_id)
        sub = await current_subscription(s, project_id)
        wanted = {p for p in (override and override.plan_id, sub and sub.plan_id, sub and sub.pending_plan_id) if p}
        plans = {
            p.id: records.of(PlanRecord, p)
            for p in (
                await s.execute(
                    select(Plan).where((Plan.id.in_(wanted)) | ((Plan.tier == "FREE") & Plan.archived_at.is_(None)))
                )
            ).scalars()
        }
        feature_rows = (
            await s.execute(select(EntitlementOverride).where(EntitlementOverride.project_id == project_id))
        ).scalars()
        state = PlanState(
            records.of(OverrideRecord, override) if override is not None else None,
            records.of(SubscriptionRecord, sub) if sub is not None else None,
            plans,
            catalog.default_free_plan(list(plans.values())),
            tuple(features.override_of(r) for r in sorted(feature_rows, key=lambda r: r.feature_key)),
        )
    svc.remember_plan(project_id, state, loaded_at_epoch=epoch)
    return state


def effective_plan_at(state: PlanState, now: dt.datetime) -> EffectivePlan:
    ov = state.override
    if ov is not None and ov.expires_at is not None and now >= ov.expires_at:
        ov = None
    plan: PlanRecord | None
    if ov is not None and ov.plan_id is not None:
        plan, source = state.plans.get(ov.plan_id), "OVERRIDE"
    else:
        sub_plan = subscription_plan_at(state.subscription, now)
        if sub_plan is not None:
            plan, source = state.plans.get(sub_plan), "SUBSCRIPTION"
        else:
            plan, source = state.free_plan, "DEFAULT"
    rate_limit = (ov.rate_limit if ov is not None else None) or (plan.rate_limit if plan is not None else None)
    quotas = {k: int(v) for k, v in (plan.monthly_quotas if plan is not None else {}).items()}
    if ov is not None and ov.monthly_quotas:
        quotas.update({k: int(v) for k, v in ov.monthly_quotas.items()})
    own = features.of_plan(plan.entitlements, plan.monthly_quotas) if plan is not None else {}
    effective = features.effective(own, ov.monthly_quotas if ov is not None else None, state.feature_overrides, now)
    return EffectivePlan(plan, source, rate_limit, quotas, state.subscription, ov, effective)


async def effective_plan(svc: PaymentsService, project_id: uuid.UUID) -> EffectivePlan:
    return effective_plan_at(await load_state(svc, project_id), svc.now())


async def plan_limit(svc: PaymentsService, project_id: uuid.UUID) -> Limit | None:
    """The gateway rate limit of the project's plan (or its override); None for the default."""
    raw = (await effective_plan(svc, project_id)).rate_limit
    if not raw:
        return None
    try:
        return Limit(int(raw["burst"]), float(raw["perSecond"]))
    except (KeyError, TypeError, ValueError):
        return None


async def plan_quotas(svc: PaymentsService, project_id: uuid.UUID) -> dict[str, int]:
    """Units per metric per calendar month the project's plan allows (metrics absent: unlimited)."""
    return (await effective_plan(svc, project_id)).monthly_quotas


def next_change(state: PlanState, plan: EffectivePlan, now: dt.datetime) -> dt.datetime | None:
    """The next instant what the project may use changes by itself, with nothing announced: an
    override's expiry (of the plan or a feature), the subscription's period, grace or trial end,
    a METERED period's reset. Caches of what derives from the plan end there at the latest."""
    candidates: list[dt.datetime | None] = [o.expires_at for o in state.feature_overrides]
    for f in plan.features.values():
        if f.type == "METERED" and f.period is not None:
            candidates.append(period_end(f.period, period_start(f.period, now)))
    if state.override is not None:
        candidates.append(state.override.expires_at)
    sub = state.subscription
    if sub is not None:
        candidates += [sub.current_period_end, sub.grace_until, sub.trial_end]
    future = [t for t in candidates if t is not None and t > now]
    return min(future) if future else None


async def plan_meters(svc: PaymentsService, project_id: uuid.UUID) -> tuple[dict[str, list[Meter]], float | None]:
    """The usage meters of the project's features now (its monthly quotas and METERED
    entitlements, one set): what usage/quotas.py enforces, and for how many seconds at most they
    hold (None: until a change is announced)."""
    state = await load_state(svc, project_id)
    now = svc.now()
    plan = effective_plan_at(state, now)
    until = next_change(state, plan, now)
    return features.meters(plan.features), (until - now).total_seconds() if until is not None else None


async def ensure_row(
    s: AsyncSession,
    *,
    stripe_subscription_id: str,
    project_id: uuid.UUID,
    plan_id: uuid.UUID,
    customer_id: str | None,
    wallet_id: uuid.UUID | None = None,
) -> tuple[PlanSubscription, bool]:
    """The subscription row for a Stripe subscription, created (unsynced) on first sight; locked.
    True when this call created it (exactly one of concurrent callers does)."""
    inserted = await s.scalar(
        pg_insert(PlanSubscription)
        .values(
            id=uuid7(),
            project_id=project_id,
            plan_id=plan_id,
            stripe_subscription_id=stripe_subscription_id,
            stripe_customer_id=customer_id,
            stripe_status="incomplete",
            wallet_id=wallet_id,
        )
        .on_conflict_do_nothing(index_elements=["stripe_subscription_id"])
        .returning(PlanSubscription.id)
    )
    row = (
        await s.execute(
            select(PlanSubscription)
            .where(PlanSubscription.stripe_subscription_id == stripe_subscription_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    if row.wallet_id is None and wallet_id is not None:
        row.wallet_id = wallet_id
    return row, inserted is not None


def _key(at: dt.datetime | None, status: str, event_id: str | None) -> tuple[dt.datetime, int, str]:
    return (at or dt.datetime.min.replace(tzinfo=dt.UTC), STATUS_RANK.get(status, 0), event_id or "")


async def apply_snapshot(
    s: AsyncSession, sub: PlanSubscription, snap: objects.Obj, *, at: dt.datetime, event_id: str, force: bool = False
) -> bool:
    """Apply a Stripe subscription object if it is newer than what `sub` holds. True if applied.

    `force` is for the snapshot Stripe returns to our own change: it is the newest state there is.
    """
    status = str(snap.get("status") or sub.stripe_status)
    if sub.synced_at is not None:
        if force:
            at = max(at, sub.synced_at)
        elif _key(at, status, event_id) <= _key(sub.synced_at, sub.stripe_status, sub.synced_event_id):
            return False
    price_plan = await catalog.plan_for_price(s, objects.subscription_price(snap))
    if price_plan is None:
        price_plan = objects.decode_meta(objects.metadata(snap), objects.META_PLAN, "plan")
    start, end = objects.subscription_period(snap)
    sub.stripe_status = status
    sub.stripe_item_id = objects.subscription_item_id(snap) or sub.stripe_item_id
    sub.stripe_customer_id = objects.ref(snap.get("customer")) or sub.stripe_customer_id
    sub.current_period_start = start or sub.current_period_start
    sub.current_period_end = end or sub.current_period_end
    sub.trial_end = objects.ts(snap.get("trial_end"))
    sub.cancel_at_period_end = bool(snap.get("cancel_at_period_end"))
    sub.canceled_at = objects.ts(snap.get("canceled_at"))
    sub.ended_at = objects.ts(snap.get("ended_at"))
    if status in ENDED and sub.ended_at is None:
        sub.ended_at = sub.canceled_at or at
    if price_plan is not None and price_plan != sub.plan_id:
        if price_plan == sub.pending_plan_id:
            pass  # a downgrade waiting for the period end: Stripe already bills the new price next time
        else:
            sub.plan_id = price_plan
            sub.pending_plan_id = sub.pending_at = None
    elif price_plan is not None and sub.pending_plan_id is not None and sub.pending_plan_id != price_plan:
        sub.pending_plan_id = sub.pending_at = None  # the scheduled change was undone in Stripe
    if sub.pending_plan_id is not None and sub.pending_at is not None and start is not None and start >= sub.pending_at:
        sub.plan_id, sub.pending_plan_id, sub.pending_at = sub.pending_plan_id, None, None
    sub.synced_at = at
    sub.synced_event_id = event_id
    sub.updated_at = func.now()
    return True


async def get_subscription(svc: PaymentsService, project_id: uuid.UUID) -> SubscriptionRecord | None:
    async with svc.db.transaction(project_id=project_id) as s:
        sub = await current_subscription(s, project_id)
        return records.of(SubscriptionRecord, sub) if sub is not None else None


async def override_plan(
    svc: PaymentsService,
    actor: Actor,
    project_id: uuid.UUID,
    *,
    plan_id: uuid.UUID | None,
    rate_limit: dict[str, Any] | None,
    monthly_quotas: dict[str, int] | None,
    expires_at: dt.datetime | None,
    reason: str | None,
) -> OverrideRecord | None:
    """Set (or, with nothing to override, clear) a project's plan override."""
    if plan_id is not None:
        await catalog.get_plan(svc, plan_id)
    if expires_at is not None and expires_at <= svc.now():
        raise BadInput("expiresAt must be in the future", field="expiresAt")
    if reason is not None and len(reason) > 500:
        raise BadInput("reason must be at most 500 characters", field="reason")
    clear = plan_id is None and rate_limit is None and monthly_quotas is None
    async with svc.db.transaction(project_id=project_id) as s:
        existing = await s.get(PlanOverride, project_id, with_for_update=True)
        before = _override_json(existing)
        result: PlanOverride | None
        if clear:
            await s.execute(delete(PlanOverride).where(PlanOverride.project_id == project_id))
            result = None
        else:
            if existing is None:
                existing = PlanOverride(project_id=project_id)
                s.add(existing)
            existing.plan_id = plan_id
            existing.rate_limit = rate_limit
            existing.monthly_quotas = monthly_quotas
            existing.expires_at = expires_at
            existing.reason = reason
            existing.created_by = actor.id if actor.type == "user" else None
            existing.updated_at = svc.now()
            result = existing
        await audit.record(
            s,
            actor,
            "plan.override" if not clear else "plan.override_clear",
            project_id=project_id,
            target_type="project",
            target_id=ids.encode("project", project_id),
            before=before,
            after=_override_json(result),
        )
    await svc.changes.plan_changed(project_id, "plan.override" if not clear else "plan.override_clear")
    return records.of(OverrideRecord, result) if result is not None else None


def _override_json(o: PlanOverride | None) -> dict[str, Any] | None:
    if o is None:
        return None
    return {
        "planId": ids.encode("plan", o.plan_id) if o.plan_id else None,
        "rateLimit": o.rate_limit,
        "monthlyQuotas": {k: str(v) for k, v in (o.monthly_quotas or {}).items()},
        "expiresAt": o.expires_at.isoformat() if o.expires_at else None,
        "reason": o.reason,
    }
