"""GraphQL types of auto top-up: `AutoTopUp` (`Wallet.autoTopUp`) and `setAutoTopUp`'s input."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

import strawberry

from ledgerx import ids
from ledgerx.dataloaders import top_ups as loaders
from ledgerx.domain.payments.top_ups import AutoTopUpRecord
from ledgerx.schema.info import Info
from ledgerx.schema.scalars import BigInt


@strawberry.enum(
    description="PENDING: a payment is in flight; FAILED: the last payment failed (no new attempt until the wallet"
    " is credited back above the threshold or the settings are saved again); NO_PAYMENT_METHOD: the project has"
    " no payment method saved for off-session use (buy a credit pack through Checkout first)."
)
class AutoTopUpStatus(enum.Enum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    NO_PAYMENT_METHOD = "NO_PAYMENT_METHOD"


@strawberry.type(
    name="AutoTopUp",
    description="When a debit leaves the balance below `threshold`, the credit pack is bought off-session with the"
    " project's saved payment method (one payment in flight per wallet).",
)
class AutoTopUpType:
    wallet_id: strawberry.ID
    enabled: bool
    threshold: BigInt
    credit_pack_id: strawberry.ID
    last_attempt_at: dt.datetime | None
    last_status: AutoTopUpStatus | None
    last_error: str | None = strawberry.field(description="Why the last attempt failed or was not made.")

    @classmethod
    def of(cls, r: AutoTopUpRecord) -> AutoTopUpType:
        return cls(
            wallet_id=strawberry.ID(ids.encode("wallet", r.wallet_id)),
            enabled=r.enabled,
            threshold=r.threshold,
            credit_pack_id=strawberry.ID(ids.encode("credit_pack", r.credit_pack_id)),
            last_attempt_at=r.last_attempt_at,
            last_status=AutoTopUpStatus(r.last_status) if r.last_status else None,
            last_error=r.last_error,
        )


@strawberry.input
class SetAutoTopUpInput:
    wallet_id: strawberry.ID
    enabled: bool
    threshold: BigInt = strawberry.field(description="Top up when a debit leaves the balance below this (>= 0).")
    credit_pack_id: strawberry.ID = strawberry.field(description="The pack bought (it buys CREDITS).")


async def of_wallet(info: Info, project_id: uuid.UUID, wallet_id: uuid.UUID) -> AutoTopUpType | None:
    """`Wallet.autoTopUp` (through the request's loader: one statement per list of wallets)."""
    found = await loaders.auto_top_ups(info.context, project_id).load(wallet_id)
    return AutoTopUpType.of(found) if found is not None else None
