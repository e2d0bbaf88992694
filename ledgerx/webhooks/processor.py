"""The background loop that processes the webhook inbox (inside `serve` and as `ledgerx worker`).

Each round claims due events with SKIP LOCKED and a lease (several instances never take the same
row), processes them oldest first, and records every attempt; failures come back after an
exponential backoff. Every `dunning_interval` it also announces subscriptions whose grace period
ran out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from ledgerx.domain.payments import inbox, subscriptions
from ledgerx.domain.payments.service import PaymentsService

log = logging.getLogger("ledgerx.webhooks.processor")


class WebhookProcessor:
    STOP_GRACE = 15.0

    def __init__(self, payments: PaymentsService) -> None:
        self.payments = payments
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._next_dunning = 0.0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running:
            return
        self._stopping = False
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._loop(), name="ledgerx-webhook-processor")

    async def stop(self) -> None:
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
        """Process soon (the webhook route calls this after storing an event)."""
        self._wake.set()

    async def run_once(self) -> int:
        settings = self.payments.settings
        claimed = await inbox.run_once(self.payments, settings.webhook_batch_size)
        if time.monotonic() >= self._next_dunning:
            self._next_dunning = time.monotonic() + settings.dunning_interval
            await subscriptions.run_dunning(self.payments)
        return claimed

    async def _loop(self) -> None:
        settings = self.payments.settings
        log.info("webhook processor started")
        while not self._stopping:
            self._wake.clear()
            wait = settings.webhook_poll_interval
            full = False
            try:
                full = await self.run_once() >= settings.webhook_batch_size
                due = await inbox.next_due_in(self.payments)
                if due is not None:
                    wait = min(wait, max(due, 0.05))
            except Exception:
                log.exception("webhook processor: a round failed; retrying")
            if full or self._stopping:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
        log.info("webhook processor stopped")
