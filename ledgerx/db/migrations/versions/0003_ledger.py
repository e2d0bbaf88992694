"""ledger: wallets, system accounts, append-only transactions and entries; row-level security

Revision ID: 0003_ledger
Revises: 0002_tenancy
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql as pg

from ledgerx.db import rls

revision = "0003_ledger"
down_revision = "0002_tenancy"
branch_labels = None
depends_on = None

CURRENCY_CHECK = "currency = 'CREDITS' OR currency ~ '^[A-Z]{3}$'"

# Every statement that inserts entries must leave each touched transaction with at least two
# entries summing to zero per currency. Statement-level (transition table), so one multi-row
# insert of a whole batch costs one check, and a transaction cannot be written leg by leg.
BALANCED_FN = """
CREATE OR REPLACE FUNCTION ledgerx_entries_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE bad uuid;
BEGIN
  -- Correlated subqueries: each touched transaction is checked through the transaction_id index,
  -- whatever the table statistics say (a join here could turn into a scan of the whole table).
  SELECT n.transaction_id INTO bad
  FROM (SELECT DISTINCT transaction_id FROM new_entries) n
  WHERE (SELECT count(*) < 2 OR bool_or(e.amount = 0) FROM ledger_entries e WHERE e.transaction_id = n.transaction_id)
     OR EXISTS (
       SELECT 1 FROM ledger_entries x WHERE x.transaction_id = n.transaction_id
       GROUP BY x.currency HAVING sum(x.amount) <> 0)
  LIMIT 1;
  IF bad IS NOT NULL THEN
    RAISE EXCEPTION 'ledger transaction % is not balanced (two or more entries summing to zero)', bad
      USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$
"""


def _ts(name: str, *, nullable: bool = False, now: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=sa.func.now() if now else None)


def _uuid(name: str, *fk: sa.ForeignKey, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, pg.UUID(as_uuid=True), *fk, nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "wallets",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        _uuid("project_id", sa.ForeignKey("projects.id", ondelete="RESTRICT")),
        sa.Column("name", sa.Text(), nullable=False),
        _uuid("owner_user_id", sa.ForeignKey("users.id", ondelete="SET NULL"), nullable=True),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("credit_limit", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("low_balance_threshold", sa.BigInteger()),
        sa.Column("entry_seq", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("head_hash", sa.LargeBinary()),
        _uuid("created_by", nullable=True),
        _ts("created_at", now=True),
        _ts("updated_at", now=True),
        sa.CheckConstraint(CURRENCY_CHECK, name="currency"),
        sa.CheckConstraint("length(btrim(name)) BETWEEN 1 AND 200", name="name"),
        sa.CheckConstraint("credit_limit >= 0", name="credit_limit"),
        # The last wall against overdrafts: even a buggy caller cannot pass the credit limit.
        sa.CheckConstraint("balance >= -credit_limit", name="within_credit_limit"),
        sa.CheckConstraint("entry_seq >= 0", name="entry_seq"),
    )
    op.create_index("ix_wallets_project", "wallets", ["project_id", "id"])

    op.create_table(
        "ledger_system_accounts",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        _uuid("project_id", sa.ForeignKey("projects.id", ondelete="RESTRICT")),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        _ts("created_at", now=True),
        sa.CheckConstraint(CURRENCY_CHECK, name="currency"),
        sa.CheckConstraint("code ~ '^[A-Z][A-Z_]{1,63}$'", name="code"),
        sa.UniqueConstraint("project_id", "code", "currency", name="uq_ledger_system_accounts_key"),
    )

    op.create_table(
        "ledger_transactions",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        _uuid("project_id", sa.ForeignKey("projects.id", ondelete="RESTRICT")),
        _uuid("wallet_id", sa.ForeignKey("wallets.id", ondelete="RESTRICT")),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_before", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(), nullable=False),
        sa.Column("reference", sa.Text()),
        sa.Column("reason", sa.Text()),
        sa.Column("metadata", pg.JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        _uuid("refund_of", sa.ForeignKey("ledger_transactions.id", ondelete="RESTRICT"), nullable=True),
        sa.Column("actor_type", sa.Text(), nullable=False),
        _uuid("actor_id", nullable=True),
        _ts("created_at"),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("type IN ('CREDIT', 'DEBIT')", name="type"),
        sa.CheckConstraint("kind ~ '^[A-Z][A-Z_]{1,63}$'", name="kind"),
        sa.CheckConstraint("amount > 0", name="amount_positive"),
        sa.CheckConstraint(
            "balance_after = balance_before + CASE type WHEN 'CREDIT' THEN amount ELSE -amount END",
            name="primary_balance",
        ),
        sa.CheckConstraint("length(idempotency_key) BETWEEN 1 AND 255", name="idempotency_key"),
        sa.CheckConstraint("refund_of IS DISTINCT FROM id", name="refund_of_self"),
        sa.CheckConstraint("octet_length(hash) = 32 AND octet_length(request_hash) = 32", name="hashes"),
        sa.UniqueConstraint("project_id", "idempotency_key", name="uq_ledger_transactions_idempotency"),
    )
    op.create_index("ix_ledger_transactions_project", "ledger_transactions", ["project_id", "id"])
    op.create_index(
        "ix_ledger_transactions_refund_of",
        "ledger_transactions",
        ["refund_of"],
        postgresql_where=sa.text("refund_of IS NOT NULL"),
    )

    op.create_table(
        "ledger_entries",
        sa.Column("id", pg.UUID(as_uuid=True), primary_key=True),
        _uuid("transaction_id", sa.ForeignKey("ledger_transactions.id", ondelete="RESTRICT")),
        _uuid("project_id"),
        _uuid("wallet_id", sa.ForeignKey("wallets.id", ondelete="RESTRICT"), nullable=True),
        _uuid("system_account_id", sa.ForeignKey("ledger_system_accounts.id", ondelete="RESTRICT"), nullable=True),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_before", sa.BigInteger()),
        sa.Column("balance_after", sa.BigInteger()),
        sa.Column("seq", sa.BigInteger()),
        sa.Column("prev_hash", sa.LargeBinary()),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        _ts("created_at"),
        sa.CheckConstraint("amount <> 0", name="amount_nonzero"),
        sa.CheckConstraint("num_nonnulls(wallet_id, system_account_id) = 1", name="one_account"),
        # Wallet entries carry balances and a chain position; system entries carry neither.
        sa.CheckConstraint(
            "(wallet_id IS NULL) = (seq IS NULL) AND (wallet_id IS NULL) = (balance_before IS NULL)"
            " AND (wallet_id IS NULL) = (balance_after IS NULL) AND (wallet_id IS NULL) = (prev_hash IS NULL)",
            name="wallet_fields",
        ),
        sa.CheckConstraint("balance_after = balance_before + amount", name="entry_balance"),
        sa.CheckConstraint("seq >= 1", name="seq"),
        sa.UniqueConstraint("wallet_id", "seq", name="uq_ledger_entries_wallet_seq"),
    )
    op.create_index("ix_ledger_entries_transaction", "ledger_entries", ["transaction_id"])
    op.create_index(
        "ix_ledger_entries_system",
        "ledger_entries",
        ["system_account_id"],
        postgresql_where=sa.text("system_account_id IS NOT NULL"),
    )

    # Grants: balances change (UPDATE on wallets only); history is SELECT/INSERT only.
    op.execute(rls.grant_sql("wallets", "SELECT, INSERT, UPDATE"))
    op.execute(rls.grant_sql("ledger_system_accounts", "SELECT, INSERT"))
    op.execute(rls.grant_sql("ledger_transactions", "SELECT, INSERT"))
    op.execute(rls.grant_sql("ledger_entries", "SELECT, INSERT"))

    for table in ("ledger_transactions", "ledger_entries"):
        for stmt in rls.append_only_sql(table):
            op.execute(stmt)
    op.execute(BALANCED_FN)
    op.execute(
        "CREATE TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries "
        "REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION ledgerx_entries_balanced()"
    )
    for table in ("wallets", "ledger_system_accounts", "ledger_transactions", "ledger_entries"):
        for stmt in rls.tenant_rls_sql(table):
            op.execute(stmt)


def downgrade() -> None:
    for t in ("ledger_entries", "ledger_transactions", "ledger_system_accounts", "wallets"):
        op.drop_table(t)
    op.execute("DROP FUNCTION IF EXISTS ledgerx_entries_balanced()")
