"""Billing's rows: the transactions billing opens, and reading and locking rules and runs.

Every billing transaction is `Database.transaction` (db/: the one opener, RLS scoped to the
project, or the explicit system path for the scheduler and id lookups) seen as the asyncpg
connection under it (`driver`), so set-based SQL and the audit row share it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg

from ledgerx.db.engine import Database, driver
from ledgerx.domain.billing.records import RULE_COLS, RUN_COLS, Rule, Run
from ledgerx.domain.errors import NotFound


@contextlib.asynccontextmanager
async def tenant(db: Database, project_id: uuid.UUID) -> AsyncIterator[asyncpg.Connection]:
    """One transaction scoped to the project."""
    async with db.transaction(project_id=project_id) as session:
        yield await driver(session)


@contextlib.asynccontextmanager
async def system(db: Database) -> AsyncIterator[asyncpg.Connection]:
    """The scheduler's explicit cross-project path (it audits what it changes)."""
    async with db.transaction(system=True) as session:
        yield await driver(session)


async def rule_project(db: Database, rule_id: uuid.UUID) -> uuid.UUID | None:
    """Which project a rule belongs to (system scope: resolvers authorize against it next)."""
    async with system(db) as conn:
        found: uuid.UUID | None = await conn.fetchval("SELECT project_id FROM billing_rules WHERE id = $1", rule_id)
    return found


async def run_project(db: Database, run_id: uuid.UUID) -> uuid.UUID | None:
    async with system(db) as conn:
        found: uuid.UUID | None = await conn.fetchval("SELECT project_id FROM billing_runs WHERE id = $1", run_id)
    return found


async def read_rule(conn: asyncpg.Connection, project_id: uuid.UUID, rule_id: uuid.UUID, *, lock: bool = False) -> Rule:
    """One rule of the project on the caller's transaction (`lock`: FOR UPDATE); NOT_FOUND if none."""
    row = await conn.fetchrow(
        f"SELECT {RULE_COLS} FROM billing_rules WHERE id = $1 AND project_id = $2"  # noqa: S608
        + (" FOR UPDATE" if lock else ""),
        rule_id,
        project_id,
    )
    if row is None:
        raise NotFound("billing rule not found", field="id")
    return Rule.of(row)


async def lock_rule(conn: asyncpg.Connection, project_id: uuid.UUID, rule_id: uuid.UUID) -> Rule:
    return await read_rule(conn, project_id, rule_id, lock=True)


async def get_rule(db: Database, project_id: uuid.UUID, rule_id: uuid.UUID) -> Rule:
    async with tenant(db, project_id) as conn:
        return await read_rule(conn, project_id, rule_id)


async def list_rules(
    db: Database, project_id: uuid.UUID, *, limit: int, after: uuid.UUID | None, wallet_id: uuid.UUID | None = None
) -> list[Rule]:
    """A project's rules, oldest first; `limit + 1` rows so the caller knows more exist."""
    async with tenant(db, project_id) as conn:
        rows = await conn.fetch(
            f"SELECT {RULE_COLS} FROM billing_rules WHERE project_id = $1 AND id > $2"  # noqa: S608
            " AND ($3::uuid IS NULL OR wallet_id = $3) ORDER BY id LIMIT $4",
            project_id,
            after or uuid.UUID(int=0),
            wallet_id,
            limit + 1,
        )
    return [Rule.of(r) for r in rows]


async def list_runs(
    db: Database, project_id: uuid.UUID, rule_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> list[Run]:
    """A rule's runs, latest period first; `limit + 1` rows. The cursor is a run id."""
    return (await list_runs_of_rules(db, project_id, [rule_id], limit=limit, before=before))[rule_id]


async def list_runs_of_rules(
    db: Database, project_id: uuid.UUID, rule_ids: Sequence[uuid.UUID], *, limit: int, before: uuid.UUID | None
) -> dict[uuid.UUID, list[Run]]:
    """`list_runs` of each rule (the same page size and cursor) in one statement, by rule id."""
    async with tenant(db, project_id) as conn:
        rows = await conn.fetch(
            f"SELECT p.* FROM unnest($1::uuid[]) AS x(rule_id) CROSS JOIN LATERAL (SELECT {RUN_COLS}"  # noqa: S608
            " FROM billing_runs r WHERE r.rule_id = x.rule_id AND r.project_id = $2"
            " AND ($3::uuid IS NULL"
            " OR (r.scheduled_at, r.id) < (SELECT scheduled_at, id FROM billing_runs WHERE id = $3))"
            " ORDER BY r.scheduled_at DESC, r.id DESC LIMIT $4) p",
            list(rule_ids),
            project_id,
            before,
            limit + 1,
        )
    found: dict[uuid.UUID, list[Run]] = {r: [] for r in rule_ids}
    for row in rows:
        run = Run.of(row)
        found[run.rule_id].append(run)
    return found


async def get_run(db: Database, project_id: uuid.UUID, run_id: uuid.UUID) -> Run:
    async with tenant(db, project_id) as conn:
        row = await conn.fetchrow(
            f"SELECT {RUN_COLS} FROM billing_runs WHERE id = $1 AND project_id = $2",  # noqa: S608
            run_id,
            project_id,
        )
    if row is None:
        raise NotFound("billing run not found", field="id")
    return Run.of(row)
