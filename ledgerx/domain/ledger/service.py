"""LedgerService: what one app instance holds for the ledger (batcher, caches, events).

Its transactions are the app's: `db.raw` (ledgerx.db) on the app's asyncpg pool."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Any

from ledgerx.db.engine import Database
from ledgerx.domain.events import EventBus
from ledgerx.domain.ledger import store
from ledgerx.domain.ledger.batcher import Batcher
from ledgerx.domain.ledger.feed import ProjectFeeds
from ledgerx.ids import uuid7

log = logging.getLogger("ledgerx.ledger")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(frozen=True, slots=True)
class WalletRef:
    """The fields of a wallet that never change: safe to cache for the life of the process."""

    id: uuid.UUID
    project_id: uuid.UUID
    currency: str


_CACHE_MAX = 200_000


class LedgerService:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        *,
        max_parallel: int = 4,
        max_batch: int = 200,
        stall_s: float = 0.02,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.db = db
        self.bus = bus
        self.clock = clock
        self._system_accounts: dict[tuple[uuid.UUID, str, str], uuid.UUID] = {}
        self._system_pending: dict[tuple[uuid.UUID, str, str], asyncio.Future[uuid.UUID]] = {}
        self._wallet_refs: dict[uuid.UUID, WalletRef] = {}
        self._txn_projects: dict[uuid.UUID, uuid.UUID] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # The shared readers of the projects' transaction streams (transactionPosted).
        self.feeds = ProjectFeeds(db, bus)
        self.batcher = Batcher(
            db,
            clock=self.now,
            on_events=lambda events: self.publish(events),  # late-bound: one way out, whoever posts
            max_parallel=max_parallel,
            max_batch=max_batch,
            stall_s=stall_s,
        )

    def now(self) -> dt.datetime:
        # asyncpg and PostgreSQL keep microseconds; so do the hashes computed from this value.
        return self.clock().astimezone(dt.UTC)

    # -- identity lookups for authorization (system scope, cached: these fields never change) --

    async def wallet_ref(self, wallet_id: uuid.UUID) -> WalletRef | None:
        ref = self._wallet_refs.get(wallet_id)
        if ref is not None:
            return ref
        async with self.db.raw(system=True) as conn:
            row = await conn.fetchrow("SELECT project_id, currency FROM wallets WHERE id = $1", wallet_id)
        if row is None:
            return None
        ref = WalletRef(wallet_id, row["project_id"], row["currency"])
        self._remember(self._wallet_refs, wallet_id, ref)
        return ref

    async def transaction_project(self, txn_id: uuid.UUID) -> uuid.UUID | None:
        project = self._txn_projects.get(txn_id)
        if project is not None:
            return project
        async with self.db.raw(system=True) as conn:
            found = await conn.fetchval("SELECT project_id FROM ledger_transactions WHERE id = $1", txn_id)
        if not isinstance(found, uuid.UUID):
            return None
        self._remember(self._txn_projects, txn_id, found)
        return found

    @staticmethod
    def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
        if len(cache) >= _CACHE_MAX:
            cache.clear()  # crude but bounded; entries are cheap to reload
        cache[key] = value

    async def system_account(self, project_id: uuid.UUID, code: str, currency: str) -> uuid.UUID:
        """The id of a project's system account, created on first use (in its own transaction,
        so the cache only ever holds committed rows). Concurrent first uses share one lookup."""
        key = (project_id, code, currency)
        found = self._system_accounts.get(key)
        if found is not None:
            return found
        pending = self._system_pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._ensure_system_account(key))
            self._system_pending[key] = pending
            pending.add_done_callback(lambda _: self._system_pending.pop(key, None))
        return await asyncio.shield(pending)

    async def _ensure_system_account(self, key: tuple[uuid.UUID, str, str]) -> uuid.UUID:
        project_id, code, currency = key
        for _ in range(3):
            async with self.db.raw(project_id=project_id) as conn:
                found = await conn.fetchval(store.ENSURE_SYSTEM_ACCOUNT, uuid7(), project_id, code, currency)
            # NULL when another transaction inserted the row while this statement's snapshot was
            # already taken (the insert waited for it, then did nothing): the next statement sees it.
            if isinstance(found, uuid.UUID):
                self._system_accounts[key] = found
                return found
        raise RuntimeError(f"could not create the system account {code}/{currency}")

    # -- events ---------------------------------------------------------------------------------

    def publish(self, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Publish committed events in the background (a request never waits on Redis)."""
        if not events:
            return
        task = asyncio.get_running_loop().create_task(self.bus.publish_many(events))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        await self.feeds.close()
        await self.batcher.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        # The connections belong to `db`, closed by Services.close after this.
