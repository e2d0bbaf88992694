"""Test clocks: a test-mode project's own time, moved forward by `advanceTestClock`.

A project created with `testMode: true` bills on its clock, never on the real one (the live
scheduler skips its rules). The clock starts at the real time when it is first read. Advancing
it executes every due instant, retry and grace expiry of the project's rules up to the new time,
in time order (all rules together: a run on the 3rd sees the balance the run on the 2nd left),
in one database transaction: the clock moves and its runs are recorded together, or not at all.

While nothing is unpaid, a whole stretch of instants is one pass (postings sorted by time); from
a shortfall on, the clock steps from one due time to the next so retries and grace periods fall
exactly where they would in real time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

import asyncpg

from ledgerx import ids
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.billing import runner, store
from ledgerx.domain.billing.records import RULE_COLS, Rule
from ledgerx.domain.billing.service import BillingService
from ledgerx.domain.errors import BadInput, NotFound

_READ = "SELECT now FROM billing_test_clocks WHERE project_id = $1"
_READ_LOCKED = _READ + " FOR UPDATE"


@dataclasses.dataclass(frozen=True, slots=True)
class ClockState:
    project_id: uuid.UUID
    now: dt.datetime
    runs_executed: int = 0


async def read(
    conn: asyncpg.Connection, project_id: uuid.UUID, real_now: dt.datetime, *, lock: bool = False
) -> dt.datetime:
    """The project's clock (created at the real time on first use); `lock` holds its row."""
    await conn.execute(
        "INSERT INTO billing_test_clocks (project_id, now) VALUES ($1, $2) ON CONFLICT (project_id) DO NOTHING",
        project_id,
        real_now,
    )
    sql = _READ_LOCKED if lock else _READ
    now: dt.datetime = await conn.fetchval(sql, project_id)
    return now


async def project_clock(
    conn: asyncpg.Connection, project_id: uuid.UUID, real_now: dt.datetime
) -> tuple[bool, dt.datetime]:
    """(test_mode, the project's now): a test-mode project's own clock, else the real time."""
    row = await conn.fetchrow("SELECT test_mode FROM projects WHERE id = $1", project_id)
    if row is None:
        raise NotFound("project not found", field="projectId")
    if not row["test_mode"]:
        return False, real_now
    return True, await read(conn, project_id, real_now)


async def _test_project(conn: asyncpg.Connection, project_id: uuid.UUID) -> None:
    test_mode = await conn.fetchval("SELECT test_mode FROM projects WHERE id = $1", project_id)
    if test_mode is None:
        raise NotFound("project not found", field="projectId")
    if not test_mode:
        raise BadInput(
            "this is a live project: its rules run on the real clock. Test clocks exist only in projects created"
            " with testMode: true",
            field="projectId",
        )


async def get_clock(svc: BillingService, project_id: uuid.UUID) -> ClockState:
    async with store.tenant(svc.db, project_id) as conn:
        await _test_project(conn, project_id)
        return ClockState(project_id, await read(conn, project_id, svc.now()))


def _settled(rules: list[Rule]) -> bool:
    """No unpaid runs anywhere: what is due next depends on nothing but the schedules."""
    return all(x.retry_at is None and x.grace_until is None for x in rules)


async def _sweep(
    svc: BillingService, conn: asyncpg.Connection, rules: list[Rule], t: dt.datetime, to: dt.datetime
) -> runner.PassResult | None:
    """Every instant in [t, to] of every rule in one pass (postings in time order across rules),
    under a savepoint. When a wallet runs short, the steps from that instant on must interleave
    retries and grace periods: the pass is undone and redone up to just before the shortfall, and
    None tells the caller to step from there."""
    limit = to
    for _ in range(2):
        saved = [dataclasses.replace(x) for x in rules]
        try:
            async with conn.transaction():
                result = await runner.process(svc, conn, rules, limit, "TEST_CLOCK", sweep=True)
                short = [x.scheduled_at for x in result.runs if x.status == "INSUFFICIENT_FUNDS"]
                if short:
                    raise _Shortfall(min(short))
        except _Shortfall as exc:
            for x, before in zip(rules, saved, strict=True):
                for f in dataclasses.fields(Rule):
                    setattr(x, f.name, getattr(before, f.name))
            limit = exc.at - dt.timedelta(microseconds=1)
            if limit < t:
                return None
            continue
        return result
    return None


class _Shortfall(Exception):
    def __init__(self, at: dt.datetime) -> None:
        super().__init__(at.isoformat())
        self.at = at


async def advance(svc: BillingService, actor: Actor, project_id: uuid.UUID, to: dt.datetime) -> ClockState:
    """Move the project's clock to `to`, executing everything due on the way, in order."""
    if to.tzinfo is None:
        raise BadInput("to must be a date-time with a UTC offset", field="to")
    to = to.astimezone(dt.UTC)
    events: list[tuple[str, dict[str, Any]]] = []
    async with store.tenant(svc.db, project_id) as conn:
        await _test_project(conn, project_id)
        before = await read(conn, project_id, svc.now(), lock=True)
        if to < before:
            raise BadInput(f"a test clock only moves forward (it is at {before.isoformat()})", field="to")
        rows = await conn.fetch(
            f"SELECT {RULE_COLS} FROM billing_rules WHERE project_id = $1 AND status = 'ACTIVE'"  # noqa: S608
            " ORDER BY id FOR UPDATE",
            project_id,
        )
        rules = [Rule.of(row) for row in rows]
        executed = 0
        while True:
            active = [x for x in rules if x.status == "ACTIVE" and x.due_at is not None]
            if not active:
                break
            t = min(x.due_at for x in active if x.due_at is not None)
            if t > to:
                break
            result = await _sweep(svc, conn, active, t, to) if _settled(active) else None
            if result is None:
                # One step: everything due at the earliest due time (retries and grace included).
                batch = [x for x in active if x.due_at is not None and x.due_at <= t]
                marks = [(x.due_at, x.status) for x in batch]
                result = await runner.process(svc, conn, batch, t, "TEST_CLOCK")
                if marks == [(x.due_at, x.status) for x in batch]:
                    raise RuntimeError("test clock made no progress")  # a bug, never a tenant's input
            events.extend(result.events)
            executed += len(result.runs)
            if executed > svc.policy.test_clock_max_runs:
                raise BadInput(
                    f"this advance would execute more than {svc.policy.test_clock_max_runs} runs; advance in smaller"
                    " steps",
                    field="to",
                )
        await conn.execute(
            "UPDATE billing_test_clocks SET now = $2, updated_at = now() WHERE project_id = $1", project_id, to
        )
        await audit.record(
            conn,
            actor,
            "test_clock.advance",
            project_id=project_id,
            target_type="project",
            target_id=ids.encode("project", project_id),
            before={"now": before.isoformat()},
            after={"now": to.isoformat(), "runsExecuted": executed},
        )
    svc.ledger.publish(events)
    return ClockState(project_id, to, executed)
