"""Loaders for transactions, their refunds and wallets' transaction pages (one project per loader:
every read is scoped to its project's rows)."""

from __future__ import annotations

import uuid

from strawberry.dataloader import DataLoader

from ledgerx.context import Context
from ledgerx.dataloaders import loader
from ledgerx.domain.ledger import TransactionRecord, grants, reads
from ledgerx.domain.ledger.types import GrantDraw, GrantStatus


def transactions(ctx: Context, project_id: uuid.UUID) -> DataLoader[uuid.UUID, TransactionRecord | None]:
    ledger = ctx.services.ledger
    return loader(ctx, f"transactions:{project_id}", lambda keys: reads.get_transactions(ledger, project_id, keys))


def refunded_totals(ctx: Context, project_id: uuid.UUID) -> DataLoader[uuid.UUID, int]:
    ledger = ctx.services.ledger
    return loader(
        ctx, f"refunded_totals:{project_id}", lambda keys: reads.refunded_totals(ledger, project_id, keys), default=0
    )


def wallet_transactions(
    ctx: Context, project_id: uuid.UUID, *, first: int, before_seq: int | None
) -> DataLoader[uuid.UUID, reads.Page]:
    """A page of each wallet's transactions; one loader per (project, page size, cursor)."""
    ledger = ctx.services.ledger
    return loader(
        ctx,
        f"wallet_transactions:{project_id}:{first}:{before_seq}",
        lambda keys: reads.wallets_transactions(ledger, project_id, keys, first=first, before_seq=before_seq),
    )


def grant_draws(ctx: Context, project_id: uuid.UUID) -> DataLoader[uuid.UUID, list[GrantDraw]]:
    ledger = ctx.services.ledger
    return loader(ctx, f"grant_draws:{project_id}", lambda keys: grants.draws_of(ledger, project_id, keys), default=[])


def wallet_grants(
    ctx: Context, project_id: uuid.UUID, *, status: GrantStatus | None, first: int, after: uuid.UUID | None
) -> DataLoader[uuid.UUID, grants.GrantPage]:
    """A page of each wallet's credit grants; one loader per (project, status, page size, cursor)."""
    ledger = ctx.services.ledger
    return loader(
        ctx,
        f"wallet_grants:{project_id}:{status}:{first}:{after}",
        lambda keys: grants.wallet_grants(ledger, project_id, keys, status=status, first=first, after=after),
    )
