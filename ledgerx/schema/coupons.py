"""GraphQL types of coupons (platform admins) and their redemptions."""

from __future__ import annotations

import datetime as dt
import enum

import strawberry

from ledgerx import ids
from ledgerx.domain.payments.records import CouponRecord, CouponRedemptionRecord
from ledgerx.schema.payments import Money, MoneyInput, money_of
from ledgerx.schema.scalars import BigInt


@strawberry.enum(description="How long a coupon's discount runs on a subscription.")
class CouponDuration(enum.Enum):
    ONCE = "ONCE"
    REPEATING = "REPEATING"
    FOREVER = "FOREVER"


@strawberry.enum(description="RESERVED: held by an open Checkout session; REDEEMED; RELEASED: the session expired.")
class CouponRedemptionStatus(enum.Enum):
    RESERVED = "RESERVED"
    REDEEMED = "REDEEMED"
    RELEASED = "RELEASED"


@strawberry.type(
    name="Coupon", description="A discount and/or bonus credits, synced to Stripe as a coupon and promotion code."
)
class CouponType:
    id: strawberry.ID
    code: str = strawberry.field(description="Case-insensitive; shown upper-cased.")
    name: str
    percent_off: float | None
    amount_off: Money | None
    bonus_credits: BigInt | None = strawberry.field(
        description="A PROMOTIONAL credit to the project's wallet per redemption."
    )
    bonus_credits_valid_days: int | None = strawberry.field(
        description="The bonus credits' grant expires this many days after the redemption (null: never)."
    )
    duration: CouponDuration
    duration_in_months: int | None
    max_redemptions: int | None
    times_redeemed: int = strawberry.field(
        description="Redemptions holding a slot (reserved by open checkouts or redeemed)."
    )
    expires_at: dt.datetime | None
    applies_to: list[strawberry.ID] = strawberry.field(description="Plans and credit packs; empty: all of them.")
    stripe_coupon_id: str | None
    stripe_promotion_code_id: str | None
    archived: bool
    created_at: dt.datetime

    @classmethod
    def of(cls, c: CouponRecord) -> CouponType:
        return cls(
            id=strawberry.ID(ids.encode("coupon", c.id)),
            code=c.code,
            name=c.name,
            percent_off=float(c.percent_off) if c.percent_off is not None else None,
            amount_off=money_of(c.amount_off, c.currency) if c.amount_off is not None and c.currency else None,
            bonus_credits=BigInt(c.bonus_credits) if c.bonus_credits is not None else None,
            bonus_credits_valid_days=c.bonus_valid_days,
            duration=CouponDuration(c.duration),
            duration_in_months=c.duration_in_months,
            max_redemptions=c.max_redemptions,
            times_redeemed=c.times_redeemed,
            expires_at=c.expires_at,
            applies_to=[strawberry.ID(ids.encode("plan", p)) for p in c.plan_ids]
            + [strawberry.ID(ids.encode("credit_pack", p)) for p in c.credit_pack_ids],
            stripe_coupon_id=c.stripe_coupon_id,
            stripe_promotion_code_id=c.stripe_promotion_code_id,
            archived=c.archived_at is not None,
            created_at=c.created_at,
        )


@strawberry.type(name="CouponRedemption", description="A project's use of a coupon.")
class CouponRedemptionType:
    id: strawberry.ID
    project_id: strawberry.ID
    coupon_id: strawberry.ID
    code: str
    status: CouponRedemptionStatus
    subscription_id: strawberry.ID | None
    payment_id: strawberry.ID | None
    stripe_checkout_session_id: str | None
    bonus_credits: BigInt
    bonus_transaction_id: strawberry.ID | None = strawberry.field(
        description="The ledger transaction of the bonus credits."
    )
    created_at: dt.datetime

    @classmethod
    def of(cls, r: CouponRedemptionRecord) -> CouponRedemptionType:
        def opt(kind: str, value: object) -> strawberry.ID | None:
            return strawberry.ID(ids.encode(kind, value)) if value is not None else None  # type: ignore[arg-type]

        return cls(
            id=strawberry.ID(ids.encode("coupon_redemption", r.id)),
            project_id=strawberry.ID(ids.encode("project", r.project_id)),
            coupon_id=strawberry.ID(ids.encode("coupon", r.coupon_id)),
            code=r.code,
            status=CouponRedemptionStatus(r.status),
            subscription_id=opt("subscription", r.subscription_id),
            payment_id=opt("payment", r.payment_id),
            stripe_checkout_session_id=r.stripe_checkout_session_id,
            bonus_credits=BigInt(r.bonus_credits),
            bonus_transaction_id=opt("transaction", r.bonus_transaction_id),
            created_at=r.created_at,
        )


@strawberry.input
class CreateCouponInput:
    code: str = strawberry.field(description="3 to 40 letters, digits or dashes; case-insensitive, unique.")
    name: str
    duration: CouponDuration = CouponDuration.ONCE
    percent_off: float | None = strawberry.field(default=None, description="Above 0, at most 100, two decimals.")
    amount_off: MoneyInput | None = None
    bonus_credits: BigInt | None = strawberry.field(
        default=None, description="Alone (duration ONCE) or with percentOff/amountOff."
    )
    bonus_credits_valid_days: int | None = strawberry.field(
        default=None, description="The bonus credits expire this many days after each redemption (1 to 3650)."
    )
    duration_in_months: int | None = strawberry.field(default=None, description="REPEATING only (and required).")
    max_redemptions: int | None = None
    expires_at: dt.datetime | None = None
    applies_to: list[strawberry.ID] | None = strawberry.field(default=None, description="Plan and credit pack ids.")


@strawberry.input
class ApplyCouponInput:
    project_id: strawberry.ID
    code: str
