"""Loaders for outbound webhooks: endpoints' delivery pages and deliveries' attempts."""

from __future__ import annotations

import uuid

from strawberry.dataloader import DataLoader

from ledgerx.context import Context
from ledgerx.dataloaders import loader
from ledgerx.domain.webhooks import deliveries
from ledgerx.domain.webhooks.records import AttemptRecord, DeliveryRecord


def endpoint_deliveries(
    ctx: Context, project_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> DataLoader[uuid.UUID, list[DeliveryRecord]]:
    """A page of each endpoint's deliveries (`limit` rows); one loader per (project, page, cursor)."""
    db = ctx.services.db
    return loader(
        ctx,
        f"webhook_deliveries:{project_id}:{limit}:{before}",
        lambda keys: deliveries.pages(db, project_id, keys, limit=limit, before=before),
        default=[],
    )


def delivery_attempts(ctx: Context, project_id: uuid.UUID) -> DataLoader[uuid.UUID, list[AttemptRecord]]:
    db = ctx.services.db
    return loader(
        ctx,
        f"webhook_attempts:{project_id}",
        lambda keys: deliveries.attempts_of_many(db, project_id, keys),
        default=[],
    )
