"""Billing rules, their runs, per-project test clocks and the scheduler's lease.

A rule's schedule fields decide its instants (`ledgerx.domain.billing.schedule`); the cursor
columns say where it stands: `period_start` is where the next period begins; every instant at or
before `scheduled_through` is done (run, skipped, or before the rule existed); `next_run_at` is
the first instant after it. `due_at` is the earliest
moment the scheduler must look at the rule again (the next instant, a pending retry, or the end
of its grace period) and is what due rules are claimed by.

A run is keyed by `(rule_id, scheduled_at)` (unique): one run per rule and period, whatever
races or crashes; its debit uses the idempotency key `rule:<rule id>:<period>`.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    SmallInteger,
    Text,
    Time,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import Mapped, mapped_column

from ledgerx.db.models.base import Base, pk, ts_now

RULE_MODES = ("DAILY_FLAT", "SELECTED_DAYS", "MONTHLY_FLAT", "USAGE_BASED", "HYBRID", "CRON")
RUN_STATUSES = ("SUCCEEDED", "FAILED", "INSUFFICIENT_FUNDS", "SKIPPED")


class BillingRule(Base):
    __tablename__ = "billing_rules"
    __table_args__ = (
        Index("ix_billing_rules_project", "project_id", "id"),
        Index("ix_billing_rules_wallet", "wallet_id"),
        # The live scheduler's claim: active rules of live projects, by due time.
        Index(
            "ix_billing_rules_due", "due_at", "wallet_id", postgresql_where=text("status = 'ACTIVE' AND NOT test_mode")
        ),
        # A test clock's sweep: one project's active rules by due time.
        Index(
            "ix_billing_rules_test_due",
            "project_id",
            "due_at",
            postgresql_where=text("status = 'ACTIVE' AND test_mode"),
        ),
    )

    id: Mapped[uuid.UUID] = pk()
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)
    wallet_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("wallets.id", ondelete="RESTRICT"), nullable=False)
    name: Mapped[str] = mapped_column(Text, nullable=False)
    mode: Mapped[str] = mapped_column(Text, nullable=False)
    currency: Mapped[str] = mapped_column(Text, nullable=False)  # the wallet's, fixed
    amount: Mapped[int | None] = mapped_column(BigInteger)  # flat modes; HYBRID's base
    metric_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("usage_metrics.id", ondelete="RESTRICT"))
    metric_key: Mapped[str | None] = mapped_column(Text)
    unit_price: Mapped[decimal.Decimal | None] = mapped_column(Numeric)  # None: the metric's own price
    weekdays: Mapped[list[int]] = mapped_column(ARRAY(SmallInteger), nullable=False, default=list)  # 0 = Monday
    month_days: Mapped[list[int]] = mapped_column(ARRAY(SmallInteger), nullable=False, default=list)
    cron: Mapped[str | None] = mapped_column(Text)
    timezone: Mapped[str] = mapped_column(Text, nullable=False, default="UTC")
    time_of_day: Mapped[dt.time] = mapped_column(Time, nullable=False, default=dt.time(0, 0))
    start_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    catch_up: Mapped[str] = mapped_column(Text, nullable=False, default="ALL")  # ALL | LATEST
    status: Mapped[str] = mapped_column(Text, nullable=False, default="ACTIVE")  # ACTIVE | PAUSED
    paused_reason: Mapped[str | None] = mapped_column(Text)  # MANUAL | GRACE_EXPIRED
    test_mode: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)  # the project's, fixed
    # The cursor.
    period_start: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    scheduled_through: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    next_run_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    retry_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    grace_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    due_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Unexpected processing errors in a row (backoff) and the last one's text.
    failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()


class BillingRun(Base):
    __tablename__ = "billing_runs"
    __table_args__ = (
        UniqueConstraint("rule_id", "scheduled_at", name="uq_billing_runs_rule_period"),
        Index("ix_billing_runs_project", "project_id", "id"),
        Index("ix_billing_runs_unpaid", "rule_id", postgresql_where=text("status = 'INSUFFICIENT_FUNDS'")),
    )

    id: Mapped[uuid.UUID] = pk()
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)
    rule_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("billing_rules.id", ondelete="RESTRICT"), nullable=False)
    wallet_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    scheduled_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    period_start: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    period_end: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    trigger: Mapped[str] = mapped_column(Text, nullable=False)  # SCHEDULE | MANUAL | TEST_CLOCK
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    base_amount: Mapped[int | None] = mapped_column(BigInteger)
    units: Mapped[decimal.Decimal | None] = mapped_column(Numeric)
    unit_price: Mapped[decimal.Decimal | None] = mapped_column(Numeric)
    # The wallet and metric's carried sub-unit remainder around this run's pricing.
    remainder_before: Mapped[decimal.Decimal | None] = mapped_column(Numeric)
    remainder_after: Mapped[decimal.Decimal | None] = mapped_column(Numeric)
    idempotency_key: Mapped[str] = mapped_column(Text, nullable=False)
    transaction_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("ledger_transactions.id", ondelete="RESTRICT"))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_retry_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Clock time (the test clock's for test-mode projects) of the first and the latest attempt.
    first_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Wall time: when the latest attempt started and finished (lag = finished_at - scheduled_at).
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    finished_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()


class BillingTestClock(Base):
    """A test-mode project's own clock: its rules run on this time, never on the real one."""

    __tablename__ = "billing_test_clocks"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    now: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()


class SchedulerLease(Base):
    """Which instance drives a background loop. Taken over by another instance after expiry;
    `epoch` grows at every change of holder (a fencing token)."""

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    holder: Mapped[str] = mapped_column(Text, nullable=False)
    epoch: Mapped[int] = mapped_column(BigInteger, nullable=False, default=1)
    acquired_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    renewed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
