"""Time ranges and buckets for analytics: UTC, half-open `[from, to)`, aligned to the granularity.

A bucket is labeled by its start (`date_trunc` in UTC; weeks start on Monday). The first bucket
starts at or before `from`; only data inside `[from, to)` is counted, so a range that does not
start on a boundary gives a partial first (and last) bucket.
"""

from __future__ import annotations

import datetime as dt
import enum

from ledgerx.domain.errors import BadInput

MAX_BUCKETS = 1000


class Granularity(enum.StrEnum):
    HOUR = "HOUR"
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"

    @property
    def sql(self) -> str:
        """The `date_trunc` field name."""
        return self.value.lower()


def utc(value: dt.datetime) -> dt.datetime:
    """Aware UTC; a naive value is taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def bucket_start(ts: dt.datetime, g: Granularity) -> dt.datetime:
    ts = utc(ts)
    if g is Granularity.HOUR:
        return ts.replace(minute=0, second=0, microsecond=0)
    day = ts.replace(hour=0, minute=0, second=0, microsecond=0)
    if g is Granularity.DAY:
        return day
    if g is Granularity.WEEK:
        return day - dt.timedelta(days=day.weekday())
    return day.replace(day=1)


def next_bucket(start: dt.datetime, g: Granularity) -> dt.datetime:
    if g is Granularity.HOUR:
        return start + dt.timedelta(hours=1)
    if g is Granularity.DAY:
        return start + dt.timedelta(days=1)
    if g is Granularity.WEEK:
        return start + dt.timedelta(days=7)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def check_range(
    from_: dt.datetime, to: dt.datetime, g: Granularity, *, max_buckets: int = MAX_BUCKETS
) -> tuple[dt.datetime, dt.datetime, list[dt.datetime]]:
    """Validate `[from, to)`; returns it in UTC with the bucket starts. BAD_USER_INPUT when the
    range is empty or needs more than `max_buckets` buckets."""
    start, end = utc(from_), utc(to)
    if end <= start:
        raise BadInput("`to` must be after `from`", field="to")
    out: list[dt.datetime] = []
    b = bucket_start(start, g)
    while b < end:
        if len(out) >= max_buckets:
            raise BadInput(
                f"the range needs more than {max_buckets} {g.value.lower()} buckets; use a coarser granularity",
                field="granularity",
            )
        out.append(b)
        b = next_bucket(b, g)
    return start, end, out


def day_start(now: dt.datetime) -> dt.datetime:
    """Midnight UTC of `now`'s day ("today" in live figures)."""
    return bucket_start(now, Granularity.DAY)
