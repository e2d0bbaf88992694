"""SQL of the usage hot paths (raw asyncpg on the app's pool), partitions, and the metric cache.

Ingestion is one statement per batch: the events' idempotency keys, the events, and the rollups
(sum/count/max per 1- and 15-minute bucket, distinct values for UNIQUE metrics) are written by
data-modifying CTEs, so the rollups can never disagree with the events and a batch costs one
round trip however many events it carries. Row-level security applies: every transaction is
opened by `Database.raw` or `Database.transaction` (ledgerx.db), scoped to its project.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import os
import time
import uuid
from collections.abc import Iterable
from typing import Any

import asyncpg

from ledgerx.db.engine import Database
from ledgerx.domain.usage import price_models
from ledgerx.domain.usage.types import Aggregation, MetricRecord

METRIC_COLS = "id, project_id, key, name, aggregation, unique_property, unit_price, created_at, pricing"

# Buckets are aligned on this origin: whole UTC minutes and quarter hours.
ORIGIN = "TIMESTAMPTZ '2000-01-01 00:00:00+00'"
EPOCH = "TIMESTAMPTZ '1970-01-01 00:00:00+00'"
WIDTHS = "(VALUES (1::smallint, interval '1 minute'), (15::smallint, interval '15 minutes')) AS w(width, step)"

# Each session writes its own rollup shard (see migration 0004): concurrent batches of one metric
# do not queue on one bucket row.
SHARD = "(pg_backend_pid() % 8)::smallint"
_ROLLUPS = f"""
mins AS MATERIALIZED (
  SELECT metric_id, date_bin(interval '1 minute', occurred_at, {ORIGIN}) AS bucket,
         count(*) AS n, sum(units) AS s, max(units) AS m
  FROM kept GROUP BY 1, 2
), roll AS (
  INSERT INTO usage_rollups AS r (project_id, metric_id, width, bucket, shard, events, units_sum, units_max)
  SELECT $1, g.metric_id, g.width, g.bucket, {SHARD}, g.n, g.s, g.m FROM (
    SELECT metric_id, 1::smallint AS width, bucket, n, s, m FROM mins
    UNION ALL
    SELECT metric_id, 15::smallint, date_bin(interval '15 minutes', bucket, {ORIGIN}), sum(n), sum(s), max(m)
    FROM mins GROUP BY 1, 3
  ) g
  ORDER BY g.metric_id, g.width, g.bucket
  ON CONFLICT (project_id, metric_id, width, bucket, shard) DO UPDATE
    SET events = r.events + excluded.events,
        units_sum = r.units_sum + excluded.units_sum,
        units_max = greatest(r.units_max, excluded.units_max)
)"""  # noqa: S608 (constants only)
_VALUES = f"""
vals AS (
  INSERT INTO usage_rollup_values (project_id, metric_id, width, bucket, value, shard)
  SELECT DISTINCT $1::uuid, k.metric_id, w.width, date_bin(w.step, k.occurred_at, {ORIGIN}), k.uvalue, {SHARD}
  FROM kept k CROSS JOIN {WIDTHS}
  WHERE k.uvalue IS NOT NULL
  ORDER BY 2, 3, 4, 5
  ON CONFLICT DO NOTHING
)"""  # noqa: S608 (constants only)


@functools.cache
def ingest_sql(*, one_metric: bool, extras: bool, mode: str) -> str:
    """The ingestion statement: event keys, events and rollups written by one statement.

    Parameters: $1 project; per event, as one delimited text each (split by PostgreSQL, much
    cheaper than asyncpg encoding lists element by element): $2 ids (hex, comma-separated), $3 keys
    (separated by U+001F, which a printable key never contains), $4 occurred_at (microseconds since
    the epoch), $5 units (decimal text); $6 the metric id (`one_metric`) or a uuid[] with one per
    event; with `extras`, arrays of $7 properties, $8 UNIQUE values, $9 wallets. Events are in key
    order (sorted by the caller), so concurrent batches take the key and rollup locks in one global
    order and never deadlock.

    Modes:
    - "dedupe": keys already stored are skipped (ON CONFLICT DO NOTHING); only new events are
      stored and rolled up. Returns the number of new events. (There is no plain-INSERT mode: a
      repeated key must not be a database error, which PostgreSQL logs with the statement.)
    - "single": "dedupe" for one event; returns its id and receipt time (no row for a duplicate).
    """
    cols = [
        "string_to_array($2, ',')::uuid[]",
        "string_to_array($3, E'\\x1f')",
        "string_to_array($4, ',')::int8[]",
        "string_to_array($5, ',')::numeric[]",
    ]
    names = ["id", "key", "micros", "units"]
    if not one_metric:
        cols.append("$6::uuid[]")
        names.append("metric_id")
    if extras:
        cols += ["$7::jsonb[]", "$8::text[]", "$9::uuid[]"]
        names += ["properties", "uvalue", "wallet_id"]
    metric = "$6::uuid" if one_metric else "t.metric_id"
    extra_cols = (
        "t.properties, t.uvalue, t.wallet_id"
        if extras
        else "NULL::jsonb AS properties, NULL::text AS uvalue, NULL::uuid AS wallet_id"
    )
    # Order of work: PostgreSQL runs the CTE the main query reads first (the keys), then the other
    # data-modifying CTEs in reverse order of appearance: events, UNIQUE values, rollups last. So
    # every mode takes key locks, then value and rollup rows (never a cycle), and the rollup rows,
    # the ones concurrent batches share, are held only from their update to the commit.
    assert mode in ("dedupe", "single"), mode
    keys = """fresh AS (
  INSERT INTO usage_event_keys (project_id, idempotency_key, event_id, occurred_at)
  SELECT $1, key, id, occurred_at FROM input
  ON CONFLICT DO NOTHING
  RETURNING event_id
), kept AS MATERIALIZED (
  SELECT * FROM input WHERE id IN (SELECT event_id FROM fresh)
)"""
    tail = "SELECT event_id, now() AS received_at FROM fresh" if mode == "single" else "SELECT count(*) FROM fresh"
    sql = f"""
WITH input AS MATERIALIZED (
  SELECT t.id, t.key, {metric} AS metric_id, {EPOCH} + t.micros * interval '1 microsecond' AS occurred_at,
         t.units,
         {extra_cols}
  FROM unnest({", ".join(cols)}) AS t({", ".join(names)})
), {keys}, {_ROLLUPS},{(_VALUES + ",") if extras else ""} ev AS (
  INSERT INTO usage_events (id, project_id, metric_id, occurred_at, units, idempotency_key, wallet_id, properties)
  SELECT id, $1, metric_id, occurred_at, units, key, wallet_id, properties FROM kept
)
"""  # noqa: S608 (constants and generated placeholders only)
    return sql + tail


EVENT_BY_KEY = """
SELECT e.id, e.project_id, e.metric_id, m.key AS metric_key, e.units, e.idempotency_key, e.occurred_at,
       e.received_at, e.wallet_id, e.properties::text AS properties
FROM usage_event_keys k
JOIN usage_events e ON e.id = k.event_id AND e.occurred_at = k.occurred_at
JOIN usage_metrics m ON m.id = e.metric_id
WHERE k.project_id = $1 AND k.idempotency_key = $2
"""


_VARIANT = bytes(0x80 | (b & 0x3F) for b in range(256))
_SEQ_HI = bytes(0x70 | ((i >> 8) & 0x0F) for i in range(1 << 16))
_SEQ_LO = bytes(i & 0xFF for i in range(1 << 16))


def event_ids(n: int) -> str:
    """n UUIDv7 for one batch as comma-separated hex: the batch's millisecond, a 12-bit counter
    and 62 random bits each, built with a handful of bytes operations (`ledgerx.ids.uuid7` costs
    ~3 us each; bulk ingestion makes thousands per request)."""
    assert 0 < n <= 1 << 16
    buf = bytearray(os.urandom(16 * n))
    ms = (time.time_ns() // 1_000_000).to_bytes(6, "big")
    for k in range(6):
        buf[k::16] = ms[k : k + 1] * n
    buf[6::16] = _SEQ_HI[:n]
    buf[7::16] = _SEQ_LO[:n]
    buf[8::16] = bytes(buf[8::16]).translate(_VARIANT)
    h = buf.hex()
    return ",".join([h[j : j + 32] for j in range(0, 32 * n, 32)])


def metric_from_row(r: Any) -> MetricRecord:
    return MetricRecord(
        id=r["id"],
        project_id=r["project_id"],
        key=r["key"],
        name=r["name"],
        aggregation=Aggregation(r["aggregation"]),
        unique_property=r["unique_property"],
        unit_price=r["unit_price"],
        created_at=r["created_at"],
        pricing=price_models.stored(r["pricing"], r["unit_price"]),
    )


# -- the metric cache ----------------------------------------------------------------------------
# A metric's id, key and aggregation never change once defined (no delete), so found ones are
# cached for the life of the process; unknown keys are always asked again (they may be defined at
# any moment). Name and prices may change (`updateMetric`): what reads them for an answer reads
# the row (metrics.read_metric), and charges price by the version in effect (price_versions.py),
# never by a cached record.

_METRICS: dict[uuid.UUID, dict[str, MetricRecord]] = {}
_METRICS_MAX = 100_000
_EMPTY: dict[str, MetricRecord] = {}


def remember_metric(m: MetricRecord) -> None:
    if len(_METRICS) >= _METRICS_MAX:
        _METRICS.clear()
    _METRICS.setdefault(m.project_id, {})[m.key] = m


def known_metrics(project_id: uuid.UUID) -> dict[str, MetricRecord]:
    """The project's metrics this process has seen (a read-only view for validation)."""
    return _METRICS.get(project_id, _EMPTY)


async def metrics_by_key(db: Database, project_id: uuid.UUID, keys: Iterable[str]) -> dict[str, MetricRecord]:
    found: dict[str, MetricRecord] = {}
    missing: list[str] = []
    known = known_metrics(project_id)
    for k in keys:
        m = known.get(k)
        if m is not None:
            found[k] = m
        else:
            missing.append(k)
    if missing:
        async with db.raw(project_id=project_id) as conn:
            rows = await conn.fetch(
                f"SELECT {METRIC_COLS} FROM usage_metrics WHERE project_id = $1 AND key = ANY($2::text[])",  # noqa: S608
                project_id,
                missing,
            )
        for r in rows:
            m = metric_from_row(r)
            remember_metric(m)
            found[m.key] = m
    return found


# -- partitions ------------------------------------------------------------------------------------
# Monthly partitions are created ahead by the migration and `maintain`; an event in a month with no
# partition yet (a new month, a late event) makes the ingestion path create it first, in its own
# short transaction (creating a partition locks the parent table briefly). Months known to exist
# are remembered per database.

_MONTHS: set[tuple[str, dt.date]] = set()
_MONTHS_LOCK = asyncio.Lock()


def month_of(t: dt.datetime) -> dt.date:
    u = t.astimezone(dt.UTC)
    return dt.date(u.year, u.month, 1)


def _months(first: dt.date, last: dt.date) -> list[dt.date]:
    out = []
    y, m = first.year, first.month
    while (y, m) <= (last.year, last.month):
        out.append(dt.date(y, m, 1))
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def _db_key(db: Database) -> str:
    return db.engine.url.render_as_string(hide_password=True)


async def ensure_partitions(db: Database, earliest: dt.datetime, latest: dt.datetime) -> None:
    key = _db_key(db)
    needed = [m for m in _months(month_of(earliest), month_of(latest)) if (key, m) not in _MONTHS]
    if not needed:
        return
    async with _MONTHS_LOCK:
        needed = [m for m in needed if (key, m) not in _MONTHS]
        if not needed:
            return
        first = dt.datetime(needed[0].year, needed[0].month, 1, tzinfo=dt.UTC)
        last = dt.datetime(needed[-1].year, needed[-1].month, 1, tzinfo=dt.UTC)
        await db.fetchrow("SELECT ledgerx_usage_ensure_partitions($1, $2)", first, last)
        _MONTHS.update((key, m) for m in needed)


def forget_partitions(db: Database) -> None:
    """After a 'no partition for this row' error (a partition detached under us): ask again."""
    key = _db_key(db)
    for entry in [e for e in _MONTHS if e[0] == key]:
        _MONTHS.discard(entry)


def is_missing_partition(exc: BaseException) -> bool:
    return isinstance(exc, asyncpg.CheckViolationError) and "no partition of relation" in str(exc)
