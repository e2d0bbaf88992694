"""DATABASE_REPLICA_URL on a real streaming replica (pg_basebackup from the same binaries).

Proof that reads are served there rather than on the primary: with the replica's replay paused,
analytics and the audit log answer as of the pause while the primary already holds the newer
money; once replay resumes they catch up. Writes are refused there by PostgreSQL itself, every
mutation still lands on the primary, and a replica that goes away hands its reads to the primary.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import secrets
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from ledgerx.app import create_app
from ledgerx.db.engine import asyncpg_dsn
from ledgerx.db.migrate import upgrade
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, sign_up
from tests.pg_cluster import Cluster, primary, standby, workspace
from tests.test_live_support import CREDIT, live_project

ANALYTICS = """
query($p: ID!, $from: DateTime!, $to: DateTime!) {
  projectAnalytics(projectId: $p, from: $from, to: $to) { creditsAdded }
}
"""
AUDIT = "query($p: ID!) { auditLog(projectId: $p, first: 100) { edges { node { action } } } }"
BALANCE = "query($w: ID!) { wallet(id: $w) { balance } }"
HEALTH = "{ systemHealth { status replica { status detail } } }"


@dataclasses.dataclass
class Pair:
    primary: Cluster
    replica: Cluster
    database: str


@pytest.fixture(scope="module")
def pair() -> Any:
    with workspace() as (bin_dir, root, user):
        p = primary(bin_dir, root, user)
        r: Cluster | None = None
        try:
            p.run("createdb", "-h", "127.0.0.1", "-p", str(p.port), "-U", "postgres", "ledgerx")
            upgrade(p.url("ledgerx"))
            r = standby(p, root)
            yield Pair(p, r, "ledgerx")
        finally:
            if r is not None:
                r.stop("immediate")
            p.stop("immediate")


@pytest.fixture
async def app_gql(pair: Pair, settings: Settings) -> AsyncIterator[tuple[GQL, Services]]:
    s = dataclasses.replace(
        settings, database_url=pair.primary.url("ledgerx"), database_replica_url=pair.replica.url("ledgerx")
    )
    svc = Services.build(s)
    transport = httpx.ASGITransport(app=create_app(s, svc), client=("203.0.113.7", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield GQL(c), svc
    await svc.close()


async def superuser(cluster: Cluster) -> asyncpg.Connection:
    return await asyncpg.connect(asyncpg_dsn(cluster.url("ledgerx")))


async def caught_up(pair: Pair) -> None:
    """Wait until the replica has replayed everything the primary has written so far."""
    p, r = await superuser(pair.primary), await superuser(pair.replica)
    try:
        target = await p.fetchval("SELECT pg_current_wal_insert_lsn()")
        for _ in range(300):
            if await r.fetchval("SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", target):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the replica did not catch up within 15 s")
    finally:
        await p.close()
        await r.close()


def window() -> dict[str, str]:
    now = dt.datetime.now(dt.UTC)
    return {"from": (now - dt.timedelta(days=1)).isoformat(), "to": (now + dt.timedelta(days=1)).isoformat()}


async def test_lag_tolerant_reads_come_from_the_replica(pair: Pair, app_gql: tuple[GQL, Services]) -> None:
    gql, svc = app_gql
    assert svc.replica is not None and svc.reads is svc.replica
    owner = await sign_up(gql)
    p = await live_project(gql, owner, credit=100)
    await caught_up(pair)
    added = await gql.ok(ANALYTICS, {"p": p.project_id, **window()}, token=owner.token)
    assert added["projectAnalytics"]["creditsAdded"] == "100"
    actions = {
        e["node"]["action"] for e in (await gql.ok(AUDIT, {"p": p.project_id}, token=owner.token))["auditLog"]["edges"]
    }

    replica = await superuser(pair.replica)
    try:
        await replica.execute("SELECT pg_wal_replay_pause()")
        # A write while replay is paused: it lands on the primary (the balance says so at once) …
        await gql.ok(
            CREDIT,
            {"i": {"walletId": p.wallet_id, "amount": 50, "idempotencyKey": secrets.token_hex(8)}},
            token=owner.token,
        )
        assert (await gql.ok(BALANCE, {"w": p.wallet_id}, token=owner.token))["wallet"]["balance"] == "150"
        # … and the replica-served reads still answer as of the pause.
        stale = await gql.ok(ANALYTICS, {"p": p.project_id, **window()}, token=owner.token)
        assert stale["projectAnalytics"]["creditsAdded"] == "100"
        edges = (await gql.ok(AUDIT, {"p": p.project_id}, token=owner.token))["auditLog"]["edges"]
        assert {e["node"]["action"] for e in edges} == actions
        await replica.execute("SELECT pg_wal_replay_resume()")
    finally:
        await replica.execute("SELECT pg_wal_replay_resume()")
        await replica.close()
    await caught_up(pair)
    fresh = await gql.ok(ANALYTICS, {"p": p.project_id, **window()}, token=owner.token)
    assert fresh["projectAnalytics"]["creditsAdded"] == "150"
    assert svc.replica.fallbacks == 0


async def test_the_replica_refuses_writes(pair: Pair, app_gql: tuple[GQL, Services]) -> None:
    _, svc = app_gql
    assert svc.replica is not None
    async with svc.replica.raw(system=True) as conn:
        assert await conn.fetchval("SELECT pg_is_in_recovery()") is True
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        async with svc.replica.raw(system=True) as conn:
            await conn.execute("UPDATE users SET name = name")
    with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
        async with svc.replica.raw(system=True) as conn:
            await conn.fetch("SELECT 1 FROM wallets FOR UPDATE")


async def test_health_reports_the_replica_and_its_fallback(pair: Pair, app_gql: tuple[GQL, Services]) -> None:
    gql, svc = app_gql
    owner = await sign_up(gql)
    admin = await superuser(pair.primary)
    try:
        await admin.execute("UPDATE users SET is_platform_admin = true WHERE email = $1", owner.email)
    finally:
        await admin.close()
    p = await live_project(gql, owner, credit=70)
    health = (await gql.ok(HEALTH, token=owner.token))["systemHealth"]
    assert health["replica"]["status"] == "OK", health
    assert health["replica"]["detail"].startswith("replay lag")

    # The replica goes away: its reads go to the primary (fresh figures), health says DOWN.
    pair.replica.stop("immediate")
    try:
        added = await gql.ok(ANALYTICS, {"p": p.project_id, **window()}, token=owner.token)
        assert added["projectAnalytics"]["creditsAdded"] == "70"
        assert svc.replica is not None and svc.replica.fallbacks >= 1
        health = (await gql.ok(HEALTH, token=owner.token))["systemHealth"]
        assert health["replica"]["status"] == "DOWN"
        assert "primary" in health["replica"]["detail"]
        assert health["status"] == "DEGRADED"
    finally:
        pair.replica.start()
