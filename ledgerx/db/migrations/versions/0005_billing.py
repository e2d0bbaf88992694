"""billing: rules, runs (one per rule and period), test clocks, the scheduler lease; row-level security

Revision ID: 0005_billing
Revises: 0004_usage
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from ledgerx.db import rls

revision = "0005_billing"
down_revision = "0004_usage"
branch_labels = None
depends_on = None

MODES = "mode IN ('DAILY_FLAT', 'SELECTED_DAYS', 'MONTHLY_FLAT', 'USAGE_BASED', 'HYBRID', 'CRON')"
STATUSES = "status IN ('SUCCEEDED', 'FAILED', 'INSUFFICIENT_FUNDS', 'SKIPPED')"


def _ts(name: str, *, nullable: bool = True, now: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=sa.func.now() if now else None)


def _uuid(name: str, *fk: sa.ForeignKey, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, pg.UUID(as_uuid=True), *fk, nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "billing_rules",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        _uuid("project_id", sa.ForeignKey("projects.id", ondelete="RESTRICT")),
        _uuid("wallet_id", sa.ForeignKey("wallets.id", ondelete="RESTRICT")),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger()),
        _uuid("metric_id", sa.ForeignKey("usage_metrics.id", ondelete="RESTRICT"), nullable=True),
        sa.Column("metric_key", sa.Text()),
        sa.Column("unit_price", sa.Numeric()),
        sa.Column("weekdays", pg.ARRAY(sa.SmallInteger()), nullable=False, server_default="{}"),
        sa.Column("month_days", pg.ARRAY(sa.SmallInteger()), nullable=False, server_default="{}"),
        sa.Column("cron", sa.Text()),
        sa.Column("timezone", sa.Text(), nullable=False, server_default="UTC"),
        sa.Column("time_of_day", sa.Time(), nullable=False, server_default="00:00"),
        _ts("start_at", nullable=False),
        sa.Column("catch_up", sa.Text(), nullable=False, server_default="ALL"),
        sa.Column("status", sa.Text(), nullable=False, server_default="ACTIVE"),
        sa.Column("paused_reason", sa.Text()),
        sa.Column("test_mode", sa.Boolean(), nullable=False, server_default=sa.false()),
        _ts("period_start", nullable=False),
        _ts("scheduled_through", nullable=False),
        _ts("next_run_at"),
        _ts("retry_at"),
        _ts("grace_until"),
        _ts("due_at"),
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text()),
        sa.Column("version", sa.Integer(), nullable=False, server_default="1"),
        _uuid("created_by", nullable=True),
        _ts("created_at", nullable=False, now=True),
        _ts("updated_at", nullable=False, now=True),
        sa.CheckConstraint(MODES, name="mode"),
        sa.CheckConstraint("length(btrim(name)) BETWEEN 1 AND 200", name="name"),
        sa.CheckConstraint("amount IS NULL OR amount > 0", name="amount"),
        sa.CheckConstraint("unit_price IS NULL OR unit_price >= 0", name="unit_price"),
        sa.CheckConstraint("catch_up IN ('ALL', 'LATEST')", name="catch_up"),
        sa.CheckConstraint("status IN ('ACTIVE', 'PAUSED')", name="status"),
        sa.CheckConstraint("(status = 'PAUSED') = (paused_reason IS NOT NULL)", name="paused_reason"),
        sa.CheckConstraint(
            "mode NOT IN ('DAILY_FLAT', 'SELECTED_DAYS', 'MONTHLY_FLAT', 'CRON', 'HYBRID') OR amount IS NOT NULL",
            name="flat_amount",
        ),
        sa.CheckConstraint(
            "(mode IN ('USAGE_BASED', 'HYBRID')) = (metric_id IS NOT NULL AND metric_key IS NOT NULL)", name="metric"
        ),
        sa.CheckConstraint("mode <> 'CRON' OR cron IS NOT NULL", name="cron"),
        sa.CheckConstraint("failures >= 0", name="failures"),
    )
    op.create_index("ix_billing_rules_project", "billing_rules", ["project_id", "id"])
    op.create_index("ix_billing_rules_wallet", "billing_rules", ["wallet_id"])
    # The live scheduler's claim walks this in order: rules of one wallet end up in one batch, and
    # concurrent batches take neighbouring wallet ranges (they rarely wait on each other's locks).
    op.create_index(
        "ix_billing_rules_due",
        "billing_rules",
        ["due_at", "wallet_id"],
        postgresql_where=sa.text("status = 'ACTIVE' AND NOT test_mode"),
    )
    op.create_index(
        "ix_billing_rules_test_due",
        "billing_rules",
        ["project_id", "due_at"],
        postgresql_where=sa.text("status = 'ACTIVE' AND test_mode"),
    )

    op.create_table(
        "billing_runs",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        _uuid("project_id", sa.ForeignKey("projects.id", ondelete="RESTRICT")),
        _uuid("rule_id", sa.ForeignKey("billing_rules.id", ondelete="RESTRICT")),
        _uuid("wallet_id"),
        _ts("scheduled_at", nullable=False),
        _ts("period_start", nullable=False),
        _ts("period_end", nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("base_amount", sa.BigInteger()),
        sa.Column("units", sa.Numeric()),
        sa.Column("unit_price", sa.Numeric()),
        sa.Column("remainder_before", sa.Numeric()),
        sa.Column("remainder_after", sa.Numeric()),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        _uuid("transaction_id", sa.ForeignKey("ledger_transactions.id", ondelete="RESTRICT"), nullable=True),
        sa.Column("error", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        _ts("next_retry_at"),
        _ts("first_attempt_at"),
        _ts("last_attempt_at"),
        _ts("started_at", nullable=False),
        _ts("finished_at", nullable=False),
        _ts("created_at", nullable=False, now=True),
        _ts("updated_at", nullable=False, now=True),
        sa.CheckConstraint(STATUSES, name="status"),
        sa.CheckConstraint("trigger IN ('SCHEDULE', 'MANUAL', 'TEST_CLOCK')", name="trigger"),
        sa.CheckConstraint("amount >= 0", name="amount"),
        sa.CheckConstraint("period_start <= period_end", name="period"),
        sa.CheckConstraint("attempts >= 0", name="attempts"),
        # A succeeded run that charged something names its transaction; nothing else does.
        sa.CheckConstraint("(transaction_id IS NOT NULL) = (status = 'SUCCEEDED' AND amount > 0)", name="transaction"),
        sa.CheckConstraint("next_retry_at IS NULL OR status IN ('INSUFFICIENT_FUNDS', 'FAILED')", name="retry"),
        # The wall behind "once per period": a second run of one rule and instant cannot exist.
        sa.UniqueConstraint("rule_id", "scheduled_at", name="uq_billing_runs_rule_period"),
    )
    op.create_index("ix_billing_runs_project", "billing_runs", ["project_id", "id"])
    op.create_index(
        "ix_billing_runs_unpaid", "billing_runs", ["rule_id"], postgresql_where=sa.text("status = 'INSUFFICIENT_FUNDS'")
    )

    op.create_table(
        "billing_test_clocks",
        _uuid("project_id", sa.ForeignKey("projects.id", ondelete="CASCADE")),
        _ts("now", nullable=False),
        _ts("created_at", nullable=False, now=True),
        _ts("updated_at", nullable=False, now=True),
        sa.PrimaryKeyConstraint("project_id", name="pk_billing_test_clocks"),
    )

    # Not a tenant table: one row per background loop, shared by every instance.
    op.create_table(
        "scheduler_leases",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("holder", sa.Text(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False, server_default="1"),
        _ts("acquired_at", nullable=False),
        _ts("renewed_at", nullable=False),
        _ts("expires_at", nullable=False),
    )

    # Rules and runs change (cursor, retries); nothing is ever deleted by the app.
    op.execute(rls.grant_sql("billing_rules", "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("billing_runs", "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("billing_test_clocks", "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("scheduler_leases", "SELECT, INSERT, UPDATE"))
    for table in ("billing_rules", "billing_runs", "billing_test_clocks"):
        for stmt in rls.tenant_rls_sql(table):
            op.execute(stmt)


def downgrade() -> None:
    for t in ("scheduler_leases", "billing_test_clocks", "billing_runs", "billing_rules"):
        op.drop_table(t)
