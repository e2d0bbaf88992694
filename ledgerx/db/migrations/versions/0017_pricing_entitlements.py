"""pricing models and entitlements: tiered metric prices with versions, plan entitlements, overrides

Revision ID: 0017_pricing_entitlements
Revises: 0016_invoicing
Create Date: 2026-12-05

`usage_metrics` gains `pricing` (the latest pricing model as JSON; NULL: PER_UNIT at `unit_price`)
and may now be updated (name, unit_price, pricing: `updateMetric`).

`usage_metric_prices` (tenant table): every pricing a metric ever had, from the instant it was set
(`effective_from`). A period is priced with the version in effect at its start, so a change applies
from the next period and the running one keeps its price. Existing metrics get one version from
-infinity: their PER_UNIT price, so nothing they charge changes.

`usage_charges` gains `price` (the exact price of the charge before the carry; NULL on charges made
before: units x unit_price) and may be negative (a VOLUME tier crossing gives back what earlier events
of the period paid above the new tier's price: amount < 0 is a credit). `usage_charge_remainders`
gains the period a wallet's per-event charges of a metric are in and the units charged in it, so
the tier an event reaches is known under the carry lock that already serializes them.

`plans.entitlements` (JSON list of {featureKey, type, enabled, limit, metricKey, period, config}) and
`entitlement_overrides` (tenant table, one row per project and feature). `usage_quota_crossings`
gains `period` (MONTH or DAY) in its key: a METERED entitlement counts per day or month, and the
monthly quotas are METERED limits of the same mechanism.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from ledgerx.db import rls

revision = "0017_pricing_entitlements"
down_revision = "0016_invoicing"
branch_labels = None
depends_on = None

_UUID = pg.UUID(as_uuid=True)
_TS = sa.DateTime(timezone=True)

_PER_UNIT_JSON = (
    "jsonb_build_object('model', 'PER_UNIT', 'tiers', jsonb_build_array(jsonb_build_object("
    "'upTo', NULL, 'unitPrice', m.unit_price::text, 'flatPrice', '0')), 'packageSize', NULL)"
)


def upgrade() -> None:
    # -- pricing ----------------------------------------------------------------------------------
    op.add_column("usage_metrics", sa.Column("pricing", pg.JSONB()))
    op.add_column("usage_metrics", sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()))
    op.execute(rls.grant_sql("usage_metrics", "UPDATE"))
    op.create_table(
        "usage_metric_prices",
        sa.Column("metric_id", _UUID, sa.ForeignKey("usage_metrics.id", ondelete="RESTRICT"), primary_key=True),
        sa.Column("effective_from", _TS, primary_key=True),
        sa.Column("project_id", _UUID, sa.ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("pricing", pg.JSONB(), nullable=False),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.execute(rls.grant_sql("usage_metric_prices", "SELECT, INSERT, UPDATE"))
    for stmt in rls.tenant_rls_sql("usage_metric_prices"):
        op.execute(stmt)
    op.execute("SELECT set_config('ledgerx.scope', 'system', true)")
    op.execute(
        "INSERT INTO usage_metric_prices (metric_id, effective_from, project_id, pricing)"
        f" SELECT m.id, '-infinity', m.project_id, {_PER_UNIT_JSON} FROM usage_metrics m"
    )

    op.add_column("usage_charges", sa.Column("price", sa.Numeric()))
    op.execute("ALTER TABLE usage_charges DROP CONSTRAINT ck_usage_charges_total")
    op.execute("ALTER TABLE usage_charges DROP CONSTRAINT ck_usage_charges_split")
    op.execute("ALTER TABLE usage_charges DROP CONSTRAINT ck_usage_charges_posting")
    op.execute(
        "ALTER TABLE usage_charges ADD CONSTRAINT ck_usage_charges_total"
        " CHECK (total = coalesce(price, units * unit_price) + remainder_before)"
    )
    op.execute(
        "ALTER TABLE usage_charges ADD CONSTRAINT ck_usage_charges_split"
        " CHECK (total = amount + remainder_after AND remainder_after >= 0 AND remainder_after < 1)"
    )
    op.execute(
        "ALTER TABLE usage_charges ADD CONSTRAINT ck_usage_charges_posting"
        " CHECK ((amount <> 0) = (transaction_id IS NOT NULL))"
    )
    op.add_column("usage_charge_remainders", sa.Column("period_start", _TS))
    op.add_column(
        "usage_charge_remainders",
        sa.Column("period_units", sa.Numeric(), nullable=False, server_default=sa.text("0")),
    )

    # -- entitlements -----------------------------------------------------------------------------
    op.add_column("plans", sa.Column("entitlements", pg.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")))
    op.create_table(
        "entitlement_overrides",
        sa.Column("project_id", _UUID, sa.ForeignKey("projects.id", ondelete="RESTRICT"), primary_key=True),
        sa.Column("feature_key", sa.Text(), primary_key=True),
        # The feature's shape when the override was made (a plan's definition of the key, or what
        # the override grants): a project whose plan lacks the feature gets it from here.
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("metric_key", sa.Text()),
        sa.Column("period", sa.Text()),
        sa.Column("enabled", sa.Boolean()),
        sa.Column("limit", sa.BigInteger()),
        sa.Column("config", pg.JSONB()),
        sa.Column("expires_at", _TS),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint('"limit" IS NULL OR "limit" >= 0', name="ck_entitlement_overrides_limit"),
        sa.CheckConstraint("type IN ('BOOLEAN', 'METERED', 'CONFIG')", name="ck_entitlement_overrides_type"),
        sa.CheckConstraint(
            "(type = 'METERED') = (metric_key IS NOT NULL AND period IN ('MONTH', 'DAY'))",
            name="ck_entitlement_overrides_meter",
        ),
        sa.CheckConstraint(
            'enabled IS NOT NULL OR "limit" IS NOT NULL OR config IS NOT NULL', name="ck_entitlement_overrides_some"
        ),
    )
    op.execute(rls.grant_sql("entitlement_overrides", "SELECT, INSERT, UPDATE, DELETE"))
    for stmt in rls.tenant_rls_sql("entitlement_overrides"):
        op.execute(stmt)

    op.add_column(
        "usage_quota_crossings",
        sa.Column("period", sa.Text(), nullable=False, server_default=sa.text("'MONTH'")),
    )
    op.execute("ALTER TABLE usage_quota_crossings DROP CONSTRAINT pk_usage_quota_crossings")
    op.execute(
        "ALTER TABLE usage_quota_crossings ADD CONSTRAINT pk_usage_quota_crossings"
        " PRIMARY KEY (project_id, metric_id, period, month, quota)"
    )


def downgrade() -> None:
    op.execute("SELECT set_config('ledgerx.scope', 'system', true)")
    # Crossings of daily limits have no place in the monthly key: they go with the DAY periods.
    op.execute("ALTER TABLE usage_quota_crossings DISABLE TRIGGER USER")
    op.execute("DELETE FROM usage_quota_crossings WHERE period <> 'MONTH'")
    op.execute("ALTER TABLE usage_quota_crossings ENABLE TRIGGER USER")
    op.execute("ALTER TABLE usage_quota_crossings DROP CONSTRAINT pk_usage_quota_crossings")
    op.execute(
        "ALTER TABLE usage_quota_crossings ADD CONSTRAINT pk_usage_quota_crossings"
        " PRIMARY KEY (project_id, metric_id, month, quota)"
    )
    op.drop_column("usage_quota_crossings", "period")
    op.drop_table("entitlement_overrides")
    op.drop_column("plans", "entitlements")
    op.drop_column("usage_charge_remainders", "period_units")
    op.drop_column("usage_charge_remainders", "period_start")
    # Charges priced by a tier model cannot be stated by the old columns, and a metric priced by
    # one (or repriced for a coming period) would be charged at its first tier's unit price: the
    # downgrade refuses rather than rewrite history or prices.
    op.execute(
        """
        DO $$ BEGIN
          IF EXISTS (SELECT 1 FROM usage_charges WHERE price IS NOT NULL AND price <> units * unit_price
                     OR amount < 0) THEN
            RAISE EXCEPTION 'usage charges priced by tiers exist: this downgrade would misstate them';
          END IF;
          IF EXISTS (SELECT 1 FROM usage_metrics WHERE pricing IS NOT NULL)
             OR EXISTS (SELECT 1 FROM usage_metric_prices WHERE effective_from <> '-infinity') THEN
            RAISE EXCEPTION 'metrics priced by tiers or repriced exist: this downgrade would change their prices';
          END IF;
        END $$
        """
    )
    op.execute("ALTER TABLE usage_charges DROP CONSTRAINT ck_usage_charges_total")
    op.execute("ALTER TABLE usage_charges DROP CONSTRAINT ck_usage_charges_split")
    op.execute("ALTER TABLE usage_charges DROP CONSTRAINT ck_usage_charges_posting")
    op.drop_column("usage_charges", "price")
    op.execute(
        "ALTER TABLE usage_charges ADD CONSTRAINT ck_usage_charges_total"
        " CHECK (total = units * unit_price + remainder_before)"
    )
    op.execute(
        "ALTER TABLE usage_charges ADD CONSTRAINT ck_usage_charges_split CHECK ("
        "amount >= 0 AND total = amount + remainder_after AND remainder_after >= 0 AND remainder_after < 1)"
    )
    op.execute(
        "ALTER TABLE usage_charges ADD CONSTRAINT ck_usage_charges_posting"
        " CHECK ((amount > 0) = (transaction_id IS NOT NULL))"
    )
    op.drop_table("usage_metric_prices")
    op.execute(f"REVOKE UPDATE ON usage_metrics FROM {rls.app_role()}")
    op.drop_column("usage_metrics", "updated_at")
    op.drop_column("usage_metrics", "pricing")
