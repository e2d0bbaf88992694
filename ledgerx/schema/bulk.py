"""Bulk posting's GraphQL types (`postTransactions`; the rules are domain/ledger/bulk.py's)."""

from __future__ import annotations

import enum

import strawberry
from strawberry.scalars import JSON

from ledgerx.domain.ledger import bulk
from ledgerx.schema.ledger import TransactionType_
from ledgerx.schema.scalars import BigInt


@strawberry.enum
class BulkOperationKind(enum.Enum):
    CREDIT = "CREDIT"
    DEBIT = "DEBIT"
    TRANSFER = "TRANSFER"


@strawberry.input(description="One credit, debit or transfer; the fields of its single mutation.")
class BulkOperationInput:
    kind: BulkOperationKind
    wallet_id: strawberry.ID = strawberry.field(description="The wallet credited or debited; a transfer's source.")
    amount: BigInt
    idempotency_key: str
    to_wallet_id: strawberry.ID | None = strawberry.field(default=None, description="A TRANSFER's target.")
    reason: str | None = None
    reference: str | None = strawberry.field(default=None, description="CREDIT and DEBIT only.")
    metadata: JSON | None = None

    def domain(self) -> bulk.Operation:
        return bulk.Operation(
            kind=bulk.OperationKind(self.kind.value),
            wallet_id=str(self.wallet_id),
            amount=self.amount,
            idempotency_key=self.idempotency_key,
            to_wallet_id=None if self.to_wallet_id is None else str(self.to_wallet_id),
            reason=self.reason,
            reference=self.reference,
            metadata=self.metadata,
        )


@strawberry.input
class PostTransactionsInput:
    operations: list[BulkOperationInput] = strawberry.field(description="At most LEDGER_MAX_BATCH (1,000).")
    atomic: bool = strawberry.field(
        default=False,
        description="All or nothing: when any operation is refused nothing is posted and the others are ABORTED."
        " Otherwise each operation stands alone.",
    )


@strawberry.type(description="Why an operation was not posted: a stable code, as the single mutation's error.")
class BulkOperationError:
    code: str
    message: str
    field: str | None = strawberry.field(description="Where, as operations[i].walletId.")


@strawberry.type
class BulkOperationResult:
    index: int = strawberry.field(description="The operation's position in the request.")
    transaction: TransactionType_ | None = strawberry.field(description="Null when the operation was not posted.")
    replayed: bool = strawberry.field(
        description="The idempotency key had been used for this request: the first transaction."
    )
    error: BulkOperationError | None

    @classmethod
    def of(cls, r: bulk.OperationResult) -> BulkOperationResult:
        error = (
            None
            if r.error is None
            else BulkOperationError(code=r.error.code, message=r.error.message, field=r.error.field)
        )
        if r.posted is None:
            return cls(index=r.index, transaction=None, replayed=False, error=error)
        return cls(
            index=r.index,
            transaction=TransactionType_.of(r.posted.transaction),
            replayed=r.posted.replayed,
            error=error,
        )


@strawberry.type
class PostTransactionsResult:
    results: list[BulkOperationResult] = strawberry.field(description="One per operation, in the request's order.")
