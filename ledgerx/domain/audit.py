"""The audit log: one row per state change, written in the caller's transaction.

This module is the one definition of an audit row: `COLUMNS` (and their types) and `values()`
(actor, action, target, before/after, and always the request id and client IP from the actor's
meta). Three ways in, all built from that definition:

- `record(tx, ...)`: one row, one statement, on an ORM session (through `driver`, so the same
  transaction) or an asyncpg connection.
- `record_many(tx, entries)`: N rows in one statement (the scheduler's batches).
- `unnest(first)`: the rows as `unnest($first::uuid[], ...)`, for a caller that writes its audit
  rows inside a larger statement (the ledger's batch write: one round trip per batch); it fills
  those parameters, one array per column, with `values()`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import asyncpg
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import jsonenc
from ledgerx.db.engine import Database, driver
from ledgerx.db.models import AuditLog
from ledgerx.domain import records
from ledgerx.domain.actor import Actor
from ledgerx.ids import uuid7

# The row as written (`at` is the database's `now()` unless a statement supplies it).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "uuid"),
    ("project_id", "uuid"),
    ("actor_type", "text"),
    ("actor_id", "uuid"),
    ("action", "text"),
    ("target_type", "text"),
    ("target_id", "text"),
    ("before", "jsonb"),
    ("after", "jsonb"),
    ("request_id", "text"),
    ("ip", "inet"),
)
COLUMN_NAMES = ", ".join(name for name, _ in COLUMNS)


def unnest(first: int) -> str:
    """`unnest($first::uuid[], ...)`: audit rows from one array parameter per column of `COLUMNS`
    (in order, starting at `$first`), as `record_many` passes them."""
    return "unnest(" + ", ".join(f"${first + i}::{kind}[]" for i, (_, kind) in enumerate(COLUMNS)) + ")"


_INSERT_ONE = (
    f"INSERT INTO audit_log ({COLUMN_NAMES}) VALUES "  # noqa: S608 (constants only)
    + "("
    + ", ".join(f"${i + 1}::{kind}" for i, (_, kind) in enumerate(COLUMNS))
    + ")"
)
_INSERT_MANY = f"INSERT INTO audit_log ({COLUMN_NAMES}) SELECT * FROM {unnest(1)}"  # noqa: S608 (constants only)


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One audit row to write (see `record` for the fields)."""

    actor: Actor
    action: str
    project_id: uuid.UUID | None = None
    target_type: str | None = None
    target_id: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


def values(entry: Entry) -> tuple[Any, ...]:
    """The row's values in `COLUMNS` order, with a fresh id."""
    a = entry.actor
    return (
        uuid7(),
        entry.project_id,
        a.type,
        a.id,
        entry.action,
        entry.target_type,
        entry.target_id,
        None if entry.before is None else jsonenc.dumps(entry.before),
        None if entry.after is None else jsonenc.dumps(entry.after),
        a.meta.request_id,
        a.meta.ip,
    )


async def _connection(tx: AsyncSession | asyncpg.Connection) -> asyncpg.Connection:
    return await driver(tx) if isinstance(tx, AsyncSession) else tx


async def record(
    tx: AsyncSession | asyncpg.Connection,
    actor: Actor,
    action: str,
    *,
    project_id: uuid.UUID | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    """Write one audit row in `tx`'s transaction (an ORM session or an asyncpg connection)."""
    entry = Entry(actor, action, project_id, target_type, target_id, before, after)
    conn = await _connection(tx)
    await conn.execute(_INSERT_ONE, *values(entry))


async def record_many(tx: AsyncSession | asyncpg.Connection, entries: Iterable[Entry]) -> None:
    """Write many audit rows with one statement, in `tx`'s transaction; nothing for none."""
    rows: Sequence[tuple[Any, ...]] = [values(e) for e in entries]
    if not rows:
        return
    conn = await _connection(tx)
    await conn.execute(_INSERT_MANY, *(list(col) for col in zip(*rows, strict=True)))


@dataclasses.dataclass(frozen=True, slots=True)
class EntryRecord:
    """One row of the audit log, as the domain hands it out."""

    id: uuid.UUID
    project_id: uuid.UUID | None
    action: str
    actor_type: str  # user | api_key | system | anonymous
    actor_id: uuid.UUID | None
    target_type: str | None
    target_id: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    request_id: str | None
    ip: str | None
    at: dt.datetime

    @classmethod
    def of(cls, a: AuditLog) -> EntryRecord:
        return records.of(cls, a, ip=str(a.ip) if a.ip else None)


async def list_entries(
    db: Database, project_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> list[EntryRecord]:
    """A project's audit log, newest first; `limit + 1` rows so the caller knows more exist."""
    async with db.transaction(project_id=project_id) as s:
        q = select(AuditLog).where(AuditLog.project_id == project_id).order_by(AuditLog.id.desc()).limit(limit + 1)
        if before is not None:
            q = q.where(AuditLog.id < before)
        return [EntryRecord.of(a) for a in (await s.execute(q)).scalars()]
