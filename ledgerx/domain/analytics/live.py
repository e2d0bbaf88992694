"""Live snapshots: what `liveMetrics` sends, read in one short transaction.

A snapshot is recomputed from the database (never accumulated from event payloads, which may be
lost: pub/sub is at-most-once), at most once per feed interval however many events arrive, so it is
always exact as of `at`. The reads are bounded by recent rows only:

- usage per metric over the last minute: `usage_events` in `(at - 60 s, at]` by `occurred_at`
  (index `(project_id, metric_id, occurred_at)`), every metric of the project listed;
- spend and credits added today (UTC midnight to `at`), with project_analytics' definitions; the
  scan is limited to today's transactions by their UUIDv7 ids (ids sort by creation time);
- balances: the project's wallets in the currency (the largest first), their count and total;
- active now: distinct users and API keys that acted on the project in the last five minutes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import uuid

from ledgerx.db.engine import Database
from ledgerx.domain.analytics.periods import day_start, utc
from ledgerx.domain.analytics.project import ADDED_EXPR, SPENT_EXPR

USAGE_WINDOW = dt.timedelta(seconds=60)
ACTIVE_WINDOW = dt.timedelta(minutes=5)
# A transaction's id is minted a moment before its created_at; this margin covers that (and
# batching) when ids bound a scan by time.
ID_MARGIN = dt.timedelta(hours=1)
MAX_WALLETS = 20
MAX_METRICS = 100

# Sums stay NUMERIC (as in project.py): a project's balances may total more than 2^63.
# One statement (one round trip, one snapshot of the database) for the whole message; positional
# parameters: $1 project, $2 currency, $3 now, $4 usage since, $5 day start, $6 id floor of the
# day, $7 active since, $8 id floor of the active window.
LIVE_SNAPSHOT = f"""
    WITH usage AS (
      SELECT m.key, m.name, coalesce(u.units, 0) AS units, coalesce(u.events, 0) AS events
      FROM usage_metrics m
      LEFT JOIN LATERAL (
        SELECT sum(e.units) AS units, count(*) AS events FROM usage_events e
        WHERE e.project_id = m.project_id AND e.metric_id = m.id
          AND e.occurred_at > $4 AND e.occurred_at <= $3
      ) u ON true
      WHERE m.project_id = $1
      ORDER BY m.key
      LIMIT {MAX_METRICS}
    ), today AS (
      SELECT coalesce(sum({ADDED_EXPR}), 0) AS added, coalesce(sum({SPENT_EXPR}), 0) AS spent
      FROM ledger_transactions t
      LEFT JOIN ledger_transactions o ON o.id = t.refund_of
      WHERE t.project_id = $1 AND t.id >= $6 AND t.currency = $2
        AND t.created_at >= $5 AND t.created_at <= $3
    ), top_wallets AS (
      SELECT id, name, balance FROM wallets WHERE project_id = $1 AND currency = $2
      ORDER BY balance DESC, id LIMIT {MAX_WALLETS}
    ), wallet_totals AS (
      SELECT count(*) AS n, coalesce(sum(balance), 0) AS total
      FROM wallets WHERE project_id = $1 AND currency = $2
    ), actors AS (
      SELECT count(DISTINCT a.actor_id) FILTER (WHERE a.actor_type = 'user') AS users,
             count(DISTINCT a.actor_id) FILTER (WHERE a.actor_type = 'api_key') AS api_keys
      FROM (
        SELECT actor_type, actor_id FROM ledger_transactions
          WHERE project_id = $1 AND id >= $8 AND created_at > $7 AND created_at <= $3
        UNION
        SELECT actor_type, actor_id FROM usage_charges
          WHERE project_id = $1 AND id >= $8 AND created_at > $7 AND created_at <= $3
        UNION
        SELECT actor_type, actor_id FROM audit_log
          WHERE project_id = $1 AND id >= $8 AND at > $7 AND at <= $3
        UNION
        SELECT 'api_key', id FROM api_keys
          WHERE project_id = $1 AND last_used_at > $7 AND last_used_at <= $3
      ) a
      WHERE a.actor_id IS NOT NULL
    )
    SELECT
      (SELECT coalesce(json_agg(json_build_object('k', key, 'n', name, 'u', units::text, 'e', events)
                                ORDER BY key), '[]'::json) FROM usage)::text AS usage,
      (SELECT coalesce(json_agg(json_build_object('id', id, 'n', name, 'b', balance)
                                ORDER BY balance DESC, id), '[]'::json) FROM top_wallets)::text AS wallets,
      today.added, today.spent, wallet_totals.n, wallet_totals.total, actors.users, actors.api_keys
    FROM today, wallet_totals, actors
    """  # noqa: S608 (constants only)


def uuid7_floor(ts: dt.datetime) -> uuid.UUID:
    """The smallest UUIDv7 minted at or after `ts` (its 48-bit millisecond prefix, the rest zero)."""
    ms = max(int(utc(ts).timestamp() * 1000), 0)
    return uuid.UUID(int=(ms << 80) | (0x7 << 76))


def id_floor(since: dt.datetime, *, wall_now: dt.datetime | None = None) -> uuid.UUID:
    """A lower bound for ids of rows whose `created_at` is at or after `since`, safe when the
    clock is injected: ids carry wall-clock time, so the bound never passes the wall clock."""
    wall = wall_now or dt.datetime.now(dt.UTC)
    return uuid7_floor(min(utc(since), wall) - ID_MARGIN)


@dataclasses.dataclass(frozen=True, slots=True)
class MetricRate:
    metric_key: str
    name: str
    units: decimal.Decimal
    events: int


@dataclasses.dataclass(frozen=True, slots=True)
class WalletBalance:
    wallet_id: uuid.UUID
    name: str
    balance: int


@dataclasses.dataclass(frozen=True, slots=True)
class ProjectLive:
    """One `liveMetrics` snapshot."""

    project_id: uuid.UUID
    currency: str
    at: dt.datetime
    usage: tuple[MetricRate, ...]
    spend_today: int
    credits_added_today: int
    total_balance: int
    wallet_count: int
    wallets: tuple[WalletBalance, ...]
    active_users: int
    active_api_keys: int

    def same_figures(self, other: object) -> bool:
        """Equal apart from `at` (an idle refresh that changed nothing is not sent)."""
        return isinstance(other, ProjectLive) and dataclasses.replace(other, at=self.at) == self


async def project_live(db: Database, project_id: uuid.UUID, currency: str, now: dt.datetime) -> ProjectLive:
    now = utc(now)
    day = day_start(now)
    active_since = now - ACTIVE_WINDOW
    # The raw asyncpg pool (one round trip for BEGIN and the tenant settings, a prepared
    # statement): a feed reads every interval while it fans out, and each round trip waits for a
    # turn of a busy event loop.
    async with db.raw(project_id=project_id) as conn:
        row = await conn.fetchrow(
            LIVE_SNAPSHOT,
            project_id,
            currency,
            now,
            now - USAGE_WINDOW,
            day,
            id_floor(day),
            active_since,
            id_floor(active_since),
        )
    assert row is not None  # aggregates over FROM today, wallet_totals, actors: always one row
    return ProjectLive(
        project_id=project_id,
        currency=currency,
        at=now,
        usage=tuple(MetricRate(u["k"], u["n"], decimal.Decimal(u["u"]), int(u["e"])) for u in json.loads(row["usage"])),
        spend_today=int(row["spent"]),
        credits_added_today=int(row["added"]),
        total_balance=int(row["total"]),
        wallet_count=int(row["n"]),
        wallets=tuple(WalletBalance(uuid.UUID(w["id"]), w["n"], int(w["b"])) for w in json.loads(row["wallets"])),
        active_users=int(row["users"]),
        active_api_keys=int(row["api_keys"]),
    )
