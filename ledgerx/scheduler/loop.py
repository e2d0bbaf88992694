"""The billing scheduler: whoever holds the lease executes due rules, in batches, until none is due.

Every instance runs the loop; only the lease holder works. A tick takes or renews the lease, then
`concurrency` workers each claim a batch of due rules (`FOR UPDATE SKIP LOCKED`, so their batches
are disjoint) and execute it in one transaction (`runner.run_due`), until no rule is due. Between
ticks the loop sleeps until the next rule is due (at most `poll_interval`). Test-mode projects'
rules are never claimed here: they run on their test clocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import text

from ledgerx import metrics
from ledgerx.domain.billing import runner
from ledgerx.domain.billing.service import BillingService
from ledgerx.domain.ledger import expiry
from ledgerx.scheduler.lease import Lease

log = logging.getLogger("ledgerx.scheduler")

Clock = Callable[[], dt.datetime]

RULES_EXECUTED = Counter(
    "ledgerx_scheduler_rules_total", "Billing rules executed by the scheduler", registry=metrics.REGISTRY
)
RUNS_EXECUTED = Counter(
    "ledgerx_scheduler_runs_total", "Billing runs recorded by the scheduler (all statuses)", registry=metrics.REGISTRY
)
RULE_FAILURES = Counter(
    "ledgerx_scheduler_rule_failures_total",
    "Rules put back with a backoff after an unexpected error",
    registry=metrics.REGISTRY,
)
BATCH_SECONDS = Histogram(
    "ledgerx_scheduler_batch_seconds",
    "Time to claim and execute one batch of due rules",
    registry=metrics.REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LEADER = Gauge("ledgerx_scheduler_leader", "1 while this instance holds the scheduler lease", registry=metrics.REGISTRY)

NEXT_DUE = text("SELECT min(due_at) FROM billing_rules WHERE status = 'ACTIVE' AND NOT test_mode")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclasses.dataclass(slots=True)
class TickStats:
    leader: bool = False
    batches: int = 0
    rules: int = 0
    runs: int = 0
    failed_rules: int = 0
    lease_lost: bool = False


class Scheduler:
    def __init__(
        self,
        billing: BillingService,
        *,
        name: str = "billing",
        holder: str | None = None,
        clock: Clock | None = None,
        lease_ttl: float = 15.0,
        poll_interval: float = 1.0,
        batch_size: int | None = None,
        concurrency: int = 2,
        hook: runner.BatchHook | None = None,
    ) -> None:
        self.billing = billing
        self.clock = clock or billing.clock
        self.lease = Lease(billing.db, name, holder=holder, ttl=lease_ttl, clock=self.clock)
        self.poll_interval = poll_interval
        self.batch_size = batch_size or billing.policy.batch_size
        self.concurrency = max(1, concurrency)
        self.hook = hook
        self.total = TickStats()
        self._renew_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def holder(self) -> str:
        return self.lease.holder

    async def _keep_lease(self) -> bool:
        async with self._renew_lock:
            if self.lease.held() and not self.lease.due_for_renewal():
                return True
            ok = await self.lease.acquire()
            LEADER.set(1 if ok else 0)
            return ok

    async def tick(self) -> TickStats:
        """One pass: take or renew the lease; if held, execute due rules until none is left."""
        stats = TickStats()
        if not await self._keep_lease():
            return stats
        stats.leader = True

        async def worker() -> None:
            while not self._stop.is_set():
                if not await self._keep_lease():
                    stats.lease_lost = True
                    return
                started = asyncio.get_running_loop().time()
                batch = await runner.run_due(self.billing, self.clock(), limit=self.batch_size, hook=self.hook)
                BATCH_SECONDS.observe(asyncio.get_running_loop().time() - started)
                if batch.rules == 0 and batch.failed_rules == 0:
                    return
                stats.batches += 1
                stats.rules += batch.rules
                stats.runs += batch.runs
                stats.failed_rules += batch.failed_rules
                RULES_EXECUTED.inc(batch.rules)
                RUNS_EXECUTED.inc(batch.runs)
                RULE_FAILURES.inc(batch.failed_rules)

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        try:  # credit grants that expired (or expire within 3 days: the warning mail)
            await expiry.run(self.billing.ledger, self.clock())
        except Exception:
            log.exception("credit grant expiry pass failed")
        self.total.batches += stats.batches
        self.total.rules += stats.rules
        self.total.runs += stats.runs
        self.total.failed_rules += stats.failed_rules
        return stats

    async def next_due_in(self) -> float:
        """Seconds until the next live rule is due (capped by the poll interval)."""
        async with self.billing.db.transaction(system=True) as s:
            nxt = (await s.execute(NEXT_DUE)).scalar()
        if nxt is None:
            return self.poll_interval
        wait: float = (nxt - self.clock()).total_seconds()
        return max(0.0, min(self.poll_interval, wait))

    async def run(self) -> None:
        """Tick until stopped; errors are logged and the loop goes on (the database may come back)."""
        log.info("billing scheduler started (holder %s)", self.holder)
        while not self._stop.is_set():
            delay = self.poll_interval
            try:
                stats = await self.tick()
                if stats.leader:
                    delay = await self.next_due_in()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler tick failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._stop.clear()
            self._task = asyncio.create_task(self.run(), name=f"ledgerx-scheduler-{self.holder}")
        return self._task

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace: float = 30.0) -> None:
        """Finish the batch in flight, stop, and hand the lease over at once."""
        self._stop.set()
        self._wake.set()
        if self._task is not None and self._task.done():
            # Already ended (cancelled with its services, or crashed): collect it, never re-raise
            # its CancelledError into the caller's shutdown.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                self._task.result()
            self._task = None
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, grace)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            except Exception:
                log.exception("scheduler stopped with an error")
            self._task = None
        try:
            await self.lease.release()
        except Exception:
            log.warning("could not release the scheduler lease", exc_info=True)
        LEADER.set(0)
