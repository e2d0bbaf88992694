"""The event bus: domain events fanned out through Redis pub/sub to every app instance.

Publishers call `publish`/`publish_many` only after their database transaction committed (an
event must never announce something that was rolled back). Delivery is at-most-once: pub/sub keeps
nothing for instances that are not connected, so clients that must not miss a change re-read
state after (re)subscribing.

Wire format (other domains PSUBSCRIBE to it, keep it stable): one channel per topic,
`<prefix>ev:<topic>`, carrying the event as JSON. Every topic is named in `domain/topics.py` (never
spelled elsewhere); changes of a project's access or plan are announced by `domain/changes.py`.
A committed batch is published with one EVALSHA of a script that PUBLISHes every event
server-side: a Redis command per event cost more than the database work of the posting.

Each instance holds one pub/sub connection. Local subscribers (GraphQL subscriptions) share it: the
first subscriber of a topic SUBSCRIBEs, the last one UNSUBSCRIBEs, and a reader task fans each
message out through bounded queues. A slow subscriber loses its oldest events rather than making
the reader, and every other subscriber, wait or memory grow.

Subscribers that can repair a loss from the database (the ledger's streams) subscribe with
`gaps=True`: their iteration then yields `GAP` whenever events may have been lost for them, after
which they re-read what they need. A loss is (a) their queue overflowing, or (b) the pub/sub
connection dropping: `GAP` comes once Redis confirmed the re-subscription (redis-py re-subscribes
on reconnect), so a read after it misses nothing published later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio import Redis

from ledgerx import jsonenc

log = logging.getLogger("ledgerx.events")

Event = dict[str, Any]
# Events per script call: keeps each command well below Redis's argument limits.
MAX_EVENTS_PER_CALL = 200
# PUBLISH each (channel, message) pair of ARGV; returns how many were published.
_PUBLISH_ALL = """
for i = 1, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end
return #ARGV / 2
"""


_END: Event = {}  # the end-of-stream marker a closed subscription's queue ends with (compared by identity)
_WAKE: Event = {}  # wakes a waiting gap-aware subscriber so it sees its gap flag (never yielded)
# Yielded to `gaps=True` subscribers when events may have been lost (compare by identity: `is GAP`).
GAP: Event = {"type": "bus.gap"}


class Subscription:
    """One local subscriber: an async iterator over the events of one topic.

    Closed when its `subscribe` block exits or the bus closes: iteration then ends, and tasks
    still waiting on it (helpers such as `asyncio.ensure_future(anext(sub))`, a relay task) are
    cancelled and awaited, so none is left pending for the garbage collector to destroy."""

    def __init__(self, topic: str, maxsize: int, *, gaps: bool = False) -> None:
        self.topic = topic
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0
        self.closed = False
        self.gaps = gaps
        self._gap = False
        self._waiters: set[asyncio.Task[Any]] = set()

    def offer(self, event: Event) -> None:
        """Enqueue without ever blocking the reader; on overflow drop the oldest event."""
        if self.closed:
            return
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.dropped += 1
            self._gap = self.gaps
            if self.dropped == 1 or self.dropped % 100 == 0:
                log.warning("slow subscriber on %s: %d events dropped", self.topic, self.dropped)
        self.queue.put_nowait(event)

    @property
    def gap_pending(self) -> bool:
        """Events may have been lost and the subscriber has not been told yet (`GAP` is next)."""
        return self._gap

    def signal_gap(self) -> None:
        """Events may have been lost: a gap-aware subscriber's next item is `GAP`."""
        if self.closed or not self.gaps:
            return
        self._gap = True
        if self.queue.empty():
            self.queue.put_nowait(_WAKE)

    async def close(self) -> None:
        """End the iteration; cancel and await the other tasks waiting for an event."""
        if not self.closed:
            self.closed = True
            if self.queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.queue.get_nowait()
            self.queue.put_nowait(_END)
        me = asyncio.current_task()
        waiting = {t for t in self._waiters if t is not me and not t.done()}
        for t in waiting:
            t.cancel()
        if waiting:
            await asyncio.wait(waiting)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._gap and not self.closed:
                self._gap = False
                return GAP
            event = await self._get()
            if event is _END:
                self.queue.put_nowait(_END)  # every later call ends too
                raise StopAsyncIteration
            if event is not _WAKE:
                return event

    async def _get(self) -> Event:
        if not self.queue.empty():
            return self.queue.get_nowait()
        task = asyncio.current_task()
        if task is not None:
            self._waiters.add(task)
        try:
            return await self.queue.get()
        finally:
            if task is not None:
                self._waiters.discard(task)


class EventBus:
    def __init__(self, redis: Redis, *, listen_redis: Redis | None = None, prefix: str, queue_size: int = 256) -> None:
        # Publishing shares the app's client; listening needs a connection without a socket timeout.
        self.redis = redis
        self.listen_redis = listen_redis or redis
        self.prefix = prefix + "ev:"
        self.queue_size = queue_size
        self._publish_all = redis.register_script(_PUBLISH_ALL)
        # Keyed by (is a pattern, topic or pattern).
        self._subs: dict[tuple[bool, str], set[Subscription]] = {}
        self._confirmed: dict[tuple[bool, str], asyncio.Event] = {}
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        # Subscriptions whose next confirmation by Redis is a re-subscription (the connection
        # dropped, or the first confirmation came too late): their subscribers get GAP then.
        self._stale: set[tuple[bool, str]] = set()
        # How many times the pub/sub connection was lost (tests and metrics read it).
        self.disconnects = 0

    def channel(self, topic: str) -> str:
        return self.prefix + topic

    # -- publishing ---------------------------------------------------------------------------

    async def publish(self, topic: str, event: Event) -> None:
        await self.publish_many([(topic, event)])

    async def publish_many(self, events: Sequence[tuple[str, Event]]) -> None:
        """Publish in one round trip. Never raises: the change is committed; losing a
        notification must not turn a successful request into an error."""
        if not events:
            return
        try:
            for i in range(0, len(events), MAX_EVENTS_PER_CALL):
                args: list[str] = []
                for topic, event in events[i : i + MAX_EVENTS_PER_CALL]:
                    args += (self.channel(topic), jsonenc.dumps(event))
                await self._publish_all(keys=[], args=args)
        except Exception:
            log.exception("could not publish %d events", len(events))

    # -- subscribing --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def subscribe(
        self, topic: str, *, pattern: bool = False, confirm_timeout: float = 5.0, gaps: bool = False
    ) -> AsyncIterator[Subscription]:
        """Receive the topic's events while the block runs (returns once Redis confirmed).

        With `pattern`, `topic` is a Redis glob (`project:*:payments`) and the events of every
        matching topic arrive (one PSUBSCRIBE per pattern per instance). With `gaps`, the
        iteration also yields `GAP` when events may have been lost (see the module docstring)."""
        sub = Subscription(topic, self.queue_size, gaps=gaps)
        key = (pattern, topic)
        await self._add(key, sub, confirm_timeout)
        try:
            yield sub
        finally:
            await self._remove(key, sub)

    def active_topics(self) -> set[str]:
        """Topics this instance is subscribed to (confirmed by Redis); tests wait on this."""
        return {t for (p, t), e in self._confirmed.items() if not p and e.is_set() and self._subs.get((p, t))}

    def active_patterns(self) -> set[str]:
        """Patterns this instance is subscribed to (confirmed by Redis)."""
        return {t for (p, t), e in self._confirmed.items() if p and e.is_set() and self._subs.get((p, t))}

    async def _add(self, key: tuple[bool, str], sub: Subscription, confirm_timeout: float) -> None:
        pattern, topic = key
        async with self._lock:
            first = not self._subs.get(key)
            self._subs.setdefault(key, set()).add(sub)
            if first:
                self._confirmed[key] = asyncio.Event()
                if self._pubsub is None:
                    self._pubsub = self.listen_redis.pubsub()
                if pattern:
                    await self._pubsub.psubscribe(self.channel(topic))
                else:
                    await self._pubsub.subscribe(self.channel(topic))
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.create_task(self._read(), name="ledgerx-events-reader")
            confirmed = self._confirmed[key]
        try:
            await asyncio.wait_for(confirmed.wait(), confirm_timeout)
        except TimeoutError:
            log.warning("redis did not confirm the subscription to %s in time", topic)
            # Events published before the late confirmation are lost: say so when it comes.
            sub.signal_gap()
            self._stale.add(key)

    async def _remove(self, key: tuple[bool, str], sub: Subscription) -> None:
        pattern, topic = key
        await sub.close()
        async with self._lock:
            subs = self._subs.get(key)
            if subs is None:
                return
            subs.discard(sub)
            if subs:
                return
            del self._subs[key]
            self._confirmed.pop(key, None)
            self._stale.discard(key)
            if self._pubsub is not None and not self._closed:
                try:
                    if pattern:
                        await self._pubsub.punsubscribe(self.channel(topic))
                    else:
                        await self._pubsub.unsubscribe(self.channel(topic))
                except Exception:  # the connection is gone; nothing left to unsubscribe
                    log.debug("unsubscribe from %s failed", topic, exc_info=True)

    async def _read(self) -> None:
        """Fan messages out to local subscribers until closed; reconnects after Redis errors
        (redis-py resubscribes on reconnect)."""
        while not self._closed:
            try:
                msg = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("event bus connection lost; reconnecting", exc_info=True)
                self.disconnects += 1
                # Whatever was published until the re-subscription is lost for every subscriber.
                self._stale.update(self._subs)
                await asyncio.sleep(0.5)
                continue
            if msg is not None:
                self._dispatch(msg)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        pattern = kind in ("psubscribe", "pmessage")
        # A pattern's messages name it in `pattern`; confirmations of either kind in `channel`.
        name = msg.get("pattern") if kind == "pmessage" else msg.get("channel")
        if isinstance(name, bytes):
            name = name.decode()
        if not isinstance(name, str) or not name.startswith(self.prefix):
            return
        key = (pattern, name[len(self.prefix) :])
        if kind in ("subscribe", "psubscribe"):
            confirmed = self._confirmed.get(key)
            if confirmed is None:
                return
            # A confirmation of a confirmed subscription is redis-py re-subscribing after a
            # reconnect (also one inside a single get_message call, which raises nothing here).
            if confirmed.is_set() or key in self._stale:
                self._stale.discard(key)
                for sub in list(self._subs.get(key, ())):
                    sub.signal_gap()
            confirmed.set()
            return
        if kind not in ("message", "pmessage"):
            return
        try:
            event = json.loads(msg["data"])
        except (ValueError, TypeError):
            log.warning("undecodable event on %s", key[1])
            return
        if not isinstance(event, dict):
            return
        for sub in list(self._subs.get(key, ())):
            sub.offer(event)

    async def close(self) -> None:
        """Stop the reader and end every local subscription (their waiting tasks are cancelled and
        awaited), then close the pub/sub connection."""
        self._closed = True
        for subs in list(self._subs.values()):
            for sub in list(subs):
                await sub.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        if self.listen_redis is not self.redis:
            with contextlib.suppress(Exception):
                await self.listen_redis.aclose()
