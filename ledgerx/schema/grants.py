"""GraphQL types of credit grants: CreditGrant, GrantDraw, their enums and the mutations' inputs."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

import strawberry
from strawberry.scalars import JSON

from ledgerx import ids
from ledgerx.domain.ledger.types import DEFAULT_PRIORITY, GrantDraw, GrantRecord
from ledgerx.schema.scalars import BigInt


@strawberry.enum(description="PAID: bought; PROMOTIONAL: given (plan credits, promotions).")
class CreditGrantCategory(enum.Enum):
    PAID = "PAID"
    PROMOTIONAL = "PROMOTIONAL"


@strawberry.enum(description="ACTIVE while something remains; DEPLETED when spent; EXPIRED or VOIDED when ended.")
class CreditGrantStatus(enum.Enum):
    ACTIVE = "ACTIVE"
    DEPLETED = "DEPLETED"
    EXPIRED = "EXPIRED"
    VOIDED = "VOIDED"


@strawberry.type(
    name="CreditGrant",
    description="Credits that entered a wallet, with their terms. Debits draw grants by lower priority number,"
    " then earliest expiresAt (none last), then the oldest.",
)
class CreditGrantType:
    id: strawberry.ID
    wallet_id: strawberry.ID
    amount: BigInt
    remaining: BigInt
    category: CreditGrantCategory
    priority: int = strawberry.field(description="0-100: lower numbers are drawn first.")
    expires_at: dt.datetime | None = strawberry.field(description="When what remains leaves (one EXPIRATION).")
    status: CreditGrantStatus
    created_at: dt.datetime
    uuid: strawberry.Private[uuid.UUID]

    @classmethod
    def of(cls, g: GrantRecord) -> CreditGrantType:
        return cls(
            id=strawberry.ID(ids.encode("credit_grant", g.id)),
            wallet_id=strawberry.ID(ids.encode("wallet", g.wallet_id)),
            amount=g.amount,
            remaining=g.remaining,
            category=CreditGrantCategory(g.category.value),
            priority=g.priority,
            expires_at=g.expires_at,
            status=CreditGrantStatus(g.status.value),
            created_at=g.created_at,
            uuid=g.id,
        )


@strawberry.type(name="GrantDraw", description="What a transaction took from a grant (negative: gave back).")
class GrantDrawType:
    grant_id: strawberry.ID
    amount: BigInt

    @classmethod
    def of(cls, d: GrantDraw) -> GrantDrawType:
        return cls(grant_id=strawberry.ID(ids.encode("credit_grant", d.grant_id)), amount=d.amount)


@strawberry.input
class GrantCreditsInput:
    wallet_id: strawberry.ID
    amount: BigInt
    idempotency_key: str
    category: CreditGrantCategory = CreditGrantCategory.PROMOTIONAL
    priority: int = DEFAULT_PRIORITY
    expires_at: dt.datetime | None = None
    reason: str | None = None
    metadata: JSON | None = None


@strawberry.input
class VoidCreditGrantInput:
    id: strawberry.ID
    idempotency_key: str
