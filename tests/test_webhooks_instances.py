"""Two `ledgerx serve` processes deliver from one database: each attempt is sent once, both work.

One project, two endpoints: `/ok` (answers 200) and `/flaky/1` (500 to the first request of each
`webhook-id`, then 200: every delivery there takes exactly two attempts). Events are committed in
bursts while both servers run. With no crash, the receiver must see each event once at `/ok` and
exactly twice at `/flaky/1` (a failed attempt and its retry), never an attempt twice; the attempt
log agrees; and both processes sent requests (the receiver's client ports belong to both).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from ledgerx import ids
from ledgerx.db.engine import Database, asyncpg_dsn, make_engine
from ledgerx.domain.actor import Actor
from ledgerx.domain.webhooks import endpoints, outbox
from ledgerx.ids import uuid7
from ledgerx.settings import Settings
from tests.webhook_processes import Ledgerx, Recorder, deliveries, fresh_database, wait_until

ACTOR = Actor.system("test")
EVENTS = 300
SERVER_ENV = {"OUTBOUND_WEBHOOK_TIMEOUT": "5", "OUTBOUND_WEBHOOK_RETRY_DELAYS": "1s,1s,1s"}


@pytest.fixture
async def database(admin_database_url: str) -> AsyncIterator[str]:
    async with fresh_database(admin_database_url) as url:
        yield url


async def test_two_servers_send_each_attempt_once_and_share_the_work(
    database: str, redis_url: str, tmp_path: Path
) -> None:
    role = Settings().db_app_role
    db = Database(make_engine(database, role=role, pool_size=2), dsn=asyncpg_dsn(database), role=role)
    receiver = Recorder()
    await receiver.start()
    servers = [Ledgerx(name, database, redis_url, tmp_path, **SERVER_ENV) for name in ("one", "two")]
    ports: dict[str, set[int]] = {s.name: set() for s in servers}
    try:
        owner = await asyncpg.connect(asyncpg_dsn(database))
        pid = uuid7()
        await owner.execute("INSERT INTO projects (id, name) VALUES ($1, 'instances')", pid)
        await owner.close()
        for path in ("/ok", "/flaky/1"):
            await endpoints.create(db, ACTOR, pid, url=receiver.url(path), events=["*"], allow_private=True)
        await asyncio.gather(*(s.ready() for s in servers))

        events: list[str] = []
        for burst in range(0, EVENTS, 30):
            batch = outbox.Batch()
            for i in range(burst, burst + 30):
                batch.add(pid, "transaction.posted", {"id": f"txn_{i}"})
            async with db.raw(project_id=pid) as conn:
                events += [ids.encode("event", e) for e in await outbox.emit_many(conn, batch)]
            for s in servers:  # which process holds which connection, while they are open
                ports[s.name] |= s.client_ports(receiver.port)
            await asyncio.sleep(0.05)

        async def all_succeeded() -> bool:
            for s in servers:
                ports[s.name] |= s.client_ports(receiver.port)
            rows = await deliveries(database, pid)
            return len(rows) == 2 * EVENTS and all(r["status"] == "SUCCEEDED" for r in rows)

        await wait_until(all_succeeded, 60, "every delivery succeeds")
        await asyncio.sleep(0.5)  # an attempt sent twice would arrive now
        for s in servers:
            ports[s.name] |= s.client_ports(receiver.port)
    finally:
        for s in servers:
            s.stop()
        await receiver.stop()
        await db.dispose()

    assert len(events) == EVENTS
    ok = Counter(a.webhook_id for a in receiver.of("/ok"))
    flaky = Counter(a.webhook_id for a in receiver.of("/flaky/1"))
    assert ok == dict.fromkeys(events, 1), "an /ok delivery was sent more than once, or never"
    assert flaky == dict.fromkeys(events, 2), "a /flaky/1 attempt was sent twice, or a retry is missing"
    assert Counter(a.status for a in receiver.of("/flaky/1")) == {500: EVENTS, 200: EVENTS}

    conn = await asyncpg.connect(asyncpg_dsn(database))
    try:
        log = await conn.fetch(
            "SELECT e.url, a.attempt, a.status_code, count(*) AS n FROM webhook_delivery_attempts a"
            " JOIN webhook_deliveries d ON d.id = a.delivery_id JOIN webhook_endpoints e ON e.id = d.endpoint_id"
            " WHERE d.project_id = $1 GROUP BY 1, 2, 3 ORDER BY 1, 2",
            pid,
        )
    finally:
        await conn.close()
    assert [(r["url"].rsplit(":", 1)[1], r["attempt"], r["status_code"], r["n"]) for r in log] == [
        (f"{receiver.port}/flaky/1", 1, 500, EVENTS),
        (f"{receiver.port}/flaky/1", 2, 200, EVENTS),
        (f"{receiver.port}/ok", 1, 200, EVENTS),
    ]

    # Both processes did work: requests came over connections of each.
    sent_by = Counter(
        next((name for name, owned in ports.items() if a.client_port in owned), "unknown") for a in receiver.arrivals
    )
    assert sent_by["one"] > 0 and sent_by["two"] > 0, sent_by
