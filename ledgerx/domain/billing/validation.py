"""What a caller may ask of a rule: the fields of a create or an update, checked into a `Spec`.

Every refusal is BAD_USER_INPUT naming the field (`validate`); where a rule without `startAt`
starts and its first instant follow from the checked spec.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import re
from collections.abc import Sequence
from typing import Any

from croniter import CroniterBadDateError

from ledgerx.domain.billing import schedule as sch
from ledgerx.domain.billing.records import AMOUNT_MODES, USAGE_MODES, UTC, Rule, schedule_of
from ledgerx.domain.errors import BadInput
from ledgerx.domain.ledger.types import MAX_BIGINT

CATCH_UP = ("ALL", "LATEST")
NAME_MAX = 200
UNIT_PRICE_MAX = decimal.Decimal("1e12")
_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$")


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
