"""When a billing rule runs: the instants of each mode, computed in the rule's time zone.

Every mode first yields *wall-clock* times (naive local datetimes) in order; each is then mapped
to one UTC instant with two DST rules:
- a wall time that happens twice (clocks go back) runs once, at its first occurrence;
- a wall time that does not exist (clocks go forward) runs at the next valid instant, the moment
  the clocks jump (so 02:30 on a spring-forward night runs at 03:00 local).
Instants are then strictly increasing and de-duplicated (several skipped wall times collapse
into the one jump instant).
"""

from __future__ import annotations

import calendar
import dataclasses
import datetime as dt
from collections.abc import Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from ledgerx.domain.errors import BadInput

UTC = dt.UTC
WEEKDAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
MODES = ("DAILY_FLAT", "SELECTED_DAYS", "MONTHLY_FLAT", "USAGE_BASED", "HYBRID", "CRON")


def zone(name: str, field: str = "timezone") -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise BadInput(f"unknown time zone {name!r}; use an IANA name like Europe/Berlin", field=field) from None


def check_cron(expr: str, field: str = "cron") -> str:
    e = " ".join(expr.split())
    if len(e.split(" ")) != 5 or not croniter.is_valid(e):
        raise BadInput("cron must be a valid 5-field expression (minute hour day month weekday)", field=field)
    return e


@dataclasses.dataclass(frozen=True, slots=True)
class Schedule:
    """What decides a rule's instants. `start` is the first instant a run may happen (UTC)."""

    mode: str
    tz: ZoneInfo
    start: dt.datetime
    time_of_day: dt.time = dt.time(0, 0)
    weekdays: frozenset[int] = frozenset()  # 0 = Monday
    month_days: frozenset[int] = frozenset()  # 1..31; past a month's end means its last day
    cron: str | None = None

    def __post_init__(self) -> None:
        if self.start.tzinfo is None:
            raise ValueError("start must be timezone-aware")


def to_utc(local: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """Map a wall-clock time to its instant by the DST rules above."""
    first = local.replace(tzinfo=tz, fold=0)
    second = local.replace(tzinfo=tz, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first.astimezone(UTC)  # an ordinary time
    a, b = first.astimezone(UTC), second.astimezone(UTC)
    if a.astimezone(tz).replace(tzinfo=None) == local:
        return min(a, b)  # it exists twice: the first occurrence
    # It does not exist: find the jump, the first instant whose wall time is past `local`.
    lo, hi = min(a, b), max(a, b)
    while hi - lo > dt.timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).replace(tzinfo=None) >= local:
            hi = mid
        else:
            lo = mid
    return hi.replace(microsecond=0)


def _month_days(year: int, month: int, days: frozenset[int]) -> set[int]:
    last = calendar.monthrange(year, month)[1]
    return {min(d, last) for d in days}


def _wall_times(s: Schedule, from_local: dt.datetime) -> Iterator[dt.datetime]:
    """Wall-clock candidates in order, starting on `from_local`'s date (possibly before it)."""
    if s.mode == "CRON":
        assert s.cron is not None
        it = croniter(s.cron, from_local - dt.timedelta(minutes=1))
        while True:
            yield it.get_next(dt.datetime)
    day = from_local.date()
    if s.mode == "MONTHLY_FLAT":
        anchor = s.start.astimezone(s.tz)
        year, month = day.year, day.month
        while True:
            last = calendar.monthrange(year, month)[1]
            yield dt.datetime(year, month, min(anchor.day, last), anchor.hour, anchor.minute, anchor.second)
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    while True:
        if s.mode == "SELECTED_DAYS":
            hit = day.weekday() in s.weekdays or day.day in _month_days(day.year, day.month, s.month_days)
        else:  # DAILY_FLAT, and USAGE_BASED / HYBRID without a cron: daily
            hit = True
        if hit:
            yield dt.datetime.combine(day, s.time_of_day)
        day += dt.timedelta(days=1)


def instants(s: Schedule, after: dt.datetime) -> Iterator[dt.datetime]:
    """Run instants strictly after `after` (and not before the schedule's start), in order."""
    floor = max(after, s.start - dt.timedelta(microseconds=1))
    # Start two days early: mapping can move an instant across midnight in either direction.
    begin = floor.astimezone(s.tz).replace(tzinfo=None) - dt.timedelta(days=2)
    if s.mode == "MONTHLY_FLAT":
        begin = begin.replace(day=1) - dt.timedelta(days=1)
        begin = begin.replace(day=1)
    last: dt.datetime | None = None
    for wall in _wall_times(s, begin):
        at = to_utc(wall, s.tz)
        if at <= floor or (last is not None and at <= last):
            continue
        last = at
        yield at


def next_after(s: Schedule, after: dt.datetime) -> dt.datetime:
    return next(instants(s, after))


def upcoming(s: Schedule, after: dt.datetime, count: int) -> list[dt.datetime]:
    it = instants(s, after)
    return [next(it) for _ in range(count)]
