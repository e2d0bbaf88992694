"""Auto top-up: a wallet's settings and the top-ups wanted and made (migration 0014 explains them).

Both are tenant rows (RLS by `project_id`). `wallets.auto_top_up_below` mirrors `threshold` while
`enabled` (the ledger reads it with the wallet's lock)."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Text
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from ledgerx.db.models.base import Base, pk, ts_now


class AutoTopUp(Base):
    __tablename__ = "auto_top_ups"

    wallet_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("wallets.id", ondelete="RESTRICT"), primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False)
    threshold: Mapped[int] = mapped_column(BigInteger, nullable=False)
    credit_pack_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("credit_packs.id", ondelete="RESTRICT"), nullable=False
    )
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # PENDING | SUCCEEDED | FAILED | NO_PAYMENT_METHOD (NULL: never attempted)
    last_status: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()


class AutoTopUpAttempt(Base):
    __tablename__ = "auto_top_up_attempts"

    id: Mapped[uuid.UUID] = pk()
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)
    wallet_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("wallets.id", ondelete="RESTRICT"), nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)  # WANTED | PENDING | SUCCEEDED | FAILED | SKIPPED
    trigger_transaction_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    credit_pack_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("credit_packs.id", ondelete="RESTRICT"))
    credits: Mapped[int | None] = mapped_column(BigInteger)
    amount: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(Text)
    invoice_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("invoices.id", ondelete="RESTRICT"))
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(Text, unique=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = ts_now()
