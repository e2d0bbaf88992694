"""Executing rules: every due period charged exactly once, in order, in batches.

`process` takes rules whose rows the caller has locked (`FOR UPDATE`: the scheduler's claim with
SKIP LOCKED, a manual run, a test clock) and does, in one database transaction, everything due
for them at `now`:

1. retries of unpaid runs whose time came (and a last attempt of every unpaid run when the grace
   period ends);
2. each instant of the schedule not yet run, in order, for the period since the previous one
   (per the rule's catch-up policy: ALL runs every missed period, LATEST records all but the
   newest as SKIPPED);
3. prices new runs (flat amounts; usage from the rollups, with the carried remainder locked and
   moved in this same transaction: `charges.py`);
4. posts every debit of the batch through the ledger's `post_many` on this transaction (one lock
   statement, one write), so debits, runs and cursors commit together or not at all;
5. starts or ends grace periods, pauses rules whose grace ran out (`grace.py`);
6. records runs (`(rule_id, scheduled_at)` is unique: a second run of a period cannot exist) and
   moves each rule's cursor (`runs.py`);
7. writes the outbound webhook events of the attempts (`billing_run.succeeded` / `.failed`), so
   they exist exactly when the runs commit.

The debit of a period uses the idempotency key `rule:<rule id>:<period>`; with the unique run key
and the row lock, a period is charged once whatever crashes, retries or races.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from ledgerx import ids
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.billing import charges, grace, payloads, runs, store
from ledgerx.domain.billing.records import RULE_COLS, Rule, Run
from ledgerx.domain.billing.service import BillingService
from ledgerx.domain.ledger.posting import RETRYABLE
from ledgerx.domain.webhooks import outbox

log = logging.getLogger("ledgerx.billing")


@dataclasses.dataclass(slots=True)
class PassResult:
    runs: list[Run] = dataclasses.field(default_factory=list)  # new and retried runs, in order
    events: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    paused: list[Rule] = dataclasses.field(default_factory=list)

    def extend(self, other: PassResult) -> None:
        self.runs.extend(other.runs)
        self.events.extend(other.events)
        self.paused.extend(other.paused)


CLAIM = f"""
SELECT {RULE_COLS} FROM billing_rules
WHERE status = 'ACTIVE' AND NOT test_mode AND due_at <= $1
ORDER BY due_at, wallet_id
LIMIT $2
FOR UPDATE SKIP LOCKED
"""  # noqa: S608


async def process(
    svc: BillingService,
    conn: asyncpg.Connection,
    rules: Sequence[Rule],
    now: dt.datetime,
    trigger: str,
    *,
    actor: Actor | None = None,
    force_retry: bool = False,
    early: bool = False,
    sweep: bool = False,
) -> PassResult:
    """Do everything due at `now` for `rules` (rows locked by the caller, inside its transaction).

    `rules` are updated in place (cursor, due time, status). `force_retry` retries every unpaid run
    now (a manual run after a top-up); `early` runs each rule's next instant now (a manual run with
    nothing due); `sweep` (test clocks) records each new run as attempted at its own instant, the
    clock having passed through it."""
    actor = actor or Actor.system()
    result = PassResult()
    if not rules:
        return result
    started = runs.wall()

    # 1. Unpaid runs of rules that have any (grace_until is set exactly while some exist).
    with_unpaid = [x.id for x in rules if x.grace_until is not None or x.retry_at is not None or force_retry]
    unpaid = await runs.unpaid(conn, with_unpaid)

    # 2. What to attempt, per rule in time order: due retries first (older periods), then instants.
    attempts: list[charges.Attempt] = []
    skipped: list[Run] = []
    for rule in rules:
        for run in unpaid.get(rule.id, ()):
            if grace.retry_now(rule, run, now, force=force_retry):
                attempts.append(charges.Attempt(rule, run, new=False))
        # A test clock's sweep passes through every instant: nothing was missed, nothing is skipped.
        catch_up = "ALL" if sweep else rule.catch_up
        cap = svc.policy.max_instants_per_pass
        for run in runs.plan_instants(rule, now, trigger, cap, early=early, catch_up=catch_up):
            if sweep and run.status != "SKIPPED":
                run.first_attempt_at = run.last_attempt_at = run.scheduled_at
            if run.status == "SKIPPED":
                skipped.append(run)
            else:
                attempts.append(charges.Attempt(rule, run, new=True))
    # Across rules, in time order: who pays first matters when a wallet runs short (stable sort:
    # a rule's own attempts keep their order).
    attempts.sort(key=lambda a: a.run.scheduled_at if a.new else (a.run.next_retry_at or now))

    # 3. Amounts of new runs (usage and carries read under lock).
    carries = await charges.price(conn, attempts)

    # 4. Post every debit of the batch in one `post_many` on this transaction.
    result.events.extend(await charges.charge(svc, conn, attempts, actor, now, sweep=sweep))
    finished = runs.wall()
    for a in attempts:
        if a.run.status == "SUCCEEDED":
            a.run.error, a.run.next_retry_at = None, None
        a.run.started_at, a.run.finished_at = started, finished
        # Successful runs are announced by the ledger (transaction_posted, kind BILLING).
        if a.run.status in ("FAILED", "INSUFFICIENT_FUNDS"):
            result.events.append(runs.event("billing.run_failed", a.rule, a.run))

    # 5. Grace periods, pauses, due times.
    new_unpaid: dict[uuid.UUID, list[Run]] = {}
    for a in attempts:
        if a.new and a.run.status == "INSUFFICIENT_FUNDS":
            new_unpaid.setdefault(a.rule.id, []).append(a.run)
    paused, events, audits = grace.settle(svc.policy, rules, unpaid, new_unpaid, now)
    result.paused.extend(paused)
    result.events.extend(events)

    # 6. Writes: new runs, retried runs, carries, rules, audit rows.
    new_runs = [a.run for a in attempts if a.new] + skipped
    new_runs.sort(key=lambda x: (x.rule_id, x.scheduled_at))
    await runs.record(conn, new_runs, [a.run for a in attempts if not a.new])
    await carries.save(conn)
    await runs.move_cursors(conn, rules)
    await audit.record_many(conn, audits)
    await outbox.emit_many(conn, webhook_events(attempts))
    touched = [a.run for a in attempts] + skipped
    touched.sort(key=lambda x: (x.scheduled_at, x.rule_id))
    result.runs = touched
    return result


def webhook_events(attempts: Sequence[charges.Attempt]) -> outbox.Batch:
    """One event per attempt made (a new run or a retry): succeeded, or failed (FAILED and
    INSUFFICIENT_FUNDS; each failed attempt of a run is announced). SKIPPED runs made no attempt."""
    batch = outbox.Batch()
    for a in attempts:
        kind = "billing_run.succeeded" if a.run.status == "SUCCEEDED" else "billing_run.failed"
        batch.add(a.rule.project_id, kind, payloads.run(a.run))
    return batch


# -- entry points ---------------------------------------------------------------------------------

BatchHook = Callable[[list[Rule]], Awaitable[None]]


@dataclasses.dataclass(slots=True)
class BatchStats:
    rules: int = 0
    runs: int = 0
    failed_rules: int = 0


async def run_due_batch(
    svc: BillingService,
    now: dt.datetime,
    *,
    limit: int,
    hook: BatchHook | None = None,
    claimed: list[uuid.UUID] | None = None,
) -> BatchStats:
    """Claim up to `limit` due rules of live projects (SKIP LOCKED: concurrent schedulers take
    disjoint rules) and execute them in one transaction. `hook` runs just before the commit
    (tests stop a scheduler there)."""
    async with store.system(svc.db) as conn:
        rows = await conn.fetch(CLAIM, now, limit)
        if not rows:
            return BatchStats()
        rules = [Rule.of(row) for row in rows]
        if claimed is not None:
            claimed.extend(x.id for x in rules)
        result = await process(svc, conn, rules, now, "SCHEDULE")
        if hook is not None:
            await hook(rules)
    svc.ledger.publish(result.events)
    return BatchStats(rules=len(rules), runs=len(result.runs))


async def run_due(svc: BillingService, now: dt.datetime, *, limit: int, hook: BatchHook | None = None) -> BatchStats:
    """One batch, made robust: a race the database resolves on a rerun (a deadlock, a unique
    violation) is retried; any other failure isolates the rules one by one, and a rule that fails
    alone is put back with a backoff (its periods stay owed) so it cannot block the others."""
    for attempt in range(3):
        try:
            return await run_due_batch(svc, now, limit=limit, hook=hook)
        except RETRYABLE:
            if attempt == 2:
                break
            await asyncio.sleep(0.01 * (attempt + 1))
        except Exception:
            log.exception("billing batch failed; isolating its rules")
            break
    stats = BatchStats()
    for _ in range(limit):
        claimed: list[uuid.UUID] = []
        try:
            one = await run_due_batch(svc, now, limit=1, hook=hook, claimed=claimed)
        except Exception as exc:
            if not claimed:
                raise
            log.exception("billing rule %s failed", ids.encode("rule", claimed[0]))
            if await _backoff(svc, claimed[0], now, f"{type(exc).__name__}: {exc}"[:1000]):
                stats.failed_rules += 1
            continue
        if one.rules == 0:
            break
        stats.rules += one.rules
        stats.runs += one.runs
    return stats


async def _backoff(svc: BillingService, rule_id: uuid.UUID, now: dt.datetime, error: str) -> bool:
    """Put a failed rule back; False when another worker already did.

    The failed batch's rollback frees the rule's row lock before this runs, so a concurrent
    worker can claim the same rule, fail on it too and get here second: only a rule that is
    still due is backed off, so one failure counts once and the backoff is not doubled."""
    async with store.system(svc.db) as conn:
        status: str = await conn.execute(
            "UPDATE billing_rules SET failures = failures + 1, last_error = $2,"
            " due_at = $3::timestamptz + make_interval(secs => least(3600, 30 * power(2, least(failures, 10))))"
            " WHERE id = $1 AND due_at <= $3::timestamptz",
            rule_id,
            error,
            now,
        )
    return status != "UPDATE 0"
