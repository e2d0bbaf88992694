"""The lifecycle shared by the app's polling background loops (mail outbox, webhook inbox).

A subclass implements `_round()`, which does one unit of work and says whether more is waiting
and how long to sleep otherwise. The loop runs rounds back to back while work is waiting, sleeps
until the next due item or a `wake()`, survives a failed round (logged, retried after the idle
wait) and stops after finishing the round in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging


class PollingWorker:
    STOP_GRACE = 15.0
    task_name = "ledgerx-worker"

    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    async def _round(self) -> tuple[bool, float]:
        """One round: (more work is waiting now, seconds to sleep otherwise)."""
        raise NotImplementedError

    def _idle_wait(self) -> float:
        """How long to sleep after a failed round."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running:
            return
        self._stopping = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name=self.task_name)

    async def stop(self) -> None:
        """Finish the round in flight (up to `STOP_GRACE` seconds), then end the loop."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=self.STOP_GRACE)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def wake(self) -> None:
        """Run a round soon (e.g. right after new work was committed)."""
        self._wake.set()

    async def _loop(self) -> None:
        self._log.info("%s started", self.task_name)
        while not self._stopping:
            self._wake.clear()
            more, wait = False, self._idle_wait()
            try:
                more, wait = await self._round()
            except Exception:
                self._log.exception("%s: a round failed; retrying", self.task_name)
            if more or self._stopping:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
        self._log.info("%s stopped", self.task_name)
