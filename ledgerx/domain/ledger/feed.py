"""A project's transaction stream (`transactionPosted`): every transaction of the project, once
each, in one total order the database can replay, from a cursor on.

Order. A transaction's position is (commit_xid, id): `commit_xid` is the id of the database
transaction that wrote it (migration 0009), `id` breaks ties within one. Positions are not given
out in commit order, so a position is only final once nothing can still appear before it: every
database transaction with a smaller id has ended. That holds below the *horizon*
`pg_snapshot_xmin(pg_current_snapshot())`, the oldest transaction id still running, which only
grows. Reads therefore return rows below the horizon only; committed rows at or above it are
"pending" and are read again after POLL_S until the horizon has passed them.

Caveat: the horizon is cluster-wide. A long-running writing transaction anywhere in the cluster
(any database, any table) holds it back, and the stream waits for it: transactions are delayed,
never lost or reordered.

Live messages are wake-ups only. A message can arrive before the horizon passed its
transaction, and the horizon can pass a transaction before its message arrives (or the message
is lost), so the database is the source of truth: on a wake-up the reader reads what follows its
position, in order. A Redis reconnect or an overflowing queue (events.GAP) is a wake-up too, and
an idle reader re-reads every IDLE_RECHECK_S, in case a publisher's message never reached Redis.

Load. One `ProjectReader` per (instance, project) is shared by the local subscribers: one bus
subscription, at most one query in flight (wake-ups that arrive meanwhile become one more read).
A subscriber whose cursor is older than the reader's position replays on its own up to it, then
follows the reader; one that falls too far behind (FOLLOW_QUEUE) is dropped by the reader and
replays on its own again, so a slow client costs reads, never memory or other clients' messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from ledgerx.db.engine import Database
from ledgerx.domain import events, topics
from ledgerx.domain.errors import BadInput
from ledgerx.domain.ledger import store
from ledgerx.domain.ledger.types import TransactionRecord

log = logging.getLogger("ledgerx.ledger.feed")

PAGE = 200
T = TypeVar("T")


@dataclasses.dataclass(frozen=True, order=True, slots=True)
class Position:
    """A transaction's place in its project's stream: (commit_xid, id), compared in that order
    (Python orders UUIDs as PostgreSQL does: by their bytes)."""

    xid: int
    id: uuid.UUID


START = Position(0, uuid.UUID(int=0))  # before every transaction
_END = Position(2**63 - 1, uuid.UUID(int=2**128 - 1))  # after every transaction


@dataclasses.dataclass(frozen=True, slots=True)
class Positioned:
    position: Position
    transaction: TransactionRecord


_TXN_COLS_T = ", ".join(f"t.{c.strip()}" for c in store.TXN_COLS.split(","))
_HORIZON = "pg_snapshot_xmin(pg_current_snapshot())"

# The page after $2/$3, up to $4/$5, below the horizon ((project_id, commit_xid, id) index).
_PAGE = (
    f"SELECT t.commit_xid AS pos_xid, {_TXN_COLS_T} FROM ledger_transactions t"  # noqa: S608
    " WHERE t.project_id = $1 AND (t.commit_xid, t.id) > ($2::xid8, $3::uuid)"
    f" AND (t.commit_xid, t.id) <= ($4::xid8, $5::uuid) AND t.commit_xid < {_HORIZON}"
    " ORDER BY t.commit_xid, t.id LIMIT $6"
)
# Whether committed rows wait at or above the horizon (in the same snapshot as the page): the
# project's last row decides (one backward step on the stream index).
_PENDING = (
    f"SELECT coalesce((SELECT commit_xid >= {_HORIZON} FROM ledger_transactions WHERE project_id = $1"  # noqa: S608
    " ORDER BY commit_xid DESC, id DESC LIMIT 1), false)"
)
# The last position below the horizon: where a new reader starts.
_TAIL = (
    "SELECT commit_xid AS pos_xid, id FROM ledger_transactions"  # noqa: S608
    f" WHERE project_id = $1 AND commit_xid < {_HORIZON} ORDER BY commit_xid DESC, id DESC LIMIT 1"
)
_POSITION_OF = "SELECT commit_xid AS pos_xid, id FROM ledger_transactions WHERE id = $1 AND project_id = $2"


async def read_page(
    db: Database, project_id: uuid.UUID, after: Position, *, upto: Position = _END, limit: int = PAGE
) -> tuple[list[Positioned], bool]:
    """Up to `limit` transactions after `after` (and at most `upto`), below the horizon, in order;
    and whether committed ones wait above the horizon. One snapshot for all of it (REPEATABLE
    READ): the page and the pending check must agree on the horizon."""
    async with db.raw(project_id=project_id, snapshot=True) as conn:
        rows = await conn.fetch(_PAGE, project_id, after.xid, after.id, upto.xid, upto.id, limit)
        pending = len(rows) < limit and bool(await conn.fetchval(_PENDING, project_id))
        txns = await store.load_transactions(conn, list(rows))
    return [Positioned(Position(r["pos_xid"], r["id"]), t) for r, t in zip(rows, txns, strict=True)], pending


async def tail(db: Database, project_id: uuid.UUID) -> Position:
    async with db.raw(project_id=project_id, snapshot=True) as conn:
        row = await conn.fetchrow(_TAIL, project_id)
    return START if row is None else Position(row["pos_xid"], row["id"])


async def cursor_position(db: Database, project_id: uuid.UUID, txn_id: uuid.UUID) -> Position:
    """The position of transaction `txn_id` (a client's `after`). One that does not exist and
    another project's (RLS hides it) get one same answer."""
    async with db.raw(project_id=project_id) as conn:
        row = await conn.fetchrow(_POSITION_OF, txn_id, project_id)
    if row is None:
        raise BadInput("after is not a transaction of this project", field="after")
    return Position(row["pos_xid"], row["id"])


@dataclasses.dataclass(frozen=True, slots=True)
class Snapshot:
    """Which database transactions had committed at one moment (a pg_snapshot)."""

    xmin: int
    xmax: int
    running: frozenset[int]

    def saw(self, xid: int) -> bool:
        """Whether the transaction `xid` had committed (its rows were visible) at that moment."""
        return xid < self.xmin or (xid < self.xmax and xid not in self.running)


_SNAPSHOT = (
    "SELECT pg_snapshot_xmin(s)::text::bigint AS xmin, pg_snapshot_xmax(s)::text::bigint AS xmax,"
    " ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s) AS x) AS running FROM pg_current_snapshot() AS s"
)


async def snapshot(db: Database) -> Snapshot:
    row = await db.fetchrow(_SNAPSHOT)  # no table: outside any tenant scope
    assert row is not None
    return Snapshot(row["xmin"], row["xmax"], frozenset(row["running"]))


class _Follower:
    """A subscriber following a reader: a bounded queue; dropped (`behind`) when it overflows."""

    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[Positioned | None] = asyncio.Queue(maxsize=maxsize)
        self.behind = False

    def offer(self, item: Positioned | None) -> bool:
        """False when the follower could not take it (it then catches up on its own)."""
        if self.queue.full():
            self.behind = True
            return False
        self.queue.put_nowait(item)
        return True


class ProjectReader:
    """The one reader of a project's stream on this instance (see the module docstring)."""

    POLL_S = 0.05  # while committed transactions wait for the horizon (doubling up to POLL_MAX_S)
    POLL_MAX_S = 1.0
    IDLE_RECHECK_S = 10.0
    RETRY_S = 0.5  # after a failed read (the database is away)
    FOLLOW_QUEUE = 1000

    def __init__(self, db: Database, bus: events.EventBus, project_id: uuid.UUID) -> None:
        self.db = db
        self.bus = bus
        self.project_id = project_id
        self.pos = START
        self.ready = asyncio.Event()
        self.closed = False
        self.refs = 0
        self._followers: set[_Follower] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"ledgerx-feed-{self.project_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._end()

    def follow(self, f: _Follower) -> None:
        f.behind = False
        self._followers.add(f)

    def unfollow(self, f: _Follower) -> None:
        self._followers.discard(f)

    def _end(self) -> None:
        self.closed = True
        self.ready.set()
        for f in list(self._followers):
            f.behind = False
            if f.queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    f.queue.get_nowait()  # that one is read again by nobody: the stream ends
            f.queue.put_nowait(None)
        self._followers.clear()

    async def _run(self) -> None:
        try:
            async with self.bus.subscribe(topics.project_transactions(self.project_id), gaps=True) as live:
                relay = asyncio.create_task(self._relay(live), name="ledgerx-feed-wake")
                try:
                    # Subscribed first: everything committed after the tail wakes the reader.
                    self.pos = await self._retrying(lambda: tail(self.db, self.project_id))
                    self.ready.set()
                    self._wake.set()  # rows above the horizon when it started are pending
                    await self._loop(relay)
                finally:
                    relay.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await relay
        finally:
            self._end()

    async def _loop(self, relay: asyncio.Task[None]) -> None:
        poll = self.POLL_S
        while not relay.done():  # the relay ends when the bus closes: so does the stream
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.IDLE_RECHECK_S)
            self._wake.clear()
            if not await self._retrying(self._drain):
                poll = self.POLL_S
                continue
            # Committed transactions wait for the horizon: read again soon (a writer that holds
            # the horizon for long is polled less and less often).
            await asyncio.sleep(poll)
            poll = min(poll * 2, self.POLL_MAX_S)
            self._wake.set()

    async def _relay(self, live: events.Subscription) -> None:
        try:
            async for _ in live:  # a message or GAP: either way, read the database
                self._wake.set()
        finally:
            self._wake.set()

    async def _drain(self) -> bool:
        """Read and hand out everything below the horizon; True when some is still pending."""
        while True:
            page, pending = await read_page(self.db, self.project_id, self.pos)
            for item in page:
                self.pos = item.position
                for f in list(self._followers):
                    if not f.offer(item):
                        self._followers.discard(f)
            if len(page) < PAGE:
                return pending

    async def _retrying(self, read: Callable[[], Awaitable[T]]) -> T:
        while True:
            try:
                return await read()
            except Exception:
                log.warning("project feed %s: read failed; retrying", self.project_id, exc_info=True)
                await asyncio.sleep(self.RETRY_S)


class ProjectFeeds:
    """This instance's project readers, one per project with local subscribers."""

    def __init__(self, db: Database, bus: events.EventBus) -> None:
        self.db = db
        self.bus = bus
        self.readers: dict[uuid.UUID, ProjectReader] = {}

    def _acquire(self, project_id: uuid.UUID) -> ProjectReader:
        reader = self.readers.get(project_id)
        if reader is None or reader.closed:
            reader = ProjectReader(self.db, self.bus, project_id)
            self.readers[project_id] = reader
            reader.start()
        reader.refs += 1
        return reader

    async def _release(self, reader: ProjectReader) -> None:
        reader.refs -= 1
        if reader.refs == 0:
            if self.readers.get(reader.project_id) is reader:
                del self.readers[reader.project_id]
            await reader.stop()

    async def transactions(self, project_id: uuid.UUID, after: Position | None) -> AsyncIterator[Positioned]:
        """The project's transactions after `after` (None: those that commit from now on), each
        once, in order, for as long as the caller iterates. The caller authorized the project
        (and keeps re-checking)."""
        reader = self._acquire(project_id)
        me = _Follower(reader.FOLLOW_QUEUE)
        try:
            await reader.ready.wait()
            pos, seen = after, None
            if pos is None:
                # From the reader's position, minus what had committed by now: the rows the
                # horizon has not passed yet are after that position but not news.
                pos = reader.pos
                seen = await snapshot(self.db)
            while not reader.closed:
                # Older than the shared reader: replay on our own up to where it is.
                while pos < reader.pos:
                    page, _ = await read_page(self.db, project_id, pos, upto=reader.pos)
                    for item in page:
                        pos = item.position
                        if seen is None or not seen.saw(pos.xid):
                            yield item
                    if not page:
                        break  # nothing up to it is visible (cannot happen; never spin)
                reader.follow(me)
                while not (me.behind and me.queue.empty()):
                    followed = await me.queue.get()
                    if followed is None:
                        return  # the reader ended (the bus closed)
                    if followed.position > pos:
                        pos = followed.position
                        if seen is None or not seen.saw(pos.xid):
                            yield followed
        finally:
            reader.unfollow(me)
            await self._release(reader)

    async def close(self) -> None:
        for reader in list(self.readers.values()):
            await reader.stop()
        self.readers.clear()
