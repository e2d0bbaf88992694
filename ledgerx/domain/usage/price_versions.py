"""A metric's prices over time: a period is priced by the version in effect at its start.

`updateMetric` adds a version from the instant of the change (the project's clock, so a test
clock's project sees its own time), and a period is priced by the last version that took effect at
or before the period's start. A change therefore applies from the next period, and the running
period keeps the price it started with, whatever the period: a billing rule's (its own time zone),
or the calendar month (UTC) of per-event charges.

Per-event charges (`chargeUsage`, `recordUsage` with a wallet) price against the UTC calendar month
of the project's now: `for_events` reads that instant and the versions in one statement, inside the
charging transaction (after the carry lock, so a price changed while it waited is seen).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg

from ledgerx.domain.ledger.grants import PROJECT_NOW, project_now_sql
from ledgerx.domain.usage.price_models import Pricing
from ledgerx.domain.usage.quotas import month

# The project's now, the first instant of its UTC month, and per metric the version in effect then.
_FOR_EVENTS = f"""
WITH c AS (
  SELECT {project_now_sql("$2::timestamptz")} AS now FROM projects p
  LEFT JOIN billing_test_clocks c ON c.project_id = p.id WHERE p.id = $1
), m AS (
  SELECT c.now, date_trunc('month', c.now, 'UTC') AS month FROM c
)
SELECT m.now, m.month, q.metric_id, v.pricing
FROM m CROSS JOIN unnest($3::uuid[]) AS q(metric_id)
LEFT JOIN LATERAL (
  SELECT p.pricing FROM usage_metric_prices p
  WHERE p.metric_id = q.metric_id AND p.effective_from <= m.month
  ORDER BY p.effective_from DESC LIMIT 1
) v ON true
"""  # noqa: S608 (constants only)
_AT = """
SELECT q.i, v.pricing
FROM unnest($1::uuid[], $2::timestamptz[]) WITH ORDINALITY AS q(metric_id, at, i)
LEFT JOIN LATERAL (
  SELECT p.pricing FROM usage_metric_prices p
  WHERE p.metric_id = q.metric_id AND p.effective_from <= q.at
  ORDER BY p.effective_from DESC LIMIT 1
) v ON true
"""
_ADD = """
INSERT INTO usage_metric_prices (metric_id, effective_from, project_id, pricing)
VALUES ($1, coalesce($2, '-infinity'::timestamptz), $3, $4::jsonb)
ON CONFLICT (metric_id, effective_from) DO UPDATE SET pricing = excluded.pricing
"""


def _load(raw: Any) -> Pricing | None:
    if raw is None:
        return None
    return Pricing.from_json(json.loads(raw) if isinstance(raw, str) else raw)


async def project_now(conn: asyncpg.Connection, project_id: uuid.UUID) -> dt.datetime:
    """The project's now (its test clock in test mode, else the real time), on the caller's
    transaction (the ledger's one definition, grants.PROJECT_NOW)."""
    now: dt.datetime = await conn.fetchval(PROJECT_NOW, project_id, dt.datetime.now(dt.UTC))
    return now


async def for_events(
    conn: asyncpg.Connection, project_id: uuid.UUID, metric_ids: Iterable[uuid.UUID]
) -> tuple[dt.datetime, dict[uuid.UUID, Pricing]]:
    """(the first instant of the project's current UTC month, each metric's pricing in effect then)."""
    ids = sorted(set(metric_ids))
    rows = await conn.fetch(_FOR_EVENTS, project_id, dt.datetime.now(dt.UTC), ids)
    if not rows:
        return month(dt.datetime.now(dt.UTC)), {}
    start: dt.datetime = rows[0]["month"]
    out = {r["metric_id"]: p for r in rows if (p := _load(r["pricing"])) is not None}
    return start, out


async def at(conn: asyncpg.Connection, wanted: Sequence[tuple[uuid.UUID, dt.datetime]]) -> list[Pricing | None]:
    """The pricing of each (metric, instant): the version in effect then (None: the metric had none)."""
    if not wanted:
        return []
    rows = await conn.fetch(_AT, [m for m, _ in wanted], [t for _, t in wanted])
    out: list[Pricing | None] = [None] * len(wanted)
    for r in rows:
        out[r["i"] - 1] = _load(r["pricing"])
    return out


async def add(
    conn: asyncpg.Connection,
    project_id: uuid.UUID,
    metric_id: uuid.UUID,
    pricing: Pricing,
    effective_from: dt.datetime | None,
) -> None:
    """A version of the metric's pricing in effect from `effective_from` (None: from the beginning,
    a metric's first price; two changes at one instant: the last)."""
    await conn.execute(_ADD, metric_id, effective_from, project_id, json.dumps(pricing.to_json()))
