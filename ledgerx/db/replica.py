"""The read replica: where lag-tolerant reads go when `DATABASE_REPLICA_URL` is set.

A `Replica` is a `Database` connected to a PostgreSQL streaming replica (same app role, so the
same row-level security), with one difference: when the replica cannot be reached it opens the
transaction on the primary instead, and keeps doing so for `RETRY_AFTER` seconds before trying the
replica again. Analytics and the audit log stay available through a replica's restart; they only
lose the offload. An error after the connection is made (a query that fails, a statement timeout)
is the caller's, as on the primary: only "could not connect" falls back.

What may be read here (`Services.reads`): answers that may be a little behind (analytics over a
range, the audit log). Never a read that decides a write (balances before a debit, idempotency,
locks): those stay on the primary, which a replica cannot serve anyway since it refuses every
write and every `FOR UPDATE`. Health (`domain/health.py`) reports the replica's replay lag.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from ledgerx.db.engine import Database

# After a failed connection, the primary serves the replica's reads this long before the next try.
RETRY_AFTER = 5.0

# What "the replica is not there" looks like from asyncpg and from SQLAlchemy over it.
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.TooManyConnectionsError,
)

LAG_SQL = """
SELECT pg_is_in_recovery() AS standby,
       CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END AS lag
"""


def _unreachable(exc: BaseException) -> bool:
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.DBAPIError | sa_exc.InterfaceError):
        return isinstance(exc.orig, _UNREACHABLE) or isinstance(exc.__cause__, _UNREACHABLE)
    return isinstance(exc, _UNREACHABLE)


class Replica(Database):
    """A read-only `Database` on a streaming replica that falls back to `primary`."""

    def __init__(
        self, engine: AsyncEngine, primary: Database, *, dsn: str, role: str | None, pool_size: int = 10
    ) -> None:
        super().__init__(engine, dsn=dsn, role=role, pool_size=pool_size)
        self.primary = primary
        self.down_until = 0.0
        self.fallbacks = 0  # reads the primary served for the replica (a gauge for tests and ops)

    def _usable(self) -> bool:
        return time.monotonic() >= self.down_until

    def _failed(self) -> None:
        self.down_until = time.monotonic() + RETRY_AFTER
        self.fallbacks += 1

    @asynccontextmanager
    async def raw(
        self,
        *,
        project_id: uuid.UUID | None = None,
        project_ids: Sequence[uuid.UUID] = (),
        user_id: uuid.UUID | None = None,
        system: bool = False,
        snapshot: bool = False,
    ) -> AsyncIterator[asyncpg.Connection]:
        async with AsyncExitStack() as stack:
            conn: asyncpg.Connection | None = None
            if self._usable():
                try:
                    conn = await stack.enter_async_context(
                        super().raw(
                            project_id=project_id,
                            project_ids=project_ids,
                            user_id=user_id,
                            system=system,
                            snapshot=snapshot,
                        )
                    )
                except Exception as exc:
                    if not _unreachable(exc):
                        raise
                    self._failed()
            if conn is None:
                conn = await stack.enter_async_context(
                    self.primary.raw(
                        project_id=project_id,
                        project_ids=project_ids,
                        user_id=user_id,
                        system=system,
                        snapshot=snapshot,
                    )
                )
            yield conn

    @asynccontextmanager
    async def transaction(
        self,
        *,
        project_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
        system: bool = False,
        project_ids: Sequence[uuid.UUID] = (),
    ) -> AsyncIterator[AsyncSession]:
        async with AsyncExitStack() as stack:
            session: AsyncSession | None = None
            if self._usable():
                try:
                    session = await stack.enter_async_context(
                        super().transaction(
                            project_id=project_id, project_ids=project_ids, user_id=user_id, system=system
                        )
                    )
                except Exception as exc:
                    if not _unreachable(exc):
                        raise
                    self._failed()
            if session is None:
                session = await stack.enter_async_context(
                    self.primary.transaction(
                        project_id=project_id, project_ids=project_ids, user_id=user_id, system=system
                    )
                )
            yield session

    async def lag(self) -> tuple[bool, float]:
        """(is it a standby, seconds of replay lag): 0 when everything received is replayed."""
        row = await super().fetchrow(LAG_SQL)
        assert row is not None
        return bool(row["standby"]), float(row["lag"] or 0.0)
