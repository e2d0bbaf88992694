"""notifications: billing details, notification settings, and mail sent once per occurrence

Revision ID: 0010_notifications
Revises: 0009_ledger_stream_position
Create Date: 2026-12-09

Two tenant tables (row-level security keyed on `project_id`, like every tenant table), one row per
project at most:

- `billing_details`: the project's billing contact (email, legal name, postal address, tax ids),
  read by the mails and, later, by invoices.
- `notification_settings`: the notification kinds the project turned off (`disabled`).

`mail_outbox` gains an HTML part (`body_html`, NULL: plain text only) and an occurrence key
(`occurrence_key`, NULL for mails that are not notifications). The unique index on
(project, occurrence, recipient) makes enqueueing a notification idempotent: the same occurrence
(a failed invoice attempt, a wallet's threshold crossing, ...) is mailed once per recipient,
however often its cause is replayed, with `INSERT ... ON CONFLICT DO NOTHING`. Existing rows keep
NULL in both columns and are unaffected.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from ledgerx.db import rls

revision = "0010_notifications"
down_revision = "0009_ledger_stream_position"
branch_labels = None
depends_on = None

_UUID = pg.UUID(as_uuid=True)
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "billing_details",
        sa.Column("project_id", _UUID, sa.ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("email", sa.Text()),
        sa.Column("legal_name", sa.Text()),
        sa.Column("address_line1", sa.Text()),
        sa.Column("address_line2", sa.Text()),
        sa.Column("address_city", sa.Text()),
        sa.Column("address_postal_code", sa.Text()),
        sa.Column("address_state", sa.Text()),
        # ISO 3166-1 alpha-2; an address is stored only with its country.
        sa.Column("address_country", sa.Text()),
        # [{"type": "eu_vat", "value": "DE123456789"}, ...] in the order given.
        sa.Column("tax_ids", pg.JSONB(), nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("updated_by", _UUID),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "notification_settings",
        sa.Column("project_id", _UUID, sa.ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("disabled", pg.ARRAY(sa.Text()), nullable=False, server_default="{}"),
        sa.Column("updated_by", _UUID),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
    )

    op.add_column("mail_outbox", sa.Column("body_html", sa.Text()))
    op.add_column("mail_outbox", sa.Column("occurrence_key", sa.Text()))
    op.create_index(
        "uq_mail_outbox_occurrence",
        "mail_outbox",
        ["project_id", "occurrence_key", sa.text("lower(to_addr)")],
        unique=True,
        postgresql_where=sa.text("occurrence_key IS NOT NULL"),
    )

    op.execute(rls.grant_sql("billing_details", "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("notification_settings", "SELECT, INSERT, UPDATE"))
    for table in ("billing_details", "notification_settings"):
        for stmt in rls.tenant_rls_sql(table):
            op.execute(stmt)


def downgrade() -> None:
    op.drop_index("uq_mail_outbox_occurrence", table_name="mail_outbox")
    op.drop_column("mail_outbox", "occurrence_key")
    op.drop_column("mail_outbox", "body_html")
    op.drop_table("notification_settings")
    op.drop_table("billing_details")
