"""outbound webhooks: tenant endpoints, the event outbox, deliveries and their attempts

Revision ID: 0008_outbound_webhooks
Revises: 0007_email_verification
Create Date: 2026-12-05

Four tenant tables (row-level security keyed on `project_id`, like every tenant table):

- `webhook_endpoints`: where a project wants its events (url, event types, enabled). The signing
  secret is kept as its raw bytes (Standard Webhooks signs with HMAC, which needs the secret
  itself, not a hash); after a rotation the previous secret signs too until it expires. Deleting
  an endpoint marks it (`deleted_at`) so its delivery log and the audit rows naming it stay
  meaningful.
- `webhook_outbox`: one row per event, written in the same transaction as the change it
  describes (the Stripe inbox already owns the name `webhook_events`). Append-only: the database
  refuses UPDATE, DELETE and TRUNCATE.
- `webhook_deliveries`: one row per (event, endpoint) and per redelivery; the delivery worker
  claims due rows (`status = 'PENDING' AND next_attempt_at <= now()`, a partial index) with
  `FOR UPDATE SKIP LOCKED`, and pushes `next_attempt_at` past a lease while it sends.
- `webhook_delivery_attempts`: one row per attempt (status code or error, duration); append-only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from ledgerx.db import rls

revision = "0008_outbound_webhooks"
down_revision = "0007_email_verification"
branch_labels = None
depends_on = None

_UUID = pg.UUID(as_uuid=True)
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", _UUID, primary_key=True),
        sa.Column("project_id", _UUID, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", pg.ARRAY(sa.Text()), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("enabled", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("disabled_reason", sa.Text()),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.Column("previous_secret", sa.LargeBinary()),
        sa.Column("previous_secret_expires_at", _TS),
        # The first failed attempt since the last success (NULL while the endpoint answers).
        sa.Column("failing_since", _TS),
        sa.Column("created_by", _UUID),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("deleted_at", _TS),
    )
    op.create_index("ix_webhook_endpoints_project_id", "webhook_endpoints", ["project_id", "id"])

    op.create_table(
        "webhook_outbox",
        sa.Column("id", _UUID, primary_key=True),
        sa.Column("project_id", _UUID, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("payload", pg.JSONB(), nullable=False),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_webhook_outbox_project_id", "webhook_outbox", ["project_id", "id"])

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", _UUID, primary_key=True),
        sa.Column("project_id", _UUID, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("endpoint_id", _UUID, sa.ForeignKey("webhook_endpoints.id"), nullable=False),
        sa.Column("event_id", _UUID, sa.ForeignKey("webhook_outbox.id"), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="PENDING"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_status_code", sa.Integer()),
        sa.Column("last_error", sa.Text()),
        sa.Column("next_attempt_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("delivered_at", _TS),
        sa.CheckConstraint("status IN ('PENDING', 'SUCCEEDED', 'FAILED')", name="status"),
    )
    # The claim: due pending rows, oldest first (the partial index holds only the work left).
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'PENDING'"),
    )
    # An endpoint's delivery log, newest first.
    op.create_index("ix_webhook_deliveries_endpoint", "webhook_deliveries", ["endpoint_id", "id"])
    op.create_index("ix_webhook_deliveries_event", "webhook_deliveries", ["event_id"])

    op.create_table(
        "webhook_delivery_attempts",
        sa.Column("id", _UUID, primary_key=True),
        sa.Column("project_id", _UUID, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("delivery_id", _UUID, sa.ForeignKey("webhook_deliveries.id"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("error", sa.Text()),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_webhook_delivery_attempts_delivery", "webhook_delivery_attempts", ["delivery_id", "attempt"])

    op.execute(rls.grant_sql("webhook_endpoints", "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("webhook_outbox", "SELECT, INSERT"))
    op.execute(rls.grant_sql("webhook_deliveries", "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("webhook_delivery_attempts", "SELECT, INSERT"))
    for table in ("webhook_outbox", "webhook_delivery_attempts"):
        for stmt in rls.append_only_sql(table):
            op.execute(stmt)
    for table in ("webhook_endpoints", "webhook_outbox", "webhook_deliveries", "webhook_delivery_attempts"):
        for stmt in rls.tenant_rls_sql(table):
            op.execute(stmt)


def downgrade() -> None:
    op.drop_table("webhook_delivery_attempts")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_outbox")
    op.drop_table("webhook_endpoints")
