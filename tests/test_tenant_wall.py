"""The tenant wall holds however a transaction is opened, and every transaction ends clean.

Every way the app opens a transaction (the ORM session, the raw asyncpg pool, the asyncpg
connection under a session, a read-only snapshot, a user's own scope) sees only its projects' rows
in tenant tables. A block that raises, hits a database error or is cancelled leaves no open
transaction and no tenant setting on a connection that goes back to a pool.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from ledgerx.db.engine import Database, asyncpg_dsn, driver, make_engine
from ledgerx.domain.ledger import reads
from ledgerx.services import Services
from tests.ledger_helpers import new_project, new_wallet, owner_conn
from tests.test_usage_helpers import new_metric

TABLES = ("wallets", "usage_metrics", "audit_log")

Count = Callable[[str, uuid.UUID], Awaitable[int]]
Opener = Callable[[Database], AbstractAsyncContextManager[Count]]


def _count_sql(table: str) -> str:
    return f"SELECT count(*) FROM {table} WHERE project_id = $1"


@asynccontextmanager
async def _orm(db: Database, **scope: Any) -> AsyncIterator[Count]:
    async with db.transaction(**scope) as s:

        async def count(table: str, project_id: uuid.UUID) -> int:
            sql = f"SELECT count(*) FROM {table} WHERE project_id = :p"
            return int((await s.execute(text(sql), {"p": project_id})).scalar_one())

        yield count


@asynccontextmanager
async def _under_session(db: Database, **scope: Any) -> AsyncIterator[Count]:
    async with db.transaction(**scope) as s:
        conn = await driver(s)

        async def count(table: str, project_id: uuid.UUID) -> int:
            return int(await conn.fetchval(_count_sql(table), project_id))

        yield count


@asynccontextmanager
async def _raw(db: Database, **scope: Any) -> AsyncIterator[Count]:
    async with db.raw(**scope) as conn:

        async def count(table: str, project_id: uuid.UUID) -> int:
            return int(await conn.fetchval(_count_sql(table), project_id))

        yield count


OPENERS: dict[str, Callable[..., AbstractAsyncContextManager[Count]]] = {
    "orm transaction": _orm,
    "asyncpg under an orm session": _under_session,
    "raw pool": _raw,
}


async def _two_projects(services: Services) -> tuple[uuid.UUID, uuid.UUID]:
    """Two projects with a wallet, a metric and audit rows each."""
    a, b = await new_project(services), await new_project(services)
    for p in (a, b):
        await new_wallet(services, p)
        await new_metric(services, p, "api_calls")
    return a, b


@pytest.mark.parametrize("way", sorted(OPENERS))
async def test_a_project_scoped_transaction_sees_only_its_projects_rows(services: Services, way: str) -> None:
    a, b = await _two_projects(services)
    opener = OPENERS[way]
    scopes: list[dict[str, Any]] = [{"project_id": a}, {"project_ids": [a]}]
    if way == "raw pool":
        scopes.append({"project_id": a, "snapshot": True})  # verifyLedger's read-only snapshot
    for scope in scopes:
        async with opener(services.db, **scope) as count:
            for table in TABLES:
                assert await count(table, a) >= 1, (table, scope)
                assert await count(table, b) == 0, (table, scope)
    # Both projects' rows exist: the explicit system path sees them (the wall is the scope).
    async with opener(services.db, system=True) as count:
        for table in TABLES:
            assert await count(table, b) >= 1, table


@pytest.mark.parametrize("way", sorted(OPENERS))
async def test_a_user_scope_or_no_scope_sees_no_projects_rows(services: Services, way: str) -> None:
    a, b = await _two_projects(services)
    owner = await owner_conn(services)
    try:
        user_id = uuid.uuid4()
        await owner.execute(
            "INSERT INTO users (id, email, name) VALUES ($1, $2, 'wall')", user_id, f"wall-{user_id}@example.com"
        )
        await owner.execute(
            "INSERT INTO project_members (id, project_id, user_id, role) VALUES ($1, $2, $3, 'OWNER')",
            uuid.uuid4(),
            a,
            user_id,
        )
    finally:
        await owner.close()
    for scope in ({"user_id": user_id}, {}):
        async with OPENERS[way](services.db, **scope) as count:
            for table in TABLES:
                for p in (a, b):
                    assert await count(table, p) == 0, (table, scope)


async def test_the_ledgers_reads_see_only_the_asked_project(services: Services) -> None:
    a, b = await new_project(services), await new_project(services)
    wb = await new_wallet(services, b)
    assert await reads.get_wallet(services.ledger, a, wb.id) is None
    assert await reads.list_wallets(services.ledger, a, limit=10, after=None) == []
    assert [w.id for w in await reads.list_wallets(services.ledger, b, limit=10, after=None)] == [wb.id]


# -- every transaction ends clean ------------------------------------------------------------------


@pytest.fixture
async def small_db(services: Services) -> AsyncIterator[Database]:
    """A Database with one ORM connection and at most two raw ones, so the connection a failed
    block used is the one the next block gets (or a fresh one, if it was discarded)."""
    s = services.settings
    assert s.database_url
    db = Database(
        make_engine(s.database_url, role=s.db_app_role, pool_size=1),
        dsn=asyncpg_dsn(s.database_url),
        role=s.db_app_role,
        pool_size=2,
    )
    yield db
    await db.dispose()


async def _state(conn: asyncpg.Connection) -> tuple[bool, str, str]:
    """(in a transaction, the project ids setting, the scope setting), read outside any BEGIN."""
    in_tx = conn.is_in_transaction()
    row = await conn.fetchrow(
        "SELECT coalesce(current_setting('ledgerx.project_ids', true), '') AS p,"
        " coalesce(current_setting('ledgerx.scope', true), '') AS s"
    )
    assert row is not None
    return in_tx, row["p"], row["s"]


async def _server_state(services: Services, pid: int) -> str | None:
    owner = await owner_conn(services)
    try:
        state: str | None = await owner.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid)
        return state
    finally:
        await owner.close()


async def _raw_pids_and_states(db: Database) -> dict[int, tuple[bool, str, str]]:
    pool = await db.pool()
    async with pool.acquire() as c1, pool.acquire() as c2:
        return {c.get_server_pid(): await _state(c) for c in (c1, c2)}


async def _orm_pid_and_state(db: Database) -> tuple[int, tuple[bool, str, str]]:
    async with db.engine.connect() as c:
        raw = (await c.get_raw_connection()).driver_connection
        assert raw is not None
        return raw.get_server_pid(), await _state(raw)


CLEAN = (False, "", "")


async def _fail(kind: str, conn: asyncpg.Connection) -> None:
    if kind == "python error":
        raise RuntimeError("the block failed")
    if kind == "database error":
        await conn.execute("SELECT 1 / 0")  # the transaction is aborted
    if kind == "cancelled mid-statement":
        await conn.execute("SELECT pg_sleep(30)")


async def _run(kind: str, block: Callable[[], Awaitable[None]]) -> None:
    if kind == "committed":
        await block()
    elif kind == "cancelled mid-statement":
        task = asyncio.ensure_future(block())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    else:
        with pytest.raises((RuntimeError, asyncpg.DivisionByZeroError)):
            await block()


KINDS = ("committed", "python error", "database error", "cancelled mid-statement")


@pytest.mark.parametrize("kind", KINDS)
async def test_a_raw_transaction_leaves_its_connection_clean(services: Services, small_db: Database, kind: str) -> None:
    project = await new_project(services)
    pids: list[int] = []

    async def block() -> None:
        async with small_db.raw(project_id=project, system=True) as conn:
            pids.append(conn.get_server_pid())
            await _fail(kind, conn)

    await _run(kind, block)
    [pid] = pids
    states = await _raw_pids_and_states(small_db)
    assert all(s == CLEAN for s in states.values()), states
    if kind == "cancelled mid-statement":
        # Ended one way or the other: rolled back and kept, or discarded (terminated).
        assert pid not in states or states[pid] == CLEAN
    else:
        assert pid in states  # a clean COMMIT or ROLLBACK keeps the connection
    assert await _server_state(services, pid) in (None, "idle", "active")
    # The pool still serves scoped transactions.
    async with small_db.raw(project_id=project) as conn:
        assert await conn.fetchval("SELECT current_setting('ledgerx.project_ids', true)") == str(project)


@pytest.mark.parametrize("kind", KINDS)
async def test_an_orm_transaction_leaves_its_connection_clean(
    services: Services, small_db: Database, kind: str
) -> None:
    project = await new_project(services)
    pids: list[int] = []

    async def block() -> None:
        async with small_db.transaction(project_id=project, system=True) as s:
            conn = await driver(s)
            await s.execute(text("SELECT 1"))
            pids.append(conn.get_server_pid())
            await _fail(kind, conn)

    await _run(kind, block)
    [pid] = pids
    now_pid, state = await _orm_pid_and_state(small_db)
    assert state == CLEAN
    if kind != "cancelled mid-statement":
        assert now_pid == pid  # a clean COMMIT or ROLLBACK keeps the connection
    assert await _server_state(services, pid) in (None, "idle", "active")
    async with small_db.transaction(project_id=project) as s:
        got = (await s.execute(text("SELECT current_setting('ledgerx.project_ids', true)"))).scalar_one()
        assert got == str(project)


async def test_a_transaction_whose_end_fails_never_returns_its_connection(
    services: Services, small_db: Database
) -> None:
    """A COMMIT that cannot complete (the server ended the session): the connection is discarded,
    and the next transaction gets a working one."""
    project = await new_project(services)
    pids: list[int] = []

    async def block() -> None:
        async with small_db.raw(project_id=project) as conn:
            pids.append(conn.get_server_pid())
            owner = await owner_conn(services)
            try:
                await owner.execute("SELECT pg_terminate_backend($1)", pids[0])
            finally:
                await owner.close()
            await asyncio.sleep(0.1)

    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
        await block()
    states = await _raw_pids_and_states(small_db)
    assert pids[0] not in states
    assert all(s == CLEAN for s in states.values()), states
