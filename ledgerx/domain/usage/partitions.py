"""Usage event partitions: monthly ranges of `occurred_at`, created ahead and retired after retention.

- `ensure_ahead` (app role, any instance, idempotent): creates this month's and the next `months`
  partitions through the SECURITY DEFINER function `ledgerx_usage_ensure_partitions`. Call it
  daily (scheduler); ingestion also creates a missing month on demand, so a missed run only costs
  the first batch of a month a brief lock.
- Retention (owner only, an operator task): `detach_sql` returns the statement that detaches every
  partition ending on or before the cutoff, renames it `usage_archive_pYYYYMM` and forgets the
  idempotency keys of its events; the operator then archives each table (`pg_dump -t`) and drops it.
  Rollups are kept: summaries of archived months still work. See docs/usage.md.
"""

from __future__ import annotations

import datetime as dt

from ledgerx.db.engine import Database
from ledgerx.domain.usage import store
from ledgerx.domain.usage.types import utcnow


async def ensure_ahead(db: Database, months: int = 3, *, now: dt.datetime | None = None) -> None:
    """Make sure the partitions from the current month through `months` ahead exist."""
    t = (now or utcnow()).astimezone(dt.UTC)
    last = dt.datetime(t.year + (t.month - 1 + months) // 12, (t.month - 1 + months) % 12 + 1, 1, tzinfo=dt.UTC)
    await store.ensure_partitions(db, t, last)


def retention_cutoff(retain_months: int, *, now: dt.datetime | None = None) -> dt.datetime:
    """The first instant of the month `retain_months` before the current one: partitions ending on
    or before it are old enough to detach (keep retain_months >= the late window, in months, + 1)."""
    t = (now or utcnow()).astimezone(dt.UTC)
    index = t.year * 12 + (t.month - 1) - retain_months
    return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)


def detach_sql(cutoff: dt.datetime) -> str:
    """The owner's statement for retention (returns the archive table names)."""
    stamp = cutoff.astimezone(dt.UTC).isoformat()  # digits, '-', ':', 'T', '+': safe to inline
    return f"SELECT * FROM ledgerx_usage_detach_partitions('{stamp}'::timestamptz)"  # noqa: S608
