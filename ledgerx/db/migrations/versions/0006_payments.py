"""payments: catalog (plans, credit packs, Stripe prices), customers, subscriptions, invoices,
payments, refunds, disputes, plan overrides and the Stripe webhook inbox; row-level security

Revision ID: 0006_payments
Revises: 0005_billing
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from ledgerx.db import rls

revision = "0006_payments"
down_revision = "0005_billing"
branch_labels = None
depends_on = None

ISO_CURRENCY = "currency ~ '^[A-Z]{3}$'"
TENANT_TABLES = (
    "payment_customers",
    "subscriptions",
    "invoices",
    "invoice_lines",
    "payments",
    "payment_refunds",
    "payment_disputes",
    "plan_overrides",
)
SYSTEM_TABLES = ("webhook_events", "webhook_attempts")


def _ts(name: str, *, nullable: bool = True, now: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=sa.func.now() if now else None)


def _uuid(name: str, *fk: sa.ForeignKey, nullable: bool = True, primary_key: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, pg.UUID(as_uuid=True), *fk, nullable=nullable, primary_key=primary_key)


def _project() -> sa.Column:  # type: ignore[type-arg]
    return _uuid("project_id", sa.ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)


def _money(name: str, *, default: str | None = None) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.BigInteger(), nullable=False, server_default=default)


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("tier", sa.Text(), nullable=False),
        sa.Column("interval", sa.Text(), nullable=False),
        _money("price_amount"),
        sa.Column("currency", sa.Text(), nullable=False),
        _money("included_credits", default="0"),
        sa.Column("rate_limit", pg.JSONB()),
        sa.Column("monthly_quotas", pg.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("features", pg.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("trial_days", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("stripe_product_id", sa.Text()),
        sa.Column("stripe_price_id", sa.Text()),
        _ts("archived_at"),
        _ts("created_at", nullable=False, now=True),
        _ts("updated_at", nullable=False, now=True),
        sa.CheckConstraint("tier IN ('FREE', 'PRO', 'ENTERPRISE')", name="tier"),
        sa.CheckConstraint("interval IN ('MONTH', 'YEAR')", name="interval"),
        sa.CheckConstraint("price_amount >= 0", name="price_amount"),
        sa.CheckConstraint("included_credits >= 0", name="included_credits"),
        sa.CheckConstraint("trial_days BETWEEN 0 AND 730", name="trial_days"),
        sa.CheckConstraint(ISO_CURRENCY, name="currency"),
        sa.CheckConstraint("length(btrim(name)) BETWEEN 1 AND 200", name="name"),
    )
    op.create_table(
        "credit_packs",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        _money("credits"),
        _money("price_amount"),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("stripe_product_id", sa.Text()),
        sa.Column("stripe_price_id", sa.Text()),
        _ts("archived_at"),
        _ts("created_at", nullable=False, now=True),
        _ts("updated_at", nullable=False, now=True),
        sa.CheckConstraint("credits > 0", name="credits"),
        sa.CheckConstraint("price_amount > 0", name="price_amount"),
        sa.CheckConstraint(ISO_CURRENCY, name="currency"),
        sa.CheckConstraint("length(btrim(name)) BETWEEN 1 AND 200", name="name"),
    )
    op.create_table(
        "catalog_prices",
        sa.Column("stripe_price_id", sa.Text(), primary_key=True),
        _uuid("plan_id", sa.ForeignKey("plans.id", ondelete="RESTRICT")),
        _uuid("credit_pack_id", sa.ForeignKey("credit_packs.id", ondelete="RESTRICT")),
        _money("amount"),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("interval", sa.Text()),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        _ts("created_at", nullable=False, now=True),
        sa.CheckConstraint("num_nonnulls(plan_id, credit_pack_id) = 1", name="one_owner"),
    )
    op.create_index("ix_catalog_prices_plan", "catalog_prices", ["plan_id"])

    op.create_table(
        "payment_customers",
        _uuid("project_id", sa.ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False, primary_key=True),
        sa.Column("stripe_customer_id", sa.Text(), nullable=False, unique=True),
        _ts("created_at", nullable=False, now=True),
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        _project(),
        _uuid("plan_id", sa.ForeignKey("plans.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("stripe_subscription_id", sa.Text(), unique=True),
        sa.Column("stripe_customer_id", sa.Text()),
        sa.Column("stripe_item_id", sa.Text()),
        sa.Column("stripe_schedule_id", sa.Text()),
        sa.Column("stripe_status", sa.Text(), nullable=False, server_default="incomplete"),
        _ts("current_period_start"),
        _ts("current_period_end"),
        _ts("trial_end"),
        sa.Column("cancel_at_period_end", sa.Boolean(), nullable=False, server_default=sa.false()),
        _ts("canceled_at"),
        _ts("ended_at"),
        _uuid("pending_plan_id", sa.ForeignKey("plans.id", ondelete="RESTRICT")),
        _ts("pending_at"),
        _ts("past_due_since"),
        _ts("grace_until"),
        _ts("downgraded_at"),
        _uuid("wallet_id"),
        _ts("synced_at"),
        sa.Column("synced_event_id", sa.Text()),
        _ts("created_at", nullable=False, now=True),
        _ts("updated_at", nullable=False, now=True),
    )
    op.create_index("ix_subscriptions_project", "subscriptions", ["project_id", "id"])
    op.create_index(
        "ix_subscriptions_grace",
        "subscriptions",
        ["grace_until"],
        postgresql_where=sa.text("grace_until IS NOT NULL AND downgraded_at IS NULL"),
    )

    op.create_table(
        "invoices",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        _project(),
        _uuid("subscription_id", sa.ForeignKey("subscriptions.id", ondelete="RESTRICT")),
        sa.Column("stripe_invoice_id", sa.Text(), unique=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("billing_reason", sa.Text()),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        _money("total", default="0"),
        _money("amount_due", default="0"),
        _money("amount_paid", default="0"),
        _ts("period_start"),
        _ts("period_end"),
        sa.Column("attempt_count", sa.Integer(), nullable=False, server_default="0"),
        _ts("next_payment_attempt"),
        _ts("first_failed_at"),
        _ts("last_failed_at"),
        _ts("paid_at"),
        _uuid("plan_id", sa.ForeignKey("plans.id", ondelete="RESTRICT")),
        _money("credits", default="0"),
        _uuid("grant_transaction_id"),
        sa.Column("stripe_charge_id", sa.Text()),
        sa.Column("stripe_payment_intent_id", sa.Text()),
        _ts("created_at", nullable=False, now=True),
        _ts("updated_at", nullable=False, now=True),
        sa.CheckConstraint("kind IN ('SUBSCRIPTION', 'PRORATION', 'OTHER')", name="kind"),
        sa.CheckConstraint("status IN ('DRAFT', 'OPEN', 'PAID', 'VOID', 'UNCOLLECTIBLE')", name="status"),
        sa.CheckConstraint("credits >= 0 AND amount_paid >= 0", name="amounts"),
    )
    op.create_index("ix_invoices_project", "invoices", ["project_id", "id"])
    op.create_index("ix_invoices_subscription", "invoices", ["subscription_id"])
    op.create_table(
        "invoice_lines",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        _uuid("invoice_id", sa.ForeignKey("invoices.id", ondelete="CASCADE"), nullable=False),
        _uuid("project_id", nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        _money("amount"),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False, server_default="1"),
        _ts("period_start"),
        _ts("period_end"),
        _uuid("plan_id"),
        sa.Column("proration", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_invoice_lines_invoice", "invoice_lines", ["invoice_id", "position"])

    op.create_table(
        "payments",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        _project(),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        _money("amount"),
        sa.Column("currency", sa.Text(), nullable=False),
        _money("credits", default="0"),
        _uuid("credit_pack_id", sa.ForeignKey("credit_packs.id", ondelete="RESTRICT")),
        _uuid("plan_id", sa.ForeignKey("plans.id", ondelete="RESTRICT")),
        _uuid("invoice_id", sa.ForeignKey("invoices.id", ondelete="RESTRICT")),
        _uuid("wallet_id"),
        _uuid("transaction_id"),
        sa.Column("stripe_checkout_session_id", sa.Text(), unique=True),
        sa.Column("stripe_invoice_id", sa.Text(), unique=True),
        sa.Column("stripe_payment_intent_id", sa.Text()),
        sa.Column("stripe_charge_id", sa.Text()),
        _money("amount_refunded", default="0"),
        _money("credits_reversed", default="0"),
        _money("credits_held", default="0"),
        _ts("created_at", nullable=False, now=True),
        _ts("updated_at", nullable=False, now=True),
        sa.CheckConstraint("kind IN ('CREDIT_PACK', 'SUBSCRIPTION')", name="kind"),
        sa.CheckConstraint("status IN ('SUCCEEDED', 'PARTIALLY_REFUNDED', 'REFUNDED')", name="status"),
        sa.CheckConstraint("amount >= 0 AND credits >= 0", name="amounts"),
        sa.CheckConstraint("amount_refunded BETWEEN 0 AND amount", name="refunded"),
        # Reversed and held credits never exceed what the payment granted.
        sa.CheckConstraint(
            "credits_reversed >= 0 AND credits_held >= 0 AND credits_reversed + credits_held <= credits",
            name="credits_bounds",
        ),
    )
    op.create_index("ix_payments_project", "payments", ["project_id", "id"])
    op.create_index("ix_payments_payment_intent", "payments", ["stripe_payment_intent_id"])
    op.create_index("ix_payments_charge", "payments", ["stripe_charge_id"])
    op.create_table(
        "payment_refunds",
        sa.Column("stripe_refund_id", sa.Text(), primary_key=True),
        _uuid("payment_id", sa.ForeignKey("payments.id", ondelete="RESTRICT"), nullable=False),
        _uuid("project_id", nullable=False),
        _money("amount"),
        _money("credits"),
        _uuid("transaction_id"),
        _ts("created_at", nullable=False, now=True),
    )
    op.create_table(
        "payment_disputes",
        sa.Column("stripe_dispute_id", sa.Text(), primary_key=True),
        _uuid("payment_id", sa.ForeignKey("payments.id", ondelete="RESTRICT"), nullable=False),
        _uuid("project_id", nullable=False),
        _money("amount"),
        _money("credits_held"),
        sa.Column("status", sa.Text(), nullable=False),
        _uuid("hold_transaction_id"),
        _uuid("release_transaction_id"),
        _ts("created_at", nullable=False, now=True),
        _ts("updated_at", nullable=False, now=True),
        sa.CheckConstraint("status IN ('OPEN', 'WON', 'LOST')", name="status"),
    )
    op.create_table(
        "plan_overrides",
        _uuid("project_id", sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False, primary_key=True),
        _uuid("plan_id", sa.ForeignKey("plans.id", ondelete="RESTRICT")),
        sa.Column("rate_limit", pg.JSONB()),
        sa.Column("monthly_quotas", pg.JSONB()),
        sa.Column("reason", sa.Text()),
        _ts("expires_at"),
        _uuid("created_by"),
        _ts("created_at", nullable=False, now=True),
        _ts("updated_at", nullable=False, now=True),
    )

    op.create_table(
        "webhook_events",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        sa.Column("stripe_event_id", sa.Text(), nullable=False, unique=True),
        sa.Column("type", sa.Text(), nullable=False),
        _ts("created", nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("api_version", sa.Text()),
        sa.Column("payload", pg.JSONB(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False, server_default="WEBHOOK"),
        sa.Column("status", sa.Text(), nullable=False, server_default="PENDING"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        _ts("next_attempt_at", nullable=False, now=True),
        _ts("locked_until"),
        sa.Column("last_error", sa.Text()),
        sa.Column("result", sa.Text()),
        _uuid("project_id"),
        _ts("received_at", nullable=False, now=True),
        _ts("processed_at"),
        sa.CheckConstraint(
            "status IN ('PENDING', 'PROCESSING', 'PROCESSED', 'FAILED', 'DEAD', 'IGNORED')", name="status"
        ),
        sa.CheckConstraint("source IN ('WEBHOOK', 'RECONCILE')", name="source"),
    )
    op.create_index(
        "ix_webhook_events_due",
        "webhook_events",
        ["next_attempt_at"],
        postgresql_where=sa.text("status IN ('PENDING', 'FAILED', 'PROCESSING')"),
    )
    op.create_index("ix_webhook_events_type", "webhook_events", ["type", "id"])
    op.create_index("ix_webhook_events_status", "webhook_events", ["status", "id"])
    op.create_index("ix_webhook_events_created", "webhook_events", ["created"])
    op.create_table(
        "webhook_attempts",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        _uuid("event_id", sa.ForeignKey("webhook_events.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("trigger", sa.Text(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("result", sa.Text()),
        sa.Column("error", sa.Text()),
        _ts("started_at", nullable=False),
        _ts("finished_at", nullable=False, now=True),
    )
    op.create_index("ix_webhook_attempts_event", "webhook_attempts", ["event_id", "attempt"])

    # Grants. The catalog is global (no RLS): everyone reads it, platform admins change it.
    for table in ("plans", "credit_packs", "catalog_prices"):
        op.execute(rls.grant_sql(table, "SELECT, INSERT, UPDATE"))
    for table in TENANT_TABLES:
        op.execute(rls.grant_sql(table, "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("plan_overrides", "DELETE"))
    op.execute(rls.grant_sql("webhook_events", "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("webhook_attempts", "SELECT, INSERT"))
    for stmt in rls.append_only_sql("webhook_attempts"):
        op.execute(stmt)

    for table in TENANT_TABLES:
        for stmt in rls.tenant_rls_sql(table):
            op.execute(stmt)
    # The inbox holds every tenant's payment events: only the explicit system path sees it.
    for table in SYSTEM_TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY {table}_system ON {table} USING ({rls.SYSTEM_SCOPE}) WITH CHECK ({rls.SYSTEM_SCOPE})"
        )


def downgrade() -> None:
    for t in (
        "webhook_attempts",
        "webhook_events",
        "plan_overrides",
        "payment_disputes",
        "payment_refunds",
        "payments",
        "invoice_lines",
        "invoices",
        "subscriptions",
        "payment_customers",
        "catalog_prices",
        "credit_packs",
        "plans",
    ):
        op.drop_table(t)
