"""A metric's usage over periods: the exact units in any [start, end) windows, many at once.

Billing rules price usage per period (`billing/charges.py`); the periods end anywhere, not on
bucket boundaries, so each window is read from the whole 15- and 1-minute rollup buckets inside
it plus the raw events at its edges. One statement per aggregation present, however many windows
(a scheduler batch prices hundreds of periods at once).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from ledgerx.domain.usage.store import METRIC_COLS, metric_from_row
from ledgerx.domain.usage.types import MetricRecord

# Metrics by id (they never change once defined: cached for the life of the process).
_BY_ID: dict[uuid.UUID, MetricRecord] = {}
_BY_ID_MAX = 100_000


async def metrics_by_id(conn: asyncpg.Connection, metric_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, MetricRecord]:
    """Metrics by id, on the caller's transaction (RLS decides which it may see)."""
    out: dict[uuid.UUID, MetricRecord] = {}
    missing = []
    for m in set(metric_ids):
        info = _BY_ID.get(m)
        if info is None:
            missing.append(m)
        else:
            out[m] = info
    if missing:
        rows = await conn.fetch(
            f"SELECT {METRIC_COLS} FROM usage_metrics WHERE id = ANY($1::uuid[])",  # noqa: S608
            missing,
        )
        for r in rows:
            info = metric_from_row(r)
            if len(_BY_ID) > _BY_ID_MAX:
                _BY_ID.clear()
            _BY_ID[info.id] = info
            out[info.id] = info
    return out


async def metric_by_key(
    conn: asyncpg.Connection, project_id: uuid.UUID, key: str, *, lock: bool = False
) -> MetricRecord | None:
    """The project's metric `key` as stored now, on the caller's transaction (`lock`: its row held
    to the end of it); None when it is not defined."""
    row = await conn.fetchrow(
        f"SELECT {METRIC_COLS} FROM usage_metrics WHERE project_id = $1 AND key = $2"  # noqa: S608
        + (" FOR UPDATE" if lock else ""),
        project_id,
        key,
    )
    return metric_from_row(row) if row is not None else None


@dataclasses.dataclass(frozen=True, slots=True)
class Window:
    project_id: uuid.UUID
    metric: MetricRecord
    start: dt.datetime
    end: dt.datetime


_MINUTE = dt.timedelta(minutes=1)
_QUARTER = dt.timedelta(minutes=15)
_ORIGIN = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)  # the rollups' bucket origin (store.ORIGIN)


def _floor(t: dt.datetime, step: dt.timedelta) -> dt.datetime:
    return t - ((t - _ORIGIN) % step)


def _ceil(t: dt.datetime, step: dt.timedelta) -> dt.datetime:
    f = _floor(t, step)
    return f if f == t else f + step


def _split(start: dt.datetime, end: dt.datetime) -> tuple[dt.datetime, ...]:
    """Cut [start, end) into raw edges [s, s1) + [e1, e), whole minutes [s1, s15) + [e15, e1)
    and whole quarter hours [s15, e15) (the usage rollups' 1- and 15-minute buckets)."""
    s1, e1 = _ceil(start, _MINUTE), _floor(end, _MINUTE)
    if s1 >= e1:
        return start, end, end, end, end, end  # no whole minute: all raw
    s15, e15 = _ceil(s1, _QUARTER), _floor(e1, _QUARTER)
    if s15 >= e15:
        s15 = e15 = s1
    return start, end, s1, e1, s15, e15


_WINDOWS = """
WITH w AS (
  SELECT * FROM unnest($1::int[], $2::uuid[], $3::uuid[], $4::timestamptz[], $5::timestamptz[],
                       $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::text[])
    AS w(i, project_id, metric_id, s, e, s1, e1, s15, e15, prop)
)
SELECT w.i, {expr} AS units FROM w
"""
_ROLL = (
    "(SELECT {agg} FROM usage_rollups r WHERE r.project_id = w.project_id AND r.metric_id = w.metric_id"
    " AND ((r.width = 15 AND r.bucket >= w.s15 AND r.bucket < w.e15)"
    " OR (r.width = 1 AND ((r.bucket >= w.s1 AND r.bucket < w.s15) OR (r.bucket >= w.e15 AND r.bucket < w.e1)))))"
)
_RAW = (
    "(SELECT {agg} FROM usage_events u WHERE u.project_id = w.project_id AND u.metric_id = w.metric_id"
    " AND ((u.occurred_at >= w.s AND u.occurred_at < w.s1) OR (u.occurred_at >= w.e1 AND u.occurred_at < w.e)))"
)
_UNIQUE = """(SELECT count(DISTINCT v) FROM (
  SELECT r.value AS v FROM usage_rollup_values r WHERE r.project_id = w.project_id AND r.metric_id = w.metric_id
    AND ((r.width = 15 AND r.bucket >= w.s15 AND r.bucket < w.e15)
      OR (r.width = 1 AND ((r.bucket >= w.s1 AND r.bucket < w.s15) OR (r.bucket >= w.e15 AND r.bucket < w.e1))))
  UNION ALL
  SELECT (u.properties -> w.prop)::text FROM usage_events u WHERE u.project_id = w.project_id
    AND u.metric_id = w.metric_id AND u.properties ? w.prop
    AND ((u.occurred_at >= w.s AND u.occurred_at < w.s1) OR (u.occurred_at >= w.e1 AND u.occurred_at < w.e))
) x)"""
_UNITS_SQL = {
    "SUM": _WINDOWS.format(
        expr=f"coalesce({_ROLL.format(agg='sum(r.units_sum)')}, 0) + coalesce({_RAW.format(agg='sum(u.units)')}, 0)"
    ),
    "COUNT": _WINDOWS.format(
        expr=f"coalesce({_ROLL.format(agg='sum(r.events)')}, 0) + coalesce({_RAW.format(agg='count(*)')}, 0)"
    ),
    "MAX": _WINDOWS.format(
        expr=f"coalesce(greatest({_ROLL.format(agg='max(r.units_max)')}, {_RAW.format(agg='max(u.units)')}), 0)"
    ),
    "UNIQUE": _WINDOWS.format(expr=_UNIQUE),
}


async def units(conn: asyncpg.Connection, windows: Sequence[Window]) -> list[decimal.Decimal]:
    """The metric's usage in each window [start, end), per its aggregation: whole 15-minute and
    1-minute rollup buckets plus raw events at the edges (exact for any boundaries). One query
    per aggregation present, however many windows."""
    out = [decimal.Decimal(0)] * len(windows)
    by_agg: dict[str, list[int]] = {}
    for i, w in enumerate(windows):
        if w.end > w.start:
            by_agg.setdefault(w.metric.aggregation, []).append(i)
    for agg, idx in by_agg.items():
        cols: list[list[Any]] = [[] for _ in range(10)]
        for i in idx:
            w = windows[i]
            parts = _split(w.start, w.end)
            for col, v in zip(cols, (i, w.project_id, w.metric.id, *parts, w.metric.unique_property), strict=True):
                col.append(v)
        for r in await conn.fetch(_UNITS_SQL[agg], *cols):
            out[r["i"]] = decimal.Decimal(r["units"])
    return out
