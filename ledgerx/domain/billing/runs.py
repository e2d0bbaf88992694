"""Recording runs: the new runs a rule's instants call for, its unpaid runs, and the batch writes
of runs and rule cursors (one statement each, whatever the batch size).

`(rule_id, scheduled_at)` is unique: a second run of a period cannot exist.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from ledgerx import ids
from ledgerx.domain import topics
from ledgerx.domain.billing.records import RUN_COLS, Rule, Run, idempotency_key
from ledgerx.ids import uuid7

UTC = dt.UTC


def wall() -> dt.datetime:
    """Real time, for run timings (never the injected clock)."""
    return dt.datetime.now(UTC)


UNPAID = f"""
SELECT {RUN_COLS} FROM billing_runs
WHERE rule_id = ANY($1::uuid[]) AND status = 'INSUFFICIENT_FUNDS'
ORDER BY rule_id, scheduled_at
"""  # noqa: S608

_RUN_TYPES = (
    "uuid",
    "uuid",
    "uuid",
    "uuid",
    "timestamptz",
    "timestamptz",
    "timestamptz",
    "text",
    "text",
    "int8",
    "int8",
    "numeric",
    "numeric",
    "numeric",
    "numeric",
    "text",
    "uuid",
    "text",
    "int4",
    "timestamptz",
    "timestamptz",
    "timestamptz",
    "timestamptz",
    "timestamptz",
)
_RUN_FIELDS = [f for f in RUN_COLS.replace(" ", "").split(",") if f not in ("created_at", "updated_at")]
assert len(_RUN_FIELDS) == len(_RUN_TYPES)
INSERT_RUNS = (
    f"INSERT INTO billing_runs ({', '.join(_RUN_FIELDS)}) SELECT * FROM unnest("  # noqa: S608
    + ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_RUN_TYPES))
    + ")"
)
UPDATE_RUNS = """
UPDATE billing_runs b SET status = v.status, transaction_id = v.txn, error = v.error, attempts = v.attempts,
  next_retry_at = v.next_retry_at, last_attempt_at = v.last_attempt_at, started_at = v.started_at,
  finished_at = v.finished_at, updated_at = now()
FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::int4[], $6::timestamptz[], $7::timestamptz[],
            $8::timestamptz[], $9::timestamptz[])
  AS v(id, status, txn, error, attempts, next_retry_at, last_attempt_at, started_at, finished_at)
WHERE b.id = v.id
"""
UPDATE_RULES = """
UPDATE billing_rules b SET period_start = v.period_start, scheduled_through = v.through, next_run_at = v.next_run_at,
  retry_at = v.retry_at, grace_until = v.grace_until, due_at = v.due_at, status = v.status,
  paused_reason = v.paused_reason, failures = 0, last_error = NULL, updated_at = now()
FROM unnest($1::uuid[], $2::timestamptz[], $3::timestamptz[], $4::timestamptz[], $5::timestamptz[],
            $6::timestamptz[], $7::timestamptz[], $8::text[], $9::text[])
  AS v(id, period_start, through, next_run_at, retry_at, grace_until, due_at, status, paused_reason)
WHERE b.id = v.id
"""


def new_run(rule: Rule, at: dt.datetime, end: dt.datetime, trigger: str, status: str, now: dt.datetime) -> Run:
    run_id = uuid7()
    t = wall()
    return Run(
        id=run_id,
        project_id=rule.project_id,
        rule_id=rule.id,
        wallet_id=rule.wallet_id,
        scheduled_at=at,
        period_start=min(rule.period_start, end),
        period_end=end,
        status=status,
        trigger=trigger,
        amount=0,
        base_amount=None,
        units=None,
        unit_price=None,
        remainder_before=None,
        remainder_after=None,
        idempotency_key=idempotency_key(rule.id, at),
        transaction_id=None,
        error=None,
        attempts=0,
        next_retry_at=None,
        first_attempt_at=None if status == "SKIPPED" else now,
        last_attempt_at=None if status == "SKIPPED" else now,
        started_at=t,
        finished_at=t,
    )


def plan_instants(rule: Rule, now: dt.datetime, trigger: str, cap: int, *, early: bool, catch_up: str) -> list[Run]:
    """New runs for the rule's instants up to `now` (or, `early`, its next instant run now), in
    order; moves the rule's cursor past them. `catch_up` LATEST skips all but the newest."""
    if early:
        at = rule.next_run_at
        assert at is not None
        assert at > now
        end = max(rule.period_start, now)
        run = new_run(rule, at, end, trigger, "PENDING", now)
        rule.period_start, rule.scheduled_through = end, at
        rule.next_run_at = next(rule.instants_after())
        return [run]
    due: list[dt.datetime] = []
    following: dt.datetime | None = None
    for at in rule.instants_after():
        if at > now or len(due) == cap:
            following = at
            break
        due.append(at)
    if not due:
        rule.next_run_at = following
        return []
    more = following is not None and following <= now  # the cap cut a long catch-up short
    runs = []
    for i, at in enumerate(due):
        skip = catch_up == "LATEST" and (more or i < len(due) - 1)
        runs.append(new_run(rule, at, at, trigger, "SKIPPED" if skip else "PENDING", now))
        rule.period_start = rule.scheduled_through = at
    rule.next_run_at = following
    return runs


def event(kind: str, rule: Rule, run: Run | None = None, **extra: Any) -> tuple[str, dict[str, Any]]:
    payload: dict[str, Any] = {"type": kind, "ruleId": rule.public_id, "walletId": ids.encode("wallet", rule.wallet_id)}
    if run is not None:
        payload.update(
            runId=run.public_id,
            status=run.status,
            scheduledAt=run.scheduled_at.isoformat(),
            amount=str(run.amount),
            attempts=run.attempts,
            error=run.error,
            nextRetryAt=run.next_retry_at.isoformat() if run.next_retry_at else None,
        )
    payload.update(extra)
    return topics.project_billing(rule.project_id), payload


async def unpaid(conn: asyncpg.Connection, rule_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[Run]]:
    """The rules' unpaid runs (INSUFFICIENT_FUNDS), oldest period first."""
    found: dict[uuid.UUID, list[Run]] = {}
    if rule_ids:
        for row in await conn.fetch(UNPAID, rule_ids):
            found.setdefault(row["rule_id"], []).append(Run.of(row))
    return found


# The unnest() arrays of UPDATE_RUNS and UPDATE_RULES, in their parameter order.
_RETRY_FIELDS = (
    "id",
    "status",
    "transaction_id",
    "error",
    "attempts",
    "next_retry_at",
    "last_attempt_at",
    "started_at",
    "finished_at",
)
_CURSOR_FIELDS = (
    "id",
    "period_start",
    "scheduled_through",
    "next_run_at",
    "retry_at",
    "grace_until",
    "due_at",
    "status",
    "paused_reason",
)


def _columns(items: Sequence[Any], fields: Sequence[str]) -> list[list[Any]]:
    """One array per field across `items`: the arguments of an unnest() batch statement."""
    return [[getattr(x, f) for x in items] for f in fields]


async def record(conn: asyncpg.Connection, new_runs: Sequence[Run], retried: Sequence[Run]) -> None:
    """Insert the new runs (SKIPPED ones too) and update the retried ones."""
    if new_runs:
        await conn.execute(INSERT_RUNS, *_columns(new_runs, _RUN_FIELDS))
    if retried:
        await conn.execute(UPDATE_RUNS, *_columns(retried, _RETRY_FIELDS))


async def move_cursors(conn: asyncpg.Connection, rules: Sequence[Rule]) -> None:
    """Write each rule's cursor, due times and status as the pass left them."""
    await conn.execute(UPDATE_RULES, *_columns(rules, _CURSOR_FIELDS))
