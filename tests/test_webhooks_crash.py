"""A `ledgerx serve` killed with SIGKILL between the commit of events and their delivery loses none.

Two endpoints of one project: `/hold`, whose receiver takes the requests and does not answer, and
one on a port where nothing listens yet (its attempts fail and are scheduled again). 30 events are
committed: the server sends 16 to `/hold` (its lane's limit: mid-send, lease taken) and holds the
other 14 claimed but unsent in the lane. It is killed (-9) in that state, more events are committed
while no server runs, then the receivers answer and a new server starts.

Every event then arrives at both endpoints and is answered (at least once; a redelivery carries
the same `webhook-id`), every delivery is SUCCEEDED, and the deliveries the dead server had claimed,
sent or not, came back only once their lease ran out (the new server did not take them before).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from ledgerx import ids
from ledgerx.db.engine import Database, asyncpg_dsn, make_engine
from ledgerx.domain.actor import Actor
from ledgerx.domain.webhooks import endpoints, outbox
from ledgerx.domain.webhooks.delivery import DeliveryPolicy
from ledgerx.ids import uuid7
from ledgerx.settings import Settings
from tests.webhook_processes import Ledgerx, Recorder, deliveries, fresh_database, wait_until

ACTOR = Actor.system("test")
BEFORE = 30
LANE = DeliveryPolicy().per_endpoint  # 16 requests in flight per endpoint
TIMEOUT = 3  # OUTBOUND_WEBHOOK_TIMEOUT of the servers: their lease is 2 x 3 + 5 = 11 s
LEASE = DeliveryPolicy(timeout=TIMEOUT).lease
SERVER_ENV = {"OUTBOUND_WEBHOOK_TIMEOUT": str(TIMEOUT), "OUTBOUND_WEBHOOK_RETRY_DELAYS": ",".join(["1s"] * 30)}


@pytest.fixture
async def database(admin_database_url: str) -> AsyncIterator[str]:
    async with fresh_database(admin_database_url) as url:
        yield url


async def emit(db: Database, project_id: uuid.UUID, count: int, start: int) -> list[str]:
    """`count` events, each committed in its own transaction; their public ids."""
    found = []
    for i in range(start, start + count):
        async with db.raw(project_id=project_id) as conn:
            event_id = await outbox.emit(conn, project_id, "transaction.posted", {"id": f"txn_{i}"})
        assert event_id is not None
        found.append(ids.encode("event", event_id))
    return found


async def test_a_server_killed_mid_delivery_loses_no_event(database: str, redis_url: str, tmp_path: Path) -> None:
    role = Settings().db_app_role
    db = Database(make_engine(database, role=role, pool_size=2), dsn=asyncpg_dsn(database), role=role)
    held = Recorder()
    await held.start()
    late = Recorder()  # its port refuses connections until it starts
    servers: list[Ledgerx] = []
    try:
        owner = await asyncpg.connect(asyncpg_dsn(database))
        pid = uuid7()
        await owner.execute("INSERT INTO projects (id, name) VALUES ($1, 'crash')", pid)
        await owner.close()
        for url in (held.url("/hold"), late.url("/ok")):
            await endpoints.create(db, ACTOR, pid, url=url, events=["*"], allow_private=True)

        held.hold()
        first = Ledgerx("first", database, redis_url, tmp_path, **SERVER_ENV)
        servers.append(first)
        await first.ready()
        before = await emit(db, pid, BEFORE, 0)

        # The first server is mid-send on a lane's worth of /hold deliveries and holds the rest
        # (all claimed and leased), and has recorded failed attempts for the refusing endpoint.
        await wait_until(lambda: _count(held, before) == LANE, 30, "a lane's worth of held requests arrive")

        async def claimed_and_failed() -> bool:
            rows = await deliveries(database, pid)
            return all(
                r["attempts"] >= 1 and (r["url"] == held.url("/hold") or r["last_error"] is not None) for r in rows
            )

        await wait_until(claimed_and_failed, 30, "all /hold deliveries claimed, the others failed once")
        await asyncio.sleep(0.5)
        assert _count(held, before) == LANE  # the others wait in the lane: claimed, not sent
        first.kill()
        rows = await deliveries(database, pid)
        leased = {r["id"]: r["next_attempt_at"] for r in rows if r["url"] == held.url("/hold")}
        assert len(leased) == BEFORE
        assert all(r["status"] == "PENDING" and r["attempts"] == 1 for r in rows if r["id"] in leased)
        refused = [r for r in rows if r["id"] not in leased]
        assert all(r["status"] == "PENDING" and "ConnectError" in r["last_error"] for r in refused)

        after = await emit(db, pid, 10, BEFORE)  # committed while no server runs
        held.release()
        await late.start()
        second = Ledgerx("second", database, redis_url, tmp_path, **SERVER_ENV)
        servers.append(second)
        await second.ready()

        async def all_succeeded() -> bool:
            rows = await deliveries(database, pid)
            return len(rows) == 2 * (BEFORE + 10) and all(r["status"] == "SUCCEEDED" for r in rows)

        await wait_until(all_succeeded, LEASE + 60, "every delivery succeeds after the restart")
    finally:
        for server in servers:
            server.kill()
        await held.stop()
        await late.stop()
        await db.dispose()

    events = before + after
    # None lost: every event was answered 200 by both endpoints.
    assert {a.webhook_id for a in held.of("/hold", answered=200)} == set(events)
    assert {a.webhook_id for a in late.of("/ok", answered=200)} == set(events)
    # The ones sent before the kill came twice, with the same webhook-id (at least once); those
    # claimed but never sent, and those committed while no server ran, once.
    per_event = Counter(a.webhook_id for a in held.of("/hold"))
    assert sorted(per_event[e] for e in before) == [1] * (BEFORE - LANE) + [2] * LANE
    assert {e: per_event[e] for e in after} == dict.fromkeys(after, 1)
    # Every delivery the dead server had claimed came back only when its lease ran out: the new
    # server did not take it while the lease held (the deadline is the database's clock, the
    # receiver's this machine's: a second of leeway).
    rows = {r["id"]: r for r in await deliveries(database, pid)}
    resent = {a.webhook_id: a.at for a in held.of("/hold", answered=200) if a.webhook_id in before}
    for delivery_id, lease_end in leased.items():
        event = ids.encode("event", rows[delivery_id]["event"])
        assert resent[event] >= lease_end.timestamp() - 1.0, (event, resent[event], lease_end)
        assert rows[delivery_id]["attempts"] == 2
    # The refusing endpoint's deliveries had failed before the crash; they succeeded afterwards.
    assert all(rows[r["id"]]["attempts"] > r["attempts"] for r in refused)


def _count(recorder: Recorder, events: list[str]) -> int:
    return len({a.webhook_id for a in recorder.of("/hold")} & set(events))
