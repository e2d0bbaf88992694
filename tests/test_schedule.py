"""Billing-rule schedules over a whole year: month ends, leap day, both DST changes in two zones."""

from __future__ import annotations

import datetime as dt
import itertools
from zoneinfo import ZoneInfo

import pytest

from ledgerx.domain.billing.schedule import Schedule, check_cron, to_utc, upcoming, zone
from ledgerx.domain.errors import BadInput

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
UTC = dt.UTC


def utc(*a: int) -> dt.datetime:
    return dt.datetime(*a, tzinfo=UTC)


def local(tz: ZoneInfo, items: list[dt.datetime]) -> list[str]:
    return [i.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z") for i in items]


def test_to_utc_dst_rules() -> None:
    # Spring forward in New York, 2028-03-12: 02:00 -> 03:00. 02:30 does not exist: runs at 03:00 EDT.
    assert to_utc(dt.datetime(2028, 3, 12, 2, 30), NY) == utc(2028, 3, 12, 7, 0)
    # Fall back, 2028-11-05: 01:30 happens twice; the first (EDT, -4) is chosen.
    assert to_utc(dt.datetime(2028, 11, 5, 1, 30), NY) == utc(2028, 11, 5, 5, 30)
    # Berlin: 2028-03-26 02:30 does not exist -> 03:00 CEST = 01:00Z; 2028-10-29 02:30 twice -> 00:30Z.
    assert to_utc(dt.datetime(2028, 3, 26, 2, 30), BERLIN) == utc(2028, 3, 26, 1, 0)
    assert to_utc(dt.datetime(2028, 10, 29, 2, 30), BERLIN) == utc(2028, 10, 29, 0, 30)


@pytest.mark.parametrize("tz", [NY, BERLIN])
def test_daily_at_local_midnight_for_a_year(tz: ZoneInfo) -> None:
    s = Schedule("DAILY_FLAT", tz, start=utc(2027, 12, 31, 12))
    runs = upcoming(s, utc(2027, 12, 31, 12), 366)  # 2028 is a leap year
    walls = [r.astimezone(tz) for r in runs]
    assert all((w.hour, w.minute) == (0, 0) for w in walls)
    assert [w.date() for w in walls] == [dt.date(2028, 1, 1) + dt.timedelta(days=i) for i in range(366)]
    assert dt.date(2028, 2, 29) in [w.date() for w in walls]
    gaps = {(b - a) for a, b in itertools.pairwise(runs)}
    assert gaps == {dt.timedelta(hours=23), dt.timedelta(hours=24), dt.timedelta(hours=25)}


def test_daily_at_a_time_that_vanishes_and_repeats() -> None:
    s = Schedule("DAILY_FLAT", NY, start=utc(2028, 3, 10), time_of_day=dt.time(2, 30))
    runs = upcoming(s, utc(2028, 3, 10), 4)
    assert local(NY, runs) == [
        "2028-03-10 02:30 EST",
        "2028-03-11 02:30 EST",
        "2028-03-12 03:00 EDT",
        "2028-03-13 02:30 EDT",
    ]
    s = Schedule("DAILY_FLAT", NY, start=utc(2028, 11, 4), time_of_day=dt.time(1, 30))
    runs = upcoming(s, utc(2028, 11, 4), 3)
    assert local(NY, runs) == ["2028-11-04 01:30 EDT", "2028-11-05 01:30 EDT", "2028-11-06 01:30 EST"]


def test_selected_days_weekdays_and_month_ends() -> None:
    s = Schedule("SELECTED_DAYS", BERLIN, start=utc(2028, 1, 1), weekdays=frozenset({0}), month_days=frozenset({31}))
    runs = upcoming(s, utc(2028, 1, 1), 80)
    days = [r.astimezone(BERLIN).date() for r in runs]
    month_ends = [d for d in days if (d + dt.timedelta(days=1)).day == 1]
    # 31 means each month's last day: Jan 31, Feb 29 (leap), Mar 31, Apr 30, ...
    assert month_ends[:6] == [
        dt.date(2028, 1, 31),
        dt.date(2028, 2, 29),
        dt.date(2028, 3, 31),
        dt.date(2028, 4, 30),
        dt.date(2028, 5, 31),
        dt.date(2028, 6, 30),
    ]
    assert all(d.weekday() == 0 or d in month_ends for d in days)
    mondays = [d for d in days if d.weekday() == 0]
    assert mondays[0] == dt.date(2028, 1, 3) and all((b - a).days == 7 for a, b in itertools.pairwise(mondays))
    assert len(days) == len(set(days))  # a Monday that is also a month end runs once


@pytest.mark.parametrize("tz", [NY, BERLIN])
def test_monthly_on_the_anchor_day_clamped(tz: ZoneInfo) -> None:
    start = dt.datetime(2028, 1, 31, 9, 0, tzinfo=tz).astimezone(UTC)
    s = Schedule("MONTHLY_FLAT", tz, start=start)
    runs = upcoming(s, start - dt.timedelta(seconds=1), 13)
    assert [r.astimezone(tz).strftime("%m-%d %H:%M") for r in runs] == [
        "01-31 09:00",
        "02-29 09:00",
        "03-31 09:00",
        "04-30 09:00",
        "05-31 09:00",
        "06-30 09:00",
        "07-31 09:00",
        "08-31 09:00",
        "09-30 09:00",
        "10-31 09:00",
        "11-30 09:00",
        "12-31 09:00",
        "01-31 09:00",
    ]


def test_cron_in_a_time_zone_over_both_dst_changes() -> None:
    # Every 30 minutes between 01:00 and 03:59 on the DST days in New York.
    s = Schedule("CRON", NY, start=utc(2028, 1, 1), cron=check_cron("*/30 1-3 * * *"))
    spring = upcoming(s, dt.datetime(2028, 3, 12, 0, 0, tzinfo=NY).astimezone(UTC), 5)
    # 02:00 and 02:30 do not exist: both run once at 03:00, then 03:30.
    assert local(NY, spring) == [
        "2028-03-12 01:00 EST",
        "2028-03-12 01:30 EST",
        "2028-03-12 03:00 EDT",
        "2028-03-12 03:30 EDT",
        "2028-03-13 01:00 EDT",
    ]
    autumn = upcoming(s, dt.datetime(2028, 11, 5, 0, 0, tzinfo=NY).astimezone(UTC), 6)
    # 01:00 and 01:30 happen twice: each runs once, at its first occurrence.
    assert local(NY, autumn) == [
        "2028-11-05 01:00 EDT",
        "2028-11-05 01:30 EDT",
        "2028-11-05 02:00 EST",
        "2028-11-05 02:30 EST",
        "2028-11-05 03:00 EST",
        "2028-11-05 03:30 EST",
    ]
    assert all(b > a for a, b in itertools.pairwise(autumn))


def test_cron_leap_day_and_year() -> None:
    s = Schedule("CRON", BERLIN, start=utc(2027, 1, 1), cron=check_cron("0 12 29 2 *"))
    runs = upcoming(s, utc(2027, 1, 1), 2)
    assert local(BERLIN, runs) == ["2028-02-29 12:00 CET", "2032-02-29 12:00 CET"]


def test_start_is_respected() -> None:
    s = Schedule("DAILY_FLAT", UTC_ZONE, start=utc(2028, 5, 10, 12))
    assert upcoming(s, utc(2020, 1, 1), 1) == [utc(2028, 5, 11)]


UTC_ZONE = ZoneInfo("UTC")


def test_bad_zone_and_cron() -> None:
    with pytest.raises(BadInput) as e:
        zone("Mars/Olympus")
    assert e.value.field == "timezone"
    for bad in ("* * *", "61 * * * *", "hello"):
        with pytest.raises(BadInput):
            check_cron(bad)
