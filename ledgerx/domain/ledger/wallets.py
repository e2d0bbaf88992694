"""Creating wallets (their balance only ever changes through `post_transaction`), and finding one the
caller may act on."""

from __future__ import annotations

import uuid

from sqlalchemy import insert, select

from ledgerx import ids
from ledgerx.db.models import ProjectMember, Wallet
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput, NotFound
from ledgerx.domain.ledger import store
from ledgerx.domain.ledger.posting import normalize_currency
from ledgerx.domain.ledger.service import LedgerService, WalletRef
from ledgerx.domain.ledger.types import MAX_BIGINT, MIN_BIGINT, WalletRecord
from ledgerx.domain.tenancy.authorize import Authorizer, Rule
from ledgerx.ids import uuid7


async def find_wallet(
    ledger: LedgerService, authorizer: Authorizer, wallet_id: uuid.UUID, rule: Rule, *, field: str = "walletId"
) -> WalletRef:
    """The wallet, once `rule` lets the caller act on it in its project (the ledger's, billing's or
    usage's rule). A missing wallet and one of a project the caller cannot reach are the same
    NOT_FOUND "wallet not found" on `field`."""
    ref = await ledger.wallet_ref(wallet_id)
    if ref is None:
        raise NotFound("wallet not found", field=field)
    await authorizer.require_for(ref.project_id, rule, what="wallet", field=field)
    return ref


def _check_name(name: str) -> str:
    clean = (name or "").strip()
    if not 1 <= len(clean) <= 200 or "\x00" in clean:
        raise BadInput("name must be 1 to 200 characters", field="name")
    return clean


def _check_limits(credit_limit: int, low_balance_threshold: int | None) -> None:
    if not 0 <= credit_limit <= MAX_BIGINT:
        raise BadInput("creditLimit must be zero or positive", field="creditLimit")
    if low_balance_threshold is not None and not MIN_BIGINT <= low_balance_threshold <= MAX_BIGINT:
        raise BadInput("lowBalanceThreshold is out of range", field="lowBalanceThreshold")


async def create_wallet(
    ledger: LedgerService,
    actor: Actor,
    project_id: uuid.UUID,
    *,
    name: str,
    owner_user_id: uuid.UUID | None = None,
    currency: str | None = None,
    credit_limit: int = 0,
    low_balance_threshold: int | None = None,
) -> WalletRecord:
    """A wallet of the project (optionally owned by one of its members), balance zero."""
    clean = _check_name(name)
    code = normalize_currency(currency)
    _check_limits(credit_limit, low_balance_threshold)
    wallet_id = uuid7()
    async with ledger.db.transaction(project_id=project_id) as s:
        if owner_user_id is not None:
            member = await s.scalar(
                select(ProjectMember.id).where(
                    ProjectMember.project_id == project_id, ProjectMember.user_id == owner_user_id
                )
            )
            if member is None:
                raise BadInput("the owner must be a member of the project", field="ownerUserId")
        row = (
            await s.execute(
                insert(Wallet)
                .values(
                    id=wallet_id,
                    project_id=project_id,
                    name=clean,
                    owner_user_id=owner_user_id,
                    currency=code,
                    credit_limit=credit_limit,
                    low_balance_threshold=low_balance_threshold,
                    created_by=actor.id if actor.type == "user" else None,
                )
                .returning(*[getattr(Wallet, c.strip()) for c in store.WALLET_COLS.split(",")])
            )
        ).one()
        record = store.wallet_from_row(dict(row._mapping))
        await audit.record(
            s,
            actor,
            "wallet.create",
            project_id=project_id,
            target_type="wallet",
            target_id=ids.encode("wallet", wallet_id),
            after={
                "name": clean,
                "currency": code,
                "creditLimit": str(credit_limit),
                "lowBalanceThreshold": None if low_balance_threshold is None else str(low_balance_threshold),
                "ownerUserId": ids.encode("user", owner_user_id) if owner_user_id else None,
            },
        )
    return record
