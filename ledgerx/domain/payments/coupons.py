"""Coupons (platform admins): a discount (percent or amount off) and/or bonus credits, with a
duration, a redemption limit, an expiry and an optional restriction to plans and credit packs.

Decisions (documented in the README too):
- A coupon takes at most one discount (`percentOff` 0 < p <= 100 with at most two decimals, or
  `amountOff` in one currency) and may add `bonusCredits` (a PROMOTIONAL grant) with or without
  one. A bonus-only coupon has duration ONCE (its credits are granted once per redemption) and no
  Stripe side: Stripe cannot express a coupon that takes nothing off.
- Codes are case-insensitive (stored upper-cased), unique among all coupons ever made, 3 to 40 of
  A-Z, 0-9 and "-". Not "_": Stripe refuses it in a promotion code's `code`.
- A coupon with a discount is a Stripe Coupon (id = the LedgerX id) and a Stripe Promotion Code
  (the code). Both are made before the row is saved; any failure undoes what was made, so refused
  input or a failed sync leaves nothing behind, here or at Stripe. Such coupons need Stripe.
- `appliesTo` names plans and credit packs (empty: all of them); Stripe gets the same restriction
  as `applies_to.products`, LedgerX checks it before it reserves a redemption.
- Archiving deactivates the promotion code: no new redemptions; running discounts keep going.

Redemptions (`redemptions.py`) hold a slot of `max_redemptions`.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import re
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ledgerx import ids
from ledgerx.db.models import Coupon, CreditPack, Plan
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import AppError, BadInput, NotFound
from ledgerx.domain.payments import catalog, objects, prices, records
from ledgerx.domain.payments.catalog import clean_name, positive
from ledgerx.domain.payments.money import Money
from ledgerx.domain.payments.records import CouponRecord
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.ids import uuid7

log = logging.getLogger("ledgerx.payments.coupons")

DURATIONS = ("ONCE", "REPEATING", "FOREVER")
_CODE = re.compile(r"^[A-Z0-9-]{3,40}$")
MAX_APPLIES_TO = 50
MAX_REDEMPTIONS = 2**31 - 1
# Stripe refuses a redeem-by date more than five years ahead.
MAX_EXPIRY = dt.timedelta(days=5 * 365)
_CENT = decimal.Decimal("0.01")


def clean_code(code: str, field: str = "code") -> str:
    value = (code or "").strip().upper()
    if not _CODE.match(value):
        raise BadInput("a code is 3 to 40 letters, digits or dashes", field=field)
    return value


def _percent(value: float | decimal.Decimal) -> decimal.Decimal:
    try:
        p = decimal.Decimal(str(value))
    except decimal.InvalidOperation as exc:
        raise BadInput("percentOff must be a number", field="percentOff") from exc
    if not p.is_finite() or not decimal.Decimal(0) < p <= 100 or p != p.quantize(_CENT):
        raise BadInput("percentOff must be above 0 and at most 100, with at most two decimals", field="percentOff")
    return p.quantize(_CENT)


def snapshot(c: Coupon) -> dict[str, Any]:
    return {
        "code": c.code,
        "name": c.name,
        "percentOff": str(c.percent_off) if c.percent_off is not None else None,
        "amountOff": str(c.amount_off) if c.amount_off is not None else None,
        "currency": c.currency,
        "bonusCredits": str(c.bonus_credits) if c.bonus_credits is not None else None,
        "bonusCreditsValidDays": c.bonus_valid_days,
        "duration": c.duration,
        "durationInMonths": c.duration_in_months,
        "maxRedemptions": c.max_redemptions,
        "expiresAt": c.expires_at.isoformat() if c.expires_at else None,
        "appliesTo": [ids.encode("plan", p) for p in c.plan_ids]
        + [ids.encode("credit_pack", p) for p in c.credit_pack_ids],
        "stripeCouponId": c.stripe_coupon_id,
        "stripePromotionCodeId": c.stripe_promotion_code_id,
        "archived": c.archived_at is not None,
    }


def record_of(c: Coupon) -> CouponRecord:
    return records.of(CouponRecord, c, plan_ids=tuple(c.plan_ids or ()), credit_pack_ids=tuple(c.credit_pack_ids or ()))


async def _targets(
    svc: PaymentsService, applies_to: Sequence[str], currency: str | None
) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """The plans and credit packs named by `appliesTo` (public ids), each existing, not free, and
    priced in `currency` when the coupon takes an amount off (Stripe applies it to that currency only)."""
    if len(applies_to) > MAX_APPLIES_TO:
        raise BadInput(f"at most {MAX_APPLIES_TO} plans and credit packs", field="appliesTo")
    plan_ids: list[uuid.UUID] = []
    pack_ids: list[uuid.UUID] = []
    for raw in applies_to:
        value = (raw or "").strip()
        if value.startswith(ids.PREFIXES["plan"] + "_"):
            uid = ids.decode("plan", value, "appliesTo")
            if uid not in plan_ids:
                plan_ids.append(uid)
        elif value.startswith(ids.PREFIXES["credit_pack"] + "_"):
            uid = ids.decode("credit_pack", value, "appliesTo")
            if uid not in pack_ids:
                pack_ids.append(uid)
        else:
            raise BadInput(f"{value!r} is not a plan or credit pack id", field="appliesTo")
    async with svc.db.read() as s:
        plans = {p.id: p for p in (await s.execute(select(Plan).where(Plan.id.in_(plan_ids)))).scalars()}
        packs = {
            p.id: p.currency for p in (await s.execute(select(CreditPack).where(CreditPack.id.in_(pack_ids)))).scalars()
        }
    for uid in plan_ids:
        plan = plans.get(uid)
        if plan is None:
            raise BadInput(f"plan {ids.encode('plan', uid)} not found", field="appliesTo")
        if plan.price_amount == 0:
            raise BadInput(f"plan {ids.encode('plan', uid)} is free: nothing to discount", field="appliesTo")
        if currency is not None and plan.currency != currency:
            raise BadInput(f"plan {ids.encode('plan', uid)} is priced in {plan.currency}", field="appliesTo")
    for uid in pack_ids:
        if uid not in packs:
            raise BadInput(f"credit pack {ids.encode('credit_pack', uid)} not found", field="appliesTo")
        if currency is not None and packs[uid] != currency:
            raise BadInput(f"credit pack {ids.encode('credit_pack', uid)} is priced in {packs[uid]}", field="appliesTo")
    return plan_ids, pack_ids


async def _products(svc: PaymentsService, plan_ids: list[uuid.UUID], pack_ids: list[uuid.UUID]) -> list[str]:
    """The Stripe Products of the targets (made now for items created before Stripe was set up)."""
    out: list[str] = []
    for plan_id in plan_ids:
        plan = await prices.ensure_plan_price(svc, await catalog.get_plan(svc, plan_id))
        out += [plan.stripe_product_id] if plan.stripe_product_id else []
    for pack_id in pack_ids:
        pack = await prices.ensure_pack_price(svc, await catalog.get_credit_pack(svc, pack_id))
        out += [pack.stripe_product_id] if pack.stripe_product_id else []
    return out


async def _undo(svc: PaymentsService, coupon_id: str | None, promotion_code_id: str | None) -> None:
    """Remove Stripe objects made for a coupon that was not saved. Never raises (the caller is
    failing with the error that matters); what could not be undone is logged for an operator."""
    stripe = svc.stripe
    if stripe is None:
        return
    if promotion_code_id is not None:
        try:
            await stripe.deactivate_promotion_code(promotion_code_id)
        except AppError:
            log.error("could not deactivate the unsaved promotion code %s; do it in the dashboard", promotion_code_id)
    if coupon_id is not None:
        try:
            await stripe.delete_coupon(coupon_id)
        except AppError:
            log.error("could not delete the unsaved Stripe coupon %s; delete it in the dashboard", coupon_id)


async def create_coupon(
    svc: PaymentsService,
    actor: Actor,
    *,
    code: str,
    name: str,
    percent_off: float | decimal.Decimal | None = None,
    amount_off: Money | None = None,
    bonus_credits: int | None = None,
    bonus_valid_days: int | None = None,
    duration: str = "ONCE",
    duration_in_months: int | None = None,
    max_redemptions: int | None = None,
    expires_at: dt.datetime | None = None,
    applies_to: Sequence[str] = (),
) -> CouponRecord:
    # Every check before Stripe is asked, so refused input never leaves Stripe objects behind.
    clean = clean_code(code)
    title = clean_name(name)
    if percent_off is not None and amount_off is not None:
        raise BadInput("give at most one of percentOff and amountOff", field="amountOff")
    percent = _percent(percent_off) if percent_off is not None else None
    bonus = positive(bonus_credits, "bonusCredits") if bonus_credits is not None else None
    if bonus_valid_days is not None and (
        bonus is None or isinstance(bonus_valid_days, bool) or not 1 <= bonus_valid_days <= 3650
    ):
        raise BadInput("bonusCreditsValidDays is 1 to 3650, with bonusCredits", field="bonusCreditsValidDays")
    has_discount = percent is not None or amount_off is not None
    if not has_discount and bonus is None:
        raise BadInput("a coupon needs percentOff, amountOff or bonusCredits", field="percentOff")
    if duration not in DURATIONS:
        raise BadInput("duration must be ONCE, REPEATING or FOREVER", field="duration")
    if not has_discount and duration != "ONCE":
        raise BadInput("a coupon of bonus credits alone is redeemed ONCE", field="duration")
    if duration == "REPEATING":
        if duration_in_months is None or isinstance(duration_in_months, bool) or not 1 <= duration_in_months <= 120:
            raise BadInput("a REPEATING coupon needs durationInMonths between 1 and 120", field="durationInMonths")
    elif duration_in_months is not None:
        raise BadInput("durationInMonths is only for REPEATING coupons", field="durationInMonths")
    if max_redemptions is not None and (
        isinstance(max_redemptions, bool) or not 1 <= max_redemptions <= MAX_REDEMPTIONS
    ):
        raise BadInput("maxRedemptions must be a positive integer", field="maxRedemptions")
    now = svc.now()
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise BadInput("expiresAt needs a time zone", field="expiresAt")
        if expires_at <= now:
            raise BadInput("expiresAt must be in the future", field="expiresAt")
        if expires_at > now + MAX_EXPIRY:
            raise BadInput("expiresAt must be within five years", field="expiresAt")
    plan_ids, pack_ids = await _targets(svc, applies_to, amount_off.currency if amount_off else None)
    async with svc.db.read() as s:
        if await s.scalar(select(Coupon.id).where(Coupon.code == clean)) is not None:
            raise BadInput(f"a coupon with code {clean} exists", field="code")

    coupon_id = uuid7()
    public = ids.encode("coupon", coupon_id)
    stripe_coupon: str | None = None
    promotion_code: str | None = None
    if has_discount:
        stripe = svc.require_stripe()
        products = await _products(svc, plan_ids, pack_ids)
        meta = {objects.META_COUPON: public}
        params: dict[str, Any] = {"id": public, "name": title[:40], "duration": duration.lower(), "metadata": meta}
        if percent is not None:
            params["percent_off"] = float(percent)
        else:
            assert amount_off is not None
            params.update(amount_off=amount_off.amount, currency=amount_off.currency.lower())
        if duration_in_months is not None:
            params["duration_in_months"] = duration_in_months
        if products:
            params["applies_to"] = {"products": products}
        made = await stripe.create_coupon(params, f"ledgerx:{public}:coupon")
        stripe_coupon = str(made["id"])
        promo: dict[str, Any] = {
            "promotion": {"type": "coupon", "coupon": stripe_coupon},
            "code": clean,
            "metadata": meta,
        }
        if max_redemptions is not None:
            promo["max_redemptions"] = max_redemptions
        if expires_at is not None:
            promo["expires_at"] = objects.unix(expires_at)
        try:
            promotion_code = str((await stripe.create_promotion_code(promo, f"ledgerx:{public}:promotion_code"))["id"])
        except BaseException:
            await _undo(svc, stripe_coupon, None)
            raise

    row = Coupon(
        id=coupon_id,
        code=clean,
        name=title,
        percent_off=percent,
        amount_off=amount_off.amount if amount_off else None,
        currency=amount_off.currency if amount_off else None,
        bonus_credits=bonus,
        bonus_valid_days=bonus_valid_days,
        duration=duration,
        duration_in_months=duration_in_months,
        max_redemptions=max_redemptions,
        times_redeemed=0,
        expires_at=expires_at,
        plan_ids=plan_ids,
        credit_pack_ids=pack_ids,
        stripe_coupon_id=stripe_coupon,
        stripe_promotion_code_id=promotion_code,
        created_by=actor.id if actor.type == "user" else None,
    )
    try:
        async with svc.db.transaction(system=True) as s:
            s.add(row)
            await s.flush()
            await audit.record(
                s, actor, "catalog.coupon.create", target_type="coupon", target_id=public, after=snapshot(row)
            )
            await s.refresh(row)
            out = record_of(row)
    except IntegrityError as exc:
        await _undo(svc, stripe_coupon, promotion_code)
        if "uq_coupons_code" in str(exc.orig):
            raise BadInput(f"a coupon with code {clean} exists", field="code") from exc
        raise
    except BaseException:
        await _undo(svc, stripe_coupon, promotion_code)
        raise
    return out


async def archive_coupon(svc: PaymentsService, actor: Actor, coupon_id: uuid.UUID) -> CouponRecord:
    """No new redemptions (idempotent): the promotion code is deactivated at Stripe first, so an
    archived coupon is never still redeemable there."""
    async with svc.db.transaction(system=True) as s:
        row = (await s.execute(select(Coupon).where(Coupon.id == coupon_id).with_for_update())).scalar()
        if row is None:
            raise NotFound("coupon not found", field="id")
        if row.archived_at is None:
            before = snapshot(row)
            if row.stripe_promotion_code_id is not None:
                await svc.require_stripe().deactivate_promotion_code(row.stripe_promotion_code_id)
            row.archived_at = row.updated_at = svc.now()
            await audit.record(
                s,
                actor,
                "catalog.coupon.archive",
                target_type="coupon",
                target_id=ids.encode("coupon", row.id),
                before=before,
                after=snapshot(row),
            )
        return record_of(row)


async def list_coupons(svc: PaymentsService, *, include_archived: bool = False) -> list[CouponRecord]:
    async with svc.db.read() as s:
        q = select(Coupon).order_by(Coupon.id)
        if not include_archived:
            q = q.where(Coupon.archived_at.is_(None))
        return [record_of(c) for c in (await s.execute(q)).scalars()]


async def get_coupon(svc: PaymentsService, coupon_id: uuid.UUID) -> CouponRecord:
    async with svc.db.read() as s:
        row = await s.get(Coupon, coupon_id)
    if row is None:
        raise NotFound("coupon not found", field="id")
    return record_of(row)
