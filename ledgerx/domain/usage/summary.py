"""usageSummary: a metric's usage per MINUTE, HOUR, DAY or MONTH in any IANA time zone, from rollups.

Never reads raw events. Buckets are computed by PostgreSQL in the requested zone (the transaction's
TimeZone is set to it): `generate_series` steps whole local days and months (a DAY is 23 or 25 hours
on a DST change), `date_trunc` puts each rollup bucket in its local bucket, and an hour repeated by
a DST fall-back stays two distinct buckets (date_trunc keeps the offset below a day).

Rollups exist at 1 and 15 minutes. MINUTE summaries read the 1-minute rows; HOUR, DAY and MONTH read
the 15-minute rows (15x fewer) whenever every UTC offset in play is a multiple of 15 minutes, which
holds for every IANA zone since 1980; older ranges fall back to the 1-minute rows.

The series covers the buckets that start in [bucket of `from`, `to`): `from` is rounded down to its
bucket's start, and each point aggregates its whole bucket. Empty buckets are returned as zeros.
"""

from __future__ import annotations

import datetime as dt
import decimal
import zoneinfo

import asyncpg

from ledgerx.db.engine import Database
from ledgerx.domain.errors import BadInput
from ledgerx.domain.usage.types import Aggregation, Granularity, MetricRecord, UsagePoint

MAX_POINTS = 10_000
_WIDE_SINCE = dt.datetime(1980, 1, 1, tzinfo=dt.UTC)
_STEP = {
    Granularity.MINUTE: "1 minute",
    Granularity.HOUR: "1 hour",
    Granularity.DAY: "1 day",
    Granularity.MONTH: "1 month",
}
_FIELD = {
    Granularity.MINUTE: "minute",
    Granularity.HOUR: "hour",
    Granularity.DAY: "day",
    Granularity.MONTH: "month",
}
# The shortest a bucket can be, to bound the number of points before asking the database.
_MIN_SECONDS = {
    Granularity.MINUTE: 60,
    Granularity.HOUR: 1800,
    Granularity.DAY: 22 * 3600,
    Granularity.MONTH: 28 * 86400,
}

# $1 project, $2 metric, $3 date_trunc field, $4 from, $5 to, $6 step, $7 rollup width.
_SERIES = """
WITH series AS (
  SELECT b FROM generate_series(date_trunc($3, $4::timestamptz), $5::timestamptz - interval '1 microsecond',
                                $6::text::interval) AS b
), bounds AS (
  SELECT min(b) AS lo, max(b) + $6::text::interval AS hi FROM series
), agg AS (
  SELECT date_trunc($3, r.bucket) AS b, sum(r.events)::bigint AS events, sum(r.units_sum) AS units_sum,
         max(r.units_max) AS units_max
  FROM bounds, usage_rollups r
  WHERE r.project_id = $1 AND r.metric_id = $2 AND r.width = $7 AND r.bucket >= bounds.lo AND r.bucket < bounds.hi
  GROUP BY 1
)
"""
_PLAIN_TAIL = """
SELECT s.b AS bucket, coalesce(a.events, 0) AS events, coalesce(a.units_sum, 0) AS units_sum,
       coalesce(a.units_max, 0) AS units_max, 0::bigint AS uniques
FROM series s LEFT JOIN agg a USING (b) ORDER BY s.b
"""
_UNIQUE_TAIL = """, uniq AS (
  SELECT date_trunc($3, v.bucket) AS b, count(DISTINCT v.value) AS uniques
  FROM bounds, usage_rollup_values v
  WHERE v.project_id = $1 AND v.metric_id = $2 AND v.width = $7 AND v.bucket >= bounds.lo AND v.bucket < bounds.hi
  GROUP BY 1
)
SELECT s.b AS bucket, coalesce(a.events, 0) AS events, coalesce(a.units_sum, 0) AS units_sum,
       coalesce(a.units_max, 0) AS units_max, coalesce(u.uniques, 0) AS uniques
FROM series s LEFT JOIN agg a USING (b) LEFT JOIN uniq u USING (b) ORDER BY s.b
"""
SUMMARY = _SERIES + _PLAIN_TAIL
SUMMARY_UNIQUE = _SERIES + _UNIQUE_TAIL


def zone(name: str | None) -> zoneinfo.ZoneInfo:
    tz = (name or "UTC").strip() or "UTC"
    try:
        return zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise BadInput(f"unknown time zone {tz!r}: use an IANA name like Europe/Berlin", field="timezone") from None


def _aware(t: dt.datetime, field: str) -> dt.datetime:
    if t.tzinfo is None or t.utcoffset() is None:
        raise BadInput(f"{field} needs a UTC offset (e.g. 2026-01-01T00:00:00Z)", field=field)
    return t


async def usage_summary(
    db: Database,
    metric: MetricRecord,
    *,
    start: dt.datetime,
    end: dt.datetime,
    granularity: Granularity | str,
    timezone: str | None = None,
) -> list[UsagePoint]:
    try:
        g = Granularity(granularity)
    except ValueError:
        raise BadInput("granularity must be MINUTE, HOUR, DAY or MONTH", field="granularity") from None
    tz = zone(timezone)
    start, end = _aware(start, "from"), _aware(end, "to")
    if end <= start:
        raise BadInput("to must be after from", field="to")
    if (end - start).total_seconds() / _MIN_SECONDS[g] > MAX_POINTS:
        raise BadInput(
            f"at most {MAX_POINTS} points per summary: shorten the range or widen the granularity", field="to"
        )
    width = 1 if g is Granularity.MINUTE or start < _WIDE_SINCE else 15
    sql = SUMMARY_UNIQUE if metric.aggregation is Aggregation.UNIQUE else SUMMARY
    async with db.raw(project_id=metric.project_id) as conn:
        try:
            await conn.execute("SELECT set_config('TimeZone', $1, true)", tz.key)
        except asyncpg.InvalidParameterValueError:
            raise BadInput(f"the database does not know the time zone {tz.key!r}", field="timezone") from None
        rows = await conn.fetch(sql, metric.project_id, metric.id, _FIELD[g], start, end, _STEP[g], width)
    return [_point(metric.aggregation, r, tz) for r in rows]


def _point(agg: Aggregation, r: asyncpg.Record, tz: zoneinfo.ZoneInfo) -> UsagePoint:
    events = int(r["events"])
    if agg is Aggregation.SUM:
        units = r["units_sum"]
    elif agg is Aggregation.COUNT:
        units = decimal.Decimal(events)
    elif agg is Aggregation.MAX:
        units = r["units_max"]
    else:
        units = decimal.Decimal(int(r["uniques"]))
    return UsagePoint(bucket=r["bucket"].astimezone(tz), units=units, events=events)


async def monthly_total(db: Database, metric: MetricRecord, month_start: dt.datetime) -> tuple[decimal.Decimal, int]:
    """(units per the aggregation, events) for one UTC calendar month, from the 15-minute rollups.

    For quota checks: cheap (at most ~3,000 rows) and exact.
    """
    first = dt.datetime(month_start.year, month_start.month, 1, tzinfo=dt.UTC)
    nxt = dt.datetime(first.year + (first.month == 12), first.month % 12 + 1, 1, tzinfo=dt.UTC)
    points = await usage_summary(db, metric, start=first, end=nxt, granularity=Granularity.MONTH, timezone="UTC")
    p = points[0]
    return p.units, p.events


__all__ = ["MAX_POINTS", "monthly_total", "usage_summary"]
