"""The live fan-out: one feed per (kind, key) per instance, coalescing, drop-to-latest delivery.

    Redis pub/sub ──(one SUBSCRIBE/PSUBSCRIBE per channel per instance)──> Feed ──> Watcher x N
                                                                           │
                                                 re-reads its snapshot at most once per interval

- Every app instance holds at most one feed per key (a project's metrics in a currency, the
  platform's revenue in a currency), created by the first local subscriber and closed with the
  last. The feed listens to its topics through the event bus (which holds one Redis subscription
  per channel per instance, and one PSUBSCRIBE per pattern).
- An event only marks the feed dirty. The feed re-reads its snapshot from the database at most
  once per `interval` (leading edge: an event after a quiet spell is sent at once), so a burst of
  thousands of events costs a handful of reads and messages. While nothing happens it re-reads
  every `refresh` seconds (rolling windows move) and sends only if a figure changed.
- Delivery never blocks: each watcher has a single slot holding the latest snapshot plus a count
  of the events folded into it. A slow websocket only ever has one snapshot waiting (the newest);
  producers, the feed and other watchers never wait for it.
- Delivery is paced: a new snapshot reaches every watcher's slot at once, but the watchers are
  woken (to render and send) a few per turn of the event loop, in order, by the hub's `Pacer`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from prometheus_client import Counter, Gauge, Histogram

from ledgerx.domain.events import EventBus
from ledgerx.domain.topics import Event, event_count, event_time
from ledgerx.metrics import REGISTRY

log = logging.getLogger("ledgerx.analytics.live")

LIVE_SUBSCRIBERS = Gauge("ledgerx_live_subscribers", "Live subscriptions held by this instance", registry=REGISTRY)
LIVE_FEEDS = Gauge(
    "ledgerx_live_feeds", "Live feeds (one per project and currency, or revenue) here", registry=REGISTRY
)
LIVE_EVENTS = Counter("ledgerx_live_events_total", "Domain events heard by live feeds", registry=REGISTRY)
LIVE_MESSAGES = Counter("ledgerx_live_messages_total", "Snapshots handed to live subscribers", registry=REGISTRY)
LIVE_REPLACED = Counter(
    "ledgerx_live_replaced_total",
    "Snapshots replaced by a newer one before a slow subscriber took them",
    registry=REGISTRY,
)
LIVE_SNAPSHOT_SECONDS = Histogram(
    "ledgerx_live_snapshot_seconds",
    "Time to read one live snapshot",
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


class Snapshot(Protocol):
    def same_figures(self, other: object) -> bool: ...


S = TypeVar("S", bound=Snapshot)


class FeedClosed(Exception):
    """The instance is shutting down: streams end quietly (`complete`); clients reconnect."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(slots=True)
class Batch:
    """Events folded into one message: how many, and the oldest and newest of them."""

    count: int = 0
    first_at: dt.datetime | None = None
    last_at: dt.datetime | None = None

    def add(self, n: int, at: dt.datetime) -> None:
        self.count += n
        if self.first_at is None or at < self.first_at:
            self.first_at = at
        if self.last_at is None or at > self.last_at:
            self.last_at = at

    def merge(self, other: Batch) -> None:
        if other.count == 0:
            return
        assert other.first_at is not None
        assert other.last_at is not None
        self.add(other.count, other.first_at)
        self.add(0, other.last_at)


@dataclasses.dataclass(frozen=True, slots=True)
class Update(Generic[S]):
    """What one subscriber receives: the snapshot and what this message folds in for it."""

    snapshot: S
    sequence: int  # 1 for the first (full) snapshot, then 2, 3, …
    events: int  # domain events since this subscriber's previous message
    first_event_at: dt.datetime | None
    last_event_at: dt.datetime | None

    @property
    def initial(self) -> bool:
        return self.sequence == 1


class Watcher(Generic[S]):
    """One subscriber's mailbox: a single slot (drop to latest) and a wake-up event."""

    def __init__(self, pacer: Pacer | None = None) -> None:
        self._snapshot: S | None = None
        self._batch = Batch()
        self._ready = asyncio.Event()
        self._error: BaseException | None = None
        self._pacer = pacer
        self._queued = False  # waiting for its turn with the pacer
        self.sent = 0
        self.replaced = 0  # snapshots overwritten before this subscriber took them
        # Set by the feed when the project's memberships change: the guard re-checks access.
        self.recheck = asyncio.Event()

    def offer(self, snapshot: S, batch: Batch | None = None) -> None:
        if self._snapshot is not None:
            self.replaced += 1
            LIVE_REPLACED.inc()
        self._snapshot = snapshot
        if batch is not None:
            self._batch.merge(batch)
        if self._pacer is None:
            self._ready.set()
        elif not self._queued:
            self._queued = True
            self._pacer.enqueue(self)

    def wake(self) -> None:
        """Its turn (the pacer): the subscriber renders and sends what its slot holds by then."""
        self._queued = False
        self._ready.set()

    def fold(self, batch: Batch) -> None:
        """Count events whose snapshot changed nothing; they ride along with the next message."""
        self._batch.merge(batch)

    def fail(self, error: BaseException) -> None:
        """End the stream: the next `next()` raises `error` (at once, not paced)."""
        if self._error is None:
            self._error = error
        self._ready.set()

    @property
    def failed(self) -> bool:
        return self._error is not None

    async def wait(self) -> None:
        """Until there is something to take (a snapshot or the end of the stream)."""
        while self._snapshot is None and self._error is None:
            self._ready.clear()
            await self._ready.wait()

    def take(self) -> Update[S] | None:
        """The newest snapshot with what it folds in (None if there is none); raises the error
        that ended the stream."""
        if self._error is not None:
            raise self._error
        snap = self._snapshot
        if snap is None:
            return None
        batch, self._batch, self._snapshot = self._batch, Batch(), None
        self.sent += 1
        LIVE_MESSAGES.inc()
        return Update(snap, self.sent, batch.count, batch.first_at, batch.last_at)

    async def next(self) -> Update[S]:
        while True:
            await self.wait()
            update = self.take()
            if update is not None:
                return update


class Pacer:
    """Wakes watchers that have a message waiting, `burst` of them per turn of the event loop.

    A snapshot reaches thousands of watchers at once. Waking them all together would put thousands
    of render-and-send steps into one turn of the loop, and every other request, the pub/sub reader
    and the next snapshot read would wait behind all of them. The pacer wakes `burst` watchers, lets
    the loop turn (I/O is polled, other tasks run), then wakes the next ones, in the order their
    messages arrived. It never waits for a send, so a slow websocket holds nobody back, and a
    message costs one wake-up and no timer (thousands of messages a second go through here).
    """

    def __init__(self, burst: int = 32) -> None:
        self.burst = burst
        self._queue: collections.deque[Watcher[Any]] = collections.deque()
        # The loop a turn is scheduled on (None: no turn pending). A turn pending on a loop that
        # has since gone away must not keep the queue from ever being served.
        self._turn_loop: asyncio.AbstractEventLoop | None = None

    def enqueue(self, w: Watcher[Any]) -> None:
        self._queue.append(w)
        loop = asyncio.get_running_loop()
        if self._turn_loop is not loop:
            self._turn_loop = loop
            loop.call_soon(self._turn)

    def _turn(self) -> None:
        queue = self._queue
        for _ in range(min(self.burst, len(queue))):
            queue.popleft().wake()
        if queue:
            # Runs in the next turn of the loop, after the watchers woken now have had theirs.
            asyncio.get_running_loop().call_soon(self._turn)
        else:
            self._turn_loop = None

    def __len__(self) -> int:
        return len(self._queue)


class Source(Protocol):
    """Where a feed's events come from (the event bus, by topic or by pattern)."""

    def subscribe(self, topic: str) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Listen:
    """A topic a feed listens to; `recheck` topics wake the access guards instead of the data."""

    source: Source
    topic: str
    recheck: bool = False


class Feed(Generic[S]):
    def __init__(
        self,
        key: Hashable,
        listens: Sequence[Listen],
        build: Callable[[dt.datetime], Awaitable[S]],
        *,
        interval: float,
        refresh: float,
        clock: Callable[[], dt.datetime],
        on_empty: Callable[[Feed[S]], None],
    ) -> None:
        self.key = key
        self.listens = tuple(listens)
        self.build = build
        self.interval = interval
        self.refresh = refresh
        self.clock = clock
        self.on_empty = on_empty
        self.watchers: set[Watcher[S]] = set()
        self.latest: S | None = None
        self.builds = 0
        self.events = 0
        self._pending = Batch()
        self._dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        ready = [asyncio.Event() for _ in self.listens]
        for listen, ev in zip(self.listens, ready, strict=True):
            self._tasks.append(
                asyncio.create_task(self._listen(listen, ev), name=f"ledgerx-live-listen:{listen.topic}")
            )
        self._tasks.append(asyncio.create_task(self._pump(ready), name=f"ledgerx-live-feed:{self.key}"))

    async def close(self) -> None:
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    def join(self, w: Watcher[S]) -> None:
        self.watchers.add(w)
        if self.latest is not None:
            # The newest snapshot is exact as of its `at`; events after it are pending and follow.
            w.offer(self.latest)

    def leave(self, w: Watcher[S]) -> None:
        self.watchers.discard(w)
        if not self.watchers:
            self.on_empty(self)

    # -- events ---------------------------------------------------------------------------------

    async def _listen(self, listen: Listen, ready: asyncio.Event) -> None:
        backoff = 0.2
        while not self._closed:
            try:
                async with listen.source.subscribe(listen.topic) as events:
                    ready.set()
                    backoff = 0.2
                    async for event in events:
                        self.signal(event, recheck=listen.recheck)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("live feed %s: listening to %s failed; retrying", self.key, listen.topic, exc_info=True)
                ready.set()  # do not hold the first snapshot back while Redis is away
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def signal(self, event: Event, *, recheck: bool = False) -> None:
        if recheck:
            for w in self.watchers:
                w.recheck.set()
            return
        n = event_count(event)
        self.events += n
        LIVE_EVENTS.inc(n)
        self._pending.add(n, event_time(event) or utcnow())
        self._dirty.set()

    # -- the pump -------------------------------------------------------------------------------

    async def _pump(self, ready: Sequence[asyncio.Event]) -> None:
        loop = asyncio.get_running_loop()
        # Listen first, read second: nothing committed after the first read can be missed.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), timeout=5)
        last = -float("inf")
        failures = 0
        while True:
            if self.latest is not None:
                # Without events, an idle refresh: rolling windows move on their own.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), timeout=self.refresh)
                wait = last + self.interval - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            self._dirty.clear()
            batch, self._pending = self._pending, Batch()
            last = loop.time()
            started = loop.time()
            try:
                snapshot = await self.build(self.clock())
            except asyncio.CancelledError:
                raise
            except Exception:
                # A read that keeps failing (the database away, a bug) is retried with a growing
                # pause, and logged with its traceback the first time and then every 64th retry,
                # not once a second for as long as anyone watches.
                failures += 1
                if failures == 1 or failures % 64 == 0:
                    log.exception("live feed %s: reading the snapshot failed (%d in a row)", self.key, failures)
                self._pending.merge(batch)
                self._dirty.set()
                await asyncio.sleep(min(max(self.interval, 1.0) * 2 ** min(failures - 1, 5), 30.0))
                continue
            if failures:
                log.info("live feed %s: reading works again after %d failures", self.key, failures)
                failures = 0
            self.builds += 1
            LIVE_SNAPSHOT_SECONDS.observe(loop.time() - started)
            changed = self.latest is None or not snapshot.same_figures(self.latest)
            self.latest = snapshot
            for w in list(self.watchers):
                if changed or w.sent == 0:
                    w.offer(snapshot, batch)
                else:
                    w.fold(batch)


class LiveHub:
    """This instance's feeds. `watch()` is what a subscription resolver holds for its lifetime."""

    def __init__(
        self,
        *,
        interval: float,
        refresh: float,
        clock: Callable[[], dt.datetime] = utcnow,
        burst: int = 32,
    ) -> None:
        self.interval = interval
        self.refresh = refresh
        self.clock = clock
        self.feeds: dict[Hashable, Feed[Any]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        # At most `burst` subscribers render and send per turn of the event loop (see Pacer);
        # waiting subscribers take the newest snapshot when their turn comes.
        self.pacer = Pacer(burst)

    @contextlib.asynccontextmanager
    async def watch(
        self,
        key: Hashable,
        listens: Callable[[], Sequence[Listen]],
        build: Callable[[dt.datetime], Awaitable[S]],
    ) -> AsyncIterator[Watcher[S]]:
        feed: Feed[S] | None = self.feeds.get(key)
        if feed is None:
            feed = Feed(
                key,
                listens(),
                build,
                interval=self.interval,
                refresh=self.refresh,
                clock=lambda: self.clock(),
                on_empty=self._drop,
            )
            self.feeds[key] = feed
            LIVE_FEEDS.inc()
            feed.start()
        w: Watcher[S] = Watcher(self.pacer)
        feed.join(w)
        LIVE_SUBSCRIBERS.inc()
        try:
            yield w
        finally:
            LIVE_SUBSCRIBERS.dec()
            feed.leave(w)

    def _drop(self, feed: Feed[Any]) -> None:
        if self.feeds.get(feed.key) is feed:
            del self.feeds[feed.key]
            LIVE_FEEDS.dec()
        task = asyncio.get_running_loop().create_task(feed.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def subscriber_count(self) -> int:
        return sum(len(f.watchers) for f in self.feeds.values())

    async def close(self) -> None:
        feeds = list(self.feeds.values())
        self.feeds.clear()
        LIVE_FEEDS.dec(len(feeds))
        for f in feeds:
            for w in list(f.watchers):
                w.fail(FeedClosed("the server is shutting down"))
            await f.close()
        if self._closing:
            await asyncio.wait(list(self._closing), timeout=5)


class BusSource:
    """The event bus as a feed source: one Redis SUBSCRIBE per topic per instance, or with
    `pattern` one PSUBSCRIBE per pattern."""

    def __init__(self, bus: EventBus, *, pattern: bool = False) -> None:
        self.bus = bus
        self.pattern = pattern

    @contextlib.asynccontextmanager
    async def subscribe(self, topic: str) -> AsyncIterator[AsyncIterator[Event]]:
        async with self.bus.subscribe(topic, pattern=self.pattern) as sub:
            yield sub
