"""Billing's records: a rule and a run as the domain hands them on, and the rules that follow from a
row alone (its schedule, the idempotency key of a period, when it is next due).

A rule charges its wallet at each instant of its schedule (`schedule.py`) for the period that
ends there: `[period_start, instant)`, where `period_start` is where the previous period ended
(or the rule's start). Flat modes charge `amount`; USAGE_BASED charges the metric's usage in the
period times the unit price; HYBRID both.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from ledgerx import ids
from ledgerx.domain.billing import schedule as sch
from ledgerx.domain.errors import Conflict

UTC = dt.UTC

FLAT_MODES = frozenset({"DAILY_FLAT", "SELECTED_DAYS", "MONTHLY_FLAT", "CRON"})
USAGE_MODES = frozenset({"USAGE_BASED", "HYBRID"})
AMOUNT_MODES = FLAT_MODES | {"HYBRID"}

RULE_COLS = (
    "id, project_id, wallet_id, name, mode, currency, amount, metric_id, metric_key, unit_price, weekdays,"
    " month_days, cron, timezone, time_of_day, start_at, catch_up, status, paused_reason, test_mode, period_start,"
    " scheduled_through, next_run_at, retry_at, grace_until, due_at, failures, last_error, version, created_at,"
    " updated_at"
)
RUN_COLS = (
    "id, project_id, rule_id, wallet_id, scheduled_at, period_start, period_end, status, trigger, amount,"
    " base_amount, units, unit_price, remainder_before, remainder_after, idempotency_key, transaction_id, error,"
    " attempts, next_retry_at, first_attempt_at, last_attempt_at, started_at, finished_at, created_at, updated_at"
)


@dataclasses.dataclass(slots=True)
class Rule:
    """A rule row. The runner keeps one per claimed rule and moves its cursor in place."""

    id: uuid.UUID
    project_id: uuid.UUID
    wallet_id: uuid.UUID
    name: str
    mode: str
    currency: str
    amount: int | None
    metric_id: uuid.UUID | None
    metric_key: str | None
    unit_price: decimal.Decimal | None
    weekdays: tuple[int, ...]
    month_days: tuple[int, ...]
    cron: str | None
    timezone: str
    time_of_day: dt.time
    start_at: dt.datetime
    catch_up: str
    status: str
    paused_reason: str | None
    test_mode: bool
    period_start: dt.datetime
    scheduled_through: dt.datetime
    next_run_at: dt.datetime | None
    retry_at: dt.datetime | None
    grace_until: dt.datetime | None
    due_at: dt.datetime | None
    failures: int
    last_error: str | None
    version: int
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, r: Any) -> Rule:
        return cls(
            id=r["id"],
            project_id=r["project_id"],
            wallet_id=r["wallet_id"],
            name=r["name"],
            mode=r["mode"],
            currency=r["currency"],
            amount=r["amount"],
            metric_id=r["metric_id"],
            metric_key=r["metric_key"],
            unit_price=r["unit_price"],
            weekdays=tuple(r["weekdays"] or ()),
            month_days=tuple(r["month_days"] or ()),
            cron=r["cron"],
            timezone=r["timezone"],
            time_of_day=r["time_of_day"],
            start_at=r["start_at"],
            catch_up=r["catch_up"],
            status=r["status"],
            paused_reason=r["paused_reason"],
            test_mode=r["test_mode"],
            period_start=r["period_start"],
            scheduled_through=r["scheduled_through"],
            next_run_at=r["next_run_at"],
            retry_at=r["retry_at"],
            grace_until=r["grace_until"],
            due_at=r["due_at"],
            failures=r["failures"],
            last_error=r["last_error"],
            version=r["version"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
        )

    @property
    def public_id(self) -> str:
        return ids.encode("rule", self.id)

    def schedule(self) -> sch.Schedule:
        return schedule_of(
            self.mode, self.timezone, self.start_at, self.time_of_day, self.weekdays, self.month_days, self.cron
        )

    def instants_after(self, after: dt.datetime | None = None) -> Iterator[dt.datetime]:
        """The rule's instants not yet run (or after `after` if later), in order."""
        cursor = self.scheduled_through if after is None else max(after, self.scheduled_through)
        return sch.instants(self.schedule(), cursor)

    def audit_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "walletId": ids.encode("wallet", self.wallet_id),
            "amount": str(self.amount) if self.amount is not None else None,
            "metricKey": self.metric_key,
            "unitPrice": format(self.unit_price, "f") if self.unit_price is not None else None,
            "weekdays": [sch.WEEKDAYS[d] for d in self.weekdays],
            "monthDays": list(self.month_days),
            "cron": self.cron,
            "timezone": self.timezone,
            "timeOfDay": self.time_of_day.isoformat(),
            "startAt": self.start_at.isoformat(),
            "catchUp": self.catch_up,
            "status": self.status,
            "pausedReason": self.paused_reason,
        }


@dataclasses.dataclass(slots=True)
class Run:
    id: uuid.UUID
    project_id: uuid.UUID
    rule_id: uuid.UUID
    wallet_id: uuid.UUID
    scheduled_at: dt.datetime
    period_start: dt.datetime
    period_end: dt.datetime
    status: str
    trigger: str
    amount: int
    base_amount: int | None
    units: decimal.Decimal | None
    unit_price: decimal.Decimal | None
    remainder_before: decimal.Decimal | None
    remainder_after: decimal.Decimal | None
    idempotency_key: str
    transaction_id: uuid.UUID | None
    error: str | None
    attempts: int
    next_retry_at: dt.datetime | None
    first_attempt_at: dt.datetime | None
    last_attempt_at: dt.datetime | None
    started_at: dt.datetime
    finished_at: dt.datetime
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    @classmethod
    def of(cls, r: Any) -> Run:
        return cls(**{f.name: r[f.name] for f in dataclasses.fields(cls)})

    @property
    def public_id(self) -> str:
        return ids.encode("run", self.id)


def schedule_of(
    mode: str,
    timezone: str,
    start: dt.datetime,
    time_of_day: dt.time,
    weekdays: Iterable[int],
    month_days: Iterable[int],
    cron: str | None,
) -> sch.Schedule:
    # USAGE_BASED and HYBRID follow a cron when they have one, else run daily at time_of_day.
    sched_mode = "CRON" if cron and mode in USAGE_MODES else mode
    return sch.Schedule(
        sched_mode,
        sch.zone(timezone),
        start,
        time_of_day=time_of_day,
        weekdays=frozenset(weekdays),
        month_days=frozenset(month_days),
        cron=cron,
    )


def idempotency_key(rule_id: uuid.UUID, scheduled_at: dt.datetime) -> str:
    """`rule:<rule id>:<period>`: the period is named by its scheduled instant (UTC, ISO 8601)."""
    return f"rule:{ids.encode('rule', rule_id)}:{period_label(scheduled_at)}"


def period_label(at: dt.datetime) -> str:
    at = at.astimezone(UTC)
    text = at.strftime("%Y-%m-%dT%H:%M:%S")
    if at.microsecond:
        text += f".{at.microsecond:06d}"
    return text + "Z"


def due_of(rule: Rule) -> dt.datetime | None:
    times = [t for t in (rule.next_run_at, rule.retry_at, rule.grace_until) if t is not None]
    return min(times) if times else None


def conflict_if_paused(rule: Rule) -> None:
    if rule.status != "ACTIVE":
        raise Conflict("this rule is paused; resume it before running it", field="id")
