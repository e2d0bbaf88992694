"""GraphQL types of billing rules: rules, runs, previews, test clocks, inputs."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid

import strawberry

from ledgerx import ids
from ledgerx.dataloaders import billing as billing_loaders
from ledgerx.dataloaders import ledger as ledger_loaders
from ledgerx.domain.billing.preview import PreviewItem
from ledgerx.domain.billing.records import Rule, Run
from ledgerx.domain.billing.schedule import WEEKDAYS
from ledgerx.domain.billing.validation import RuleFields
from ledgerx.domain.errors import NotFound
from ledgerx.domain.pagination import decode_cursor, page_size
from ledgerx.schema.info import Info
from ledgerx.schema.ledger import TransactionType_
from ledgerx.schema.pagination import Connection, connection
from ledgerx.schema.scalars import BigInt, Decimal


@strawberry.enum
class BillingMode(enum.Enum):
    DAILY_FLAT = "DAILY_FLAT"
    SELECTED_DAYS = "SELECTED_DAYS"
    MONTHLY_FLAT = "MONTHLY_FLAT"
    USAGE_BASED = "USAGE_BASED"
    HYBRID = "HYBRID"
    CRON = "CRON"


@strawberry.enum
class Weekday(enum.Enum):
    MONDAY = "MONDAY"
    TUESDAY = "TUESDAY"
    WEDNESDAY = "WEDNESDAY"
    THURSDAY = "THURSDAY"
    FRIDAY = "FRIDAY"
    SATURDAY = "SATURDAY"
    SUNDAY = "SUNDAY"


@strawberry.enum(description="After downtime: charge every missed period (ALL) or only the newest (LATEST).")
class CatchUpPolicy(enum.Enum):
    ALL = "ALL"
    LATEST = "LATEST"


@strawberry.enum
class BillingRuleStatus(enum.Enum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"


@strawberry.enum
class BillingRunStatus(enum.Enum):
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    SKIPPED = "SKIPPED"


@strawberry.enum
class BillingRunTrigger(enum.Enum):
    SCHEDULE = "SCHEDULE"
    MANUAL = "MANUAL"
    TEST_CLOCK = "TEST_CLOCK"


def _big(v: int | None) -> BigInt | None:
    return BigInt(v) if v is not None else None


def _dec(v: decimal.Decimal | None) -> Decimal | None:
    return Decimal(v) if v is not None else None


def _ms(a: dt.datetime | None, b: dt.datetime | None) -> int | None:
    if a is None or b is None:
        return None
    return int((b - a).total_seconds() * 1000)


@strawberry.type(name="BillingRun", description="One execution of a rule for one period.")
class BillingRunType:
    id: strawberry.ID
    rule_id: strawberry.ID
    wallet_id: strawberry.ID
    scheduled_at: dt.datetime = strawberry.field(description="The instant the period ends (its key).")
    period_start: dt.datetime
    period_end: dt.datetime
    status: BillingRunStatus
    trigger: BillingRunTrigger
    amount: BigInt = strawberry.field(description="What the period owes (charged unless it failed).")
    base_amount: BigInt | None
    units: Decimal | None = strawberry.field(description="Usage in the period (usage-based rules).")
    unit_price: Decimal | None
    remainder_before: Decimal | None
    remainder_after: Decimal | None
    idempotency_key: str
    transaction_id: strawberry.ID | None
    error: str | None
    attempts: int
    next_retry_at: dt.datetime | None
    first_attempt_at: dt.datetime | None = strawberry.field(description="Clock time (a test clock's in test mode).")
    last_attempt_at: dt.datetime | None
    started_at: dt.datetime = strawberry.field(description="Wall time the latest attempt started.")
    finished_at: dt.datetime
    duration_ms: int | None
    lag_ms: int | None = strawberry.field(description="From the scheduled instant to the latest attempt's end (live).")
    project_uuid: strawberry.Private[uuid.UUID]
    txn_uuid: strawberry.Private[uuid.UUID | None]

    @strawberry.field
    async def transaction(self, info: Info) -> TransactionType_ | None:
        if self.txn_uuid is None:
            return None
        found = await ledger_loaders.transactions(info.context, self.project_uuid).load(self.txn_uuid)
        return TransactionType_.of(found) if found is not None else None

    @classmethod
    def of(cls, x: Run) -> BillingRunType:
        return cls(
            id=strawberry.ID(x.public_id),
            rule_id=strawberry.ID(ids.encode("rule", x.rule_id)),
            wallet_id=strawberry.ID(ids.encode("wallet", x.wallet_id)),
            scheduled_at=x.scheduled_at,
            period_start=x.period_start,
            period_end=x.period_end,
            status=BillingRunStatus(x.status),
            trigger=BillingRunTrigger(x.trigger),
            amount=BigInt(x.amount),
            base_amount=_big(x.base_amount),
            units=_dec(x.units),
            unit_price=_dec(x.unit_price),
            remainder_before=_dec(x.remainder_before),
            remainder_after=_dec(x.remainder_after),
            idempotency_key=x.idempotency_key,
            transaction_id=strawberry.ID(ids.encode("transaction", x.transaction_id)) if x.transaction_id else None,
            error=x.error,
            attempts=x.attempts,
            next_retry_at=x.next_retry_at,
            first_attempt_at=x.first_attempt_at,
            last_attempt_at=x.last_attempt_at,
            started_at=x.started_at,
            finished_at=x.finished_at,
            duration_ms=_ms(x.started_at, x.finished_at),
            lag_ms=_ms(x.scheduled_at, x.finished_at) if x.trigger == "SCHEDULE" and x.status != "SKIPPED" else None,
            project_uuid=x.project_id,
            txn_uuid=x.transaction_id,
        )


@strawberry.type(name="BillingRule")
class BillingRuleType:
    id: strawberry.ID
    project_id: strawberry.ID
    wallet_id: strawberry.ID
    name: str
    mode: BillingMode
    currency: str
    amount: BigInt | None = strawberry.field(description="Flat modes; HYBRID's base.")
    metric_key: str | None
    unit_price: Decimal | None = strawberry.field(description="Null: the metric's own unit price.")
    weekdays: list[Weekday]
    month_days: list[int]
    cron: str | None
    timezone: str
    time_of_day: str
    start_at: dt.datetime
    catch_up: CatchUpPolicy
    status: BillingRuleStatus
    paused_reason: str | None = strawberry.field(description="MANUAL or GRACE_EXPIRED.")
    test_mode: bool
    period_start: dt.datetime = strawberry.field(description="Where the next period begins.")
    next_run_at: dt.datetime | None
    retry_at: dt.datetime | None = strawberry.field(description="The next retry of an unpaid run.")
    grace_until: dt.datetime | None = strawberry.field(description="Set while runs are unpaid; paused after it.")
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    project_uuid: strawberry.Private[uuid.UUID]
    uuid: strawberry.Private[uuid.UUID]

    @strawberry.field
    async def runs(self, info: Info, first: int | None = 20, after: str | None = None) -> Connection[BillingRunType]:
        limit = page_size(first)
        runs = billing_loaders.rule_runs(info.context, self.project_uuid, limit=limit, before=decode_cursor(after))
        return connection(await runs.load(self.uuid), limit, lambda x: x.id, BillingRunType.of)

    @classmethod
    def of(cls, x: Rule) -> BillingRuleType:
        return cls(
            id=strawberry.ID(x.public_id),
            project_id=strawberry.ID(ids.encode("project", x.project_id)),
            wallet_id=strawberry.ID(ids.encode("wallet", x.wallet_id)),
            name=x.name,
            mode=BillingMode(x.mode),
            currency=x.currency,
            amount=_big(x.amount),
            metric_key=x.metric_key,
            unit_price=_dec(x.unit_price),
            weekdays=[Weekday(WEEKDAYS[d]) for d in x.weekdays],
            month_days=list(x.month_days),
            cron=x.cron,
            timezone=x.timezone,
            time_of_day=x.time_of_day.isoformat(timespec="minutes" if not x.time_of_day.second else "seconds"),
            start_at=x.start_at,
            catch_up=CatchUpPolicy(x.catch_up),
            status=BillingRuleStatus(x.status),
            paused_reason=x.paused_reason,
            test_mode=x.test_mode,
            period_start=x.period_start,
            next_run_at=x.next_run_at if x.status == "ACTIVE" else None,
            retry_at=x.retry_at,
            grace_until=x.grace_until,
            last_error=x.last_error,
            created_at=x.created_at,
            updated_at=x.updated_at,
            project_uuid=x.project_id,
            uuid=x.id,
        )


@strawberry.type(name="BillingPreviewItem")
class BillingPreviewItemType:
    at: dt.datetime = strawberry.field(description="The run instant, in UTC.")
    local_at: str = strawberry.field(description="The same instant in the rule's time zone (ISO 8601 with offset).")
    timezone: str
    period_start: dt.datetime
    amount: BigInt = strawberry.field(description="What it would charge if it ran now.")
    units: Decimal | None

    @classmethod
    def of(cls, rule: Rule, x: PreviewItem) -> BillingPreviewItemType:
        return cls(
            at=x.at,
            local_at=x.local.isoformat(),
            timezone=rule.timezone,
            period_start=x.period_start,
            amount=BigInt(x.amount),
            units=_dec(x.units),
        )


@strawberry.type(name="TestClock")
class TestClockType:
    project_id: strawberry.ID
    now: dt.datetime
    runs_executed: int = strawberry.field(description="Runs the last advance executed (0 on reads).")


@strawberry.input
class CreateBillingRuleInput:
    wallet_id: strawberry.ID
    name: str
    mode: BillingMode
    amount: BigInt | None = None
    metric_key: str | None = None
    unit_price: Decimal | None = strawberry.field(
        default=None, description="Credits per unit; default: the metric's unit price."
    )
    weekdays: list[Weekday] | None = None
    month_days: list[int] | None = None
    cron: str | None = None
    timezone: str | None = strawberry.field(default=None, description="An IANA zone; default UTC.")
    start_at: dt.datetime | None = strawberry.field(
        default=None, description="No run before it; MONTHLY_FLAT runs on its day and time of each month."
    )
    time_of_day: str | None = strawberry.field(default=None, description="HH:MM local; default 00:00 (not for cron).")
    catch_up: CatchUpPolicy | None = None


@strawberry.input
class UpdateBillingRuleInput:
    id: strawberry.ID
    name: str | None = strawberry.UNSET
    amount: BigInt | None = strawberry.UNSET
    metric_key: str | None = strawberry.UNSET
    unit_price: Decimal | None = strawberry.UNSET
    weekdays: list[Weekday] | None = strawberry.UNSET
    month_days: list[int] | None = strawberry.UNSET
    cron: str | None = strawberry.UNSET
    timezone: str | None = strawberry.UNSET
    start_at: dt.datetime | None = strawberry.UNSET
    time_of_day: str | None = strawberry.UNSET
    catch_up: CatchUpPolicy | None = strawberry.UNSET


@strawberry.input
class AdvanceTestClockInput:
    project_id: strawberry.ID
    to: dt.datetime


_FIELDS = (
    "name",
    "amount",
    "metric_key",
    "unit_price",
    "weekdays",
    "month_days",
    "cron",
    "timezone",
    "start_at",
    "time_of_day",
    "catch_up",
)


def _plain(name: str, value: object) -> object:
    if value is None:
        return None
    if name == "weekdays":
        return [w.value for w in value]  # type: ignore[attr-defined]
    if name == "catch_up":
        return value.value  # type: ignore[attr-defined]
    if name == "unit_price":
        return decimal.Decimal(value)  # type: ignore[arg-type]
    return value


def create_fields(i: CreateBillingRuleInput) -> RuleFields:
    values = {name: _plain(name, getattr(i, name)) for name in _FIELDS}
    return RuleFields(mode=i.mode.value, **values)  # type: ignore[arg-type]


def update_fields(i: UpdateBillingRuleInput) -> RuleFields:
    given = {name: getattr(i, name) for name in _FIELDS if getattr(i, name) is not strawberry.UNSET}
    values = {name: _plain(name, v) for name, v in given.items()}
    return RuleFields(provided=frozenset(given), **values)  # type: ignore[arg-type]


def not_found(what: str = "billing rule", field: str = "id") -> NotFound:
    return NotFound(f"{what} not found", field=field)
