"""A billing rule's life: create, update, pause, resume, and run now (`runBillingRule`).

Every function here runs in one database transaction and writes an audit row for what it
changes. The rows are `records.py`'s, what a caller may ask is `validation.py`'s; execution of
due periods is `runner.py`'s; test clocks are `clocks.py`'s; previews are `preview.py`'s.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import asyncpg

from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.billing import clocks, runner, store
from ledgerx.domain.billing.records import RULE_COLS, Rule, Run, conflict_if_paused, due_of
from ledgerx.domain.billing.service import BillingService
from ledgerx.domain.billing.validation import RuleFields, Spec, default_start, first_instant, validate
from ledgerx.domain.errors import BadInput, Conflict
from ledgerx.domain.usage import periods
from ledgerx.ids import uuid7

_INSERT_RULE = f"""
INSERT INTO billing_rules (id, project_id, wallet_id, name, mode, currency, amount, metric_id, metric_key, unit_price,
  weekdays, month_days, cron, timezone, time_of_day, start_at, catch_up, status, test_mode, period_start,
  next_run_at, due_at, created_by, scheduled_through)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, 'ACTIVE', $18, $19, $20, $20, $21,
  $22)
RETURNING {RULE_COLS}
"""  # noqa: S608


def _terms(spec: Spec, metric_id: uuid.UUID | None, start: dt.datetime) -> tuple[object, ...]:
    """The rule's terms, amount through catch_up, in the order _INSERT_RULE and _UPDATE_RULE both
    take them."""
    weekdays, month_days = list(spec.weekdays), list(spec.month_days)
    return (
        *(spec.amount, metric_id, spec.metric_key, spec.unit_price, weekdays, month_days),
        *(spec.cron, spec.timezone, spec.time_of_day, start, spec.catch_up),
    )


async def _resolve_metric(conn: asyncpg.Connection, project_id: uuid.UUID, key: str) -> uuid.UUID:
    metric = await periods.metric_by_key(conn, project_id, key)
    if metric is None:
        raise BadInput(f"no metric {key!r} in this project; define it first", field="metricKey")
    return metric.id


async def create_rule(
    svc: BillingService,
    actor: Actor,
    *,
    project_id: uuid.UUID,
    wallet_id: uuid.UUID,
    currency: str,
    fields: RuleFields,
) -> Rule:
    async with store.tenant(svc.db, project_id) as conn:
        return await create_in(
            conn, svc, actor, project_id=project_id, wallet_id=wallet_id, currency=currency, fields=fields
        )


async def create_in(
    conn: asyncpg.Connection,
    svc: BillingService,
    actor: Actor,
    *,
    project_id: uuid.UUID,
    wallet_id: uuid.UUID,
    currency: str,
    fields: RuleFields,
) -> Rule:
    """`create_rule` inside the caller's transaction (a draft preview rolls it back)."""
    spec = validate(fields)
    test_mode, now = await clocks.project_clock(conn, project_id, svc.now())
    metric_id = await _resolve_metric(conn, project_id, spec.metric_key) if spec.metric_key else None
    start = spec.start_at or default_start(spec, now)
    schedule = spec.schedule(start)
    # Nothing is owed for instants before the rule existed (or before its start).
    through = max(now, start - dt.timedelta(microseconds=1))
    first = first_instant(schedule, through, field="cron" if spec.cron else "startAt")
    row = await conn.fetchrow(
        _INSERT_RULE,
        uuid7(),
        project_id,
        wallet_id,
        spec.name,
        spec.mode,
        currency,
        *_terms(spec, metric_id, start),
        test_mode,
        max(start, now),
        first,
        actor.id if actor.type == "user" else None,
        through,
    )
    rule = Rule.of(row)
    await audit.record(
        conn,
        actor,
        "billing_rule.create",
        project_id=project_id,
        target_type="billing_rule",
        target_id=rule.public_id,
        after=rule.audit_json(),
    )
    return rule


_UPDATE_RULE = f"""
UPDATE billing_rules SET name = $2, mode = $3, amount = $4, metric_id = $5, metric_key = $6, unit_price = $7,
  weekdays = $8, month_days = $9, cron = $10, timezone = $11, time_of_day = $12, start_at = $13, catch_up = $14,
  next_run_at = $15, due_at = $16, scheduled_through = $17, version = version + 1, updated_at = now()
WHERE id = $1
RETURNING {RULE_COLS}
"""  # noqa: S608


async def update_rule(
    svc: BillingService, actor: Actor, project_id: uuid.UUID, rule_id: uuid.UUID, fields: RuleFields
) -> Rule:
    """Change a rule. Periods already run stay as they are; a changed schedule applies from the
    first of its instants after now (never to the past); the mode cannot change."""
    async with store.tenant(svc.db, project_id) as conn:
        return await update_in(conn, svc, actor, project_id, rule_id, fields)


async def update_in(
    conn: asyncpg.Connection,
    svc: BillingService,
    actor: Actor,
    project_id: uuid.UUID,
    rule_id: uuid.UUID,
    fields: RuleFields,
) -> Rule:
    """`update_rule` inside the caller's transaction (a draft preview rolls it back)."""
    rule = await store.lock_rule(conn, project_id, rule_id)
    if "mode" in fields.provided and fields.mode != rule.mode:
        # Pricing and the carried cursor mean different things per mode: keep it simple.
        raise BadInput("a rule's mode cannot change; create a new rule (and pause this one)", field="mode")
    spec = validate(fields, rule)
    _, now = await clocks.project_clock(conn, project_id, svc.now())
    before = rule.audit_json()
    metric_id = rule.metric_id
    if spec.metric_key != rule.metric_key:
        metric_id = await _resolve_metric(conn, project_id, spec.metric_key) if spec.metric_key else None
    start = spec.start_at or rule.start_at
    schedule = spec.schedule(start)
    through, next_run = rule.scheduled_through, rule.next_run_at
    if schedule != rule.schedule():
        through = max(now, rule.scheduled_through, start - dt.timedelta(microseconds=1))
        next_run = first_instant(schedule, through, field="cron" if spec.cron else "startAt")
    probe = dataclasses.replace(rule, next_run_at=next_run)
    row = await conn.fetchrow(
        _UPDATE_RULE,
        rule.id,
        spec.name,
        spec.mode,
        *_terms(spec, metric_id, start),
        next_run,
        due_of(probe),
        through,
    )
    updated = Rule.of(row)
    await audit.record(
        conn,
        actor,
        "billing_rule.update",
        project_id=project_id,
        target_type="billing_rule",
        target_id=updated.public_id,
        before=before,
        after=updated.audit_json(),
    )
    return updated


async def pause_rule(svc: BillingService, actor: Actor, project_id: uuid.UUID, rule_id: uuid.UUID) -> Rule:
    async with store.tenant(svc.db, project_id) as conn:
        rule = await store.lock_rule(conn, project_id, rule_id)
        if rule.status == "PAUSED":
            return rule  # idempotent: pausing a paused rule changes nothing
        row = await conn.fetchrow(
            f"UPDATE billing_rules SET status = 'PAUSED', paused_reason = 'MANUAL', version = version + 1,"  # noqa: S608
            f" updated_at = now() WHERE id = $1 RETURNING {RULE_COLS}",
            rule.id,
        )
        updated = Rule.of(row)
        await audit.record(
            conn,
            actor,
            "billing_rule.pause",
            project_id=project_id,
            target_type="billing_rule",
            target_id=updated.public_id,
            before={"status": rule.status},
            after={"status": updated.status, "pausedReason": "MANUAL"},
        )
    return updated


_RESUME = f"""
UPDATE billing_rules SET status = 'ACTIVE', paused_reason = NULL, next_run_at = $2, retry_at = $3, grace_until = NULL,
  due_at = least($2::timestamptz, $3::timestamptz), scheduled_through = $4, failures = 0, last_error = NULL,
  version = version + 1, updated_at = now()
WHERE id = $1
RETURNING {RULE_COLS}
"""  # noqa: S608


async def resume_rule(svc: BillingService, actor: Actor, project_id: uuid.UUID, rule_id: uuid.UUID) -> Rule:
    """Resume billing from now. Instants that fell while paused are not charged; the next period
    still starts where the last charged one ended (usage is never dropped). Unpaid runs are retried
    at once, and a new grace period starts if they fail again."""
    async with store.tenant(svc.db, project_id) as conn:
        rule = await store.lock_rule(conn, project_id, rule_id)
        if rule.status == "ACTIVE":
            return rule
        _, now = await clocks.project_clock(conn, project_id, svc.now())
        # Instants that fell while paused are not owed: the cursor moves past them.
        through = max(now, rule.scheduled_through)
        next_run = first_instant(rule.schedule(), through)
        unpaid = await conn.fetchval(
            "UPDATE billing_runs SET next_retry_at = $2, updated_at = now()"
            " WHERE rule_id = $1 AND status = 'INSUFFICIENT_FUNDS' RETURNING 1",
            rule.id,
            now,
        )
        retry_at = now if unpaid else None
        row = await conn.fetchrow(
            _RESUME,
            rule.id,
            next_run,
            retry_at,
            through,
        )
        updated = Rule.of(row)
        await audit.record(
            conn,
            actor,
            "billing_rule.resume",
            project_id=project_id,
            target_type="billing_rule",
            target_id=updated.public_id,
            before={"status": rule.status, "pausedReason": rule.paused_reason},
            after={"status": updated.status, "nextRunAt": next_run.isoformat()},
        )
    return updated


async def run_rule_now(svc: BillingService, actor: Actor, project_id: uuid.UUID, rule_id: uuid.UUID) -> Run:
    """`runBillingRule`: retry the rule's unpaid runs now if it has any; else run what is due;
    else run its next period now, early (the period ends now and the next one starts here).
    Audited; returns the last run touched."""
    async with store.tenant(svc.db, project_id) as conn:
        rule = await store.lock_rule(conn, project_id, rule_id)
        conflict_if_paused(rule)
        _, now = await clocks.project_clock(conn, project_id, svc.now())
        overdue = any(t is not None and t <= now for t in (rule.next_run_at, rule.due_at))
        if rule.grace_until is not None:
            result = await runner.process(svc, conn, [rule], now, "MANUAL", actor=actor, force_retry=True)
        elif overdue:
            result = await runner.process(svc, conn, [rule], now, "MANUAL", actor=actor)
        else:
            result = await runner.process(svc, conn, [rule], now, "MANUAL", actor=actor, early=True)
        if not result.runs:
            raise Conflict("nothing to run for this rule now", field="id")
        last = result.runs[-1]
        await audit.record(
            conn,
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
