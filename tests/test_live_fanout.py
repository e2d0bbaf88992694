"""Fan-out: across instances, one Redis subscription per channel per instance, coalescing under a
burst, and slow subscribers that neither slow producers nor other subscribers."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

import httpx
import pytest

from ledgerx.domain import topics
from ledgerx.domain.analytics.hub import Batch, FeedClosed, Listen, LiveHub, Pacer, Watcher
from ledgerx.ids import decode, uuid7
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, LiveServer, sign_up
from tests.tenancy_helpers import owner_sql
from tests.test_live_support import CREDIT, LIVE_METRICS, WsClient, app_instance, live_project, live_settings


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return live_settings(settings)


async def test_an_event_on_instance_a_reaches_subscribers_on_instance_b(
    gql: GQL, settings: Settings, live_server: LiveServer
) -> None:
    owner = await sign_up(gql)
    p = await live_project(gql, owner, credit=100)
    async with app_instance(settings) as b:
        assert b.services is not live_server.services
        ws = await WsClient.connect(b.ws_url, owner.token)
        try:
            op = await ws.subscribe(LIVE_METRICS, {"p": p.project_id})
            assert (await ws.next_data(op, "liveMetrics"))["totalBalance"] == "100"
            # The mutation goes to instance A over HTTP; A's ledger publishes through Redis.
            async with httpx.AsyncClient(base_url=live_server.url) as http:
                r = await http.post(
                    "/graphql",
                    json={
                        "query": CREDIT,
                        "variables": {"i": {"walletId": p.wallet_id, "amount": 50, "idempotencyKey": "x-inst"}},
                    },
                    headers={"Authorization": f"Bearer {owner.token}"},
                )
                assert not r.json().get("errors"), r.json()
            upd = await ws.until(op, "liveMetrics", lambda d: d["totalBalance"] == "150")
            assert upd["events"] >= 1
            # Instance A has no feed for the project; only B holds one.
            assert live_server.services.live.hub.feeds == {}
            assert len(b.services.live.hub.feeds) == 1
        finally:
            await ws.close()


async def _numsub(services: Services, topic: str) -> int:
    channel = services.events.channel(topic)
    result = await services.redis.pubsub_numsub(channel)
    return int(result[0][1])


async def test_one_redis_subscription_per_channel_per_instance(
    gql: GQL, settings: Settings, live_server: LiveServer
) -> None:
    owner = await sign_up(gql)
    p = await live_project(gql, owner)
    pid = decode("project", p.project_id)
    clients: list[WsClient] = []
    async with app_instance(settings) as b:
        try:
            for server in (live_server, b):
                for _ in range(10):
                    ws = await WsClient.connect(server.ws_url, owner.token)
                    op = await ws.subscribe(LIVE_METRICS, {"p": p.project_id})
                    await ws.next_data(op, "liveMetrics")
                    clients.append(ws)
            for server in (live_server, b):
                feeds = server.services.live.hub.feeds
                assert len(feeds) == 1
                assert len(next(iter(feeds.values())).watchers) == 10
            # Twenty websockets, two instances: two Redis subscribers per channel.
            for topic in topics.project_topics(pid):
                assert await _numsub(live_server.services, topic) == 2
            # The last subscriber to leave an instance closes its feed and its Redis subscriptions.
            for ws in clients[10:]:
                await ws.close()
            for _ in range(100):
                if (
                    not b.services.live.hub.feeds
                    and await _numsub(live_server.services, topics.project_usage(pid)) == 1
                ):
                    break
                await asyncio.sleep(0.05)
            assert b.services.live.hub.feeds == {}
            for topic in topics.project_topics(pid):
                assert await _numsub(live_server.services, topic) == 1
        finally:
            for ws in clients:
                await ws.close()


async def test_a_burst_of_5000_events_is_coalesced(gql: GQL, settings: Settings, live_server: LiveServer) -> None:
    owner = await sign_up(gql)
    p = await live_project(gql, owner, credit=0)
    pid = decode("project", p.project_id)
    metric_id = (await owner_sql(settings, "SELECT id FROM usage_metrics WHERE project_id = $1", pid))[0]["id"]
    ws = await WsClient.connect(live_server.ws_url, owner.token)
    try:
        op = await ws.subscribe(LIVE_METRICS, {"p": p.project_id})
        assert (await ws.next_data(op, "liveMetrics"))["usage"][0]["events"] == 0
        interval = live_server.services.settings.live_interval
        bus = live_server.services.events
        n, batch = 5000, 250
        started = time.monotonic()
        for start in range(0, n, batch):
            # Each event is a real row, then its announcement (as the usage domain does after commit).
            now = dt.datetime.now(dt.UTC)
            await owner_sql(
                settings,
                "INSERT INTO usage_events (id, project_id, metric_id, occurred_at, units, idempotency_key)"
                " SELECT gen_random_uuid(), $1, $2, $3, 1, 'burst-' || g FROM generate_series($4::int, $5::int) g",
                pid,
                metric_id,
                now,
                start,
                start + batch - 1,
            )
            await bus.publish_many([topics.usage_recorded(pid) for _ in range(batch)])
        published = time.monotonic() - started
        final = await ws.until(op, "liveMetrics", lambda d: d["usage"][0]["events"] == n, wait=30)
        elapsed = time.monotonic() - started
        await asyncio.sleep(3 * interval)
        later = [m for m in ws.pending(op) if m["type"] == "next"]
        updates = final["sequence"] - 1 + len(later)
        # At most one message per interval (plus the leading edge and the last trailing one),
        # never one per event.
        assert updates <= elapsed / interval + 2, (updates, elapsed)
        assert updates < 100
        assert final["usage"][0]["units"] == str(n)
        print(f"\n5000 events published in {published:.2f}s -> {updates} messages (events folded: {final['events']})")
    finally:
        await ws.close()


# -- the hub on its own: coalescing and slow subscribers ------------------------------------------


class FakeSnapshot:
    def __init__(self, n: int) -> None:
        self.n = n
        self.at = dt.datetime.now(dt.UTC)

    def same_figures(self, other: object) -> bool:
        return isinstance(other, FakeSnapshot) and other.n == self.n


class FakeSource:
    """An in-process source: `emit` reaches every open subscription to the topic."""

    def __init__(self) -> None:
        self.queues: dict[str, list[asyncio.Queue[dict[str, object]]]] = {}

    def subscribe(self, topic: str):  # type: ignore[no-untyped-def]
        import contextlib

        @contextlib.asynccontextmanager
        async def cm():  # type: ignore[no-untyped-def]
            q: asyncio.Queue[dict[str, object]] = asyncio.Queue()
            self.queues.setdefault(topic, []).append(q)

            async def it():  # type: ignore[no-untyped-def]
                while True:
                    yield await q.get()

            try:
                yield it()
            finally:
                self.queues[topic].remove(q)

        return cm()

    def emit(self, topic: str, event: dict[str, object]) -> None:
        for q in self.queues.get(topic, []):
            q.put_nowait(event)


async def test_slow_subscribers_get_the_latest_snapshot_and_slow_nobody_down() -> None:
    source = FakeSource()
    state = {"n": 0}

    async def build(now: dt.datetime) -> FakeSnapshot:
        return FakeSnapshot(state["n"])

    hub = LiveHub(interval=0.02, refresh=60)
    key = ("test", uuid.uuid4())
    async with hub.watch(key, lambda: [Listen(source, "t")], build) as fast, hub.watch(key, lambda: [], build) as slow:
        assert (await fast.next()).snapshot.n == 0
        # The slow watcher never reads during the burst.
        received = []
        for i in range(1, 201):
            state["n"] = i
            source.emit("t", {"type": "x"})
            if i % 20 == 0:
                await asyncio.sleep(0.03)
                u = await asyncio.wait_for(fast.next(), 2)
                received.append(u.snapshot.n)
        # The fast one kept up (each read saw the newest state) with few messages.
        assert received[-1] == 200
        assert len(received) == 10
        # The slow one holds exactly one snapshot, the newest, and knows how many events it spans.
        await asyncio.sleep(0.1)
        u = await asyncio.wait_for(slow.next(), 2)
        assert u.snapshot.n == 200
        assert u.events == 200
        assert u.sequence == 1
        assert slow.replaced > 0
        feed = hub.feeds[key]
        assert feed.events == 200
        assert feed.builds < 60  # coalesced: not one read per event
    await hub.close()
    assert hub.feeds == {}


async def test_batches_merge_counts_and_times() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    a, b = Batch(), Batch()
    a.add(3, t0 + dt.timedelta(seconds=5))
    b.add(2, t0)
    b.add(1, t0 + dt.timedelta(seconds=9))
    a.merge(b)
    assert (a.count, a.first_at, a.last_at) == (6, t0, t0 + dt.timedelta(seconds=9))
    a.merge(Batch())
    assert a.count == 6


def test_event_payload_helpers() -> None:
    pid = uuid7()
    topic, ev = topics.usage_recorded(pid, count=7)
    assert topic == f"project:{pid}:usage"
    assert topics.event_count(ev) == 7
    assert topics.event_time(ev) is not None
    assert topics.event_count({"count": "x"}) == 1
    assert topics.event_time({"at": 0}) == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert topics.event_time({"at": "nope"}) is None


async def test_closing_the_hub_ends_streams_quietly() -> None:
    async def build(now: dt.datetime) -> FakeSnapshot:
        return FakeSnapshot(1)

    hub = LiveHub(interval=0.01, refresh=60)
    async with hub.watch(("closing",), lambda: [], build) as w:
        assert (await asyncio.wait_for(w.next(), 2)).snapshot.n == 1
        await hub.close()
        with pytest.raises(FeedClosed):
            await asyncio.wait_for(w.next(), 2)
    assert hub.feeds == {}


async def test_a_failing_read_is_retried_and_does_not_end_the_stream() -> None:
    calls = {"n": 0}

    async def build(now: dt.datetime) -> FakeSnapshot:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("database away")
        return FakeSnapshot(calls["n"])

    hub = LiveHub(interval=0.01, refresh=60)
    async with hub.watch(("flaky",), lambda: [], build) as w:
        u = await asyncio.wait_for(w.next(), 5)
        assert u.sequence == 1
        assert u.snapshot.n == 2
    await hub.close()


async def test_the_pacer_wakes_a_few_subscribers_per_loop_turn_in_order_and_waits_for_no_send() -> None:
    pacer = Pacer(burst=3)
    watchers: list[Watcher[FakeSnapshot]] = [Watcher(pacer) for _ in range(8)]
    woken: list[tuple[int, int]] = []  # (loop turn, watcher)
    turn = {"n": 0}

    async def count_turns() -> None:
        while True:
            await asyncio.sleep(0)
            turn["n"] += 1

    async def subscriber(i: int, w: Watcher[FakeSnapshot]) -> None:
        await w.wait()
        woken.append((turn["n"], i))
        if i == 0:
            await asyncio.Event().wait()  # a send stuck on a slow socket: never asks for more

    ticker = asyncio.create_task(count_turns())
    tasks = [asyncio.create_task(subscriber(i, w)) for i, w in enumerate(watchers)]
    await asyncio.sleep(0)
    snap = FakeSnapshot(1)
    for w in watchers:
        w.offer(snap)
        w.offer(snap)  # a second offer before its turn replaces the first; it is woken once
    await asyncio.wait_for(asyncio.gather(*tasks[1:]), 2)
    assert [i for _, i in woken] == list(range(8))  # in the order of the offers
    per_turn: dict[int, int] = {}
    for t, _ in woken:
        per_turn[t] = per_turn.get(t, 0) + 1
    assert max(per_turn.values()) <= 3  # never more than `burst` in one turn of the loop
    assert len(per_turn) >= 3
    assert len(pacer) == 0
    assert all(w.replaced == 1 for w in watchers)
    # Without a pacer a watcher is woken at once.
    direct: Watcher[FakeSnapshot] = Watcher()
    direct.offer(snap)
    assert (await asyncio.wait_for(direct.next(), 1)).snapshot is snap
    ticker.cancel()
    tasks[0].cancel()
