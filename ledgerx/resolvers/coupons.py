"""Coupons: platform admins create, list and archive them; project admins apply one to their
running subscription (`createCheckoutSession(couponCode)` uses one at checkout)."""

from __future__ import annotations

import strawberry

from ledgerx import ids
from ledgerx.domain.payments import coupons, redemptions
from ledgerx.domain.tenancy.access import Need
from ledgerx.resolvers.guards import project_access, require_platform_admin
from ledgerx.schema.coupons import ApplyCouponInput, CouponRedemptionType, CouponType, CreateCouponInput
from ledgerx.schema.info import Info


@strawberry.type
class Query:
    @strawberry.field(description="Platform admins: the coupons (archived ones on request).")
    async def coupons(self, info: Info, include_archived: bool = False) -> list[CouponType]:
        await require_platform_admin(info)
        found = await coupons.list_coupons(info.context.services.payments, include_archived=include_archived)
        return [CouponType.of(c) for c in found]


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Platform admins: a coupon (with a discount: a Stripe coupon and promotion code).")
    async def create_coupon(self, info: Info, input: CreateCouponInput) -> CouponType:
        await require_platform_admin(info)
        coupon = await coupons.create_coupon(
            info.context.services.payments,
            info.context.actor(),
            code=input.code,
            name=input.name,
            percent_off=input.percent_off,
            amount_off=input.amount_off.parse("amountOff") if input.amount_off is not None else None,
            bonus_credits=int(input.bonus_credits) if input.bonus_credits is not None else None,
            bonus_valid_days=input.bonus_credits_valid_days,
            duration=input.duration.value,
            duration_in_months=input.duration_in_months,
            max_redemptions=input.max_redemptions,
            expires_at=input.expires_at,
            applies_to=[str(i) for i in input.applies_to or []],
        )
        return CouponType.of(coupon)

    @strawberry.mutation(description="Platform admins: no new redemptions (the Stripe promotion code is deactivated).")
    async def archive_coupon(self, info: Info, id: strawberry.ID) -> CouponType:
        await require_platform_admin(info)
        coupon = await coupons.archive_coupon(
            info.context.services.payments, info.context.actor(), ids.decode("coupon", id, "id")
        )
        return CouponType.of(coupon)

    @strawberry.mutation(description="Apply a coupon to the project's running subscription.")
    async def apply_coupon(self, info: Info, input: ApplyCouponInput) -> CouponRedemptionType:
        access = await project_access(info, input.project_id, Need.ADMIN, write=True)
        redemption = await redemptions.apply_coupon(
            info.context.services.payments, info.context.actor(), access.project_id, input.code
        )
        return CouponRedemptionType.of(redemption)
