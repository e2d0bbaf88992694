"""Credit grants: `grantCredits`, `voidCreditGrant`, and reads of grants and their draws.

Every credit that enters a wallet is a grant (the rules of drawing, giving back and the overdraft
are grantbook.py's, applied by `apply` under the wallets' lock). Who makes which grant:

- `creditWallet`, credit pack purchases and transfers of PAID credits: PAID, priority 50, no
  expiry (a pack with `validityDays` expires that long after the purchase);
- `grantCredits`: the caller's terms (PROMOTIONAL, priority 50, no expiry by default);
- plan credits: PROMOTIONAL, expiring at the period end unless the plan rolls its credits over;
- a transfer: the target gets the terms of the grants the source drew.

A grant is ended by one transaction that posts through the ledger like any other (hash chain,
idempotency key, audit row): a void (ADJUSTMENT to the ADJUSTMENTS account, key chosen by the
caller) or its expiry (expiry.py: EXPIRATION to the EXPIRATIONS account, key derived from the
grant, so it happens once whoever runs it). Refusals: BAD_USER_INPUT with the field (amount,
priority, category, expiresAt, idempotencyKey, reason, metadata), NOT_FOUND (`id`, `walletId`),
CONFLICT on `id` for a grant with nothing left (DEPLETED, EXPIRED, VOIDED); nothing is written.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from ledgerx import ids
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput, NotFound
from ledgerx.domain.ledger import apply, grantbook, hashing
from ledgerx.domain.ledger.posting import check_amount, check_key, metadata_json, prepare, submit
from ledgerx.domain.ledger.service import LedgerService, WalletRef
from ledgerx.domain.ledger.types import (
    DEFAULT_PRIORITY,
    MAX_PRIORITY,
    MIN_PRIORITY,
    GrantCategory,
    GrantDraw,
    GrantRecord,
    GrantStatus,
    GrantTerms,
    Kind,
    Leg,
    Posting,
    SystemAccount,
)

MAX_PAGE = 100

COLS = (
    "id, project_id, wallet_id, amount, remaining, category, priority, expires_at, status, source_transaction_id,"
    " ended_transaction_id, reason, metadata::text AS metadata, created_at, updated_at"
)
BY_ID = f"SELECT {COLS} FROM credit_grants WHERE id = ANY($1::uuid[])"  # noqa: S608
_BY_SOURCE = f"SELECT {COLS} FROM credit_grants WHERE source_transaction_id = $1 ORDER BY id"  # noqa: S608
_DRAWS = (
    "SELECT transaction_id, grant_id, amount FROM credit_grant_draws"
    " WHERE transaction_id = ANY($1::uuid[]) ORDER BY transaction_id, ord"
)


# A test-mode project's grants expire on its test clock (billing_test_clocks; the real time until
# the clock is first read).
def project_now_sql(real_now: str) -> str:
    """The project's now as SQL over `projects p LEFT JOIN billing_test_clocks c` (the one
    definition here and in expiry.py); `real_now` is the parameter holding the real time."""
    return f"CASE WHEN p.test_mode THEN coalesce(c.now, {real_now}) ELSE {real_now} END"


PROJECT_NOW = (
    f"SELECT {project_now_sql('$2')} FROM projects p"  # noqa: S608
    " LEFT JOIN billing_test_clocks c ON c.project_id = p.id WHERE p.id = $1"
)


def record(r: asyncpg.Record) -> GrantRecord:
    """A whole grant row's record (the batch's own conversion, so the two never drift)."""
    return grantbook.from_row(r).record(r["updated_at"])


def check_priority(priority: int) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise BadInput(f"priority must be an integer from {MIN_PRIORITY} to {MAX_PRIORITY}", field="priority")
    return priority


def check_category(category: str | GrantCategory) -> GrantCategory:
    try:
        return GrantCategory(category)
    except ValueError:
        raise BadInput("category must be PAID or PROMOTIONAL", field="category") from None


def check_expiry(expires_at: dt.datetime | None, now: dt.datetime) -> dt.datetime | None:
    if expires_at is None:
        return None
    if expires_at.tzinfo is None:
        raise BadInput("expiresAt must be a date-time with a UTC offset", field="expiresAt")
    if expires_at <= now:
        raise BadInput(f"expiresAt must be in the future (it is {now.isoformat()})", field="expiresAt")
    return expires_at.astimezone(dt.UTC)


async def project_now(ledger: LedgerService, project_id: uuid.UUID) -> dt.datetime:
    """The project's now: its test clock in test mode, else the real time."""
    async with ledger.db.raw(project_id=project_id) as conn:
        found = await conn.fetchval(PROJECT_NOW, project_id, ledger.now())
    if not isinstance(found, dt.datetime):
        raise NotFound("project not found", field="projectId")
    return found


async def grant_credits(
    ledger: LedgerService,
    actor: Actor,
    wallet: WalletRef,
    amount: int,
    idempotency_key: str,
    *,
    category: str | GrantCategory = GrantCategory.PROMOTIONAL,
    priority: int = DEFAULT_PRIORITY,
    expires_at: dt.datetime | None = None,
    reason: str | None = None,
    metadata: dict[str, Any] | None = None,
    kind: Kind | None = None,
    reference: str | None = None,
) -> GrantRecord:
    """One grant into `wallet`: PAID from EXTERNAL_FUNDING (kind ADJUSTMENT), PROMOTIONAL from
    PROMOTIONS (kind PROMOTION), unless `kind` says otherwise (purchases, plan credits). The same
    key with the same request returns the grant it made (as it is now)."""
    check_amount(amount)
    check_key(idempotency_key)
    cat = check_category(category)
    check_priority(priority)
    meta = metadata_json(metadata)  # validated here so its field is named before anything is read
    if expires_at is not None:
        expires_at = check_expiry(expires_at, await project_now(ledger, wallet.project_id))
    paid = cat is GrantCategory.PAID
    counterparty = SystemAccount.EXTERNAL_FUNDING if paid else SystemAccount.PROMOTIONS
    posting = Posting(
        project_id=wallet.project_id,
        wallet_id=wallet.id,
        kind=kind or (Kind.ADJUSTMENT if paid else Kind.PROMOTION),
        currency=wallet.currency,
        legs=(Leg(amount, wallet_id=wallet.id), Leg(-amount, system=counterparty)),
        idempotency_key=idempotency_key,
        actor=actor,
        reason=reason,
        reference=reference,
        metadata=metadata or {},
        action="ledger.grant",
        fingerprint={
            "op": "grant",
            "wallet": str(wallet.id),
            "amount": amount,
            "category": cat.value,
            "priority": priority,
            "expiresAt": expires_at.isoformat() if expires_at else None,
            "reason": reason,
            "metadata": metadata or {},
            "kind": str(kind) if kind else None,
            "reference": reference,
        },
    )
    prepared = dataclasses.replace(
        await prepare(ledger, posting),
        terms=GrantTerms(cat, priority, expires_at, reason or None, meta),
    )
    posted = await submit(ledger, prepared)
    if posted.grants:
        return posted.grants[0]
    async with ledger.db.raw(project_id=wallet.project_id) as conn:
        row = await conn.fetchrow(_BY_SOURCE, posted.transaction.id)
    if row is None:  # a replay of a key first used by another kind of posting: refused as a conflict
        raise NotFound("credit grant not found", field="idempotencyKey")
    return record(row)


async def void_grant(
    ledger: LedgerService, actor: Actor, project_id: uuid.UUID, grant_id: uuid.UUID, idempotency_key: str
) -> GrantRecord:
    """End a grant now: its remainder leaves the wallet (ADJUSTMENT to ADJUSTMENTS). CONFLICT on
    `id` when nothing is left of it; the same key again returns the voided grant."""
    check_key(idempotency_key)
    found = await get_grants(ledger, project_id, [grant_id])
    if not found:
        raise NotFound("credit grant not found", field="id")
    g = found[0]
    wallet_currency = await _wallet_currency(ledger, project_id, g.wallet_id)
    account = await ledger.system_account(project_id, SystemAccount.ADJUSTMENTS.value, wallet_currency)
    op = apply.GrantOp(g.id, g.wallet_id, GrantStatus.VOIDED, account, SystemAccount.ADJUSTMENTS.value)
    await submit(ledger, _ending(op, project_id, wallet_currency, idempotency_key, actor, "ledger.grant_void"))
    return (await get_grants(ledger, project_id, [grant_id]))[0]


def ending_prepared(
    op: apply.GrantOp, project_id: uuid.UUID, currency: str, idempotency_key: str, actor: Actor, action: str
) -> apply.Prepared:
    return _ending(op, project_id, currency, idempotency_key, actor, action)


def _ending(
    op: apply.GrantOp, project_id: uuid.UUID, currency: str, idempotency_key: str, actor: Actor, action: str
) -> apply.Prepared:
    expiry = op.ends_as is GrantStatus.EXPIRED
    reference = ids.encode("credit_grant", op.grant_id)
    return apply.Prepared(
        project_id=project_id,
        wallet_id=op.wallet_id,
        kind=(Kind.EXPIRATION if expiry else Kind.ADJUSTMENT).value,
        currency=currency,
        legs=(),
        idempotency_key=idempotency_key,
        request_hash=hashing.request_hash({"op": "expire" if expiry else "void", "grant": str(op.grant_id)}),
        actor=actor,
        action=action,
        reference=reference,
        reason="credit grant expired" if expiry else "credit grant voided",
        metadata_json="{}",
        grant_op=op,
    )


async def _wallet_currency(ledger: LedgerService, project_id: uuid.UUID, wallet_id: uuid.UUID) -> str:
    ref = await ledger.wallet_ref(wallet_id)
    if ref is None or ref.project_id != project_id:
        raise NotFound("credit grant not found", field="id")
    return ref.currency


# -- reads ------------------------------------------------------------------------------------------


async def grant_project(ledger: LedgerService, grant_id: uuid.UUID) -> uuid.UUID | None:
    """The project of a grant, for authorization (system scope: the caller is checked next)."""
    async with ledger.db.raw(system=True) as conn:
        found = await conn.fetchval("SELECT project_id FROM credit_grants WHERE id = $1", grant_id)
    return found if isinstance(found, uuid.UUID) else None


async def get_grants(ledger: LedgerService, project_id: uuid.UUID, grant_ids: Sequence[uuid.UUID]) -> list[GrantRecord]:
    """The grants of `project_id` among `grant_ids` (others are invisible: RLS), in id order."""
    async with ledger.db.raw(project_id=project_id) as conn:
        rows = await conn.fetch(BY_ID + " AND project_id = $2 ORDER BY id", list(grant_ids), project_id)
    return [record(r) for r in rows]


@dataclasses.dataclass(frozen=True, slots=True)
class GrantPage:
    items: list[GrantRecord]
    has_next: bool


_WALLET_GRANTS = (
    "SELECT w.for_wallet, p.* FROM unnest($1::uuid[]) AS w(for_wallet) CROSS JOIN LATERAL ("  # noqa: S608
    f" SELECT {COLS} FROM credit_grants g WHERE g.wallet_id = w.for_wallet"
    " AND ($2::text IS NULL OR g.status = $2) AND g.id > $3 ORDER BY g.id LIMIT $4) p"
)


async def wallet_grants(
    ledger: LedgerService,
    project_id: uuid.UUID,
    wallet_ids: Sequence[uuid.UUID],
    *,
    status: GrantStatus | None,
    first: int,
    after: uuid.UUID | None,
) -> dict[uuid.UUID, GrantPage]:
    """A page of grants (oldest first) per wallet, in one statement."""
    if not 1 <= first <= MAX_PAGE:
        raise BadInput(f"first must be 1 to {MAX_PAGE}", field="first")
    start = after or uuid.UUID(int=0)
    async with ledger.db.raw(project_id=project_id) as conn:
        rows = await conn.fetch(_WALLET_GRANTS, list(wallet_ids), status.value if status else None, start, first + 1)
    out: dict[uuid.UUID, list[GrantRecord]] = {w: [] for w in wallet_ids}
    for r in rows:
        out[r["for_wallet"]].append(record(r))
    return {w: GrantPage(items[:first], len(items) > first) for w, items in out.items()}


async def draws_of(
    ledger: LedgerService, project_id: uuid.UUID, transaction_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[GrantDraw]]:
    """Each transaction's grant draws (one statement), in the order it made them."""
    async with ledger.db.raw(project_id=project_id) as conn:
        rows = await conn.fetch(_DRAWS, list(transaction_ids))
    out: dict[uuid.UUID, list[GrantDraw]] = {t: [] for t in transaction_ids}
    for r in rows:
        out[r["transaction_id"]].append(GrantDraw(r["transaction_id"], r["grant_id"], r["amount"]))
    return out
