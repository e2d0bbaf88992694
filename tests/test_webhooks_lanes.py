"""Endpoint lanes in the delivery worker: an endpoint that answers, slowly, with a long backlog keeps
its lane busy, and another endpoint's new events still go out at once (not after the backlog); rows
waiting in a lane longer than a lease stay with their worker (it renews their lease)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from ledgerx import ids
from ledgerx.domain.actor import Actor
from ledgerx.domain.webhooks import endpoints, outbox
from ledgerx.domain.webhooks.delivery import DeliveryPolicy, DeliveryWorker
from ledgerx.services import Services
from tests.ledger_helpers import new_project
from tests.tenancy_helpers import owner_sql
from tests.webhook_processes import Recorder, wait_until

ACTOR = Actor.system("test")


@pytest.fixture
async def recorder(services: Services) -> AsyncIterator[Recorder]:
    # The worker serves every project of the session's database: other tests' leftovers must not
    # reach it (as in test_webhooks_out).
    await owner_sql(services.settings, "UPDATE webhook_deliveries SET status = 'FAILED' WHERE status = 'PENDING'")
    r = Recorder()
    await r.start()
    yield r
    await r.stop()
    await owner_sql(services.settings, "UPDATE webhook_deliveries SET status = 'FAILED' WHERE status = 'PENDING'")


async def test_a_busy_endpoints_backlog_does_not_starve_another(services: Services, recorder: Recorder) -> None:
    pid = await new_project(services)
    for url, types in ((recorder.url("/delay/40"), ["invoice.paid"]), (recorder.url("/ok"), ["transaction.posted"])):
        await endpoints.create(services.db, ACTOR, pid, url=url, events=types, allow_private=True)
    # The slow endpoint's lane sends 4 at a time, 40 ms each: its 600-event backlog (older than
    # anything else, three claims' worth) lasts about 6 s.
    policy = DeliveryPolicy(allow_private=True, timeout=5, per_endpoint=4, poll_interval=0.05)
    batch = outbox.Batch()
    for i in range(600):
        batch.add(pid, "invoice.paid", {"n": i})
    async with services.db.raw(project_id=pid) as conn:
        await outbox.emit_many(conn, batch)
    worker = DeliveryWorker(services.db, policy)
    worker.start()
    latencies = []
    try:
        await wait_until(lambda: len(recorder.of("/delay/40")) >= 20, 10, "the backlog is being sent")
        for i in range(5):
            committed = time.time()
            async with services.db.raw(project_id=pid) as conn:
                event_id = await outbox.emit(conn, pid, "transaction.posted", {"n": i})
            assert event_id is not None
            latencies.append(await arrival(recorder, ids.encode("event", event_id)) - committed)
        backlog_left = 600 - len(recorder.of("/delay/40"))
    finally:
        await worker.stop()
    # Without the backlog each arrives within a poll or two (0.05 s); behind it, seconds later.
    assert max(latencies) < 0.5, latencies
    assert backlog_left > 0, "the backlog was gone before the other endpoint's events: nothing was measured"


async def arrival(recorder: Recorder, hook: str) -> float:
    def at() -> float | None:
        return next((a.at for a in recorder.of("/ok") if a.webhook_id == hook), None)

    got: float = await wait_until(at, 10, f"{hook} arrives")
    return got


async def test_rows_waiting_in_a_lane_keep_their_lease(services: Services, recorder: Recorder) -> None:
    """A live worker renews the lease of the rows it holds: rows waiting in a slow lane for longer
    than a lease are not claimed again by another worker (each is sent once)."""
    pid = await new_project(services)
    await endpoints.create(services.db, ACTOR, pid, url=recorder.url("/delay/700"), events=["*"], allow_private=True)
    # One request at a time, 0.7 s each: the twelfth waits ~8 s, past the 7 s lease (2 x 1 s + 5 s).
    policy = DeliveryPolicy(allow_private=True, timeout=1, per_endpoint=1, poll_interval=0.05)
    assert policy.lease == 7
    batch = outbox.Batch()
    for i in range(12):
        batch.add(pid, "invoice.paid", {"n": i})
    async with services.db.raw(project_id=pid) as conn:
        await outbox.emit_many(conn, batch)
    first, second = DeliveryWorker(services.db, policy), DeliveryWorker(services.db, policy)
    assert await first._record_and_claim(claim=True) == (200, 12)  # it holds all twelve
    first.start()
    second.start()
    try:
        await wait_until(lambda: len(recorder.of("/delay/700")) >= 12, 20, "all twelve are sent")
        await asyncio.sleep(1.0)  # a second copy would arrive now
    finally:
        await first.stop()
        await second.stop()
    sent = Counter(a.webhook_id for a in recorder.of("/delay/700"))
    assert len(sent) == 12 and set(sent.values()) == {1}, sent
    rows = await owner_sql(
        services.settings, "SELECT status, attempts FROM webhook_deliveries WHERE project_id = $1", pid
    )
    assert {(r["status"], r["attempts"]) for r in rows} == {("SUCCEEDED", 1)}
