"""coupons: the platform's coupons (synced to Stripe as a coupon and a promotion code), each
project's redemptions of them, and the discount a payment got

Revision ID: 0012_coupons
Revises: 0011_usage_quota_crossings
Create Date: 2026-12-05

`coupons` is a platform table like `plans` and `credit_packs` (no RLS: everyone may read the
catalog, platform admins change it). `times_redeemed` counts the redemptions that hold a slot
(RESERVED or REDEEMED); the check keeps it within `max_redemptions` whatever the concurrency, as
the last wall behind the conditional UPDATE that takes a slot.

`coupon_redemptions` is a tenant table (row-level security on `project_id`): one row per use of a
coupon by a project, on a Checkout session (RESERVED when the session is created, REDEEMED when it
completes, RELEASED when Stripe expires it) or on a running subscription (REDEEMED at once). A
project redeems a coupon once (a partial unique index over the rows that hold a slot); a Checkout
session carries one coupon. `bonus_transaction_id` is the ledger transaction of the bonus credits.

`payments.discount` / `payments.coupon_id`: what a coupon took off a payment, as Stripe computed it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from ledgerx.db import rls

revision = "0012_coupons"
down_revision = "0011_usage_quota_crossings"
branch_labels = None
depends_on = None

_UUID = pg.UUID(as_uuid=True)
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "coupons",
        sa.Column("id", _UUID, primary_key=True),
        # Stored upper-cased: codes are case-insensitive and unique.
        sa.Column("code", sa.Text(), nullable=False, unique=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("percent_off", sa.Numeric(5, 2)),
        sa.Column("amount_off", sa.BigInteger()),
        sa.Column("currency", sa.Text()),
        sa.Column("bonus_credits", sa.BigInteger()),
        # The bonus credits' grant expires this many days after the redemption (NULL: never).
        sa.Column("bonus_valid_days", sa.Integer()),
        sa.Column("duration", sa.Text(), nullable=False),
        sa.Column("duration_in_months", sa.Integer()),
        sa.Column("max_redemptions", sa.Integer()),
        sa.Column("times_redeemed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("expires_at", _TS),
        # Empty arrays: the coupon applies to every plan and credit pack.
        sa.Column("plan_ids", pg.ARRAY(_UUID), nullable=False, server_default=sa.text("'{}'::uuid[]")),
        sa.Column("credit_pack_ids", pg.ARRAY(_UUID), nullable=False, server_default=sa.text("'{}'::uuid[]")),
        sa.Column("stripe_coupon_id", sa.Text()),
        sa.Column("stripe_promotion_code_id", sa.Text()),
        sa.Column("archived_at", _TS),
        sa.Column("created_by", _UUID),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("code ~ '^[A-Z0-9_-]{1,64}$'", name="code"),
        sa.CheckConstraint("length(btrim(name)) BETWEEN 1 AND 200", name="name"),
        sa.CheckConstraint("num_nonnulls(percent_off, amount_off) <= 1", name="one_discount"),
        sa.CheckConstraint("num_nonnulls(percent_off, amount_off, bonus_credits) >= 1", name="some_benefit"),
        sa.CheckConstraint("percent_off IS NULL OR (percent_off > 0 AND percent_off <= 100)", name="percent_off"),
        sa.CheckConstraint(
            "(amount_off IS NULL AND currency IS NULL) OR (amount_off > 0 AND currency ~ '^[A-Z]{3}$')",
            name="amount_off",
        ),
        sa.CheckConstraint("bonus_credits IS NULL OR bonus_credits > 0", name="bonus_credits"),
        sa.CheckConstraint(
            "bonus_valid_days IS NULL OR (bonus_credits IS NOT NULL AND bonus_valid_days BETWEEN 1 AND 3650)",
            name="bonus_valid_days",
        ),
        sa.CheckConstraint("duration IN ('ONCE', 'REPEATING', 'FOREVER')", name="duration"),
        sa.CheckConstraint(
            "(duration = 'REPEATING') = (duration_in_months IS NOT NULL)"
            " AND (duration_in_months IS NULL OR duration_in_months BETWEEN 1 AND 120)",
            name="duration_in_months",
        ),
        sa.CheckConstraint(
            "times_redeemed >= 0 AND (max_redemptions IS NULL OR"
            " (max_redemptions > 0 AND times_redeemed <= max_redemptions))",
            name="redemptions",
        ),
    )
    op.create_table(
        "coupon_redemptions",
        sa.Column("id", _UUID, primary_key=True),
        sa.Column("project_id", _UUID, sa.ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("coupon_id", _UUID, sa.ForeignKey("coupons.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("stripe_checkout_session_id", sa.Text(), unique=True),
        sa.Column("subscription_id", _UUID, sa.ForeignKey("subscriptions.id", ondelete="RESTRICT")),
        sa.Column("stripe_subscription_id", sa.Text()),
        sa.Column("payment_id", _UUID, sa.ForeignKey("payments.id", ondelete="RESTRICT")),
        sa.Column("plan_id", _UUID, sa.ForeignKey("plans.id", ondelete="RESTRICT")),
        sa.Column("credit_pack_id", _UUID, sa.ForeignKey("credit_packs.id", ondelete="RESTRICT")),
        sa.Column("wallet_id", _UUID),
        sa.Column("bonus_credits", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("bonus_transaction_id", _UUID),
        sa.Column("created_by", _UUID),
        sa.Column("expires_at", _TS),
        sa.Column("redeemed_at", _TS),
        sa.Column("released_at", _TS),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("status IN ('RESERVED', 'REDEEMED', 'RELEASED')", name="status"),
        sa.CheckConstraint("num_nonnulls(stripe_checkout_session_id, subscription_id) >= 1", name="redeemed_on"),
        sa.CheckConstraint("bonus_credits >= 0", name="bonus_credits"),
    )
    op.create_index(
        "ux_coupon_redemptions_project",
        "coupon_redemptions",
        ["coupon_id", "project_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('RESERVED', 'REDEEMED')"),
    )
    op.create_index("ix_coupon_redemptions_project", "coupon_redemptions", ["project_id", "id"])
    op.add_column("payments", sa.Column("discount", sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("payments", sa.Column("coupon_id", _UUID, sa.ForeignKey("coupons.id", ondelete="RESTRICT")))
    op.create_check_constraint("discount", "payments", "discount >= 0")

    op.execute(rls.grant_sql("coupons", "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("coupon_redemptions", "SELECT, INSERT, UPDATE"))
    for stmt in rls.tenant_rls_sql("coupon_redemptions"):
        op.execute(stmt)


def downgrade() -> None:
    op.drop_constraint("discount", "payments", type_="check")
    op.drop_column("payments", "coupon_id")
    op.drop_column("payments", "discount")
    op.drop_table("coupon_redemptions")
    op.drop_table("coupons")
