"""ledger stream position: every transaction records the id of the database transaction that wrote it

Revision ID: 0009_ledger_stream_position
Revises: 0008_outbound_webhooks
Create Date: 2026-12-08

`ledger_transactions.commit_xid` (xid8) is the writing transaction's id, `pg_current_xact_id()`.
A project's transactions in (commit_xid, id) order form a total order the database can replay:
once `commit_xid < pg_snapshot_xmin(pg_current_snapshot())`, every writer with a smaller id has
ended, so no row can appear before it any more (`domain/ledger/feed.py` reads only below that
horizon). Rows written before this revision get 0 and keep their id order, before every new row.

The column is added with a constant default first (PostgreSQL stores it as a fast default: no
table rewrite, and the append-only triggers never fire because no row is updated), then the
default becomes `pg_current_xact_id()` for new rows.
"""

from __future__ import annotations

from alembic import op

revision = "0009_ledger_stream_position"
down_revision = "0008_outbound_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE ledger_transactions ADD COLUMN commit_xid xid8 NOT NULL DEFAULT '0'")
    op.execute("ALTER TABLE ledger_transactions ALTER COLUMN commit_xid SET DEFAULT pg_current_xact_id()")
    op.create_index("ix_ledger_transactions_stream", "ledger_transactions", ["project_id", "commit_xid", "id"])


def downgrade() -> None:
    op.drop_index("ix_ledger_transactions_stream", table_name="ledger_transactions")
    op.execute("ALTER TABLE ledger_transactions DROP COLUMN commit_xid")
