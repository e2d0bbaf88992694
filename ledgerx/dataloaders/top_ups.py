"""Loader for wallets' auto top-up settings (one project per loader)."""

from __future__ import annotations

import uuid

from strawberry.dataloader import DataLoader

from ledgerx.context import Context
from ledgerx.dataloaders import loader
from ledgerx.domain.payments import top_ups


def auto_top_ups(ctx: Context, project_id: uuid.UUID) -> DataLoader[uuid.UUID, top_ups.AutoTopUpRecord | None]:
    payments = ctx.services.payments
    return loader(ctx, f"auto_top_ups:{project_id}", lambda keys: top_ups.auto_top_ups_of(payments, project_id, keys))
