"""usage quota crossings: the (project, metric, month) slots whose monthly quota was exceeded

Revision ID: 0011_usage_quota_crossings
Revises: 0010_notifications
Create Date: 2026-12-09

`usage_quota_crossings` (a tenant table, row-level security keyed on `project_id`) holds one row
per (project, metric, calendar month, limit) whose quota refused or flagged an event (a limit
raised during the month can be crossed again), written with
`INSERT ... ON CONFLICT DO NOTHING` in the transaction that decided it: the insert that succeeds is
the crossing, announced once as the outbound webhook event `usage.quota_exceeded`, however many
events are refused after it. Append-only: rows are never changed or removed by the app.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from ledgerx.db import rls

revision = "0011_usage_quota_crossings"
down_revision = "0010_notifications"
branch_labels = None
depends_on = None

_UUID = pg.UUID(as_uuid=True)
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "usage_quota_crossings",
        sa.Column("project_id", _UUID, sa.ForeignKey("projects.id"), primary_key=True),
        sa.Column("metric_id", _UUID, sa.ForeignKey("usage_metrics.id"), primary_key=True),
        # The first instant of the UTC calendar month the quota counts.
        sa.Column("month", _TS, primary_key=True),
        sa.Column("quota", sa.BigInteger(), primary_key=True),
        sa.Column("crossed_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.execute(rls.grant_sql("usage_quota_crossings", "SELECT, INSERT"))
    for stmt in rls.append_only_sql("usage_quota_crossings"):
        op.execute(stmt)
    for stmt in rls.tenant_rls_sql("usage_quota_crossings"):
        op.execute(stmt)


def downgrade() -> None:
    op.drop_table("usage_quota_crossings")
