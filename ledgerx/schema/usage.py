"""GraphQL types of usage metering: metrics, events, batch results, charges, summaries, inputs."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, cast

import strawberry
from strawberry.scalars import JSON

from ledgerx import ids
from ledgerx.domain.usage.price_models import Pricing
from ledgerx.domain.usage.pricing import ChargePreview
from ledgerx.domain.usage.types import (
    BatchResult,
    ChargeRecord,
    ChargeResult,
    EventRecord,
    MetricRecord,
    RecordResult,
    UsagePoint,
)
from ledgerx.schema.ledger import TransactionType_
from ledgerx.schema.scalars import BigInt, Decimal


@strawberry.enum(description="How a metric's events add up in a summary bucket.")
class MetricAggregation(enum.Enum):
    SUM = "SUM"
    COUNT = "COUNT"
    MAX = "MAX"
    UNIQUE = strawberry.enum_value("UNIQUE", description="Distinct values of the metric's `uniqueProperty`.")


@strawberry.enum
class UsageGranularity(enum.Enum):
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    MONTH = "MONTH"


@strawberry.enum(description="How a metric's units are priced over a period.")
class PricingModel(enum.Enum):
    PER_UNIT = strawberry.enum_value("PER_UNIT", description="Every unit at one price (one tier).")
    GRADUATED = strawberry.enum_value(
        "GRADUATED", description="Each tier's units at that tier's price; a tier's flat price once usage enters it."
    )
    VOLUME = strawberry.enum_value(
        "VOLUME", description="Every unit at the price of the tier the period's total falls in, plus its flat price."
    )
    PACKAGE = strawberry.enum_value(
        "PACKAGE", description="Whole packages of packageSize units (a started one counts) at the tier's unitPrice."
    )


@strawberry.type(name="PricingTier")
class PricingTierType:
    up_to: Decimal | None = strawberry.field(description="The tier's last unit; null: no end (the last tier).")
    unit_price: Decimal = strawberry.field(description="Credits per unit (PACKAGE: per package).")
    flat_price: Decimal = strawberry.field(description="Credits once the period's usage enters the tier.")


@strawberry.type(name="Pricing")
class PricingType:
    model: PricingModel
    tiers: list[PricingTierType]
    package_size: Decimal | None = strawberry.field(description="PACKAGE: units per package.")

    @classmethod
    def of(cls, p: Pricing) -> PricingType:
        return cls(
            model=PricingModel(p.model.value),
            tiers=[PricingTierType(up_to=t.up_to, unit_price=t.unit_price, flat_price=t.flat_price) for t in p.tiers],
            package_size=p.package_size,
        )


@strawberry.input
class PricingTierInput:
    up_to: Decimal | None = strawberry.field(default=None, description="Null: no end (only the last tier).")
    unit_price: Decimal = strawberry.field(description="Credits per unit (PACKAGE: per package), >= 0.")
    flat_price: Decimal | None = strawberry.field(default=None, description="Default 0.")


@strawberry.input
class PricingInput:
    model: PricingModel
    tiers: list[PricingTierInput]
    package_size: Decimal | None = strawberry.field(default=None, description="PACKAGE only: units per package.")

    def to_domain(self) -> dict[str, Any]:
        """The domain's raw pricing (price_models.parse validates it)."""
        return {
            "model": self.model.value,
            "tiers": [{"upTo": t.up_to, "unitPrice": t.unit_price, "flatPrice": t.flat_price} for t in self.tiers],
            "packageSize": self.package_size,
        }


@strawberry.type(name="Metric", description="A metered quantity of a project and how its units are priced.")
class MetricType:
    id: strawberry.ID
    project_id: strawberry.ID
    key: str
    name: str
    aggregation: MetricAggregation
    unique_property: str | None = strawberry.field(description="UNIQUE metrics count distinct values of it.")
    unit_price: Decimal = strawberry.field(
        description="Credits (wallet minor units) per unit; for tiered pricing, the first tier's."
    )
    pricing: PricingType = strawberry.field(
        description="The latest pricing; a change applies from the next period (the running one keeps its price)."
    )
    created_at: dt.datetime

    @classmethod
    def of(cls, m: MetricRecord) -> MetricType:
        return cls(
            id=strawberry.ID(ids.encode("metric", m.id)),
            project_id=strawberry.ID(ids.encode("project", m.project_id)),
            key=m.key,
            name=m.name,
            aggregation=MetricAggregation(m.aggregation.value),
            unique_property=m.unique_property,
            unit_price=m.unit_price,
            pricing=PricingType.of(m.pricing),
            created_at=m.created_at,
        )


@strawberry.type(name="UsageEvent")
class UsageEventType:
    id: strawberry.ID
    project_id: strawberry.ID
    metric_key: str
    units: Decimal
    idempotency_key: str
    occurred_at: dt.datetime
    received_at: dt.datetime
    wallet_id: strawberry.ID | None
    properties: JSON | None

    @classmethod
    def of(cls, e: EventRecord) -> UsageEventType:
        return cls(
            id=strawberry.ID(ids.encode("event", e.id)),
            project_id=strawberry.ID(ids.encode("project", e.project_id)),
            metric_key=e.metric_key,
            units=e.units,
            idempotency_key=e.idempotency_key,
            occurred_at=e.occurred_at,
            received_at=e.received_at,
            wallet_id=strawberry.ID(ids.encode("wallet", e.wallet_id)) if e.wallet_id else None,
            properties=cast(Any, e.properties),
        )


@strawberry.type(description="One priced charge: units x unitPrice + the carried remainder, split in two.")
class UsageCharge:
    wallet_id: strawberry.ID
    units: Decimal
    unit_price: Decimal = strawberry.field(description="The unit price of the tier the period's units reached.")
    price: Decimal = strawberry.field(
        description="The exact price of these units: what they add to the period's price at the metric's tiers"
        " (negative when a VOLUME tier crossing lowers it)."
    )
    remainder_before: Decimal = strawberry.field(description="The fraction carried in from earlier charges.")
    total: Decimal = strawberry.field(description="price + remainderBefore.")
    amount: BigInt = strawberry.field(
        description="floor(total): debited from the wallet (negative: credited back, a VOLUME tier crossing)."
    )
    remainder_after: Decimal = strawberry.field(description="total - amount: carried to the next charge.")
    replayed: bool = strawberry.field(description="The idempotency key had been charged already; this is that charge.")
    transaction: TransactionType_ | None = strawberry.field(description="The ledger debit; null when amount is 0.")
    created_at: dt.datetime

    @classmethod
    def of(cls, c: ChargeRecord, transaction: Any, replayed: bool) -> UsageCharge:
        return cls(
            wallet_id=strawberry.ID(ids.encode("wallet", c.wallet_id)),
            units=c.units,
            unit_price=c.unit_price,
            price=c.price,
            remainder_before=c.remainder_before,
            total=c.total,
            amount=c.amount,
            remainder_after=c.remainder_after,
            replayed=replayed,
            transaction=TransactionType_.of(transaction) if transaction is not None else None,
            created_at=c.created_at,
        )

    @classmethod
    def of_result(cls, r: ChargeResult) -> UsageCharge:
        return cls.of(r.charge, r.transaction, r.replayed)


@strawberry.type
class RecordUsagePayload:
    event: UsageEventType
    duplicate: bool = strawberry.field(description="The idempotency key was seen before: this is the first event.")
    charge: UsageCharge | None = strawberry.field(description="With walletId: the charge made with the event.")
    overage: bool = strawberry.field(
        default=False, description="Accepted past the plan's monthly quota (the project's quota policy is OVERAGE)."
    )

    @classmethod
    def of(cls, r: RecordResult) -> RecordUsagePayload:
        return cls(
            event=UsageEventType.of(r.event),
            duplicate=r.duplicate,
            charge=UsageCharge.of_result(r.charge) if r.charge is not None else None,
            overage=r.overage,
        )


@strawberry.type
class UsageRejection:
    index: int = strawberry.field(description="The event's position in the request (from 0).")
    code: str = strawberry.field(description="BAD_USER_INPUT or NOT_FOUND.")
    message: str
    field: str | None
    reason: str | None = strawberry.field(description="A finer stable code, e.g. OCCURRED_AT_TOO_OLD.")


@strawberry.type
class UsageBatchResult:
    accepted: int = strawberry.field(description="Events stored by this request.")
    duplicates: int = strawberry.field(description="Events whose key was already stored, or repeated in the batch.")
    rejected: list[UsageRejection]
    overage: int = strawberry.field(default=0, description="Accepted events past the plan's monthly quota.")

    @classmethod
    def of(cls, r: BatchResult) -> UsageBatchResult:
        return cls(
            accepted=r.accepted,
            duplicates=r.duplicates,
            overage=r.overage,
            rejected=[
                UsageRejection(index=x.index, code=x.code, message=x.message, field=x.field, reason=x.reason)
                for x in r.rejected
            ],
        )


@strawberry.type(name="UsagePoint")
class UsagePointType:
    bucket: dt.datetime = strawberry.field(description="The bucket's start, in the summary's time zone.")
    units: Decimal = strawberry.field(description="Per the metric's aggregation: sum, count, max or distinct values.")
    events: BigInt = strawberry.field(description="Events in the bucket.")

    @classmethod
    def of(cls, p: UsagePoint) -> UsagePointType:
        return cls(bucket=p.bucket, units=p.units, events=p.events)


# -- inputs ------------------------------------------------------------------------------------------


@strawberry.input
class DefineMetricInput:
    project_id: strawberry.ID
    key: str = strawberry.field(description="1-64 lower-case letters, digits, underscores, e.g. tokens_processed.")
    name: str
    aggregation: MetricAggregation
    unit_price: Decimal | None = strawberry.field(
        default=None, description="Credits per unit, >= 0 (e.g. 0.002); or give pricing."
    )
    unique_property: str | None = strawberry.field(default=None, description="Required for UNIQUE metrics.")
    pricing: PricingInput | None = strawberry.field(default=None, description="A tiered model instead of unitPrice.")


@strawberry.input
class UpdateMetricInput:
    project_id: strawberry.ID
    key: str
    name: str | None = None
    unit_price: Decimal | None = strawberry.field(
        default=None, description="A new unit price (PER_UNIT), from the next period."
    )
    pricing: PricingInput | None = strawberry.field(default=None, description="A new pricing, from the next period.")


@strawberry.input
class PreviewUsageChargeInput:
    wallet_id: strawberry.ID
    metric_key: str
    units: Decimal


@strawberry.type
class UsageChargePreview:
    amount: BigInt = strawberry.field(
        description="What chargeUsage of these units would post now: floor(price + the carried remainder)."
    )
    price: Decimal = strawberry.field(description="The exact price of the units at the tiers they reach.")
    unit_price: Decimal = strawberry.field(description="The unit price of the tier the period's units would reach.")
    period_start: dt.datetime = strawberry.field(description="The pricing period (the UTC calendar month).")
    period_units: Decimal = strawberry.field(
        description="The wallet's units of the metric charged in the period so far."
    )
    remainder_after: Decimal

    @classmethod
    def of(cls, p: ChargePreview) -> UsageChargePreview:
        return cls(
            amount=p.priced.split.amount,
            price=p.priced.price,
            unit_price=p.priced.unit_price,
            period_start=p.period_start,
            period_units=p.period_units,
            remainder_after=p.priced.split.remainder,
        )


@strawberry.input
class RecordUsageInput:
    project_id: strawberry.ID
    metric_key: str
    units: Decimal
    idempotency_key: str
    occurred_at: dt.datetime | None = strawberry.field(default=None, description="Default: now.")
    wallet_id: strawberry.ID | None = strawberry.field(
        default=None, description="Also charge the event to this wallet, in the same transaction (both or neither)."
    )
    properties: JSON | None = None


@strawberry.input
class UsageEventInput:
    metric_key: str
    units: Decimal
    idempotency_key: str
    occurred_at: dt.datetime | None = None
    properties: JSON | None = None

    def wire(self) -> dict[str, Any]:
        """The bulk wire format the domain validates (the same as POST /v1/usage)."""
        ev: dict[str, Any] = {"metricKey": self.metric_key, "units": self.units, "idempotencyKey": self.idempotency_key}
        if self.occurred_at is not None:
            ev["occurredAt"] = self.occurred_at
        if self.properties is not None:
            ev["properties"] = self.properties
        return ev


@strawberry.input
class RecordUsageBatchInput:
    project_id: strawberry.ID
    events: list[UsageEventInput]


@strawberry.input
class ChargeUsageInput:
    wallet_id: strawberry.ID
    metric_key: str
    units: Decimal
    idempotency_key: str


@strawberry.input
class UsageSummaryInput:
    project_id: strawberry.ID
    metric_key: str
    from_: dt.datetime = strawberry.field(name="from", description="Rounded down to the start of its bucket.")
    to: dt.datetime = strawberry.field(description="Exclusive: buckets starting before it.")
    granularity: UsageGranularity
    timezone: str | None = strawberry.field(default="UTC", description="IANA time zone of the buckets.")
