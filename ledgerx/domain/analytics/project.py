"""Project analytics: credits added and spent, spend by metric, balance history, active callers.

Definitions (docs/analytics.md says the same in prose):

- Only transactions in the asked `currency` (default CREDITS) count; `[from, to)` is half-open.
- credits added: CREDIT transactions of every kind except TRANSFER, REFUND, DISPUTE and
  EXPIRATION (adjustments, purchases, subscription grants, promotions, …), minus the refunds of
  such transactions (a refund is counted when it happens, against its original's category).
- credits spent: DEBIT transactions of every kind except TRANSFER, REFUND, DISPUTE and
  EXPIRATION (usage, billing rules, debits), minus the refunds of such transactions.
- spend by metric: usage charges (gross, refunds not netted) per metric: units, charges, credits.
- balance history: the sum of the project's wallet balances in the currency at the end of each
  bucket (at `to` for the last one).
- active users / API keys: distinct users and keys that acted on the project in the range:
  posted a ledger transaction, made a usage charge, wrote an audit entry, or (keys) were used.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx.db.engine import Database
from ledgerx.domain.analytics.periods import Granularity, check_range, utc
from ledgerx.domain.errors import BadInput

# Sums are NUMERIC end to end (PostgreSQL's sum(bigint) is numeric; never cast back to bigint) and
# Python ints after: each amount and balance fits in 64 bits, but a sum over many of them (a
# project's balances, a day of credits) may not. BigInt output carries any size (schema/scalars.py).

# Kinds that move credits without adding or spending them (transfers stay inside the project;
# disputes hold and expirations void credits); refunds are netted against what they reverse.
NEUTRAL_KINDS = ("TRANSFER", "REFUND", "DISPUTE", "EXPIRATION")
_NEUTRAL = ", ".join(f"'{k}'" for k in NEUTRAL_KINDS)

# Per transaction `t` (with `o`, the transaction a refund reverses): its effect on added/spent.
ADDED_EXPR = f"""CASE
  WHEN t.type = 'CREDIT' AND t.kind NOT IN ({_NEUTRAL}) THEN t.amount
  WHEN t.type = 'DEBIT' AND t.kind = 'REFUND' AND o.type = 'CREDIT' AND o.kind NOT IN ({_NEUTRAL}) THEN -t.amount
  ELSE 0 END"""
SPENT_EXPR = f"""CASE
  WHEN t.type = 'DEBIT' AND t.kind NOT IN ({_NEUTRAL}) THEN t.amount
  WHEN t.type = 'CREDIT' AND t.kind = 'REFUND' AND o.type = 'DEBIT' AND o.kind NOT IN ({_NEUTRAL}) THEN -t.amount
  ELSE 0 END"""

CREDITS_SERIES = text(
    f"""
    SELECT date_trunc(CAST(:g AS text), t.created_at, 'UTC') AS bucket,
           coalesce(sum({ADDED_EXPR}), 0) AS added,
           coalesce(sum({SPENT_EXPR}), 0) AS spent
    FROM ledger_transactions t
    LEFT JOIN ledger_transactions o ON o.id = t.refund_of
    WHERE t.project_id = :p AND t.currency = :c AND t.created_at >= :from AND t.created_at < :to
    GROUP BY 1
    """  # noqa: S608 (constants only)
)

SPEND_BY_METRIC = text(
    """
    SELECT m.key, m.name, coalesce(sum(c.units), 0) AS units, count(*) AS charges,
           coalesce(sum(c.amount), 0) AS amount
    FROM usage_charges c
    JOIN usage_metrics m ON m.id = c.metric_id
    JOIN wallets w ON w.id = c.wallet_id
    WHERE c.project_id = :p AND w.currency = :c AND c.created_at >= :from AND c.created_at < :to
    GROUP BY m.key, m.name
    ORDER BY amount DESC, m.key
    """
)

# One statement, so the current balances and the entries agree (one snapshot): the balance at the
# end of bucket k is today's total minus every entry at or after that instant.
BALANCES = text(
    """
    WITH w AS (SELECT id, balance FROM wallets WHERE project_id = :p AND currency = :c),
    d AS (
      SELECT date_trunc(CAST(:g AS text), e.created_at, 'UTC') AS bucket, sum(e.amount) AS delta
      FROM ledger_entries e JOIN w ON w.id = e.wallet_id
      WHERE e.created_at >= :from AND e.created_at < :to
      GROUP BY 1
    )
    SELECT (SELECT coalesce(sum(balance), 0) FROM w) AS now_total,
           (SELECT coalesce(sum(e.amount), 0) FROM ledger_entries e JOIN w ON w.id = e.wallet_id
             WHERE e.created_at >= :to) AS after_to,
           coalesce((SELECT array_agg(bucket ORDER BY bucket) FROM d), '{}') AS buckets,
           coalesce((SELECT array_agg(delta ORDER BY bucket) FROM d), '{}') AS deltas
    """
)

# Who acted on the project in [from, to): users and API keys.
ACTORS_SOURCES = """
      SELECT actor_type, actor_id FROM ledger_transactions
        WHERE project_id = :p AND created_at >= :from AND created_at < :to
      UNION
      SELECT actor_type, actor_id FROM usage_charges
        WHERE project_id = :p AND created_at >= :from AND created_at < :to
      UNION
      SELECT actor_type, actor_id FROM audit_log
        WHERE project_id = :p AND at >= :from AND at < :to
      UNION
      SELECT 'api_key', id FROM api_keys
        WHERE project_id = :p AND last_used_at >= :from AND last_used_at < :to
"""
ACTIVE_ACTORS = text(
    f"""
    SELECT count(DISTINCT a.actor_id) FILTER (WHERE a.actor_type = 'user') AS users,
           count(DISTINCT a.actor_id) FILTER (WHERE a.actor_type = 'api_key') AS api_keys
    FROM ({ACTORS_SOURCES}) a
    WHERE a.actor_id IS NOT NULL
    """  # noqa: S608 (constants only)
)


@dataclasses.dataclass(frozen=True, slots=True)
class CreditsPoint:
    bucket: dt.datetime
    added: int
    spent: int


@dataclasses.dataclass(frozen=True, slots=True)
class MetricSpend:
    metric_key: str
    name: str
    units: decimal.Decimal
    charges: int
    amount: int


@dataclasses.dataclass(frozen=True, slots=True)
class BalancePoint:
    bucket: dt.datetime
    balance: int


@dataclasses.dataclass(frozen=True, slots=True)
class ProjectAnalytics:
    project_id: uuid.UUID
    from_: dt.datetime
    to: dt.datetime
    granularity: Granularity
    currency: str
    credits_added: int
    credits_spent: int
    series: tuple[CreditsPoint, ...]
    spend_by_metric: tuple[MetricSpend, ...]
    balance_history: tuple[BalancePoint, ...]
    active_users: int
    active_api_keys: int


def normalize_currency(currency: str) -> str:
    c = currency.strip().upper()
    if c != "CREDITS" and not (len(c) == 3 and c.isascii() and c.isalpha()):
        raise BadInput("currency must be CREDITS or an ISO 4217 code", field="currency")
    return c


async def project_analytics(
    db: Database,
    project_id: uuid.UUID,
    from_: dt.datetime,
    to: dt.datetime,
    granularity: Granularity = Granularity.DAY,
    currency: str = "CREDITS",
) -> ProjectAnalytics:
    start, end, buckets = check_range(from_, to, granularity)
    cur = normalize_currency(currency)
    params: dict[str, Any] = {"p": project_id, "c": cur, "from": start, "to": end, "g": granularity.sql}
    async with db.transaction(project_id=project_id) as s:
        series_rows = (await s.execute(CREDITS_SERIES, params)).all()
        metric_rows = (await s.execute(SPEND_BY_METRIC, params)).all()
        balance_row = (await s.execute(BALANCES, params)).one()
        actors = await _actors(s, {"p": project_id, "from": start, "to": end})

    by_bucket = {utc(r.bucket): (int(r.added), int(r.spent)) for r in series_rows}
    series = tuple(CreditsPoint(b, *by_bucket.get(b, (0, 0))) for b in buckets)
    history = _closing_balances(
        buckets,
        int(balance_row.now_total) - int(balance_row.after_to),
        {utc(b): int(d) for b, d in zip(balance_row.buckets, balance_row.deltas, strict=True)},
    )
    return ProjectAnalytics(
        project_id=project_id,
        from_=start,
        to=end,
        granularity=granularity,
        currency=cur,
        credits_added=sum(p.added for p in series),
        credits_spent=sum(p.spent for p in series),
        series=series,
        spend_by_metric=tuple(
            MetricSpend(r.key, r.name, decimal.Decimal(r.units), int(r.charges), int(r.amount)) for r in metric_rows
        ),
        balance_history=history,
        active_users=actors[0],
        active_api_keys=actors[1],
    )


def _closing_balances(
    buckets: Sequence[dt.datetime], balance_at_end: int, deltas: dict[dt.datetime, int]
) -> tuple[BalancePoint, ...]:
    """Walk back from the balance at `to`: each bucket closes at the next one's close minus the
    next one's net entries."""
    out: list[BalancePoint] = []
    running = balance_at_end
    for b in reversed(buckets):
        out.append(BalancePoint(b, running))
        running -= deltas.get(b, 0)
    out.reverse()
    return tuple(out)


async def _actors(s: AsyncSession, params: dict[str, Any]) -> tuple[int, int]:
    row = (await s.execute(ACTIVE_ACTORS, params)).one()
    return int(row.users), int(row.api_keys)
