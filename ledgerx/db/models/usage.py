"""Usage metering: metrics, events (partitioned, append-only), idempotency keys, rollups, charges.

Migration 0004_usage creates these tables (raw SQL: `usage_events` is range-partitioned by month
on `occurred_at`). The ingestion hot path writes them with set-based asyncpg statements; the
models serve reads, tests and documentation of the columns.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

from sqlalchemy import BigInteger, DateTime, ForeignKey, Numeric, SmallInteger, Text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from ledgerx.db.models.base import Base, pk, ts_now

AGGREGATIONS = ("SUM", "COUNT", "MAX", "UNIQUE")


class UsageMetric(Base):
    """A metric a project meters. Its key and aggregation never change (events and charges refer to
    them); its name and price may (`updateMetric`; prices by version: UsageMetricPrice)."""

    __tablename__ = "usage_metrics"

    id: Mapped[uuid.UUID] = pk()
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)
    key: Mapped[str] = mapped_column(Text, nullable=False)  # unique per project, ^[a-z][a-z0-9_]{0,63}$
    name: Mapped[str] = mapped_column(Text, nullable=False)
    aggregation: Mapped[str] = mapped_column(Text, nullable=False)  # SUM | COUNT | MAX | UNIQUE
    # UNIQUE metrics count distinct values of this event property.
    unique_property: Mapped[str | None] = mapped_column(Text)
    # Credits per unit; exact (NUMERIC), never a float.
    unit_price: Mapped[decimal.Decimal] = mapped_column(Numeric, nullable=False)
    # The latest pricing model (usage/price_models.py JSON); NULL: PER_UNIT at unit_price.
    pricing: Mapped[dict[str, Any] | None] = mapped_column(JSONB(none_as_null=True))
    created_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()


class UsageMetricPrice(Base):
    """A metric's pricing from an instant on: a period is priced by the version in effect at its start."""

    __tablename__ = "usage_metric_prices"

    metric_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("usage_metrics.id", ondelete="RESTRICT"), primary_key=True)
    effective_from: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)
    pricing: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[dt.datetime] = ts_now()


class UsageEvent(Base):
    """One usage event. Partitioned by month on `occurred_at`; append-only (triggers, grants)."""

    __tablename__ = "usage_events"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    metric_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    received_at: Mapped[dt.datetime] = ts_now()
    units: Mapped[decimal.Decimal] = mapped_column(Numeric, nullable=False)
    idempotency_key: Mapped[str] = mapped_column(Text, nullable=False)
    wallet_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    properties: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class UsageEventKey(Base):
    """Idempotency across partitions: one row per (project, key), pointing at the stored event."""

    __tablename__ = "usage_event_keys"

    project_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(Text, primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    occurred_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class UsageRollup(Base):
    """Per metric, bucket (1- or 15-minute `width`) and shard: events, sum and max of units."""

    __tablename__ = "usage_rollups"

    project_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    metric_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    width: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    bucket: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    # Each database session writes its own shard (backend pid mod 8): no queue on a hot row.
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    events: Mapped[int] = mapped_column(BigInteger, nullable=False)
    units_sum: Mapped[decimal.Decimal] = mapped_column(Numeric, nullable=False)
    units_max: Mapped[decimal.Decimal] = mapped_column(Numeric, nullable=False)


class UsageRollupValue(Base):
    """The distinct property values of a UNIQUE metric per bucket (an exact distinct count)."""

    __tablename__ = "usage_rollup_values"

    project_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    metric_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    width: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    bucket: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    value: Mapped[str] = mapped_column(Text, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)


class UsageCharge(Base):
    """One priced usage charge (append-only): what was owed, debited and carried."""

    __tablename__ = "usage_charges"

    id: Mapped[uuid.UUID] = pk()
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)
    idempotency_key: Mapped[str] = mapped_column(Text, nullable=False)
    wallet_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("wallets.id", ondelete="RESTRICT"), nullable=False)
    metric_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("usage_metrics.id", ondelete="RESTRICT"), nullable=False)
    event_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    units: Mapped[decimal.Decimal] = mapped_column(Numeric, nullable=False)
    unit_price: Mapped[decimal.Decimal] = mapped_column(Numeric, nullable=False)  # of the tier reached
    # The exact price of these units (the increment of the period's price); NULL: units * unit_price.
    price: Mapped[decimal.Decimal | None] = mapped_column(Numeric)
    remainder_before: Mapped[decimal.Decimal] = mapped_column(Numeric, nullable=False)
    total: Mapped[decimal.Decimal] = mapped_column(Numeric, nullable=False)  # price + remainder_before
    # floor(total): debited, or credited when negative (a VOLUME tier crossing gives back).
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    remainder_after: Mapped[decimal.Decimal] = mapped_column(Numeric, nullable=False)  # total - amount
    transaction_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("ledger_transactions.id", ondelete="RESTRICT")
    )  # None when amount == 0
    actor_type: Mapped[str] = mapped_column(Text, nullable=False)
    actor_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[dt.datetime] = ts_now()


class UsageChargeRemainder(Base):
    """The fraction of a credit owed but not yet debited, per wallet and metric (0 <= r < 1)."""

    __tablename__ = "usage_charge_remainders"

    wallet_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("wallets.id", ondelete="RESTRICT"), primary_key=True)
    metric_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("usage_metrics.id", ondelete="RESTRICT"), primary_key=True)
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)
    remainder: Mapped[decimal.Decimal] = mapped_column(Numeric, nullable=False, default=decimal.Decimal(0))
    # The pricing period of the wallet's per-event charges (UTC month) and the units charged in it.
    period_start: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    period_units: Mapped[decimal.Decimal] = mapped_column(Numeric, nullable=False, default=decimal.Decimal(0))
    updated_at: Mapped[dt.datetime] = ts_now()
