"""The background loop that processes the webhook inbox (inside `serve` and as `ledgerx worker`).

Each round claims due events with SKIP LOCKED and a lease (several instances never take the same
row), processes them oldest first, and records every attempt; failures come back after an
exponential backoff. Every `dunning_interval` it also announces subscriptions whose grace period
ran out, and mails those whose grace period ends within a day (payments/notices.py). Each round
also starts the auto top-ups the ledger asked for (payments/top_up_intents.py), and every
`reservation_sweep.SWEEP_INTERVAL` it settles coupon reservations whose Checkout outcome event was lost.
"""

from __future__ import annotations

import logging
import time

from ledgerx.background import PollingWorker
from ledgerx.domain.payments import dunning, inbox, notices, reservation_sweep, top_up_intents
from ledgerx.domain.payments.service import PaymentsService

log = logging.getLogger("ledgerx.webhooks.processor")


class WebhookProcessor(PollingWorker):
    task_name = "ledgerx-webhook-processor"

    def __init__(self, payments: PaymentsService) -> None:
        super().__init__(log)
        self.payments = payments
        self._next_dunning = 0.0
        self._next_coupon_sweep = 0.0

    async def run_once(self) -> int:
        settings = self.payments.settings
        claimed = await inbox.run_once(self.payments, settings.webhook_batch_size)
        # Auto top-ups the ledger wanted: their PaymentIntents, outside any ledger transaction.
        await top_up_intents.run_once(self.payments)
        if time.monotonic() >= self._next_dunning:
            self._next_dunning = time.monotonic() + settings.dunning_interval
            await dunning.run_dunning(self.payments)
            await notices.warn_grace_ending(self.payments)
        if time.monotonic() >= self._next_coupon_sweep:
            self._next_coupon_sweep = time.monotonic() + reservation_sweep.SWEEP_INTERVAL
            await reservation_sweep.sweep_reservations(self.payments)
        return claimed

    def _idle_wait(self) -> float:
        return self.payments.settings.webhook_poll_interval

    async def _round(self) -> tuple[bool, float]:
        settings = self.payments.settings
        full = await self.run_once() >= settings.webhook_batch_size
        wait = settings.webhook_poll_interval
        due = await inbox.next_due_in(self.payments)
        if due is not None:
            wait = min(wait, max(due, 0.05))
        return full, wait
