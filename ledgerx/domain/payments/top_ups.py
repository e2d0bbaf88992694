"""Auto top-up settings: `setAutoTopUp` and `Wallet.autoTopUp`.

A wallet with auto top-up on buys its credit pack off-session, with the project's saved payment
method, when a debit takes its balance from at or above `threshold` to below it (ledger/top_ups.py
records the wish in the debit's transaction; top_up_intents.py makes the PaymentIntent).

Rules:
- who: members with ADMIN or OWNER (it spends money on the project's card); API keys are refused,
  as for Checkout.
- input: `threshold` is 0..2^63-1; the pack must exist (NOT_FOUND on `creditPackId`); to turn auto
  top-up on, the pack must not be archived and must buy what the wallet holds: packs buy CREDITS,
  so a wallet in another currency is BAD_USER_INPUT on `creditPackId` (reason CURRENCY_MISMATCH).
  Refused input writes nothing.
- saving the settings (on) while the balance is already below the threshold wants a top-up at once:
  that is also how an admin retries after a failure. Otherwise a failed top-up is not retried: only
  a new crossing (after something else credited the wallet back to the threshold) starts another.
- one transaction: the settings row, `wallets.auto_top_up_below` (under the wallet's lock, so a
  posting waiting on it sees the new threshold), a wanted attempt if any, and the audit row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ledgerx import ids
from ledgerx.db.models import AutoTopUp
from ledgerx.domain import audit, records
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput, NotFound
from ledgerx.domain.ledger.types import CREDITS, MAX_BIGINT
from ledgerx.domain.payments import catalog
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.domain.tenancy.access import Need
from ledgerx.domain.tenancy.authorize import Rule
from ledgerx.ids import uuid7

SET = Rule(Need.ADMIN, write=True, refusal="auto top-up spends the project's money: it needs the admin role or higher")

# What `lastStatus` can say (PENDING: a PaymentIntent is in flight).
PENDING, SUCCEEDED, FAILED, NO_PAYMENT_METHOD = "PENDING", "SUCCEEDED", "FAILED", "NO_PAYMENT_METHOD"


@dataclasses.dataclass(frozen=True, slots=True)
class AutoTopUpRecord:
    wallet_id: uuid.UUID
    project_id: uuid.UUID
    enabled: bool
    threshold: int
    credit_pack_id: uuid.UUID
    last_attempt_at: dt.datetime | None
    last_status: str | None
    last_error: str | None


_WANT_NOW = text(
    "INSERT INTO auto_top_up_attempts (id, project_id, wallet_id, status, created_at)"
    " VALUES (:id, :p, :w, 'WANTED', now())"
    " ON CONFLICT (wallet_id) WHERE status IN ('WANTED', 'PENDING') DO NOTHING RETURNING id"
)


def _public(r: AutoTopUpRecord) -> dict[str, object]:
    return {
        "enabled": r.enabled,
        "threshold": str(r.threshold),
        "creditPackId": ids.encode("credit_pack", r.credit_pack_id),
    }


async def set_auto_top_up(
    svc: PaymentsService,
    actor: Actor,
    project_id: uuid.UUID,
    wallet_id: uuid.UUID,
    *,
    enabled: bool,
    threshold: int,
    credit_pack_id: uuid.UUID,
) -> AutoTopUpRecord:
    """Save the wallet's auto top-up (the caller found the wallet in `project_id` under `SET`)."""
    if not 0 <= threshold <= MAX_BIGINT:
        raise BadInput("threshold must be zero or positive", field="threshold")
    pack = await catalog.get_credit_pack(svc, credit_pack_id)
    if enabled and pack.archived_at is not None:
        raise BadInput("this credit pack is archived", field="creditPackId", reason="ARCHIVED")
    async with svc.db.transaction(project_id=project_id) as s:
        w = (
            await s.execute(
                text("SELECT project_id, currency, balance FROM wallets WHERE id = :w FOR UPDATE"), {"w": wallet_id}
            )
        ).first()
        if w is None or w.project_id != project_id:
            raise NotFound("wallet not found", field="walletId")
        if enabled and w.currency != CREDITS:
            raise BadInput(
                f"credit packs buy {CREDITS}; this wallet holds {w.currency}",
                field="creditPackId",
                reason="CURRENCY_MISMATCH",
            )
        # The wanted row before the settings row: every writer takes the wallet, then the attempt
        # (this insert waits on an attempt a worker or handler is changing), then the settings.
        wanted = None
        if enabled and w.balance < threshold:
            wanted = await s.scalar(_WANT_NOW, {"id": uuid7(), "p": project_id, "w": wallet_id})
        old = await s.get(AutoTopUp, wallet_id, with_for_update=True)
        before = _public(records.of(AutoTopUpRecord, old)) if old is not None else None
        values = {"enabled": enabled, "threshold": threshold, "credit_pack_id": credit_pack_id}
        await s.execute(
            pg_insert(AutoTopUp)
            .values(wallet_id=wallet_id, project_id=project_id, updated_by=actor.id, **values)
            .on_conflict_do_update(
                index_elements=["wallet_id"], set_={**values, "updated_by": actor.id, "updated_at": text("now()")}
            )
        )
        await s.execute(
            text("UPDATE wallets SET auto_top_up_below = :t WHERE id = :w"),
            {"t": threshold if enabled else None, "w": wallet_id},
        )
        s.expire_all()
        row = await s.get(AutoTopUp, wallet_id)
        assert row is not None
        rec = records.of(AutoTopUpRecord, row)
        after: dict[str, object] = {**_public(rec), "topUpStarted": wanted is not None}
        await audit.record(
            s,
            actor,
            "wallet.auto_top_up.set",
            project_id=project_id,
            target_type="wallet",
            target_id=ids.encode("wallet", wallet_id),
            before=before,
            after=after,
        )
    return rec


async def auto_top_ups_of(
    svc: PaymentsService, project_id: uuid.UUID, wallet_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, AutoTopUpRecord]:
    """The settings of these wallets of one project (one statement; wallets without: absent)."""
    async with svc.db.transaction(project_id=project_id) as s:
        rows = await s.scalars(
            select(AutoTopUp).where(AutoTopUp.project_id == project_id, AutoTopUp.wallet_id.in_(set(wallet_ids)))
        )
        return {r.wallet_id: records.of(AutoTopUpRecord, r) for r in rows}
