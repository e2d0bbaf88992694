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
import uuid
from typing import Any

from sqlalchemy import text

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

LIVE_USAGE = text(
    f"""
    SELECT m.key, m.name, coalesce(u.units, 0) AS units, coalesce(u.events, 0) AS events
    FROM usage_metrics m
    LEFT JOIN LATERAL (
      SELECT sum(e.units) AS units, count(*) AS events FROM usage_events e
      WHERE e.project_id = m.project_id AND e.metric_id = m.id
        AND e.occurred_at > :since AND e.occurred_at <= :now
    ) u ON true
    WHERE m.project_id = :p
    ORDER BY m.key
    LIMIT {MAX_METRICS}
    """  # noqa: S608 (constants only)
)

LIVE_TODAY = text(
    f"""
    SELECT coalesce(sum({ADDED_EXPR}), 0)::bigint AS added, coalesce(sum({SPENT_EXPR}), 0)::bigint AS spent
    FROM ledger_transactions t
    LEFT JOIN ledger_transactions o ON o.id = t.refund_of
    WHERE t.project_id = :p AND t.id >= :idfloor AND t.currency = :c
      AND t.created_at >= :day AND t.created_at <= :now
    """  # noqa: S608 (constants only)
)

LIVE_WALLETS = text(
    f"""
    SELECT id, name, balance FROM wallets WHERE project_id = :p AND currency = :c
    ORDER BY balance DESC, id LIMIT {MAX_WALLETS}
    """  # noqa: S608 (constants only)
)
LIVE_WALLET_TOTALS = text(
    "SELECT count(*) AS n, coalesce(sum(balance), 0)::bigint AS total"
    " FROM wallets WHERE project_id = :p AND currency = :c"
)

LIVE_ACTORS = text(
    """
    SELECT count(DISTINCT a.actor_id) FILTER (WHERE a.actor_type = 'user') AS users,
           count(DISTINCT a.actor_id) FILTER (WHERE a.actor_type = 'api_key') AS api_keys
    FROM (
      SELECT actor_type, actor_id FROM ledger_transactions
        WHERE project_id = :p AND id >= :actfloor AND created_at > :since AND created_at <= :now
      UNION
      SELECT actor_type, actor_id FROM usage_charges
        WHERE project_id = :p AND id >= :actfloor AND created_at > :since AND created_at <= :now
      UNION
      SELECT actor_type, actor_id FROM audit_log
        WHERE project_id = :p AND id >= :actfloor AND at > :since AND at <= :now
      UNION
      SELECT 'api_key', id FROM api_keys
        WHERE project_id = :p AND last_used_at > :since AND last_used_at <= :now
    ) a
    WHERE a.actor_id IS NOT NULL
    """
)


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
    params: dict[str, Any] = {
        "p": project_id,
        "c": currency,
        "now": now,
        "since": now - USAGE_WINDOW,
        "day": day,
        "idfloor": id_floor(day),
    }
    async with db.transaction(project_id=project_id) as s:
        usage_rows = (await s.execute(LIVE_USAGE, params)).all()
        today = (await s.execute(LIVE_TODAY, params)).one()
        wallet_rows = (await s.execute(LIVE_WALLETS, params)).all()
        totals = (await s.execute(LIVE_WALLET_TOTALS, params)).one()
        actors = (
            await s.execute(
                LIVE_ACTORS,
                {"p": project_id, "now": now, "since": active_since, "actfloor": id_floor(active_since)},
            )
        ).one()
    return ProjectLive(
        project_id=project_id,
        currency=currency,
        at=now,
        usage=tuple(MetricRate(r.key, r.name, decimal.Decimal(r.units), int(r.events)) for r in usage_rows),
        spend_today=int(today.spent),
        credits_added_today=int(today.added),
        total_balance=int(totals.total),
        wallet_count=int(totals.n),
        wallets=tuple(WalletBalance(r.id, r.name, int(r.balance)) for r in wallet_rows),
        active_users=int(actors.users),
        active_api_keys=int(actors.api_keys),
    )
