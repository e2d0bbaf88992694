"""GraphQL types of entitlements: what a plan grants, and a project's answers."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import strawberry
from strawberry.scalars import JSON

from ledgerx.domain.entitlements.checks import Entitlement
from ledgerx.schema.scalars import BigInt, Decimal


@strawberry.enum(name="EntitlementType", description="What kind of answer a feature gives.")
class EntitlementKind(enum.Enum):
    BOOLEAN = strawberry.enum_value("BOOLEAN", description="On or off.")
    METERED = strawberry.enum_value("METERED", description="At most `limit` of a metric's total per period.")
    CONFIG = strawberry.enum_value("CONFIG", description="A JSON value the app reads (`config`).")


@strawberry.enum(description="The UTC period a METERED entitlement counts.")
class EntitlementPeriod(enum.Enum):
    MONTH = "MONTH"
    DAY = "DAY"


@strawberry.type
class PlanEntitlement:
    feature_key: str
    type: EntitlementKind
    enabled: bool
    limit: BigInt | None
    metric_key: str | None = strawberry.field(description="METERED: the metric whose total is limited.")
    period: EntitlementPeriod | None
    config: JSON | None

    @classmethod
    def of(cls, raw: dict[str, Any]) -> PlanEntitlement:
        return cls(
            feature_key=raw["featureKey"],
            type=EntitlementKind(raw["type"]),
            enabled=bool(raw.get("enabled", True)),
            limit=BigInt(raw["limit"]) if raw.get("limit") is not None else None,
            metric_key=raw.get("metricKey"),
            period=EntitlementPeriod(raw["period"]) if raw.get("period") else None,
            config=raw.get("config"),
        )


@strawberry.input
class PlanEntitlementInput:
    feature_key: str = strawberry.field(description="1-64 characters, e.g. sso or api_calls.")
    type: EntitlementKind
    enabled: bool = True
    limit: BigInt | None = strawberry.field(default=None, description="METERED: the most per period.")
    metric_key: str | None = strawberry.field(default=None, description="METERED: the metric it counts.")
    period: EntitlementPeriod | None = strawberry.field(default=None, description="METERED; default MONTH.")
    config: JSON | None = strawberry.field(default=None, description="CONFIG: the value.")

    def to_domain(self) -> dict[str, Any]:
        return {
            "featureKey": self.feature_key,
            "type": self.type.value,
            "enabled": self.enabled,
            "limit": int(self.limit) if self.limit is not None else None,
            "metricKey": self.metric_key,
            "period": self.period.value if self.period is not None else None,
            "config": self.config,
        }


def parse_entitlements(items: list[PlanEntitlementInput] | None) -> list[dict[str, Any]] | None:
    return [e.to_domain() for e in items] if items is not None else None


@strawberry.type(name="Entitlement", description="What a project may use of one feature, now.")
class EntitlementType:
    feature_key: str
    type: EntitlementKind
    has_access: bool = strawberry.field(
        description="Enabled and, for METERED, usage below the limit. A feature the plan does not name: false."
    )
    limit: BigInt | None
    usage: Decimal | None = strawberry.field(
        description="METERED: the metric's total in the current period (may lag by seconds below the limit)."
    )
    remaining: Decimal | None = strawberry.field(description="METERED: limit - usage, at least 0.")
    config: JSON | None
    resets_at: dt.datetime | None = strawberry.field(description="METERED: when the period's usage starts over.")

    @classmethod
    def of(cls, e: Entitlement) -> EntitlementType:
        return cls(
            feature_key=e.feature_key,
            type=EntitlementKind(e.type),
            has_access=e.has_access,
            limit=BigInt(e.limit) if e.limit is not None else None,
            usage=e.usage,
            remaining=e.remaining,
            config=e.config,
            resets_at=e.resets_at,
        )


@strawberry.input
class OverrideEntitlementInput:
    project_id: strawberry.ID
    feature_key: str
    enabled: bool | None = None
    limit: BigInt | None = strawberry.field(default=None, description="METERED features only.")
    config: JSON | None = strawberry.field(default=None, description="CONFIG features only.")
    expires_at: dt.datetime | None = strawberry.field(
        default=None, description="Null: until overridden again. With no enabled, limit or config: cleared."
    )
