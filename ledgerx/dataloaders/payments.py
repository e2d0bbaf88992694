"""Loaders for the Stripe webhook inbox."""

from __future__ import annotations

import uuid

from strawberry.dataloader import DataLoader

from ledgerx.context import Context
from ledgerx.dataloaders import loader
from ledgerx.domain.payments import inbox
from ledgerx.domain.payments.records import WebhookAttemptRecord


def webhook_attempts(ctx: Context) -> DataLoader[uuid.UUID, list[WebhookAttemptRecord]]:
    payments = ctx.services.payments
    return loader(ctx, "webhook_attempts", lambda keys: inbox.attempts_of_many(payments, keys), default=[])
