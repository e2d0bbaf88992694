"""Coupon redemptions: a project's use of a coupon on a Checkout session or on its running
subscription, within the coupon's `max_redemptions` whatever the concurrency.

How the limit stays exact: a redemption takes a slot with one conditional UPDATE
(`times_redeemed < max_redemptions`, not archived, not expired) in the same transaction that
writes the redemption row and makes the Stripe call that uses it; the coupon's row lock orders
concurrent takers and a check constraint is the last wall. If the Stripe call or anything after it
fails, the transaction rolls back and the slot was never taken.

Checkout (decided: reserve at creation, count on completion, release on expiry): the session is
created with a slot RESERVED and a Stripe `expires_at` one hour ahead (`CHECKOUT_HOLD`). The slot
counts from then on, so no more sessions can carry the coupon than it has redemptions left.
`checkout.session.completed` (or `async_payment_succeeded`) makes it REDEEMED and grants the bonus
credits; `checkout.session.expired` (or `async_payment_failed`) RELEASES it, giving the slot back.
Stripe sends `expired` only for sessions that can no longer complete, so a released slot is never
also paid for. A session that is never paid holds its slot for at most the hold.

A lost `expired` event (an endpoint not subscribed to it, a delivery that never came) would hold
the slot forever, so `reservation_sweep.sweep_reservations` (run every `SWEEP_INTERVAL` by the
webhook processor) asks Stripe about every reservation still RESERVED `SWEEP_GRACE` after its
`expires_at`, and settles it as the lost event would have (see there).

A project redeems a coupon once (a partial unique index over RESERVED and REDEEMED rows).

Lock order (no deadlocks): every transaction that touches both locks the COUPON row first, then
redemption rows. Taking a slot (reserve, applyCoupon) updates the coupon and then inserts the
redemption; completing and releasing read the redemption's (immutable) `coupon_id` unlocked, lock
the coupon, and only then lock or change the redemption. The other order deadlocks: a project
reserving the coupon again holds the coupon and its insert waits on the unique index for the
transaction changing the project's previous redemption, which waited for the coupon.

Bonus credits are a PROMOTIONAL grant (from the PROMOTIONS account, priority 50, expiring
`bonus_valid_days` after the redemption if the coupon says so) into the project's wallet, posted
in the redemption's transaction with an idempotency key of the redemption, so a replayed Stripe
event grants nothing more. The grant's terms are those `grantCredits` gives (ledger/grants.py);
it is posted through `post_transaction` because `grant_credits` opens a transaction of its own.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.models import Coupon, CouponRedemption, Payment, Plan, PlanSubscription
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import AppError, BadInput, Conflict
from ledgerx.domain.ledger.posting import metadata_json, post_transaction
from ledgerx.domain.ledger.types import (
    CREDITS,
    DEFAULT_PRIORITY,
    GrantCategory,
    GrantTerms,
    Kind,
    Leg,
    Posting,
    SystemAccount,
)
from ledgerx.domain.payments import grants, objects, records, subscriptions
from ledgerx.domain.payments.coupons import clean_code
from ledgerx.domain.payments.records import CouponRecord, CouponRedemptionRecord
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.ids import uuid7

log = logging.getLogger("ledgerx.payments.coupons")

# How long a Checkout session that carries a coupon stays payable (Stripe allows 30 min to 24 h):
# the time its reserved slot may be held by a customer who never pays.
CHECKOUT_HOLD = dt.timedelta(hours=1)


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """What a coupon is used on: a plan or a credit pack, priced in `currency`."""

    plan_id: uuid.UUID | None
    credit_pack_id: uuid.UUID | None
    currency: str


def _redemption_record(r: CouponRedemption, code: str) -> CouponRedemptionRecord:
    return records.of(CouponRedemptionRecord, r, code=code)


async def find_usable(s: AsyncSession, code: str, field: str, target: Target, now: dt.datetime) -> Coupon:
    """The coupon a customer typed, if it can be used on `target` now; else BAD_USER_INPUT on
    `field` saying why (unknown, archived, expired, exhausted, not for this item or currency)."""
    try:
        clean = clean_code(code, field)
    except BadInput as exc:
        raise BadInput("no coupon has this code", field=field) from exc
    c = (await s.execute(select(Coupon).where(Coupon.code == clean))).scalar()
    if c is None:
        raise BadInput("no coupon has this code", field=field)
    if c.archived_at is not None:
        raise BadInput("this coupon is no longer available", field=field, reason="ARCHIVED")
    if c.expires_at is not None and c.expires_at <= now:
        raise BadInput("this coupon has expired", field=field, reason="EXPIRED")
    if c.max_redemptions is not None and c.times_redeemed >= c.max_redemptions:
        raise BadInput("this coupon has been fully redeemed", field=field, reason="EXHAUSTED")
    restricted = bool(c.plan_ids or c.credit_pack_ids)
    if (
        restricted
        and target.plan_id not in (c.plan_ids or [])
        and target.credit_pack_id not in (c.credit_pack_ids or [])
    ):
        raise BadInput("this coupon does not apply to this purchase", field=field, reason="NOT_APPLICABLE")
    if c.currency is not None and c.currency != target.currency:
        raise BadInput(
            f"this coupon takes {c.currency} off, not {target.currency}", field=field, reason="NOT_APPLICABLE"
        )
    return c


async def _take_slot(s: AsyncSession, c: Coupon, field: str, now: dt.datetime) -> None:
    """One slot of `max_redemptions`, or BAD_USER_INPUT (exhausted, archived or expired meanwhile).
    The conditional UPDATE waits for a concurrent taker's commit and re-checks its row."""
    taken = await s.scalar(
        update(Coupon)
        .where(
            Coupon.id == c.id,
            Coupon.archived_at.is_(None),
            (Coupon.expires_at.is_(None)) | (Coupon.expires_at > now),
            (Coupon.max_redemptions.is_(None)) | (Coupon.times_redeemed < Coupon.max_redemptions),
        )
        .values(times_redeemed=Coupon.times_redeemed + 1, updated_at=now)
        .returning(Coupon.id)
        .execution_options(synchronize_session=False)
    )
    if taken is None:
        raise BadInput("this coupon has been fully redeemed", field=field, reason="EXHAUSTED")


async def _insert(s: AsyncSession, field: str, **values: Any) -> CouponRedemption:
    row = (
        await s.execute(
            pg_insert(CouponRedemption).values(**values).on_conflict_do_nothing().returning(CouponRedemption)
        )
    ).scalar()
    if row is None:
        raise BadInput("this project has already redeemed this coupon", field=field, reason="ALREADY_REDEEMED")
    return row


async def _bonus(
    svc: PaymentsService,
    s: AsyncSession,
    r: CouponRedemption,
    c: Coupon,
    wallet_id: uuid.UUID,
    reference: str,
) -> uuid.UUID:
    public = ids.encode("coupon_redemption", r.id)
    meta = {"couponRedemptionId": public, "couponId": ids.encode("coupon", r.coupon_id)}
    redeemed = r.redeemed_at or svc.now()
    expires = redeemed + dt.timedelta(days=c.bonus_valid_days) if c.bonus_valid_days else None
    posted = await post_transaction(
        svc.ledger,
        Posting(
            project_id=r.project_id,
            wallet_id=wallet_id,
            kind=Kind.PROMOTION,
            currency=CREDITS,
            legs=(Leg(r.bonus_credits, wallet_id=wallet_id), Leg(-r.bonus_credits, system=SystemAccount.PROMOTIONS)),
            idempotency_key=f"coupon:{public}:bonus",
            actor=Actor.system(),
            reference=reference,
            reason="Coupon bonus credits",
            metadata=meta,
            action="payments.coupon.bonus",
            terms=GrantTerms(
                GrantCategory.PROMOTIONAL, DEFAULT_PRIORITY, expires, "Coupon bonus credits", metadata_json(meta)
            ),
        ),
        session=s,
    )
    return posted.transaction.id


# -- checkout ------------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Reservation:
    coupon: CouponRecord
    redemption_id: uuid.UUID


async def reserve_for_checkout(
    svc: PaymentsService,
    s: AsyncSession,
    actor: Actor,
    project_id: uuid.UUID,
    code: str,
    target: Target,
    params: dict[str, Any],
    wallet_id: uuid.UUID | None,
) -> Reservation:
    """Take a slot for a Checkout session about to be created in `s`'s transaction and add the
    coupon to its `params` (promotion code, metadata naming the redemption, expiry)."""
    now = svc.now()
    c = await find_usable(s, code, "couponCode", target, now)
    await _take_slot(s, c, "couponCode", now)
    rid = uuid7()
    expires = now + CHECKOUT_HOLD
    await _insert(
        s,
        "couponCode",
        id=rid,
        project_id=project_id,
        coupon_id=c.id,
        status="RESERVED",
        # A placeholder until Stripe names the session (the column is unique and says where it was used).
        stripe_checkout_session_id=f"pending:{rid}",
        plan_id=target.plan_id,
        credit_pack_id=target.credit_pack_id,
        wallet_id=wallet_id,
        bonus_credits=c.bonus_credits or 0,
        created_by=actor.id if actor.type == "user" else None,
        expires_at=expires,
    )
    params["metadata"] = {
        **params.get("metadata", {}),
        objects.META_COUPON: ids.encode("coupon", c.id),
        objects.META_REDEMPTION: ids.encode("coupon_redemption", rid),
    }
    params["expires_at"] = objects.unix(expires)
    if c.stripe_promotion_code_id is not None:
        params["discounts"] = [{"promotion_code": c.stripe_promotion_code_id}]
    await s.refresh(c)
    from_row = records.of(
        CouponRecord, c, plan_ids=tuple(c.plan_ids or ()), credit_pack_ids=tuple(c.credit_pack_ids or ())
    )
    return Reservation(from_row, rid)


async def attach_session(s: AsyncSession, reservation: Reservation, session_id: str) -> None:
    await s.execute(
        update(CouponRedemption)
        .where(CouponRedemption.id == reservation.redemption_id)
        .values(stripe_checkout_session_id=session_id)
        .execution_options(synchronize_session=False)
    )


def redemption_of(meta: Mapping[str, str]) -> uuid.UUID | None:
    return objects.decode_meta(meta, objects.META_REDEMPTION, "coupon_redemption")


async def complete_checkout(
    svc: PaymentsService, actor: Actor, project_id: uuid.UUID, session: Mapping[str, Any]
) -> str | None:
    """A paid session: its reservation becomes REDEEMED and its bonus credits are granted, once
    however often the event comes. Returns what was done (None: no coupon on this session)."""
    meta = objects.metadata(session)
    rid = redemption_of(meta)
    if rid is None:
        return None
    session_id = str(session["id"])
    async with svc.db.transaction(project_id=project_id) as s:
        r = await s.get(CouponRedemption, rid)
    if r is None:
        log.error("checkout %s names coupon redemption %s, which does not exist", session_id, rid)
        return "coupon redemption not found"
    if r.status == "REDEEMED":
        return "coupon already redeemed"
    wallet_id = await grants.wallet_for(svc, project_id, r.wallet_id) if r.bonus_credits > 0 else None
    async with svc.db.transaction(project_id=project_id) as s:
        # The coupon first (the module's lock order); `coupon_id` never changes.
        c = (await s.execute(select(Coupon).where(Coupon.id == r.coupon_id).with_for_update())).scalar_one()
        r = (await s.execute(select(CouponRedemption).where(CouponRedemption.id == rid).with_for_update())).scalar_one()
        if r.status == "REDEEMED":
            return "coupon already redeemed"
        if r.status == "RELEASED":
            # Stripe expires only sessions that cannot complete; should one still be paid, it counts
            # again if a slot is free (the customer already has the discount either way).
            if c.max_redemptions is not None and c.times_redeemed >= c.max_redemptions:
                log.error("released coupon redemption %s was paid with no slot left; counted anyway", rid)
            else:
                c.times_redeemed += 1
        now = svc.now()
        r.status = "REDEEMED"
        r.redeemed_at = r.updated_at = now
        r.stripe_checkout_session_id = session_id
        r.stripe_subscription_id = objects.ref(session.get("subscription"))
        r.payment_id = await s.scalar(select(Payment.id).where(Payment.stripe_checkout_session_id == session_id))
        if r.stripe_subscription_id is not None:
            r.subscription_id = await s.scalar(
                select(PlanSubscription.id).where(PlanSubscription.stripe_subscription_id == r.stripe_subscription_id)
            )
        if wallet_id is not None:
            r.wallet_id = wallet_id
            r.bonus_transaction_id = await _bonus(svc, s, r, c, wallet_id, session_id)
        await audit.record(
            s,
            actor,
            "payments.coupon.redeem",
            project_id=project_id,
            target_type="coupon_redemption",
            target_id=ids.encode("coupon_redemption", r.id),
            after={
                "couponId": ids.encode("coupon", c.id),
                "stripeCheckoutSessionId": session_id,
                "bonusCredits": str(r.bonus_credits),
            },
        )
    return f"coupon {c.code} redeemed"


async def release_checkout(
    svc: PaymentsService, actor: Actor, project_id: uuid.UUID, session: Mapping[str, Any]
) -> str | None:
    """An expired (or finally unpaid) session gives its slot back, once."""
    rid = redemption_of(objects.metadata(session))
    if rid is None:
        return None
    async with svc.db.transaction(project_id=project_id) as s:
        now = svc.now()
        coupon_id = await s.scalar(select(CouponRedemption.coupon_id).where(CouponRedemption.id == rid))
        if coupon_id is None:
            log.error("checkout %s names coupon redemption %s, which does not exist", session["id"], rid)
            return "coupon redemption not found"
        # The coupon first (the module's lock order), then the conditional change of the redemption.
        await s.execute(select(Coupon.id).where(Coupon.id == coupon_id).with_for_update())
        released = await s.scalar(
            update(CouponRedemption)
            .where(CouponRedemption.id == rid, CouponRedemption.status == "RESERVED")
            .values(status="RELEASED", released_at=now, updated_at=now)
            .returning(CouponRedemption.id)
            .execution_options(synchronize_session=False)
        )
        if released is None:
            return "coupon reservation already settled"
        await s.execute(
            update(Coupon)
            .where(Coupon.id == coupon_id)
            .values(times_redeemed=Coupon.times_redeemed - 1, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        await audit.record(
            s,
            actor,
            "payments.coupon.release",
            project_id=project_id,
            target_type="coupon_redemption",
            target_id=ids.encode("coupon_redemption", rid),
            after={"couponId": ids.encode("coupon", coupon_id), "stripeCheckoutSessionId": str(session["id"])},
        )
    return "coupon reservation released"


# -- a running subscription ---------------------------------------------------------------------------


def _discount_refs(sub: Mapping[str, Any]) -> list[dict[str, str]]:
    """The subscription's current discounts as update params (kept when one is added)."""
    out = []
    for d in sub.get("discounts") or []:
        ref = objects.ref(d)
        if ref:
            out.append({"discount": ref})
    return out


async def apply_coupon(svc: PaymentsService, actor: Actor, project_id: uuid.UUID, code: str) -> CouponRedemptionRecord:
    """Redeem a coupon on the project's running subscription: its discount is added to the Stripe
    subscription (from the next invoice on), its bonus credits are granted at once."""
    async with svc.db.transaction(project_id=project_id) as s:
        pre = await subscriptions.current_subscription(s, project_id)
    if pre is None or not subscriptions.is_live(pre) or pre.stripe_subscription_id is None:
        raise Conflict("the project has no running subscription", field="projectId")
    wallet_id = await grants.wallet_for(svc, project_id, pre.wallet_id)
    applied: tuple[str, list[dict[str, str]]] | None = None
    try:
        async with svc.db.transaction(project_id=project_id) as s:
            sub = await subscriptions.current_subscription(s, project_id, lock=True)
            if sub is None or sub.id != pre.id or not subscriptions.is_live(sub) or sub.stripe_subscription_id is None:
                raise Conflict("the project's subscription changed meanwhile; try again", field="projectId")
            now = svc.now()
            plan_currency = await s.scalar(select(Plan.currency).where(Plan.id == sub.plan_id))
            c = await find_usable(s, code, "code", Target(sub.plan_id, None, str(plan_currency)), now)
            await _take_slot(s, c, "code", now)
            r = await _insert(
                s,
                "code",
                id=uuid7(),
                project_id=project_id,
                coupon_id=c.id,
                status="REDEEMED",
                subscription_id=sub.id,
                stripe_subscription_id=sub.stripe_subscription_id,
                plan_id=sub.plan_id,
                wallet_id=wallet_id if c.bonus_credits else None,
                bonus_credits=c.bonus_credits or 0,
                created_by=actor.id if actor.type == "user" else None,
                redeemed_at=now,
            )
            public = ids.encode("coupon_redemption", r.id)
            if c.stripe_promotion_code_id is not None:
                stripe = svc.require_stripe()
                current = await stripe.retrieve_subscription(sub.stripe_subscription_id)
                keep = _discount_refs(current)
                await stripe.update_subscription(
                    sub.stripe_subscription_id,
                    {"discounts": [*keep, {"promotion_code": c.stripe_promotion_code_id}]},
                    idempotency_key=f"ledgerx:{public}:apply",
                )
                applied = (sub.stripe_subscription_id, keep)
            if r.bonus_credits > 0:
                r.bonus_transaction_id = await _bonus(svc, s, r, c, wallet_id, sub.stripe_subscription_id)
                await s.execute(
                    update(CouponRedemption)
                    .where(CouponRedemption.id == r.id)
                    .values(bonus_transaction_id=r.bonus_transaction_id)
                    .execution_options(synchronize_session=False)
                )
            await audit.record(
                s,
                actor,
                "payments.coupon.apply",
                project_id=project_id,
                target_type="coupon_redemption",
                target_id=public,
                after={
                    "couponId": ids.encode("coupon", c.id),
                    "subscriptionId": ids.encode("subscription", sub.id),
                    "bonusCredits": str(r.bonus_credits),
                },
            )
            out = _redemption_record(r, c.code)
    except BaseException:
        if applied is not None:
            await _unapply(svc, *applied)
        raise
    return out


async def _unapply(svc: PaymentsService, subscription_id: str, keep: list[dict[str, str]]) -> None:
    """The redemption was not saved: take its discount off the Stripe subscription again."""
    try:
        await svc.require_stripe().update_subscription(subscription_id, {"discounts": keep or ""})
    except AppError:
        log.error(
            "could not remove an unsaved coupon from Stripe subscription %s; do it in the dashboard", subscription_id
        )


async def redemptions_of(svc: PaymentsService, project_id: uuid.UUID) -> list[CouponRedemptionRecord]:
    async with svc.db.transaction(project_id=project_id) as s:
        rows = (
            await s.execute(
                select(CouponRedemption, Coupon.code)
                .join(Coupon, Coupon.id == CouponRedemption.coupon_id)
                .where(CouponRedemption.project_id == project_id)
                .order_by(CouponRedemption.id)
            )
        ).all()
    return [_redemption_record(r, code) for r, code in rows]
