"""LedgerX behind PgBouncer in transaction pooling mode (DATABASE_POOLER=pgbouncer), tested
through Debian's pgbouncer (1.18: no protocol-level prepared statements, no `role` startup
parameter) in front of a PostgreSQL cluster of the test's own (tests/pg_cluster.py).

The server pool is three connections and the app opens many more client connections, so
consecutive transactions of one client connection land on different server connections: what
breaks named prepared statements and session state. Migrations run directly on PostgreSQL
(MIGRATION_DATABASE_URL), never through the pooler. scripts/ensure-pgbouncer.sh installs
pgbouncer (`make test` calls it); without it the tests skip with the reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import secrets
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from ledgerx import ids
from ledgerx.app import create_app
from ledgerx.db.engine import AppRoleNotApplied, Database, asyncpg_dsn, make_engine
from ledgerx.db.migrate import upgrade
from ledgerx.services import Services
from ledgerx.settings import Settings, SettingsError
from tests.conftest import GQL, SignedIn, sign_up
from tests.pg_cluster import Bouncer, Cluster, bouncer, pgbouncer_binary, primary, workspace
from tests.tenancy_helpers import create_project

POOL_SIZE = 3  # PgBouncer's server connections for the database
FUNDS = 100
N = 14  # the concurrent round: 2N credits, N debits, N/2 batches, N usage events, 1 HTTP debit per tenant
ROLE = "ledgerx_app"

CREATE_WALLET = "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }"
CREDIT = "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id balanceAfter } }"
DEBIT = "mutation($i: DebitWalletInput!) { debitWallet(input: $i) { id balanceAfter } }"
POST = """mutation($i: PostTransactionsInput!) { postTransactions(input: $i) {
  results { index replayed error { code message } transaction { id amount } } } }"""
DEFINE_METRIC = "mutation($i: DefineMetricInput!) { defineMetric(input: $i) { key } }"
RECORD = """mutation($i: RecordUsageInput!) { recordUsage(input: $i) {
  duplicate charge { amount } } }"""
SUMMARY = "query($i: UsageSummaryInput!) { usageSummary(input: $i) { units events } }"
CREATE_RULE = "mutation($i: CreateBillingRuleInput!) { createBillingRule(input: $i) { id nextRunAt } }"
PREVIEW = "query($id: ID!, $n: Int!) { previewBillingRule(id: $id, count: $n) { at amount } }"
CREATE_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }"
BALANCE = "query($id: ID!) { wallet(id: $id) { balance } }"
VERIFY = """query($p: ID!) { verifyLedger(projectId: $p) {
  ok walletsChecked transactionsChecked mismatches { kind message } } }"""


@dataclasses.dataclass
class Stack:
    cluster: Cluster
    bouncer: Bouncer
    root: Any
    database: str = "ledgerx"

    def direct_url(self) -> str:
        return self.cluster.url(self.database)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    if pgbouncer_binary() is None:
        pytest.skip("pgbouncer is not installed (scripts/ensure-pgbouncer.sh, or apt-get install pgbouncer)")
    with workspace() as (bin_dir, root, user):
        p = primary(bin_dir, root, user)
        b: Bouncer | None = None
        try:
            p.run("createdb", "-h", "127.0.0.1", "-p", str(p.port), "-U", "postgres", "ledgerx")
            upgrade(p.url("ledgerx"))  # directly: DDL and the migration lock never go through the pooler
            b = bouncer(
                p,
                root,
                "ledgerx",
                # A client waiting longer than this for a server connection gets an error: a pool
                # deadlock (see the warm-up below) fails the test in seconds instead of hanging.
                {
                    "pool_mode": "transaction",
                    "default_pool_size": POOL_SIZE,
                    "max_client_conn": 500,
                    "query_wait_timeout": 10,
                },
            )
            yield Stack(p, b, root)
        finally:
            if b is not None:
                b.stop()
            p.stop("immediate")


@pytest.fixture
async def app(stack: Stack, settings: Settings) -> AsyncIterator[tuple[GQL, httpx.AsyncClient, Services]]:
    s = dataclasses.replace(
        settings,
        database_url=stack.bouncer.url(),
        database_pooler="pgbouncer",
        migration_database_url=stack.direct_url(),
        db_pool_size=10,
    )
    svc = Services.build(s)
    transport = httpx.ASGITransport(app=create_app(s, svc), client=("203.0.113.7", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield GQL(c), c, svc
    await svc.close()


def key() -> str:
    return secrets.token_hex(8)


@dataclasses.dataclass
class Tenant:
    owner: SignedIn
    project: str
    a: str
    b: str


async def tenant(gql: GQL) -> Tenant:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    a, b = [
        (await gql.ok(CREATE_WALLET, {"i": {"projectId": pid, "name": name}}, token=owner.token))["createWallet"]["id"]
        for name in ("a", "b")
    ]
    i = {"projectId": pid, "key": "api_calls", "name": "API calls", "aggregation": "SUM", "unitPrice": "1"}
    await gql.ok(DEFINE_METRIC, {"i": i}, token=owner.token)
    # Both start with FUNDS, so the debits and charges never race the credits that fund them.
    for w in (a, b):
        await gql.ok(CREDIT, {"i": {"walletId": w, "amount": FUNDS, "idempotencyKey": key()}}, token=owner.token)
    return Tenant(owner, pid, a, b)


async def server_connections(stack: Stack) -> int:
    """Backends PgBouncer holds on the database (everything but this direct connection)."""
    conn = await asyncpg.connect(asyncpg_dsn(stack.direct_url()))
    try:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'"
            " AND pid <> pg_backend_pid()",
            stack.database,
        )
        return n
    finally:
        await conn.close()


async def test_the_app_under_concurrency_through_a_three_connection_pool(
    stack: Stack, app: tuple[GQL, httpx.AsyncClient, Services]
) -> None:
    gql, client, _ = app
    started = time.monotonic()
    tenants = await asyncio.gather(*(tenant(gql) for _ in range(3)))
    peak = 0
    stop = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, await server_connections(stack))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())

    secrets_ = {
        t.project: (
            await gql.ok(
                CREATE_KEY,
                {"i": {"projectId": t.project, "name": "k", "scopes": ["wallets:write", "wallets:read"]}},
                token=t.owner.token,
            )
        )["createApiKey"]["secret"]
        for t in tenants
    }

    def requests(t: Tenant, n: int) -> list[Coroutine[Any, Any, Any]]:
        """2n credits of 10 and n debits of 3 on a; n/2 batches (credit b 5, transfer a->b 2);
        n usage events of 1 unit charged to b; one debit of 1 on b by an API key over HTTP."""
        tok = t.owner.token
        batch = [
            {"kind": "CREDIT", "walletId": t.b, "amount": "5"},
            {"kind": "TRANSFER", "walletId": t.a, "toWalletId": t.b, "amount": "2"},
        ]
        event = {"projectId": t.project, "metricKey": "api_calls", "units": "1", "walletId": t.b}
        return [
            *(
                gql.ok(CREDIT, {"i": {"walletId": t.a, "amount": 10, "idempotencyKey": key()}}, token=tok)
                for _ in range(2 * n)
            ),
            *(
                gql.ok(DEBIT, {"i": {"walletId": t.a, "amount": 3, "idempotencyKey": key()}}, token=tok)
                for _ in range(n)
            ),
            *(
                gql.ok(POST, {"i": {"operations": [dict(o, idempotencyKey=key()) for o in batch]}}, token=tok)
                for _ in range(max(n // 2, 1))
            ),
            *(gql.ok(RECORD, {"i": {**event, "idempotencyKey": key()}}, token=tok) for _ in range(n)),
            client.post(
                "/v1/transactions",
                json={"operations": [{"kind": "DEBIT", "walletId": t.b, "amount": "1", "idempotencyKey": key()}]},
                headers={"Authorization": f"Bearer {secrets_[t.project]}"},
            ),
        ]

    def check(done: list[Any]) -> int:
        """Every answer a success; the units the usage events charged."""
        charged = 0
        for r in done:
            if isinstance(r, httpx.Response):
                assert r.status_code == 200, r.text
                assert [x["error"] for x in r.json()["results"]] == [None]
            elif "postTransactions" in r:
                assert [x["error"] for x in r["postTransactions"]["results"]] == [None, None]
            elif "recordUsage" in r:
                assert r["recordUsage"]["duplicate"] is False
                charged += int(r["recordUsage"]["charge"]["amount"])
        return charged

    # Warm-up, one request at a time: a project's first posting of a kind creates its system
    # account in a transaction of its own, opened while the request's transaction holds a server
    # connection. With every server connection held by such requests, none is left for the inner
    # transactions: a pool deadlock (PgBouncer's query_wait_timeout ends it with errors). See
    # docs/scaling.md "PgBouncer" (pool sizing).
    charged = dict.fromkeys((t.project for t in tenants), 0)
    for t in tenants:
        for request in requests(t, 1):
            charged[t.project] += check([await request])
    # Then everything at once: 3 tenants x 64 requests over 3 server connections.
    try:
        results = await asyncio.gather(*(asyncio.gather(*requests(t, N)) for t in tenants))
    finally:
        stop.set()
        await sampler
    for t, done in zip(tenants, results, strict=True):
        charged[t.project] += check(list(done))

    now = dt.datetime.now(dt.UTC)
    window = {"from": (now - dt.timedelta(days=1)).isoformat(), "to": (now + dt.timedelta(days=1)).isoformat()}
    rounds = [1, N]  # the warm-up's n and the concurrent round's
    for t in tenants:
        tok = t.owner.token
        assert charged[t.project] == sum(rounds)  # a unit each, at 1
        a = int((await gql.ok(BALANCE, {"id": t.a}, token=tok))["wallet"]["balance"])
        b = int((await gql.ok(BALANCE, {"id": t.b}, token=tok))["wallet"]["balance"])
        assert a == FUNDS + sum(2 * n * 10 - n * 3 - max(n // 2, 1) * 2 for n in rounds)
        assert b == FUNDS + sum(max(n // 2, 1) * (5 + 2) - n - 1 for n in rounds)
        v = (await gql.ok(VERIFY, {"p": t.project}, token=tok))["verifyLedger"]
        assert v["ok"] is True and v["mismatches"] == [] and v["walletsChecked"] == 2
        s = {"projectId": t.project, "metricKey": "api_calls", "granularity": "DAY", **window}
        rows = (await gql.ok(SUMMARY, {"i": s}, token=tok))["usageSummary"]
        assert sum(int(x["units"]) for x in rows) == sum(rounds) == sum(int(x["events"]) for x in rows)
        rule = (
            await gql.ok(
                CREATE_RULE, {"i": {"walletId": t.a, "name": "daily", "mode": "DAILY_FLAT", "amount": 2}}, token=tok
            )
        )["createBillingRule"]
        items = (await gql.ok(PREVIEW, {"id": rule["id"], "n": 5}, token=tok))["previewBillingRule"]
        assert len(items) == 5 and items[0]["at"] == rule["nextRunAt"] and {i["amount"] for i in items} == {"2"}
    # Another tenant's wallet is not there for this owner (RLS, and the same answer as a made-up id).
    foreign = await gql.error(BALANCE, {"id": tenants[1].a}, token=tenants[0].owner.token)
    assert foreign["code"] == "NOT_FOUND"
    # The whole run went through PgBouncer's three server connections.
    assert 1 <= peak <= POOL_SIZE, peak
    assert time.monotonic() - started < 25


async def test_every_transaction_runs_as_the_app_role_and_sees_only_its_tenant(
    stack: Stack, app: tuple[GQL, httpx.AsyncClient, Services]
) -> None:
    gql, _, svc = app
    mine, theirs = await asyncio.gather(tenant(gql), tenant(gql))
    me, other = ids.decode("project", mine.project), ids.decode("project", theirs.project)
    who = "SELECT current_user AS u, session_user AS s, current_setting('role') AS r"
    wallets = "SELECT count(*) FROM wallets WHERE project_id = $1"

    async def raw_check() -> None:
        async with svc.db.raw(project_id=me) as conn:
            row = await conn.fetchrow(who)
            assert (row["u"], row["s"], row["r"]) == (ROLE, "postgres", ROLE)
            assert await conn.fetchval(wallets, me) == 2
            assert await conn.fetchval(wallets, other) == 0
            assert await conn.fetchval("SELECT count(*) FROM wallets") == 2

    async def orm_check() -> None:
        async with svc.db.transaction(project_id=other) as session:
            assert (await session.execute(text("SELECT current_user"))).scalar() == ROLE
            n = (await session.execute(text("SELECT count(*) FROM wallets WHERE project_id = :p"), {"p": me})).scalar()
            assert n == 0
        async with svc.db.transaction() as session:  # nothing to scope: still the app role
            assert (await session.execute(text("SELECT current_user"))).scalar() == ROLE
            assert (await session.execute(text("SELECT count(*) FROM wallets"))).scalar() == 0
        async with svc.db.read() as session:
            assert (await session.execute(text("SELECT current_user"))).scalar() == ROLE
        row = await svc.db.fetchrow("SELECT current_user AS u")
        assert row is not None and row["u"] == ROLE

    # Many at once over three server connections, so they interleave on each of them.
    await asyncio.gather(*(raw_check() for _ in range(30)), *(orm_check() for _ in range(30)))

    # The role was transaction-local: a plain client of the same pool, given those same server
    # connections next, is the login user again.
    plain = await asyncpg.connect(asyncpg_dsn(stack.bouncer.url()), statement_cache_size=0)
    try:
        for _ in range(2 * POOL_SIZE):
            assert await plain.fetchval("SELECT current_setting('role')") == "none"
    finally:
        await plain.close()


async def test_a_role_startup_parameter_pgbouncer_drops_fails_closed(stack: Stack, settings: Settings) -> None:
    # PgBouncer refuses the parameter by default ...
    with pytest.raises(asyncpg.ProtocolViolationError, match="unsupported startup parameter: role"):
        await asyncpg.connect(asyncpg_dsn(stack.bouncer.url()), server_settings={"role": ROLE})
    # ... and with `ignore_startup_parameters = role` it drops it: the connection runs as the login
    # user (here a superuser: no row-level security at all).
    lax = bouncer(
        stack.cluster,
        stack.root,
        stack.database,
        {"pool_mode": "transaction", "default_pool_size": POOL_SIZE, "ignore_startup_parameters": "role"},
    )
    try:
        conn = await asyncpg.connect(asyncpg_dsn(lax.url()), server_settings={"role": ROLE}, statement_cache_size=0)
        try:
            assert await conn.fetchval("SELECT current_user") == "postgres"
        finally:
            await conn.close()
        # The app configured for a direct connection (DATABASE_POOLER unset) refuses to run so:
        # both of its pools fail on their first connection instead of bypassing RLS.
        s = dataclasses.replace(settings, database_url=lax.url())
        svc = Services.build(s)
        try:
            with pytest.raises(AppRoleNotApplied, match="DATABASE_POOLER=pgbouncer"):
                async with svc.db.raw(system=True) as conn:
                    await conn.fetchval("SELECT count(*) FROM wallets")
            with pytest.raises(AppRoleNotApplied):
                async with svc.db.read() as session:
                    await session.execute(text("SELECT 1"))
            with pytest.raises(AppRoleNotApplied):
                await svc.db.fetchrow("SELECT 1")
        finally:
            await svc.close()
    finally:
        lax.stop()


async def test_named_prepared_statements_break_through_the_pooler(stack: Stack) -> None:
    """The control: the same kind of load with the caches on (what DATABASE_POOLER=pgbouncer turns
    off) fails, so the tests above passing means something."""
    db = Database(make_engine(stack.bouncer.url(), role=None), dsn=asyncpg_dsn(stack.bouncer.url()), pool_size=20)
    errors: list[str] = []

    async def one(i: int) -> None:
        try:
            async with db.raw(system=True) as conn:
                assert await conn.fetchval(f"SELECT $1::int + {i % 5}", i) == i + i % 5
                await asyncio.sleep(0)
                assert await conn.fetchval(f"SELECT $1::text || '{i % 3}'", "x") == f"x{i % 3}"
        except (asyncpg.InvalidSQLStatementNameError, asyncpg.DuplicatePreparedStatementError) as exc:
            errors.append(str(exc).splitlines()[0])

    try:
        await asyncio.gather(*(one(i) for i in range(200)))
    finally:
        await db.dispose()
    assert errors and all("prepared statement" in e for e in errors), errors[:3]


async def test_a_session_lock_outlives_its_client_through_the_pooler(stack: Stack) -> None:
    """Why migrations (which serialize on a session advisory lock) go directly to PostgreSQL: behind
    a transaction pooler the lock stays on the server connection after its client has gone, and
    the next `ledgerx migrate` would wait for it forever."""
    lock = 740_000 + secrets.randbelow(1000)
    client = await asyncpg.connect(asyncpg_dsn(stack.bouncer.url()), statement_cache_size=0)
    await client.execute(f"SELECT pg_advisory_lock({lock})")
    await client.close()
    direct = await asyncpg.connect(asyncpg_dsn(stack.direct_url()))
    try:
        held = await direct.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1 AND granted", lock
        )
        assert held == 1
        # Release it from wherever it is held, so the module's other tests never meet it.
        await direct.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1", lock
        )
    finally:
        await direct.close()


def test_the_pooler_setting_needs_a_direct_migration_url() -> None:
    env = {"DATABASE_URL": "postgresql://app@pgbouncer:6432/ledgerx", "DATABASE_POOLER": "pgbouncer"}
    with pytest.raises(SettingsError, match="MIGRATION_DATABASE_URL"):
        Settings.from_env(env)
    s = Settings.from_env({**env, "MIGRATION_DATABASE_URL": "postgresql://owner@db:5432/ledgerx"})
    assert (s.database_pooler, s.migrations_url) == ("pgbouncer", "postgresql://owner@db:5432/ledgerx")
    plain = Settings.from_env({"DATABASE_URL": "postgresql://owner@db:5432/ledgerx"})
    assert (plain.database_pooler, plain.migrations_url) == ("none", "postgresql://owner@db:5432/ledgerx")
    with pytest.raises(SettingsError, match="DATABASE_POOLER"):
        Settings.from_env({"DATABASE_POOLER": "pgpool"})
