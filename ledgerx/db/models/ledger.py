"""The ledger: wallets, per-project system accounts, transactions and their entries.

Money is BIGINT minor units. Transactions and entries are append-only (the database refuses
UPDATE/DELETE). A wallet's `balance` always equals the sum of its entries; `entry_seq` and
`head_hash` are the tip of its entry hash chain. Money only moves through
`ledgerx.domain.ledger.posting.post_transaction`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, LargeBinary, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

from ledgerx.db.models.base import Base, pk, ts_now


class Wallet(Base):
    __tablename__ = "wallets"
    __table_args__ = (Index("ix_wallets_project", "project_id", "id"),)

    id: Mapped[uuid.UUID] = pk()
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    owner_user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # "CREDITS" or an upper-case ISO 4217 code; never changes (entries carry it too).
    currency: Mapped[str] = mapped_column(Text, nullable=False)
    balance: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    # How far below zero the balance may go (>= 0); the database checks balance >= -credit_limit.
    credit_limit: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    low_balance_threshold: Mapped[int | None] = mapped_column(BigInteger)
    # Auto top-up's threshold while it is on, else NULL (domain/ledger/top_ups.py).
    auto_top_up_below: Mapped[int | None] = mapped_column(BigInteger)
    # The hash-chain tip: number of entries so far and the last entry's hash.
    entry_seq: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    head_hash: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()


class Xid8(UserDefinedType[int]):
    """PostgreSQL's 64-bit transaction id (asyncpg reads and writes it as an int)."""

    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "xid8"


class LedgerSystemAccount(Base):
    """A project's counterparty account (EXTERNAL_FUNDING, USAGE_REVENUE, …) in one currency.

    System accounts keep no balance column (that row would be a hot spot every posting of the
    project contends on); their balance is the sum of their entries.
    """

    __tablename__ = "ledger_system_accounts"
    __table_args__ = (UniqueConstraint("project_id", "code", "currency", name="uq_ledger_system_accounts_key"),)

    id: Mapped[uuid.UUID] = pk()
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)
    code: Mapped[str] = mapped_column(Text, nullable=False)
    currency: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[dt.datetime] = ts_now()


class LedgerTransaction(Base):
    """One posting. `wallet_id`, `type`, `amount`, `balance_before/after` describe its primary wallet."""

    __tablename__ = "ledger_transactions"
    __table_args__ = (
        UniqueConstraint("project_id", "idempotency_key", name="uq_ledger_transactions_idempotency"),
        Index("ix_ledger_transactions_project", "project_id", "id"),
        Index("ix_ledger_transactions_refund_of", "refund_of", postgresql_where="refund_of IS NOT NULL"),
        Index("ix_ledger_transactions_stream", "project_id", "commit_xid", "id"),
    )

    id: Mapped[uuid.UUID] = pk()
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)
    wallet_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("wallets.id", ondelete="RESTRICT"), nullable=False)
    type: Mapped[str] = mapped_column(Text, nullable=False)  # CREDIT | DEBIT (on the primary wallet)
    kind: Mapped[str] = mapped_column(Text, nullable=False)  # ADJUSTMENT | TRANSFER | REFUND | USAGE | …
    currency: Mapped[str] = mapped_column(Text, nullable=False)
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    balance_before: Mapped[int] = mapped_column(BigInteger, nullable=False)
    balance_after: Mapped[int] = mapped_column(BigInteger, nullable=False)
    idempotency_key: Mapped[str] = mapped_column(Text, nullable=False)
    # sha256 of the canonical request: the same key with another request is IDEMPOTENCY_CONFLICT.
    request_hash: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    reference: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    # `metadata` is reserved on declarative classes, hence the attribute name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSONB, nullable=False, default=dict)
    refund_of: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ledger_transactions.id", ondelete="RESTRICT"))
    actor_type: Mapped[str] = mapped_column(Text, nullable=False)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # sha256 of the transaction's canonical content; every entry's hash covers it.
    hash: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    # The id of the database transaction that wrote the row (set by the database; 0 for rows older
    # than migration 0009). (commit_xid, id) is the project's replayable stream order
    # (domain/ledger/feed.py); not part of the hash.
    commit_xid: Mapped[int] = mapped_column(Xid8(), nullable=False, server_default=text("pg_current_xact_id()"))


class LedgerEntry(Base):
    """One leg of a transaction on a wallet (with balances and a chain link) or a system account."""

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("wallet_id", "seq", name="uq_ledger_entries_wallet_seq"),
        Index("ix_ledger_entries_transaction", "transaction_id"),
        Index("ix_ledger_entries_system", "system_account_id", postgresql_where="system_account_id IS NOT NULL"),
    )

    id: Mapped[uuid.UUID] = pk()
    transaction_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("ledger_transactions.id", ondelete="RESTRICT"), nullable=False
    )
    project_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    wallet_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("wallets.id", ondelete="RESTRICT"))
    system_account_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ledger_system_accounts.id", ondelete="RESTRICT")
    )
    currency: Mapped[str] = mapped_column(Text, nullable=False)
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)  # signed; never 0
    # Wallet entries only: the balance around this entry and the chain position.
    balance_before: Mapped[int | None] = mapped_column(BigInteger)
    balance_after: Mapped[int | None] = mapped_column(BigInteger)
    seq: Mapped[int | None] = mapped_column(BigInteger)
    prev_hash: Mapped[bytes | None] = mapped_column(LargeBinary)
    hash: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
