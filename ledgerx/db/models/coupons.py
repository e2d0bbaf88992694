"""Coupons (a platform table, like the catalog) and their redemptions (a tenant table, RLS by
`project_id`). Migration 0012 creates both; its docstring says what each status means."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, Numeric, Text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Mapped, mapped_column

from ledgerx.db.models.base import Base, pk, ts_now

COUPON_DURATIONS = ("ONCE", "REPEATING", "FOREVER")
REDEMPTION_STATUSES = ("RESERVED", "REDEEMED", "RELEASED")


class Coupon(Base):
    __tablename__ = "coupons"

    id: Mapped[uuid.UUID] = pk()
    code: Mapped[str] = mapped_column(Text, nullable=False, unique=True)  # upper-cased
    name: Mapped[str] = mapped_column(Text, nullable=False)
    percent_off: Mapped[decimal.Decimal | None] = mapped_column(Numeric(5, 2))
    amount_off: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(Text)
    bonus_credits: Mapped[int | None] = mapped_column(BigInteger)
    bonus_valid_days: Mapped[int | None] = mapped_column(Integer)
    duration: Mapped[str] = mapped_column(Text, nullable=False)
    duration_in_months: Mapped[int | None] = mapped_column(Integer)
    max_redemptions: Mapped[int | None] = mapped_column(Integer)
    # Slots held by RESERVED and REDEEMED redemptions; never above max_redemptions (a check).
    times_redeemed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    plan_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(UUID(as_uuid=True)), nullable=False, default=list)
    credit_pack_ids: Mapped[list[uuid.UUID]] = mapped_column(ARRAY(UUID(as_uuid=True)), nullable=False, default=list)
    stripe_coupon_id: Mapped[str | None] = mapped_column(Text)
    stripe_promotion_code_id: Mapped[str | None] = mapped_column(Text)
    archived_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()


class CouponRedemption(Base):
    __tablename__ = "coupon_redemptions"

    id: Mapped[uuid.UUID] = pk()
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)
    coupon_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("coupons.id", ondelete="RESTRICT"), nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)  # RESERVED | REDEEMED | RELEASED
    stripe_checkout_session_id: Mapped[str | None] = mapped_column(Text, unique=True)
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("subscriptions.id", ondelete="RESTRICT"))
    stripe_subscription_id: Mapped[str | None] = mapped_column(Text)
    payment_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("payments.id", ondelete="RESTRICT"))
    plan_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("plans.id", ondelete="RESTRICT"))
    credit_pack_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("credit_packs.id", ondelete="RESTRICT"))
    wallet_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    bonus_credits: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    bonus_transaction_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    redeemed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    released_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()
