"""Helpers for the ledger tests: projects made directly (domain tests), wallets, invariant checks."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from ledgerx.db.engine import asyncpg_dsn
from ledgerx.domain.actor import Actor
from ledgerx.domain.ledger import LedgerService, WalletRecord, WalletRef
from ledgerx.domain.ledger.wallets import create_wallet
from ledgerx.ids import uuid7
from ledgerx.services import Services

ACTOR = Actor.system("test")


async def owner_conn(services: Services) -> asyncpg.Connection:
    """A connection as the table owner (the migration role): outside RLS and the app's grants."""
    assert services.settings.database_url
    return await asyncpg.connect(asyncpg_dsn(services.settings.database_url))


async def new_project(services: Services) -> uuid.UUID:
    """A project row made directly (the domain tests need no members)."""
    pid = uuid7()
    conn = await owner_conn(services)
    try:
        await conn.execute("INSERT INTO projects (id, name) VALUES ($1, 'ledger test')", pid)
    finally:
        await conn.close()
    return pid


async def new_wallet(
    services: Services,
    project_id: uuid.UUID,
    *,
    currency: str | None = None,
    credit_limit: int = 0,
    low_balance_threshold: int | None = None,
    name: str = "w",
) -> WalletRef:
    w: WalletRecord = await create_wallet(
        services.ledger,
        ACTOR,
        project_id,
        name=name,
        currency=currency,
        credit_limit=credit_limit,
        low_balance_threshold=low_balance_threshold,
    )
    return WalletRef(w.id, w.project_id, w.currency)


async def check_invariants(ledger: LedgerService, project_id: uuid.UUID) -> None:
    """Everything verifyLedger checks, plus a direct recount as the owner would do it."""
    from ledgerx.domain.ledger.verification import verify_ledger

    report = await verify_ledger(ledger, project_id)
    assert report.ok, report.mismatches


def legacy_ledger(monkeypatch: pytest.MonkeyPatch) -> None:
    """Post as the ledger did before migration 0013 (no credit grants): for tests that write a
    ledger on an older schema and then migrate it. Plain credits and debits only."""
    from ledgerx.domain.ledger import apply, store

    monkeypatch.setattr(store, "WRITE_BATCH", store.write_batch(grants=False))
    # Nor auto top-up (0014): the wallets have no threshold column to lock with.
    no_top_up = store.LOCK_WALLETS.replace("auto_top_up_below,", "NULL::bigint AS auto_top_up_below,")
    monkeypatch.setattr(store, "LOCK_WALLETS", no_top_up)
    monkeypatch.setattr(apply, "_grant_columns", lambda book, now: [])
    monkeypatch.setattr(apply, "_takes", lambda p: False)
    monkeypatch.setattr(apply.Book, "take", lambda self, *a, **k: [])
