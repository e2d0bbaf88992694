"""Billing rules: validation, create/update/pause/resume, the amounts of a period, and the preview.

A rule charges its wallet at each instant of its schedule (`schedule.py`) for the period that
ends there: `[period_start, instant)`, where `period_start` is where the previous period ended
(or the rule's start). Flat modes charge `amount`; USAGE_BASED charges the metric's usage in the
period times the unit price; HYBRID both. Usage is priced exactly by the usage domain's
`pricing.split` and the sub-unit remainder is carried per wallet and metric in its
`usage_charge_remainders` (the same carry `chargeUsage` uses, locked in the same order: carries,
then wallets), so nothing is ever dropped or charged twice.

Every function here runs in one database transaction and writes an audit row for what it
changes. Execution of due periods is `runner.py`'s; test clocks are `clocks.py`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any

import asyncpg
from croniter import CroniterBadDateError
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import ids
from ledgerx.db.engine import Database, driver
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.billing import schedule as sch
from ledgerx.domain.errors import BadInput, Conflict, NotFound
from ledgerx.domain.ledger import LedgerService
from ledgerx.domain.ledger.types import MAX_BIGINT
from ledgerx.domain.usage import carry, periods
from ledgerx.ids import uuid7

UTC = dt.UTC
Clock = Callable[[], dt.datetime]

FLAT_MODES = frozenset({"DAILY_FLAT", "SELECTED_DAYS", "MONTHLY_FLAT", "CRON"})
USAGE_MODES = frozenset({"USAGE_BASED", "HYBRID"})
AMOUNT_MODES = FLAT_MODES | {"HYBRID"}
CATCH_UP = ("ALL", "LATEST")
NAME_MAX = 200
UNIT_PRICE_MAX = decimal.Decimal("1e12")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class BillingPolicy:
    """How the engine behaves; the defaults are the product's (settings may override)."""

    # Delays between attempts of a run that met insufficient funds (after the 1st, 2nd, 3rd …).
    retry_delays: tuple[int, ...] = (3600, 6 * 3600, 24 * 3600)
    # From a rule's first unpaid run: how long retries may go on before the rule is paused.
    grace_period: int = 3 * 86400
    # Rules claimed per scheduler transaction.
    batch_size: int = 200
    # Instants of one rule executed per pass (a long outage of a minute cron catches up in steps).
    max_instants_per_pass: int = 500
    # One advanceTestClock may execute at most this many runs.
    test_clock_max_runs: int = 20_000
    preview_max: int = 1000


class BillingService:
    """What the billing domain needs from one app instance."""

    def __init__(
        self, db: Database, ledger: LedgerService, *, policy: BillingPolicy | None = None, clock: Clock = utcnow
    ) -> None:
        self.db = db
        self.ledger = ledger
        self.policy = policy or BillingPolicy()
        self.clock = clock

    def now(self) -> dt.datetime:
        return self.clock().astimezone(UTC)


# -- records ------------------------------------------------------------------------------------

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


# -- input and validation -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RuleFields:
    """What a caller asks for. For updates, `provided` names the fields given (None clears)."""

    name: str | None = None
    mode: str | None = None
    amount: int | None = None
    metric_key: str | None = None
    unit_price: decimal.Decimal | None = None
    weekdays: Sequence[str] | None = None
    month_days: Sequence[int] | None = None
    cron: str | None = None
    timezone: str | None = None
    time_of_day: str | None = None
    start_at: dt.datetime | None = None
    catch_up: str | None = None
    provided: frozenset[str] = frozenset()


@dataclasses.dataclass(frozen=True, slots=True)
class Spec:
    """A validated rule definition."""

    name: str
    mode: str
    amount: int | None
    metric_key: str | None
    unit_price: decimal.Decimal | None
    weekdays: tuple[int, ...]
    month_days: tuple[int, ...]
    cron: str | None
    timezone: str
    time_of_day: dt.time
    start_at: dt.datetime | None
    catch_up: str

    def schedule(self, start: dt.datetime) -> sch.Schedule:
        return schedule_of(self.mode, self.timezone, start, self.time_of_day, self.weekdays, self.month_days, self.cron)


def _parse_time(value: str) -> dt.time:
    m = _TIME.match(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise BadInput(
            "timeOfDay must be HH:MM or HH:MM:SS (24-hour, local to the rule's time zone)", field="timeOfDay"
        )
    return dt.time(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def _weekdays(values: Sequence[str]) -> tuple[int, ...]:
    out: set[int] = set()
    for v in values:
        name = str(v).strip().upper()
        if name not in sch.WEEKDAYS:
            raise BadInput("weekdays must be MONDAY … SUNDAY", field="weekdays")
        out.add(sch.WEEKDAYS.index(name))
    return tuple(sorted(out))


def _month_days(values: Sequence[int]) -> tuple[int, ...]:
    out: set[int] = set()
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 31:
            raise BadInput(
                "monthDays must be days 1 to 31 (a day past a month's end means its last day)", field="monthDays"
            )
        out.add(v)
    return tuple(sorted(out))


def validate(fields: RuleFields, base: Rule | None = None) -> Spec:
    """Check a create (base None) or an update merged over `base`; BAD_USER_INPUT names the field."""

    def pick(name: str, current: Any) -> Any:
        if base is None or name in fields.provided:
            return getattr(fields, name)
        return current

    name = pick("name", base.name if base else None)
    if name is None or not isinstance(name, str) or not 1 <= len(name.strip()) <= NAME_MAX or "\x00" in name:
        raise BadInput(f"name must be 1 to {NAME_MAX} characters", field="name")
    mode = pick("mode", base.mode if base else None)
    if mode not in sch.MODES:
        raise BadInput(f"mode must be one of {', '.join(sch.MODES)}", field="mode")

    amount = pick("amount", base.amount if base else None)
    if mode in AMOUNT_MODES:
        if amount is None:
            raise BadInput(f"{mode} rules need an amount (minor units)", field="amount")
    elif amount is not None:
        if base is None or "amount" in fields.provided:
            raise BadInput("USAGE_BASED rules charge usage only; use HYBRID for a flat base plus usage", field="amount")
        amount = None
    if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_BIGINT):
        raise BadInput("amount must be a positive integer (minor units)", field="amount")

    metric_key = pick("metric_key", base.metric_key if base else None)
    unit_price = pick("unit_price", base.unit_price if base else None)
    if mode in USAGE_MODES:
        if not metric_key:
            raise BadInput(f"{mode} rules need a metricKey", field="metricKey")
        if unit_price is not None:
            if not isinstance(unit_price, decimal.Decimal) or not unit_price.is_finite():
                raise BadInput("unitPrice must be a decimal number", field="unitPrice")
            if unit_price < 0 or unit_price > UNIT_PRICE_MAX:
                raise BadInput("unitPrice must be between 0 and 1e12", field="unitPrice")
    else:
        for fname, field in (("metric_key", "metricKey"), ("unit_price", "unitPrice")):
            if fields.provided and fname in fields.provided and getattr(fields, fname) is not None:
                raise BadInput(f"{field} is only for USAGE_BASED and HYBRID rules", field=field)
            if base is None and getattr(fields, fname) is not None:
                raise BadInput(f"{field} is only for USAGE_BASED and HYBRID rules", field=field)
        metric_key, unit_price = None, None

    cron = pick("cron", base.cron if base else None)
    if cron is not None and cron.strip() == "":
        cron = None
    if mode == "CRON" and cron is None:
        raise BadInput("CRON rules need a cron expression", field="cron")
    if cron is not None:
        if mode not in ("CRON", *USAGE_MODES):
            raise BadInput("cron is only for CRON, USAGE_BASED and HYBRID rules", field="cron")
        cron = sch.check_cron(cron)

    raw_weekdays = pick("weekdays", None if base is None else [sch.WEEKDAYS[d] for d in base.weekdays])
    raw_month_days = pick("month_days", None if base is None else list(base.month_days))
    weekdays = _weekdays(raw_weekdays or ())
    month_days = _month_days(raw_month_days or ())
    if mode == "SELECTED_DAYS":
        if not weekdays and not month_days:
            raise BadInput("SELECTED_DAYS rules need weekdays and/or monthDays", field="weekdays")
    else:
        for fname, field in (("weekdays", "weekdays"), ("month_days", "monthDays")):
            given = getattr(fields, fname)
            if given and (base is None or fname in fields.provided):
                raise BadInput(f"{field} is only for SELECTED_DAYS rules", field=field)
        weekdays, month_days = (), ()

    tz = pick("timezone", base.timezone if base else None) or "UTC"
    if not isinstance(tz, str) or len(tz) > 64:
        raise BadInput("unknown time zone; use an IANA name like Europe/Berlin", field="timezone")
    sch.zone(tz)

    raw_time = pick("time_of_day", base.time_of_day.isoformat() if base else None)
    time_of_day = _parse_time(raw_time) if raw_time is not None else dt.time(0, 0)
    if cron is not None and (fields.time_of_day is not None and (base is None or "time_of_day" in fields.provided)):
        raise BadInput("timeOfDay does not apply to cron schedules (the cron sets the time)", field="timeOfDay")

    start_at = pick("start_at", base.start_at if base else None)
    if start_at is not None:
        if not isinstance(start_at, dt.datetime) or start_at.tzinfo is None:
            raise BadInput("startAt must be a date-time with a UTC offset", field="startAt")
        start_at = start_at.astimezone(UTC)

    catch_up = pick("catch_up", base.catch_up if base else None) or "ALL"
    if catch_up not in CATCH_UP:
        raise BadInput("catchUp must be ALL or LATEST", field="catchUp")

    return Spec(
        name=name.strip(),
        mode=mode,
        amount=amount,
        metric_key=metric_key,
        unit_price=unit_price,
        weekdays=weekdays,
        month_days=month_days,
        cron=cron,
        timezone=tz,
        time_of_day=time_of_day,
        start_at=start_at,
        catch_up=catch_up,
    )


def default_start(spec: Spec, now: dt.datetime) -> dt.datetime:
    """Where a rule without `startAt` starts. Monthly rules anchor on today's date at the time of
    day (so they run on this day of each month, this month's too if that time is still ahead)."""
    if spec.mode != "MONTHLY_FLAT":
        return now
    tz = sch.zone(spec.timezone)
    return sch.to_utc(dt.datetime.combine(now.astimezone(tz).date(), spec.time_of_day), tz)


def first_instant(schedule: sch.Schedule, after: dt.datetime, field: str = "cron") -> dt.datetime:
    try:
        return sch.next_after(schedule, after)
    except (CroniterBadDateError, StopIteration, OverflowError):
        raise BadInput("this schedule never runs (no matching date)", field=field) from None


# -- transactions --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def tenant(db: Database, project_id: uuid.UUID) -> AsyncIterator[tuple[AsyncSession, asyncpg.Connection]]:
    async with db.transaction(project_id=project_id) as session:
        yield session, await driver(session)


@contextlib.asynccontextmanager
async def system(db: Database) -> AsyncIterator[tuple[AsyncSession, asyncpg.Connection]]:
    """The scheduler's explicit cross-project path (it audits what it changes)."""
    async with db.transaction(system=True) as session:
        yield session, await driver(session)


async def rule_project(db: Database, rule_id: uuid.UUID) -> uuid.UUID | None:
    """Which project a rule belongs to (system scope: resolvers authorize against it next)."""
    async with system(db) as (_, conn):
        found: uuid.UUID | None = await conn.fetchval("SELECT project_id FROM billing_rules WHERE id = $1", rule_id)
    return found


async def run_project(db: Database, run_id: uuid.UUID) -> uuid.UUID | None:
    async with system(db) as (_, conn):
        found: uuid.UUID | None = await conn.fetchval("SELECT project_id FROM billing_runs WHERE id = $1", run_id)
    return found


async def lock_rule(conn: asyncpg.Connection, project_id: uuid.UUID, rule_id: uuid.UUID) -> Rule:
    row = await conn.fetchrow(
        f"SELECT {RULE_COLS} FROM billing_rules WHERE id = $1 AND project_id = $2 FOR UPDATE",  # noqa: S608
        rule_id,
        project_id,
    )
    if row is None:
        raise NotFound("billing rule not found", field="id")
    return Rule.of(row)


async def project_clock(
    conn: asyncpg.Connection, project_id: uuid.UUID, real_now: dt.datetime
) -> tuple[bool, dt.datetime]:
    """(test_mode, the project's now): a test-mode project's own clock, else the real time."""
    from ledgerx.domain.billing import clocks

    row = await conn.fetchrow("SELECT test_mode FROM projects WHERE id = $1", project_id)
    if row is None:
        raise NotFound("project not found", field="projectId")
    if not row["test_mode"]:
        return False, real_now
    return True, await clocks.read(conn, project_id, real_now)


# -- mutations -----------------------------------------------------------------------------------


_INSERT_RULE = f"""
INSERT INTO billing_rules (id, project_id, wallet_id, name, mode, currency, amount, metric_id, metric_key, unit_price,
  weekdays, month_days, cron, timezone, time_of_day, start_at, catch_up, status, test_mode, period_start,
  next_run_at, due_at, created_by, scheduled_through)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, 'ACTIVE', $18, $19, $20, $20, $21,
  $22)
RETURNING {RULE_COLS}
"""  # noqa: S608


async def _resolve_metric(conn: asyncpg.Connection, project_id: uuid.UUID, key: str) -> uuid.UUID:
    metric = await periods.metric_by_key(conn, project_id, key)
    if metric is None:
        raise BadInput(f"no metric {key!r} in this project; define it first", field="metricKey")
    return metric.id


async def create_rule(
    svc: BillingService,
    actor: Actor,
    *,
    project_id: uuid.UUID,
    wallet_id: uuid.UUID,
    currency: str,
    fields: RuleFields,
) -> Rule:
    spec = validate(fields)
    async with tenant(svc.db, project_id) as (session, conn):
        test_mode, now = await project_clock(conn, project_id, svc.now())
        metric_id = await _resolve_metric(conn, project_id, spec.metric_key) if spec.metric_key else None
        start = spec.start_at or default_start(spec, now)
        schedule = spec.schedule(start)
        # Nothing is owed for instants before the rule existed (or before its start).
        through = max(now, start - dt.timedelta(microseconds=1))
        first = first_instant(schedule, through, field="cron" if spec.cron else "startAt")
        row = await conn.fetchrow(
            _INSERT_RULE,
            uuid7(),
            project_id,
            wallet_id,
            spec.name,
            spec.mode,
            currency,
            spec.amount,
            metric_id,
            spec.metric_key,
            spec.unit_price,
            list(spec.weekdays),
            list(spec.month_days),
            spec.cron,
            spec.timezone,
            spec.time_of_day,
            start,
            spec.catch_up,
            test_mode,
            max(start, now),
            first,
            actor.id if actor.type == "user" else None,
            through,
        )
        rule = Rule.of(row)
        await audit.record(
            session,
            actor,
            "billing_rule.create",
            project_id=project_id,
            target_type="billing_rule",
            target_id=rule.public_id,
            after=rule.audit_json(),
        )
    return rule


_UPDATE_RULE = f"""
UPDATE billing_rules SET name = $2, mode = $3, amount = $4, metric_id = $5, metric_key = $6, unit_price = $7,
  weekdays = $8, month_days = $9, cron = $10, timezone = $11, time_of_day = $12, start_at = $13, catch_up = $14,
  next_run_at = $15, due_at = $16, scheduled_through = $17, version = version + 1, updated_at = now()
WHERE id = $1
RETURNING {RULE_COLS}
"""  # noqa: S608


def due_of(rule: Rule) -> dt.datetime | None:
    times = [t for t in (rule.next_run_at, rule.retry_at, rule.grace_until) if t is not None]
    return min(times) if times else None


async def update_rule(
    svc: BillingService, actor: Actor, project_id: uuid.UUID, rule_id: uuid.UUID, fields: RuleFields
) -> Rule:
    """Change a rule. Periods already run stay as they are; a changed schedule applies from the
    first of its instants after now (never to the past); the mode cannot change."""
    async with tenant(svc.db, project_id) as (session, conn):
        rule = await lock_rule(conn, project_id, rule_id)
        if "mode" in fields.provided and fields.mode != rule.mode:
            # Pricing and the carried cursor mean different things per mode: keep it simple.
            raise BadInput("a rule's mode cannot change; create a new rule (and pause this one)", field="mode")
        spec = validate(fields, rule)
        _, now = await project_clock(conn, project_id, svc.now())
        before = rule.audit_json()
        metric_id = rule.metric_id
        if spec.metric_key != rule.metric_key:
            metric_id = await _resolve_metric(conn, project_id, spec.metric_key) if spec.metric_key else None
        start = spec.start_at or rule.start_at
        schedule = spec.schedule(start)
        through, next_run = rule.scheduled_through, rule.next_run_at
        if schedule != rule.schedule():
            through = max(now, rule.scheduled_through, start - dt.timedelta(microseconds=1))
            next_run = first_instant(schedule, through, field="cron" if spec.cron else "startAt")
        probe = dataclasses.replace(rule, next_run_at=next_run)
        row = await conn.fetchrow(
            _UPDATE_RULE,
            rule.id,
            spec.name,
            spec.mode,
            spec.amount,
            metric_id,
            spec.metric_key,
            spec.unit_price,
            list(spec.weekdays),
            list(spec.month_days),
            spec.cron,
            spec.timezone,
            spec.time_of_day,
            start,
            spec.catch_up,
            next_run,
            due_of(probe),
            through,
        )
        updated = Rule.of(row)
        await audit.record(
            session,
            actor,
            "billing_rule.update",
            project_id=project_id,
            target_type="billing_rule",
            target_id=updated.public_id,
            before=before,
            after=updated.audit_json(),
        )
    return updated


async def pause_rule(svc: BillingService, actor: Actor, project_id: uuid.UUID, rule_id: uuid.UUID) -> Rule:
    async with tenant(svc.db, project_id) as (session, conn):
        rule = await lock_rule(conn, project_id, rule_id)
        if rule.status == "PAUSED":
            return rule  # idempotent: pausing a paused rule changes nothing
        row = await conn.fetchrow(
            f"UPDATE billing_rules SET status = 'PAUSED', paused_reason = 'MANUAL', version = version + 1,"  # noqa: S608
            f" updated_at = now() WHERE id = $1 RETURNING {RULE_COLS}",
            rule.id,
        )
        updated = Rule.of(row)
        await audit.record(
            session,
            actor,
            "billing_rule.pause",
            project_id=project_id,
            target_type="billing_rule",
            target_id=updated.public_id,
            before={"status": rule.status},
            after={"status": updated.status, "pausedReason": "MANUAL"},
        )
    return updated


_RESUME = f"""
UPDATE billing_rules SET status = 'ACTIVE', paused_reason = NULL, next_run_at = $2, retry_at = $3, grace_until = NULL,
  due_at = least($2::timestamptz, $3::timestamptz), scheduled_through = $4, failures = 0, last_error = NULL,
  version = version + 1, updated_at = now()
WHERE id = $1
RETURNING {RULE_COLS}
"""  # noqa: S608


async def resume_rule(svc: BillingService, actor: Actor, project_id: uuid.UUID, rule_id: uuid.UUID) -> Rule:
    """Resume billing from now. Instants that fell while paused are not charged; the next period
    still starts where the last charged one ended (usage is never dropped). Unpaid runs are retried
    at once, and a new grace period starts if they fail again."""
    async with tenant(svc.db, project_id) as (session, conn):
        rule = await lock_rule(conn, project_id, rule_id)
        if rule.status == "ACTIVE":
            return rule
        _, now = await project_clock(conn, project_id, svc.now())
        # Instants that fell while paused are not owed: the cursor moves past them.
        through = max(now, rule.scheduled_through)
        next_run = first_instant(rule.schedule(), through)
        unpaid = await conn.fetchval(
            "UPDATE billing_runs SET next_retry_at = $2, updated_at = now()"
            " WHERE rule_id = $1 AND status = 'INSUFFICIENT_FUNDS' RETURNING 1",
            rule.id,
            now,
        )
        retry_at = now if unpaid else None
        row = await conn.fetchrow(
            _RESUME,
            rule.id,
            next_run,
            retry_at,
            through,
        )
        updated = Rule.of(row)
        await audit.record(
            session,
            actor,
            "billing_rule.resume",
            project_id=project_id,
            target_type="billing_rule",
            target_id=updated.public_id,
            before={"status": rule.status, "pausedReason": rule.paused_reason},
            after={"status": updated.status, "nextRunAt": next_run.isoformat()},
        )
    return updated


# -- reads ---------------------------------------------------------------------------------------


async def get_rule(db: Database, project_id: uuid.UUID, rule_id: uuid.UUID) -> Rule:
    async with tenant(db, project_id) as (_, conn):
        row = await conn.fetchrow(
            f"SELECT {RULE_COLS} FROM billing_rules WHERE id = $1 AND project_id = $2",  # noqa: S608
            rule_id,
            project_id,
        )
    if row is None:
        raise NotFound("billing rule not found", field="id")
    return Rule.of(row)


async def list_rules(
    db: Database, project_id: uuid.UUID, *, limit: int, after: uuid.UUID | None, wallet_id: uuid.UUID | None = None
) -> list[Rule]:
    """A project's rules, oldest first; `limit + 1` rows so the caller knows more exist."""
    async with tenant(db, project_id) as (_, conn):
        rows = await conn.fetch(
            f"SELECT {RULE_COLS} FROM billing_rules WHERE project_id = $1 AND id > $2"  # noqa: S608
            " AND ($3::uuid IS NULL OR wallet_id = $3) ORDER BY id LIMIT $4",
            project_id,
            after or uuid.UUID(int=0),
            wallet_id,
            limit + 1,
        )
    return [Rule.of(r) for r in rows]


async def list_runs(
    db: Database, project_id: uuid.UUID, rule_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> list[Run]:
    """A rule's runs, latest period first; `limit + 1` rows. The cursor is a run id."""
    async with tenant(db, project_id) as (_, conn):
        rows = await conn.fetch(
            f"SELECT {RUN_COLS} FROM billing_runs r WHERE rule_id = $1 AND project_id = $2"  # noqa: S608
            " AND ($3::uuid IS NULL OR (scheduled_at, id) < (SELECT scheduled_at, id FROM billing_runs WHERE id = $3))"
            " ORDER BY scheduled_at DESC, id DESC LIMIT $4",
            rule_id,
            project_id,
            before,
            limit + 1,
        )
    return [Run.of(r) for r in rows]


async def list_runs_of_rules(
    db: Database, project_id: uuid.UUID, rule_ids: Sequence[uuid.UUID], *, limit: int, before: uuid.UUID | None
) -> dict[uuid.UUID, list[Run]]:
    """`list_runs` of each rule (the same page size and cursor) in one statement, by rule id."""
    async with tenant(db, project_id) as (_, conn):
        rows = await conn.fetch(
            f"SELECT p.* FROM unnest($1::uuid[]) AS x(rule_id) CROSS JOIN LATERAL (SELECT {RUN_COLS}"  # noqa: S608
            " FROM billing_runs r WHERE r.rule_id = x.rule_id AND r.project_id = $2"
            " AND ($3::uuid IS NULL"
            " OR (r.scheduled_at, r.id) < (SELECT scheduled_at, id FROM billing_runs WHERE id = $3))"
            " ORDER BY r.scheduled_at DESC, r.id DESC LIMIT $4) p",
            list(rule_ids),
            project_id,
            before,
            limit + 1,
        )
    found: dict[uuid.UUID, list[Run]] = {r: [] for r in rule_ids}
    for row in rows:
        run = Run.of(row)
        found[run.rule_id].append(run)
    return found


async def get_run(db: Database, project_id: uuid.UUID, run_id: uuid.UUID) -> Run:
    async with tenant(db, project_id) as (_, conn):
        row = await conn.fetchrow(
            f"SELECT {RUN_COLS} FROM billing_runs WHERE id = $1 AND project_id = $2",  # noqa: S608
            run_id,
            project_id,
        )
    if row is None:
        raise NotFound("billing run not found", field="id")
    return Run.of(row)


@dataclasses.dataclass(frozen=True, slots=True)
class PreviewItem:
    at: dt.datetime
    local: dt.datetime
    period_start: dt.datetime
    amount: int
    units: decimal.Decimal | None


async def preview(
    svc: BillingService, project_id: uuid.UUID, rule_id: uuid.UUID, count: int
) -> tuple[Rule, dt.datetime, list[PreviewItem]]:
    """The next `count` instants not yet run (UTC and local) with what each would charge if it ran
    now: flat amounts, plus for the first period the usage recorded in it so far (and the carried
    remainder); later periods have no usage yet. A dry run: nothing is written."""
    if isinstance(count, bool) or not 1 <= count <= svc.policy.preview_max:
        raise BadInput(f"count must be between 1 and {svc.policy.preview_max}", field="count")
    async with tenant(svc.db, project_id) as (_, conn):
        row = await conn.fetchrow(
            f"SELECT {RULE_COLS} FROM billing_rules WHERE id = $1 AND project_id = $2",  # noqa: S608
            rule_id,
            project_id,
        )
        if row is None:
            raise NotFound("billing rule not found", field="id")
        rule = Rule.of(row)
        _, now = await project_clock(conn, project_id, svc.now())
        it = rule.instants_after(now if rule.status == "PAUSED" else None)
        instants = [next(it) for _ in range(count)]
        first_units: decimal.Decimal | None = None
        first_amount = rule.amount or 0
        if rule.mode in USAGE_MODES and rule.metric_id is not None:
            info = (await periods.metrics_by_id(conn, [rule.metric_id]))[rule.metric_id]
            end = max(rule.period_start, min(now, instants[0]))
            (first_units,) = await periods.units(conn, [periods.Window(project_id, info, rule.period_start, end)])
            carried = await carry.remainder(conn, rule.wallet_id, info.id)
            unit_price = rule.unit_price if rule.unit_price is not None else info.unit_price
            first_amount += carry.split(first_units, unit_price, carried).amount
    tz = sch.zone(rule.timezone)
    items: list[PreviewItem] = []
    start = rule.period_start
    for i, at in enumerate(instants):
        amount = first_amount if i == 0 else (rule.amount or 0)
        units = first_units if i == 0 else (decimal.Decimal(0) if rule.mode in USAGE_MODES else None)
        items.append(PreviewItem(at, at.astimezone(tz), start, amount, units))
        start = at
    return rule, now, items


def conflict_if_paused(rule: Rule) -> None:
    if rule.status != "ACTIVE":
        raise Conflict("this rule is paused; resume it before running it", field="id")
