"""auto top-up: per-wallet settings, the attempts (one in flight per wallet), the project's saved
payment method, top-up invoices

Revision ID: 0014_auto_top_up
Revises: 0013_credit_grants
Create Date: 2026-12-05

`auto_top_ups` (tenant, row-level security on `project_id`): one row per wallet that ever had auto
top-up settings: `enabled`, `threshold`, the credit pack bought, and what the last attempt did
(`last_attempt_at`, `last_status`, `last_error`).

`wallets.auto_top_up_below`: the threshold of an enabled auto top-up (NULL: off), kept by
setAutoTopUp under the wallet's lock. The ledger reads it with the lock it takes anyway, so a
posting pays nothing for the feature; only a debit that takes the balance from at or above it to
below it writes a row here.

`auto_top_up_attempts` (tenant): one row per top-up wanted. WANTED (the ledger's crossing, or a
save of the settings while the balance is already low) -> PENDING (a worker claimed it: `started_at`,
then the Stripe PaymentIntent `stripe_payment_intent_id`) -> SUCCEEDED / FAILED, or SKIPPED (off by
then, or no saved payment method). A partial unique index allows one WANTED or PENDING row per
wallet: whatever the concurrency, one PaymentIntent is in flight per wallet. A PENDING row without
an intent whose `started_at` is old was lost between the claim and Stripe's answer: a worker calls
Stripe again with the same idempotency key (the attempt's id), which returns the same intent.

`payment_customers.default_payment_method`: the payment method Stripe saved for off-session use
(a Checkout with `setup_future_usage=off_session`, seen on its `payment_intent.succeeded`).

`invoices.kind` admits TOP_UP (the invoice of an auto top-up; no Stripe invoice behind it).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from ledgerx.db import rls

revision = "0014_auto_top_up"
down_revision = "0013_credit_grants"
branch_labels = None
depends_on = None

_UUID = pg.UUID(as_uuid=True)
_TS = sa.DateTime(timezone=True)
STATUSES = "'PENDING', 'SUCCEEDED', 'FAILED', 'NO_PAYMENT_METHOD', 'SKIPPED'"


def upgrade() -> None:
    op.create_table(
        "auto_top_ups",
        sa.Column("wallet_id", _UUID, sa.ForeignKey("wallets.id", ondelete="RESTRICT"), primary_key=True),
        sa.Column("project_id", _UUID, sa.ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("threshold", sa.BigInteger(), nullable=False),
        sa.Column("credit_pack_id", _UUID, sa.ForeignKey("credit_packs.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("last_attempt_at", _TS),
        sa.Column("last_status", sa.Text()),
        sa.Column("last_error", sa.Text()),
        sa.Column("updated_by", _UUID),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("threshold >= 0", name="threshold"),
        sa.CheckConstraint(f"last_status IS NULL OR last_status IN ({STATUSES})", name="last_status"),
    )
    op.create_index("ix_auto_top_ups_project", "auto_top_ups", ["project_id", "wallet_id"])
    op.add_column("wallets", sa.Column("auto_top_up_below", sa.BigInteger()))

    op.create_table(
        "auto_top_up_attempts",
        sa.Column("id", _UUID, primary_key=True),
        sa.Column("project_id", _UUID, sa.ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("wallet_id", _UUID, sa.ForeignKey("wallets.id", ondelete="RESTRICT"), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        # The debit that crossed the threshold (NULL: started by saving the settings).
        sa.Column("trigger_transaction_id", _UUID),
        sa.Column("credit_pack_id", _UUID, sa.ForeignKey("credit_packs.id", ondelete="RESTRICT")),
        sa.Column("credits", sa.BigInteger()),
        sa.Column("amount", sa.BigInteger()),
        sa.Column("currency", sa.Text()),
        sa.Column("invoice_id", _UUID, sa.ForeignKey("invoices.id", ondelete="RESTRICT")),
        sa.Column("stripe_payment_intent_id", sa.Text(), unique=True),
        sa.Column("started_at", _TS),
        sa.Column("finished_at", _TS),
        sa.Column("error", sa.Text()),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("status IN ('WANTED', 'PENDING', 'SUCCEEDED', 'FAILED', 'SKIPPED')", name="status"),
        sa.CheckConstraint("status = 'WANTED' OR started_at IS NOT NULL OR status = 'SKIPPED'", name="started"),
    )
    op.create_index(
        "ux_auto_top_up_attempts_in_flight",
        "auto_top_up_attempts",
        ["wallet_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('WANTED', 'PENDING')"),
    )
    op.create_index(
        "ix_auto_top_up_attempts_due",
        "auto_top_up_attempts",
        ["created_at"],
        postgresql_where=sa.text("status IN ('WANTED', 'PENDING')"),
    )
    op.create_index("ix_auto_top_up_attempts_wallet", "auto_top_up_attempts", ["wallet_id", "created_at"])

    op.add_column("payment_customers", sa.Column("default_payment_method", sa.Text()))
    op.add_column("payment_customers", sa.Column("payment_method_saved_at", _TS))
    op.execute("ALTER TABLE invoices DROP CONSTRAINT ck_invoices_kind")
    op.execute(
        "ALTER TABLE invoices ADD CONSTRAINT ck_invoices_kind"
        " CHECK (kind IN ('SUBSCRIPTION', 'PRORATION', 'OTHER', 'TOP_UP'))"
    )

    for table in ("auto_top_ups", "auto_top_up_attempts"):
        op.execute(rls.grant_sql(table, "SELECT, INSERT, UPDATE"))
        for stmt in rls.tenant_rls_sql(table):
            op.execute(stmt)


def downgrade() -> None:
    # Top-up invoices stay (they are records of money received); the old check then only holds
    # for new rows.
    op.execute("ALTER TABLE invoices DROP CONSTRAINT ck_invoices_kind")
    op.execute(
        "ALTER TABLE invoices ADD CONSTRAINT ck_invoices_kind CHECK (kind IN ('SUBSCRIPTION', 'PRORATION', 'OTHER'))"
        " NOT VALID"
    )
    op.drop_column("payment_customers", "payment_method_saved_at")
    op.drop_column("payment_customers", "default_payment_method")
    op.drop_table("auto_top_up_attempts")
    op.drop_column("wallets", "auto_top_up_below")
    op.drop_table("auto_top_ups")
