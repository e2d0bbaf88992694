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
   moved in this same transaction);
4. posts every debit of the batch through the ledger's `post_many` on this transaction (one lock
   statement, one write), so debits, runs and cursors commit together or not at all;
5. records runs (`(rule_id, scheduled_at)` is unique: a second run of a period cannot exist), moves
   each rule's cursor, starts or ends grace periods, pauses rules whose grace ran out.

The debit of a period uses the idempotency key `rule:<rule id>:<period>`; with the unique run key
and the row lock, a period is charged once whatever crashes, retries or races.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import decimal
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from ledgerx import ids
from ledgerx.domain import topics
from ledgerx.domain.actor import Actor
from ledgerx.domain.billing import rules as r
from ledgerx.domain.errors import AppError, Conflict, InsufficientFunds
from ledgerx.domain.ledger.posting import RETRYABLE, post_many
from ledgerx.domain.ledger.types import MAX_BIGINT, Kind, Leg, Posting, SystemAccount
from ledgerx.domain.usage import carry, periods
from ledgerx.domain.usage.types import MetricRecord
from ledgerx.ids import uuid7

log = logging.getLogger("ledgerx.billing")

UTC = dt.UTC


def wall() -> dt.datetime:
    """Real time, for run timings (never the injected clock)."""
    return dt.datetime.now(UTC)


@dataclasses.dataclass(slots=True)
class _Attempt:
    rule: r.Rule
    run: r.Run
    new: bool
    failure: str | None = None  # refused before posting (e.g. an amount out of range)


@dataclasses.dataclass(slots=True)
class PassResult:
    runs: list[r.Run] = dataclasses.field(default_factory=list)  # new and retried runs, in order
    events: list[tuple[str, dict[str, Any]]] = dataclasses.field(default_factory=list)
    paused: list[r.Rule] = dataclasses.field(default_factory=list)

    def extend(self, other: PassResult) -> None:
        self.runs.extend(other.runs)
        self.events.extend(other.events)
        self.paused.extend(other.paused)


# -- SQL ------------------------------------------------------------------------------------------

CLAIM = f"""
SELECT {r.RULE_COLS} FROM billing_rules
WHERE status = 'ACTIVE' AND NOT test_mode AND due_at <= $1
ORDER BY due_at, wallet_id
LIMIT $2
FOR UPDATE SKIP LOCKED
"""  # noqa: S608

UNPAID = f"""
SELECT {r.RUN_COLS} FROM billing_runs
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
_RUN_FIELDS = [f for f in r.RUN_COLS.replace(" ", "").split(",") if f not in ("created_at", "updated_at")]
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
AUDIT = """
INSERT INTO audit_log (id, project_id, actor_type, actor_id, action, target_type, target_id, before, after, request_id)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::text[],
                     $8::jsonb[], $9::jsonb[], $10::text[])
"""


# -- the engine -----------------------------------------------------------------------------------


def _new_run(rule: r.Rule, at: dt.datetime, end: dt.datetime, trigger: str, status: str, now: dt.datetime) -> r.Run:
    run_id = uuid7()
    t = wall()
    return r.Run(
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
        idempotency_key=r.idempotency_key(rule.id, at),
        transaction_id=None,
        error=None,
        attempts=0,
        next_retry_at=None,
        first_attempt_at=None if status == "SKIPPED" else now,
        last_attempt_at=None if status == "SKIPPED" else now,
        started_at=t,
        finished_at=t,
    )


def _plan_instants(
    rule: r.Rule, now: dt.datetime, trigger: str, cap: int, *, early: bool, catch_up: str
) -> list[r.Run]:
    """New runs for the rule's instants up to `now` (or, `early`, its next instant run now), in
    order; moves the rule's cursor past them. `catch_up` LATEST skips all but the newest."""
    if early:
        at = rule.next_run_at
        assert at is not None
        assert at > now
        end = max(rule.period_start, now)
        run = _new_run(rule, at, end, trigger, "PENDING", now)
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
        runs.append(_new_run(rule, at, at, trigger, "SKIPPED" if skip else "PENDING", now))
        rule.period_start = rule.scheduled_through = at
    rule.next_run_at = following
    return runs


async def _price(svc: r.BillingService, conn: asyncpg.Connection, attempts: list[_Attempt]) -> carry.Carries:
    """Amounts of new runs; usage runs lock and move their wallet+metric carry (saved by the
    caller once the debits are posted: carry.py's lock order)."""
    usage = [a for a in attempts if a.new and a.rule.mode in r.USAGE_MODES and a.rule.metric_id is not None]
    units: list[decimal.Decimal] = []
    infos: dict[uuid.UUID, MetricRecord] = {}
    carries = carry.Carries({})
    if usage:
        infos = await periods.metrics_by_id(conn, [a.rule.metric_id for a in usage if a.rule.metric_id is not None])
        windows = []
        for a in usage:
            assert a.rule.metric_id is not None
            windows.append(
                periods.Window(a.rule.project_id, infos[a.rule.metric_id], a.run.period_start, a.run.period_end)
            )
        units = await periods.units(conn, windows)
        carries = await carry.Carries.lock(
            conn, [(a.rule.wallet_id, a.rule.metric_id, a.rule.project_id) for a in usage if a.rule.metric_id]
        )
    u = iter(units)
    is_usage = {id(a) for a in usage}
    for a in attempts:
        if not a.new:
            continue
        base = a.rule.amount if a.rule.mode in r.AMOUNT_MODES else None
        amount = base or 0
        if id(a) in is_usage:
            assert a.rule.metric_id is not None
            info = infos[a.rule.metric_id]
            unit_price = a.rule.unit_price if a.rule.unit_price is not None else info.unit_price
            before = carries.remainder(a.rule.wallet_id, info.id)
            n = next(u)
            a.run.units, a.run.unit_price = n, unit_price
            try:
                priced = carries.price(a.rule.wallet_id, info.id, n, unit_price)
            except AppError as exc:
                a.failure = exc.message
                continue
            amount += priced.amount
            a.run.remainder_before, a.run.remainder_after = before, priced.remainder
        a.run.base_amount = base
        a.run.amount = amount
    return carries


def _posting(a: _Attempt, actor: Actor) -> Posting:
    run, rule = a.run, a.rule
    period = r.period_label(run.scheduled_at)
    return Posting(
        project_id=rule.project_id,
        wallet_id=rule.wallet_id,
        kind=Kind.BILLING,
        currency=rule.currency,
        legs=(Leg(-run.amount, wallet_id=rule.wallet_id), Leg(run.amount, system=SystemAccount.BILLING_REVENUE)),
        idempotency_key=run.idempotency_key,
        actor=actor,
        reference=run.public_id,
        reason=f"billing rule {rule.name}"[:500],
        metadata={
            "ruleId": rule.public_id,
            "runId": run.public_id,
            "scheduledAt": run.scheduled_at.isoformat(),
            "periodStart": run.period_start.isoformat(),
            "periodEnd": run.period_end.isoformat(),
            **({"units": format(run.units, "f")} if run.units is not None else {}),
        },
        action="billing.charge",
        # What makes a retry "the same request": the rule, the period, the wallet and the amount.
        fingerprint={
            "rule": rule.public_id,
            "period": period,
            "wallet": str(rule.wallet_id),
            "amount": run.amount,
            "currency": rule.currency,
        },
    )


def _event(kind: str, rule: r.Rule, run: r.Run | None = None, **extra: Any) -> tuple[str, dict[str, Any]]:
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


async def process(
    svc: r.BillingService,
    conn: asyncpg.Connection,
    rules: Sequence[r.Rule],
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
    policy = svc.policy
    result = PassResult()
    if not rules:
        return result
    started = wall()

    # 1. Unpaid runs of rules that have any (grace_until is set exactly while some exist).
    unpaid: dict[uuid.UUID, list[r.Run]] = {}
    with_unpaid = [x.id for x in rules if x.grace_until is not None or x.retry_at is not None or force_retry]
    if with_unpaid:
        for row in await conn.fetch(UNPAID, with_unpaid):
            unpaid.setdefault(row["rule_id"], []).append(r.Run.of(row))

    # 2. What to attempt, per rule in time order: due retries first (older periods), then instants.
    attempts: list[_Attempt] = []
    skipped: list[r.Run] = []
    for rule in rules:
        grace_over = rule.grace_until is not None and rule.grace_until <= now
        for run in unpaid.get(rule.id, ()):
            if force_retry or grace_over or (run.next_retry_at is not None and run.next_retry_at <= now):
                attempts.append(_Attempt(rule, run, new=False))
        # A test clock's sweep passes through every instant: nothing was missed, nothing is skipped.
        catch_up = "ALL" if sweep else rule.catch_up
        for run in _plan_instants(rule, now, trigger, policy.max_instants_per_pass, early=early, catch_up=catch_up):
            if sweep and run.status != "SKIPPED":
                run.first_attempt_at = run.last_attempt_at = run.scheduled_at
            if run.status == "SKIPPED":
                skipped.append(run)
            else:
                attempts.append(_Attempt(rule, run, new=True))
    # Across rules, in time order: who pays first matters when a wallet runs short (stable sort:
    # a rule's own attempts keep their order).
    attempts.sort(key=lambda a: a.run.scheduled_at if a.new else (a.run.next_retry_at or now))

    # 3. Amounts of new runs (usage and carries read under lock).
    carries = await _price(svc, conn, attempts)

    # 4. Post every debit of the batch in one `post_many` on this transaction.
    to_post: list[_Attempt] = []
    for a in attempts:
        a.run.attempts += 1
        a.run.last_attempt_at = a.run.scheduled_at if sweep and a.new else now
        if a.failure is None and a.run.amount > MAX_BIGINT:
            a.failure = "the amount is out of range"
        if a.failure is not None:
            a.run.status, a.run.error = "FAILED", a.failure
            continue
        if a.run.amount == 0:
            a.run.status = "SUCCEEDED"
            continue
        to_post.append(a)
    if to_post:
        posted = await post_many(svc.ledger, [_posting(a, actor) for a in to_post], conn=conn)
        result.events.extend(posted.events)
        for a, outcome in zip(to_post, posted.outcomes, strict=True):
            run = a.run
            if isinstance(outcome, InsufficientFunds):
                run.status, run.error = "INSUFFICIENT_FUNDS", outcome.message
                n = run.attempts - 1
                run.next_retry_at = (
                    now + dt.timedelta(seconds=policy.retry_delays[n]) if n < len(policy.retry_delays) else None
                )
            elif isinstance(outcome, AppError):
                run.status, run.error, run.next_retry_at = "FAILED", outcome.message, None
            else:
                run.status, run.error, run.next_retry_at = "SUCCEEDED", None, None
                run.transaction_id = outcome.transaction.id
    finished = wall()
    for a in attempts:
        if a.run.status == "SUCCEEDED":
            a.run.error, a.run.next_retry_at = None, None
        a.run.started_at, a.run.finished_at = started, finished
        # Successful runs are announced by the ledger (transaction_posted, kind BILLING).
        if a.run.status in ("FAILED", "INSUFFICIENT_FUNDS"):
            result.events.append(_event("billing.run_failed", a.rule, a.run))

    # 5. Grace periods, pauses, due times.
    new_unpaid: dict[uuid.UUID, list[r.Run]] = {}
    for a in attempts:
        if a.new and a.run.status == "INSUFFICIENT_FUNDS":
            new_unpaid.setdefault(a.rule.id, []).append(a.run)
    audits: list[tuple[r.Rule, dict[str, Any], dict[str, Any]]] = []
    for rule in rules:
        still = [x for x in unpaid.get(rule.id, ()) if x.status == "INSUFFICIENT_FUNDS"]
        still += new_unpaid.get(rule.id, [])
        if still:
            if rule.grace_until is None:
                rule.grace_until = now + dt.timedelta(seconds=policy.grace_period)
            retries = [x.next_retry_at for x in still if x.next_retry_at is not None]
            rule.retry_at = min(retries) if retries else None
            if rule.grace_until <= now:
                before = {"status": rule.status}
                rule.status, rule.paused_reason = "PAUSED", "GRACE_EXPIRED"
                result.paused.append(rule)
                owed = sum(x.amount for x in still)
                result.events.append(
                    _event(
                        "billing.rule_paused",
                        rule,
                        reason="GRACE_EXPIRED",
                        unpaidRuns=[x.public_id for x in still],
                        owed=str(owed),
                    )
                )
                audits.append((rule, before, {"status": "PAUSED", "pausedReason": "GRACE_EXPIRED", "owed": str(owed)}))
        else:
            rule.grace_until, rule.retry_at = None, None
        rule.due_at = r.due_of(rule)

    # 6. Writes: new runs, retried runs, carries, rules, audit rows.
    new_runs = [a.run for a in attempts if a.new] + skipped
    new_runs.sort(key=lambda x: (x.rule_id, x.scheduled_at))
    if new_runs:
        cols = [[getattr(x, f) for x in new_runs] for f in _RUN_FIELDS]
        await conn.execute(INSERT_RUNS, *cols)
    retried = [a.run for a in attempts if not a.new]
    if retried:
        await conn.execute(
            UPDATE_RUNS,
            [x.id for x in retried],
            [x.status for x in retried],
            [x.transaction_id for x in retried],
            [x.error for x in retried],
            [x.attempts for x in retried],
            [x.next_retry_at for x in retried],
            [x.last_attempt_at for x in retried],
            [x.started_at for x in retried],
            [x.finished_at for x in retried],
        )
    await carries.save(conn)
    await conn.execute(
        UPDATE_RULES,
        [x.id for x in rules],
        [x.period_start for x in rules],
        [x.scheduled_through for x in rules],
        [x.next_run_at for x in rules],
        [x.retry_at for x in rules],
        [x.grace_until for x in rules],
        [x.due_at for x in rules],
        [x.status for x in rules],
        [x.paused_reason for x in rules],
    )
    if audits:
        system = Actor.system()
        await conn.execute(
            AUDIT,
            [uuid7() for _ in audits],
            [x.project_id for x, _, _ in audits],
            [system.type] * len(audits),
            [None] * len(audits),
            ["billing_rule.pause"] * len(audits),
            ["billing_rule"] * len(audits),
            [x.public_id for x, _, _ in audits],
            [json.dumps(b) for _, b, _ in audits],
            [json.dumps(a) for _, _, a in audits],
            [None] * len(audits),
        )
    touched = [a.run for a in attempts] + skipped
    touched.sort(key=lambda x: (x.scheduled_at, x.rule_id))
    result.runs = touched
    return result


# -- entry points ---------------------------------------------------------------------------------

BatchHook = Callable[[list[r.Rule]], Awaitable[None]]


@dataclasses.dataclass(slots=True)
class BatchStats:
    rules: int = 0
    runs: int = 0
    failed_rules: int = 0


async def run_due_batch(
    svc: r.BillingService,
    now: dt.datetime,
    *,
    limit: int,
    hook: BatchHook | None = None,
    claimed: list[uuid.UUID] | None = None,
) -> BatchStats:
    """Claim up to `limit` due rules of live projects (SKIP LOCKED: concurrent schedulers take
    disjoint rules) and execute them in one transaction. `hook` runs just before the commit
    (tests stop a scheduler there)."""
    async with r.system(svc.db) as (_, conn):
        rows = await conn.fetch(CLAIM, now, limit)
        if not rows:
            return BatchStats()
        rules = [r.Rule.of(row) for row in rows]
        if claimed is not None:
            claimed.extend(x.id for x in rules)
        result = await process(svc, conn, rules, now, "SCHEDULE")
        if hook is not None:
            await hook(rules)
    svc.ledger.publish(result.events)
    return BatchStats(rules=len(rules), runs=len(result.runs))


async def run_due(svc: r.BillingService, now: dt.datetime, *, limit: int, hook: BatchHook | None = None) -> BatchStats:
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
            await _backoff(svc, claimed[0], now, f"{type(exc).__name__}: {exc}"[:1000])
            stats.failed_rules += 1
            continue
        if one.rules == 0:
            break
        stats.rules += one.rules
        stats.runs += one.runs
    return stats


async def _backoff(svc: r.BillingService, rule_id: uuid.UUID, now: dt.datetime, error: str) -> None:
    async with r.system(svc.db) as (_, conn):
        await conn.execute(
            "UPDATE billing_rules SET failures = failures + 1, last_error = $2,"
            " due_at = $3::timestamptz + make_interval(secs => least(3600, 30 * power(2, least(failures, 10))))"
            " WHERE id = $1",
            rule_id,
            error,
            now,
        )


async def run_rule_now(svc: r.BillingService, actor: Actor, project_id: uuid.UUID, rule_id: uuid.UUID) -> r.Run:
    """`runBillingRule`: retry the rule's unpaid runs now if it has any; else run what is due;
    else run its next period now, early (the period ends now and the next one starts here).
    Audited; returns the last run touched."""
    from ledgerx.domain import audit

    async with r.tenant(svc.db, project_id) as (session, conn):
        rule = await r.lock_rule(conn, project_id, rule_id)
        r.conflict_if_paused(rule)
        _, now = await r.project_clock(conn, project_id, svc.now())
        overdue = any(t is not None and t <= now for t in (rule.next_run_at, rule.due_at))
        if rule.grace_until is not None:
            result = await process(svc, conn, [rule], now, "MANUAL", actor=actor, force_retry=True)
        elif overdue:
            result = await process(svc, conn, [rule], now, "MANUAL", actor=actor)
        else:
            result = await process(svc, conn, [rule], now, "MANUAL", actor=actor, early=True)
        if not result.runs:
            raise Conflict("nothing to run for this rule now", field="id")
        last = result.runs[-1]
        await audit.record(
            session,
            actor,
            "billing_rule.run",
            project_id=project_id,
            target_type="billing_rule",
            target_id=rule.public_id,
            after={
                "runs": [
                    {
                        "id": x.public_id,
                        "scheduledAt": x.scheduled_at.isoformat(),
                        "status": x.status,
                        "amount": str(x.amount),
                    }
                    for x in result.runs
                ]
            },
        )
    svc.ledger.publish(result.events)
    return last
