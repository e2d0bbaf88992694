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
from fractions import Fraction
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import Invoice, InvoiceLine, Plan, PlanOverride, PlanSubscription
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput, Conflict
from ledgerx.domain.payments import catalog, grants, objects, prices, proration
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.domain.ratelimit import Limit
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
UNPAID_INVOICE = ("OPEN", "UNCOLLECTIBLE")


def topic(project_id: uuid.UUID) -> str:
    return f"project:{project_id}:subscription"


def public_status(sub: PlanSubscription) -> str:
    if sub.stripe_status in ENDED or sub.ended_at is not None:
        return "CANCELED"
    if sub.stripe_status == "unpaid":
        return "UNPAID"
    if sub.past_due_since is not None or sub.stripe_status == "past_due":
        return "PAST_DUE"
    return sub.stripe_status.upper() if sub.stripe_status.upper() in _PUBLIC else "INCOMPLETE"


_PUBLIC = {"INCOMPLETE", "TRIALING", "ACTIVE", "PAUSED"}


def is_live(sub: PlanSubscription) -> bool:
    return sub.stripe_status not in ENDED and sub.ended_at is None


def in_grace(sub: PlanSubscription, now: dt.datetime) -> bool:
    return sub.grace_until is not None and now < sub.grace_until


def subscription_plan_at(sub: PlanSubscription | None, now: dt.datetime) -> uuid.UUID | None:
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


def snapshot_json(sub: PlanSubscription) -> dict[str, Any]:
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


# -- the project's plan state -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class PlanState:
    """Everything the effective plan depends on except the clock (cached briefly per project)."""

    override: PlanOverride | None
    subscription: PlanSubscription | None
    plans: Mapping[uuid.UUID, Plan]
    free_plan: Plan | None


@dataclasses.dataclass(frozen=True, slots=True)
class EffectivePlan:
    plan: Plan | None
    source: str  # OVERRIDE | SUBSCRIPTION | DEFAULT
    rate_limit: dict[str, Any] | None
    monthly_quotas: dict[str, int]
    subscription: PlanSubscription | None
    override: PlanOverride | None


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
    async with svc.db.transaction(project_id=project_id) as s:
        override = await s.get(PlanOverride, project_id)
        sub = await current_subscription(s, project_id)
        wanted = {p for p in (override and override.plan_id, sub and sub.plan_id, sub and sub.pending_plan_id) if p}
        plans = {
            p.id: p
            for p in (
                await s.execute(
                    select(Plan).where((Plan.id.in_(wanted)) | ((Plan.tier == "FREE") & Plan.archived_at.is_(None)))
                )
            ).scalars()
        }
    state = PlanState(override, sub, plans, catalog.default_free_plan(list(plans.values())))
    svc.remember_plan(project_id, state)
    return state


def effective_plan_at(state: PlanState, now: dt.datetime) -> EffectivePlan:
    ov = state.override
    if ov is not None and ov.expires_at is not None and now >= ov.expires_at:
        ov = None
    plan: Plan | None
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
    return EffectivePlan(plan, source, rate_limit, quotas, state.subscription, ov)


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


# -- Stripe snapshots ------------------------------------------------------------------------------------


async def ensure_row(
    s: AsyncSession,
    *,
    stripe_subscription_id: str,
    project_id: uuid.UUID,
    plan_id: uuid.UUID,
    customer_id: str | None,
    wallet_id: uuid.UUID | None = None,
) -> PlanSubscription:
    """The subscription row for a Stripe subscription, created (unsynced) on first sight; locked."""
    await s.execute(
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
    return row


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
        svc.forget_plan(p)
    svc.publish(events)
    return len(touched)


# -- plan changes and cancellation (project admins) -----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class PlanChangeResult:
    subscription: PlanSubscription
    immediate: bool
    effective_at: dt.datetime
    amount: int
    currency: str
    credits: int
    invoice: Invoice | None


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
        events.append(
            (
                topic(project_id),
                {"type": "subscription.changed", **after, "projectId": ids.encode("project", project_id)},
            )
        )
    svc.forget_plan(project_id)
    svc.publish(events)
    return PlanChangeResult(
        sub, change.immediate, change.effective_at, change.amount, new.currency, change.credits, invoice
    )


def _terms(p: Plan) -> proration.PlanTerms:
    return proration.PlanTerms(p.price_amount, p.interval, p.included_credits, p.currency)


async def _charge_proration(
    svc: PaymentsService,
    s: AsyncSession,
    sub: PlanSubscription,
    old: Plan,
    new: Plan,
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
    meta = {
        objects.META_INVOICE: public,
        objects.META_KIND: "proration",
        objects.META_PROJECT: ids.encode("project", sub.project_id),
        objects.META_PLAN: ids.encode("plan", new.id),
        objects.META_CREDITS: str(change.credits),
    }
    assert sub.stripe_customer_id is not None
    assert sub.stripe_subscription_id is not None
    paid = await stripe.charge_now(
        sub.stripe_customer_id, sub.stripe_subscription_id, change.amount, new.currency, description, meta, key
    )
    status = "PAID" if paid.get("status") == "paid" else "OPEN"
    invoice = Invoice(
        id=invoice_id,
        project_id=sub.project_id,
        subscription_id=sub.id,
        stripe_invoice_id=str(paid["id"]),
        kind="PRORATION",
        billing_reason="subscription_update",
        status=status,
        currency=new.currency,
        total=change.amount,
        amount_due=change.amount,
        amount_paid=change.amount if status == "PAID" else 0,
        period_start=now,
        period_end=sub.current_period_end,
        paid_at=now if status == "PAID" else None,
        plan_id=new.id,
        credits=change.credits,
        stripe_charge_id=objects.invoice_charge(paid),
        stripe_payment_intent_id=objects.invoice_payment_intent(paid),
    )
    s.add(invoice)
    s.add(
        InvoiceLine(
            id=uuid7(),
            invoice_id=invoice_id,
            project_id=sub.project_id,
            position=0,
            description=description,
            amount=change.amount,
            currency=new.currency,
            quantity=1,
            period_start=now,
            period_end=sub.current_period_end,
            plan_id=new.id,
            proration=True,
        )
    )
    await s.flush()
    return invoice


async def cancel_subscription(
    svc: PaymentsService, actor: Actor, project_id: uuid.UUID, *, at_period_end: bool
) -> PlanSubscription:
    stripe = svc.require_stripe()
    now = svc.now()
    async with svc.db.transaction(project_id=project_id) as s:
        sub = await _live_subscription(s, project_id)
        assert sub.stripe_subscription_id is not None
        before = snapshot_json(sub)
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
    svc.forget_plan(project_id)
    svc.publish(
        [
            (
                topic(project_id),
                {"type": "subscription.canceled", **after, "projectId": ids.encode("project", project_id)},
            )
        ]
    )
    return sub


async def get_subscription(svc: PaymentsService, project_id: uuid.UUID) -> PlanSubscription | None:
    async with svc.db.transaction(project_id=project_id) as s:
        return await current_subscription(s, project_id)


# -- overrides (platform admins) -------------------------------------------------------------------------------


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
) -> PlanOverride | None:
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
    svc.forget_plan(project_id)
    return result


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
