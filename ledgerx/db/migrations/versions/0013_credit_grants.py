"""credit grants: every credit in a wallet is a grant; debits record which grants they drew

Revision ID: 0013_credit_grants
Revises: 0012_coupons
Create Date: 2026-12-05

`credit_grants` (tenant, row-level security on `project_id`): one row per credit that entered a
wallet, with its terms (category, priority, expiry) and what is left of it (`remaining`). The
ledger keeps `sum(remaining of a wallet's grants) = max(balance, 0)`: a wallet below zero (down to
its credit limit) has spent all its grants, and the next credit repays that overdraft first
(domain/ledger/grants.py explains the rules). `status` is ACTIVE exactly while `remaining > 0`
(a CHECK), so the hot path reads a wallet's spendable grants through a small partial index.

`credit_grant_draws` (tenant, append-only): per (transaction, grant) the signed amount the
transaction took from the grant (a debit, an expiry, a void, an overdraft repaid out of a new
grant) or gave back to it (< 0: a refund). For every grant, `amount - sum(draws) = remaining`:
verifyLedger checks it.

Existing positive balances become one PAID grant each, without expiry, with no ledger transaction
(an opening grant: `source_transaction_id` NULL): the books are unchanged and verifyLedger stays
clean (sum of remaining = max(balance, 0) holds from the start). `wallets.grants_from_seq` marks
where each wallet's recorded grant steps begin (its entry_seq at the migration).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from ledgerx.db import rls

revision = "0013_credit_grants"
down_revision = "0012_coupons"
branch_labels = None
depends_on = None

_UUID = pg.UUID(as_uuid=True)
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "credit_grants",
        sa.Column("id", _UUID, primary_key=True),
        sa.Column("project_id", _UUID, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("wallet_id", _UUID, sa.ForeignKey("wallets.id"), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("expires_at", _TS, nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        # The transaction that made the grant (NULL: an opening grant of the migration).
        sa.Column("source_transaction_id", _UUID, sa.ForeignKey("ledger_transactions.id"), nullable=True),
        # The EXPIRATION or void transaction that took the remainder.
        sa.Column("ended_transaction_id", _UUID, sa.ForeignKey("ledger_transactions.id"), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("metadata", pg.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        # When CREDITS_EXPIRING was queued (3 days before expires_at), so a pass mails it once.
        sa.Column("expiry_notified_at", _TS, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.CheckConstraint("amount > 0", name="ck_credit_grants_amount"),
        sa.CheckConstraint("remaining >= 0 AND remaining <= amount", name="ck_credit_grants_remaining"),
        sa.CheckConstraint("category IN ('PAID', 'PROMOTIONAL')", name="ck_credit_grants_category"),
        sa.CheckConstraint("priority BETWEEN 0 AND 100", name="ck_credit_grants_priority"),
        sa.CheckConstraint("status IN ('ACTIVE', 'DEPLETED', 'EXPIRED', 'VOIDED')", name="ck_credit_grants_status"),
        sa.CheckConstraint("(status = 'ACTIVE') = (remaining > 0)", name="ck_credit_grants_active"),
        # Every debit updates a grant (remaining, updated_at: no indexed column): room on the page
        # keeps those updates HOT.
        postgresql_with={"fillfactor": 80},
    )
    # The hot path: a locked wallet's spendable grants in draw order (expires_at ascending puts
    # NULL last), so a batch reads only the first few of a wallet with many.
    op.execute(
        "CREATE INDEX ix_credit_grants_draw_order ON credit_grants (wallet_id, priority, expires_at, created_at, id)"
        " WHERE status = 'ACTIVE'"
    )
    op.create_index("ix_credit_grants_wallet", "credit_grants", ["wallet_id", "id"])
    op.create_index("ix_credit_grants_source", "credit_grants", ["source_transaction_id"])
    # The expiry job: due grants in expiry order.
    op.execute(
        "CREATE INDEX ix_credit_grants_expiry ON credit_grants (expires_at)"
        " WHERE status = 'ACTIVE' AND expires_at IS NOT NULL"
    )
    op.create_table(
        "credit_grant_draws",
        sa.Column("transaction_id", _UUID, sa.ForeignKey("ledger_transactions.id"), primary_key=True),
        sa.Column("grant_id", _UUID, sa.ForeignKey("credit_grants.id"), primary_key=True),
        sa.Column("project_id", _UUID, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        # The draw's place in its transaction (a refund gives back in the reverse order).
        sa.Column("ord", sa.Integer(), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.CheckConstraint("amount <> 0", name="ck_credit_grant_draws_amount"),
    )
    op.create_index("ix_credit_grant_draws_grant", "credit_grant_draws", ["grant_id"])

    # Opening grants, before the walls go up (the owner is subject to FORCE ROW LEVEL SECURITY on
    # wallets, so the read runs on the system path).
    op.execute("SELECT set_config('ledgerx.scope', 'system', true)")
    # The wallet entries from which on every transaction's grant changes are recorded
    # (verifyLedger checks each step after it; the steps before are summed in the opening grant).
    op.add_column("wallets", sa.Column("grants_from_seq", sa.BigInteger(), nullable=False, server_default=sa.text("0")))
    op.execute("UPDATE wallets SET grants_from_seq = entry_seq WHERE entry_seq > 0")
    op.execute(
        """
        INSERT INTO credit_grants (id, project_id, wallet_id, amount, remaining, category, priority, expires_at,
          status, reason, created_at, updated_at)
        SELECT gen_random_uuid(), project_id, id, balance, balance, 'PAID', 50, NULL, 'ACTIVE',
          'opening balance', now(), now()
        FROM wallets WHERE balance > 0
        """
    )

    op.execute(rls.grant_sql("credit_grants", "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("credit_grant_draws", "SELECT, INSERT"))
    for stmt in rls.append_only_sql("credit_grant_draws"):
        op.execute(stmt)
    for table in ("credit_grants", "credit_grant_draws"):
        for stmt in rls.tenant_rls_sql(table):
            op.execute(stmt)


def downgrade() -> None:
    op.drop_column("wallets", "grants_from_seq")
    op.drop_table("credit_grant_draws")
    op.drop_table("credit_grants")
