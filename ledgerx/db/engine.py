"""Engine, pools, and the one way to open a tenant-scoped transaction.

The app connects as `settings.db_app_role`, a role that owns nothing, so PostgreSQL's row-level
security applies to every query it runs (DESIGN.md "Tenancy"). Migrations and the few explicit
maintenance paths connect as the owner (the DATABASE_URL user) instead.

Every transaction on a tenant table is opened by `Database` (the settings and the way a
transaction ends live in scope.py), whatever the domain:

- `Database.transaction(...)`: an SQLAlchemy session (typed models). `driver(session)` gives the
  asyncpg connection under it, in the same transaction, for set-based SQL next to the ORM.
- `Database.raw(...)`: an asyncpg connection from the raw pool (hot paths: ledger, usage, access
  checks); BEGIN and the settings travel in one round trip.

Two documented paths run outside any tenant scope, in autocommit, one statement at a time, and
must never touch a tenant table (RLS would show them nothing): `Database.read()` (an ORM session
for non-tenant reads: users, plans, credit packs) and `Database.fetchrow()` (one raw statement:
users by id, session revocations, the usage partition maintenance function).

How the app role is applied depends on `pooler` (DATABASE_POOLER; docs/scaling.md "PgBouncer"):

- "none" (PostgreSQL directly): the role travels in the startup packet (`server_settings`), for
  the whole connection. Every new connection checks that it is in force (`current_user`): a pooler
  that drops the parameter (PgBouncer's `ignore_startup_parameters = role`) would otherwise leave
  the app running as the DATABASE_URL user, outside row-level security; it fails closed instead.
- "pgbouncer" (a transaction pooler): server connections are shared per transaction and PgBouncer
  refuses a `role` startup parameter, so every transaction switches to the role itself, in the
  statement that sets its scope (scope.py), and the autocommit paths (`read`, `fetchrow`) become
  short transactions that do the same. Named prepared statements do not survive a pooler that
  hands each transaction another server connection (PgBouncer < 1.21): asyncpg's statement cache
  and SQLAlchemy's prepared-statement cache are off, so every statement is prepared unnamed, in
  the same exchange that runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, cast

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from ledgerx.db.scope import SETTINGS_BOUND, Scope, end, scoped, settings_bound


def async_url(url: str) -> URL:
    """Turn the plain `postgresql://` form (including `?host=/socket/dir`) into an asyncpg URL."""
    u = make_url(url)
    u = u.set(drivername="postgresql+asyncpg")
    query = dict(u.query)
    sslmode = query.pop("sslmode", None)
    if sslmode is not None and "ssl" not in query:
        query["ssl"] = sslmode
    return u.set(query=query)


def asyncpg_dsn(url: str) -> str:
    """A DSN asyncpg.connect() accepts directly (used by benchmarks and raw maintenance paths)."""
    return async_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


Pooler = Literal["none", "pgbouncer"]

# The engine execution option that tells a `Database` which pooler its engine was made for.
_POOLER_OPTION = "ledgerx_pooler"
# Where a session remembers the statement that begins (and scopes) its transaction.
_BEGIN_KEY = "ledgerx_begin"
# asyncpg's statement cache per connection when PostgreSQL is reached directly.
_STATEMENT_CACHE = 512


class AppRoleNotApplied(RuntimeError):
    """A connection that should run as the app role does not (row-level security would not hold)."""


async def check_role(conn: asyncpg.Connection, role: str) -> None:
    """Fail closed unless the connection runs as `role` (one round trip, once per connection)."""
    current = await conn.fetchval("SELECT current_user")
    if current != role:
        raise AppRoleNotApplied(
            f"connected as {current!r}, not as the app role {role!r}: the `role` startup parameter was not"
            " applied (a pooler dropped it? PgBouncer with ignore_startup_parameters = role does). Behind"
            " PgBouncer in transaction mode set DATABASE_POOLER=pgbouncer (docs/scaling.md)."
        )


def connect_args(*, role: str | None, pooler: Pooler, app_name: str) -> dict[str, Any]:
    """asyncpg connection arguments (startup settings and statement caching) for `pooler`."""
    server_settings = {"application_name": app_name}
    if pooler == "pgbouncer":
        # No `role` here (PgBouncer refuses it, or drops it when told to ignore it): the role is
        # set per transaction. Unnamed statements only: a named one would be left on a server
        # connection another client gets next ("already exists") or sought on one it never
        # reached ("does not exist").
        return {"server_settings": server_settings, "statement_cache_size": 0}
    if role:
        # The startup packet sets the role for the whole connection, before any query runs.
        server_settings["role"] = role
    return {"server_settings": server_settings, "statement_cache_size": _STATEMENT_CACHE}


def make_engine(
    url: str, *, role: str | None, pool_size: int = 20, app_name: str = "ledgerx", pooler: Pooler = "none"
) -> AsyncEngine:
    args = connect_args(role=role, pooler=pooler, app_name=app_name)
    if pooler == "pgbouncer":
        # SQLAlchemy's dialect keeps prepared statements per connection too: off, and unnamed
        # (an empty name: asyncpg's unnamed statement, replaced by the next Parse).
        args |= {"prepared_statement_cache_size": 0, "prepared_statement_name_func": lambda: ""}
    engine = create_async_engine(
        async_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args=args,
        execution_options={_POOLER_OPTION: pooler},
    )
    if role and pooler == "none":

        @event.listens_for(engine.sync_engine, "connect")
        def _role_in_force(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.run_async(lambda conn: check_role(conn, role))

    return engine


async def driver(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under a SQLAlchemy session (same transaction, same RLS settings)."""
    conn = await session.connection()
    raw = await conn.get_raw_connection()
    found = cast(asyncpg.Connection, raw.driver_connection)
    if not found.is_in_transaction():
        # The ORM sends BEGIN with its first statement, and a transaction with nothing to scope
        # has sent none yet: SQL sent on the driver now would run alone, in autocommit, outside
        # the session's transaction. Begin it (with the same, empty, settings statement).
        await session.execute(text(session.info.get(_BEGIN_KEY, SETTINGS_BOUND)), Scope().values())
    return found


# A consistent read-only snapshot for reads that must agree across statements.
_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


class _PooledConnection(asyncpg.Connection):  # type: ignore[misc]  # asyncpg ships no stubs
    """A raw-pool connection that skips asyncpg's reset statement on release.

    The default reset (advisory unlock, CLOSE ALL, UNLISTEN *, RESET ALL) is one more round trip
    and a few hundred microseconds of server work on every release. Nothing on this pool leaves
    session state behind: tenant settings are `SET LOCAL` (gone at COMMIT/ROLLBACK), advisory
    locks are transaction-scoped, nobody LISTENs here. An open transaction is still rolled back
    on release (asyncpg does that before consulting the reset query).
    """

    def get_reset_query(self) -> str:
        return ""


class Database:
    """The app's database handle, connected as the app role.

    Two ways in: `transaction()` gives an SQLAlchemy session (convenient, typed models) and
    `raw()` an asyncpg connection from a pool of its own (hot paths: the SQLAlchemy async layer
    costs several hundred microseconds of CPU per transaction, more than the database work of a
    typical request). Both set the same row-level-security settings and end the same way
    (scope.py).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        dsn: str | None = None,
        role: str | None = None,
        pool_size: int = 10,
        pooler: Pooler | None = None,
    ) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
        self._dsn = dsn
        self._role = role
        self._pool_size = max(pool_size, 2)
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        # Unless told, the pooler the engine was made for (make_engine records it).
        self.pooler: Pooler = pooler or engine.get_execution_options().get(_POOLER_OPTION, "none")
        # The role every transaction switches to itself (a transaction pooler), or None (the
        # startup packet set it for the whole connection).
        self._tx_role = role if self.pooler == "pgbouncer" else None
        self._settings_sql = settings_bound(self._tx_role)

    async def pool(self) -> asyncpg.Pool:
        """The asyncpg pool (app role, so RLS applies), created on first use."""
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    if self._dsn is None:
                        raise RuntimeError("Database was built without a DSN; raw() is unavailable")
                    role = self._role
                    check = role is not None and self._tx_role is None

                    async def init(conn: asyncpg.Connection) -> None:
                        if check:
                            assert role is not None
                            await check_role(conn, role)

                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        min_size=0,
                        max_size=self._pool_size,
                        connection_class=_PooledConnection,
                        init=init if check else None,
                        **connect_args(role=role, pooler=self.pooler, app_name="ledgerx"),
                    )
        return self._pool

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
        """An asyncpg connection inside one transaction with the RLS settings (see `transaction`).

        `snapshot=True` makes it one consistent read-only snapshot (REPEATABLE READ READ ONLY),
        for reads that must agree with each other across statements (ledger verification).
        """
        scope = Scope.of(project_id=project_id, project_ids=project_ids, user_id=user_id, system=system)
        begin = _SNAPSHOT if snapshot else "BEGIN"
        async with (await self.pool()).acquire() as conn, scoped(conn, scope, begin=begin, role=self._tx_role):
            yield conn

    async def fetchrow(self, sql: str, *args: object) -> asyncpg.Record | None:
        """One autocommit statement outside any tenant scope (a non-tenant table, a maintenance
        function): one round trip. Behind a transaction pooler, a transaction of its own that
        switches to the app role first (three round trips)."""
        if self._tx_role is not None:
            async with self.raw() as conn:
                found: asyncpg.Record | None = await conn.fetchrow(sql, *args)
                return found
        async with (await self.pool()).acquire() as conn:
            row: asyncpg.Record | None = await conn.fetchrow(sql, *args)
            return row

    @asynccontextmanager
    async def transaction(
        self,
        *,
        project_id: uuid.UUID | None = None,
        user_id: uuid.UUID | None = None,
        system: bool = False,
        project_ids: Sequence[uuid.UUID] = (),
    ) -> AsyncIterator[AsyncSession]:
        """One database transaction with the tenant settings the RLS policies read.

        `project_id` (or several `project_ids`) scopes tenant tables to those projects; `user_id`
        lets a user find their own memberships across projects; `system=True` is the explicit
        cross-project path (scheduler, platform admin, credential lookups) and its callers audit
        what they change. Commits when the block ends; ends like `raw` (scope.end) otherwise.
        """
        scope = Scope.of(project_id=project_id, project_ids=project_ids, user_id=user_id, system=system)
        async with self.sessions() as session:
            session.info[_BEGIN_KEY] = self._settings_sql
            conn = await session.connection()  # begins the session's transaction

            async def invalidate() -> None:
                with contextlib.suppress(Exception):
                    await conn.invalidate()

            try:
                if not scope.empty or self._tx_role is not None:
                    # Bound parameters: one prepared statement whatever the scope. Nothing to
                    # scope (non-tenant tables) skips the round trip: settings are transaction-
                    # local, so a pooled connection carries none over. Behind a transaction
                    # pooler it is never skipped: it also switches to the app role.
                    await session.execute(text(self._settings_sql), scope.values())
                yield session
            except BaseException:
                await end(session.rollback, invalidate, rollback=True)
                raise
            await end(session.commit, invalidate, rollback=False)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session in autocommit for single-statement reads of non-tenant tables.

        One round trip per statement instead of BEGIN/SELECT/COMMIT; never use it for tenant tables
        (RLS settings need a transaction) or for several reads that must agree with each other.
        Behind a transaction pooler it is a transaction that switches to the app role first.
        """
        if self._tx_role is not None:
            async with self.transaction() as session:
                yield session
            return
        async with self.engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            async with AsyncSession(bind=auto, expire_on_commit=False, autoflush=False) as session:
                yield session

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        await self.engine.dispose()
