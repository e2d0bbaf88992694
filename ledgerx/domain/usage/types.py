"""Usage values shared by ingestion, pricing, summaries and the API layer (no database here)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # price_models checks input with validate, which reads these types
    from ledgerx.domain.usage.price_models import Pricing


class Aggregation(enum.StrEnum):
    """How a metric's events add up in a summary bucket."""

    SUM = "SUM"  # the sum of units
    COUNT = "COUNT"  # the number of events
    MAX = "MAX"  # the largest units value
    UNIQUE = "UNIQUE"  # the number of distinct values of one event property


class Granularity(enum.StrEnum):
    MINUTE = "MINUTE"
    HOUR = "HOUR"
    DAY = "DAY"
    MONTH = "MONTH"


Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class MetricRecord:
    id: uuid.UUID
    project_id: uuid.UUID
    key: str
    name: str
    aggregation: Aggregation
    unique_property: str | None
    unit_price: decimal.Decimal  # PER_UNIT: the price of a unit; other models: their first tier's
    created_at: dt.datetime
    # The latest pricing (a period is priced by the version in effect at its start: price_versions.py).
    pricing: Pricing


@dataclasses.dataclass(frozen=True, slots=True)
class EventRecord:
    id: uuid.UUID
    project_id: uuid.UUID
    metric_id: uuid.UUID
    metric_key: str
    units: decimal.Decimal
    idempotency_key: str
    occurred_at: dt.datetime
    received_at: dt.datetime
    wallet_id: uuid.UUID | None
    properties: dict[str, Any] | None


@dataclasses.dataclass(frozen=True, slots=True)
class Rejection:
    """One event of a batch refused on its own: its index in the request and why."""

    index: int
    code: str  # a DESIGN.md error code: BAD_USER_INPUT, NOT_FOUND
    message: str
    field: str | None = None
    reason: str | None = None  # a finer stable code, e.g. OCCURRED_AT_TOO_OLD


@dataclasses.dataclass(frozen=True, slots=True)
class BatchResult:
    accepted: int
    duplicates: int
    rejected: tuple[Rejection, ...]
    overage: int = 0  # events accepted past a monthly quota (policy OVERAGE)

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [
                {k: v for k, v in dataclasses.asdict(r).items() if v is not None or k in ("index", "code", "message")}
                for r in self.rejected
            ],
            "overage": self.overage,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class ChargeRecord:
    """One priced charge: `amount` whole units debited, `remainder_after` carried to the next."""

    id: uuid.UUID
    project_id: uuid.UUID
    idempotency_key: str
    wallet_id: uuid.UUID
    metric_id: uuid.UUID
    event_id: uuid.UUID | None
    units: decimal.Decimal
    unit_price: decimal.Decimal  # of the tier the period's units reached
    remainder_before: decimal.Decimal
    total: decimal.Decimal  # price + remainder_before
    amount: int  # floor(total): debited, or credited when negative (a VOLUME tier crossing)
    remainder_after: decimal.Decimal
    transaction_id: uuid.UUID | None
    created_at: dt.datetime
    price: decimal.Decimal  # the exact price of these units: the increment of the period's price


@dataclasses.dataclass(frozen=True, slots=True)
class ChargeResult:
    charge: ChargeRecord
    # The ledger transaction (a TransactionRecord) when `charge.amount > 0`, else None.
    transaction: Any
    replayed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class RecordResult:
    event: EventRecord
    duplicate: bool
    charge: ChargeResult | None = None
    overage: bool = False  # accepted past a monthly quota (policy OVERAGE)


@dataclasses.dataclass(frozen=True, slots=True)
class UsagePoint:
    bucket: dt.datetime  # the bucket's start, in the summary's time zone
    units: decimal.Decimal  # per the metric's aggregation
    events: int
