"""Loaders for billing rules' runs."""

from __future__ import annotations

import uuid

from strawberry.dataloader import DataLoader

from ledgerx.context import Context
from ledgerx.dataloaders import loader
from ledgerx.domain.billing import store
from ledgerx.domain.billing.records import Run


def rule_runs(
    ctx: Context, project_id: uuid.UUID, *, limit: int, before: uuid.UUID | None
) -> DataLoader[uuid.UUID, list[Run]]:
    """A page of each rule's runs; one loader per (project, page size, cursor)."""
    db = ctx.services.db
    return loader(
        ctx,
        f"rule_runs:{project_id}:{limit}:{before}",
        lambda keys: store.list_runs_of_rules(db, project_id, keys, limit=limit, before=before),
        default=[],
    )
