"""Coalescing of concurrent postings into shared database transactions (TigerBeetle-style).

Postings are routed to a shard by wallet (a transfer by its lowest wallet id). Each shard runs at
most one database transaction at a time; whatever arrives while it runs forms the next batch, so
under load one commit (one WAL flush, one round of row locks) carries many postings, and when
idle a posting goes alone at once. All postings for one wallet go through one shard, in arrival
order, which is the order INSUFFICIENT_FUNDS is decided in.

Each posting in a batch keeps every guarantee it would have alone: its own transaction row,
entries, audit row and idempotency record, and a refused posting writes nothing (`apply` decides
postings one by one in memory before the single write). If the batch fails as a whole (an
idempotency race, a deadlock, an unexpected error), its postings are retried one at a time, so one
bad posting cannot fail the others.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg
from prometheus_client import Histogram

from ledgerx.domain.errors import AppError
from ledgerx.domain.ledger import apply, store
from ledgerx.domain.ledger.types import Posted
from ledgerx.metrics import REGISTRY

log = logging.getLogger("ledgerx.ledger.batcher")

# How well concurrent postings coalesce: postings per database transaction.
BATCH_SIZE = Histogram(
    "ledgerx_ledger_batch_postings",
    "Postings carried by one ledger database transaction",
    registry=REGISTRY,
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)

# Errors after which the same work may succeed when simply run again.
RETRYABLE = (
    asyncpg.UniqueViolationError,  # an idempotency key claimed by a concurrent transaction
    asyncpg.DeadlockDetectedError,
    asyncpg.SerializationError,
)
SINGLE_ATTEMPTS = 4

PoolProvider = Callable[[], Awaitable[asyncpg.Pool]]
EventSink = Callable[[list[tuple[str, dict[str, Any]]]], None]


@dataclasses.dataclass(slots=True)
class _Pending:
    item: apply.Prepared
    future: asyncio.Future[Posted]


async def run_in_transaction(
    conn: asyncpg.Connection, items: Sequence[apply.Prepared], now: dt.datetime
) -> apply.Result:
    """BEGIN (with the RLS settings of every project in the batch), apply, COMMIT."""
    await store.begin(conn, {p.project_id for p in items})
    try:
        result = await apply.apply(conn, items, now)
    except BaseException:
        await store.rollback_quietly(conn)
        raise
    await conn.execute("COMMIT")
    return result


class _Shard:
    def __init__(self, owner: Batcher, index: int) -> None:
        self.owner = owner
        self.index = index
        self.queue: collections.deque[_Pending] = collections.deque()
        self.task: asyncio.Task[None] | None = None

    def push(self, pending: _Pending) -> None:
        self.queue.append(pending)
        if self.task is None:
            self.task = asyncio.create_task(self._drain(), name=f"ledger-shard-{self.index}")

    async def _drain(self) -> None:
        try:
            while self.queue:
                if self.owner.linger_s > 0:
                    await asyncio.sleep(self.owner.linger_s)
                batch = self._take()
                if not batch:
                    continue
                try:
                    await self.owner.process(batch)
                except Exception as exc:  # e.g. no database connection: fail these, keep serving
                    log.exception("ledger batch failed")
                    for p in batch:
                        _settle(p.future, exc)
        finally:
            self.task = None

    def fail_all(self, exc: BaseException) -> None:
        while self.queue:
            _settle(self.queue.popleft().future, exc)

    def _take(self) -> list[_Pending]:
        batch: list[_Pending] = []
        while self.queue and len(batch) < self.owner.max_batch:
            p = self.queue.popleft()
            if not p.future.done():  # the caller went away before we started: do not post
                batch.append(p)
        return batch


class Batcher:
    def __init__(
        self,
        pool: PoolProvider,
        *,
        clock: Callable[[], dt.datetime],
        on_events: EventSink,
        shards: int = 4,
        max_batch: int = 200,
        linger_s: float = 0.0,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.on_events = on_events
        self.max_batch = max_batch
        self.linger_s = linger_s
        self._shards = [_Shard(self, i) for i in range(shards)]
        # Figures for the benchmark and metrics: batches run and postings carried.
        self.batches = 0
        self.postings = 0

    async def submit(self, item: apply.Prepared) -> Posted:
        """Queue a posting and wait for its outcome (raises its AppError when refused)."""
        fut: asyncio.Future[Posted] = asyncio.get_running_loop().create_future()
        shard = self._shards[min(item.wallet_ids()).int % len(self._shards)]
        shard.push(_Pending(item, fut))
        return await fut

    async def process(self, batch: list[_Pending]) -> None:
        self.batches += 1
        self.postings += len(batch)
        BATCH_SIZE.observe(len(batch))
        pool = await self.pool()
        try:
            async with pool.acquire() as conn:
                result = await run_in_transaction(conn, [p.item for p in batch], self.clock())
        except Exception as exc:
            if len(batch) == 1 and not isinstance(exc, RETRYABLE):
                _settle(batch[0].future, exc)
                return
            log.info("batch of %d failed as a whole (%s); posting one by one", len(batch), type(exc).__name__)
            for p in batch:
                await self._single(pool, p)
            return
        self._deliver(batch, result)

    async def _single(self, pool: asyncpg.Pool, p: _Pending) -> None:
        """One posting in its own transaction, retried after races that a rerun resolves."""
        for attempt in range(SINGLE_ATTEMPTS):
            try:
                async with pool.acquire() as conn:
                    result = await run_in_transaction(conn, [p.item], self.clock())
            except RETRYABLE as exc:
                if attempt + 1 == SINGLE_ATTEMPTS:
                    _settle(p.future, exc)
                    return
                await asyncio.sleep(0.005 * (attempt + 1))
                continue
            except Exception as exc:
                _settle(p.future, exc)
                return
            self._deliver([p], result)
            return

    async def close(self, grace_s: float = 10.0) -> None:
        """Refuse what is still queued (shutdown) and let batches already running finish."""
        for shard in self._shards:
            shard.fail_all(RuntimeError("the ledger is shutting down"))
        running = [s.task for s in self._shards if s.task is not None]
        if running:
            await asyncio.wait(running, timeout=grace_s)

    def _deliver(self, batch: list[_Pending], result: apply.Result) -> None:
        for p, outcome in zip(batch, result.outcomes, strict=True):
            _settle(p.future, outcome)
        if result.events:
            self.on_events(result.events)


def _settle(fut: asyncio.Future[Posted], outcome: Posted | BaseException) -> None:
    if fut.done():
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)


__all__ = ["AppError", "Batcher", "run_in_transaction"]
