"""Bulk posting: many credits, debits and transfers in one request (`postTransactions`,
`POST /v1/transactions`).

Each operation is the same posting its single mutation makes (posting.py's `credit_posting`,
`debit_posting`, `transfer_posting`), authorized by the same rule, recorded by the same
`apply` (idempotency, credit limits, grants, hash chains, audit rows, events and outbound
webhooks, low-balance alerts), so a batch guarantees what single postings do. What differs is the
round trips: an atomic batch is one database transaction and one lock-and-decide pass; an
independent one is queued to the batcher as one arrival, where it shares batches with whatever
else is posting (concurrent bulk requests do not wait on each other's wallet locks).

- Independent (the default): each operation stands alone. A refused one writes nothing and gets
  its error; the others are recorded, later ones seeing the balances earlier ones left. They may
  commit in several of the batcher's transactions: if the database fails partway, the request
  answers that error while operations already committed stay posted, and sending the same batch
  again answers those as replays and posts the rest.
- Atomic: all or nothing. When any operation is refused nothing is written: it gets its error and
  every other operation `ABORTED`.

Idempotent per operation: an operation whose key was used for the same request answers with the
first transaction (`replayed`), so a retried batch returns the first results; one used for
another request is IDEMPOTENCY_CONFLICT. At most `LEDGER_MAX_BATCH` operations.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import uuid
from collections.abc import Sequence
from typing import Any

from ledgerx import ids
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import AppError, BadInput
from ledgerx.domain.ledger import policy, posting, wallets
from ledgerx.domain.ledger.batcher import RETRYABLE, SINGLE_ATTEMPTS
from ledgerx.domain.ledger.service import LedgerService, WalletRef
from ledgerx.domain.ledger.types import Posted, Posting
from ledgerx.domain.tenancy.authorize import Authorizer, Rule, check_key_scope

ABORTED = "ABORTED"


class OperationKind(enum.StrEnum):
    CREDIT = "CREDIT"
    DEBIT = "DEBIT"
    TRANSFER = "TRANSFER"


@dataclasses.dataclass(frozen=True, slots=True)
class Operation:
    kind: OperationKind
    wallet_id: str  # public ids, decoded here so a bad one is that operation's error
    amount: int
    idempotency_key: str
    to_wallet_id: str | None = None
    reason: str | None = None
    reference: str | None = None
    metadata: Any = None  # a JSON object; anything else is that operation's BAD_USER_INPUT


@dataclasses.dataclass(frozen=True, slots=True)
class OperationError:
    code: str
    message: str
    field: str | None = None

    @classmethod
    def of(cls, exc: AppError, index: int) -> OperationError:
        field = f"operations[{index}].{exc.field}" if exc.field else None
        return cls(exc.code, exc.message, field)


@dataclasses.dataclass(frozen=True, slots=True)
class OperationResult:
    index: int
    posted: Posted | None = None
    error: OperationError | None = None


class _Refused(Exception):
    """Rolls an atomic batch back; carries what the operations' outcomes were."""

    def __init__(self, outcomes: list[Posted | AppError]) -> None:
        super().__init__("an operation of an atomic batch was refused")
        self.outcomes = outcomes


def check_size(count: int, max_batch: int) -> None:
    if count == 0:
        raise BadInput("operations must list at least one operation", field="operations")
    if count > max_batch:
        raise BadInput(f"at most {max_batch} operations per request (got {count})", field="operations")


async def post_operations(
    ledger: LedgerService,
    actor: Actor,
    authorizer: Authorizer,
    operations: Sequence[Operation],
    *,
    atomic: bool,
    max_batch: int,
) -> list[OperationResult]:
    """Every operation's result, in the order given (see the module's docstring)."""
    check_size(len(operations), max_batch)
    # An API key without `wallets:write` is refused whole, as by every single posting's mutation.
    check_key_scope(authorizer.principal, policy.WRITE)
    built: list[Posting | AppError] = []
    for op in operations:
        try:
            built.append(await _posting(ledger, actor, authorizer, op))
        except AppError as exc:
            built.append(exc)
    postings = [b for b in built if isinstance(b, Posting)]
    if atomic and len(postings) < len(built):
        return _aborted(built)
    if not postings:  # every operation was refused before any database work
        return _results([b for b in built if isinstance(b, AppError)])
    if not atomic:
        many = await posting.post_many(ledger, postings)
        decided = iter(many.outcomes)
        return _results([b if isinstance(b, AppError) else next(decided) for b in built])
    try:
        outcomes = await _all_or_nothing(ledger, postings)
    except _Refused as refused:
        return _aborted(refused.outcomes)
    return _results(list(outcomes))


async def _all_or_nothing(ledger: LedgerService, postings: list[Posting]) -> list[Posted | AppError]:
    projects = sorted({p.project_id for p in postings})
    # The system accounts a posting needs are created on first use in a transaction of their own:
    # resolve them before this one holds a connection, so a small pool (or PgBouncer's) cannot
    # have every holder waiting for a second connection.
    for p in postings:
        with contextlib.suppress(AppError):  # a refused posting is refused again, inside
            await posting.prepare(ledger, p)
    for attempt in range(SINGLE_ATTEMPTS):
        try:
            async with ledger.db.raw(project_ids=projects) as conn:
                many = await posting.post_many(ledger, postings, conn=conn)
                if any(isinstance(o, AppError) for o in many.outcomes):
                    raise _Refused(many.outcomes)  # rolls the transaction back
            ledger.publish(many.events)
            return many.outcomes
        except RETRYABLE:
            if attempt + 1 == SINGLE_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _results(outcomes: Sequence[Posted | AppError]) -> list[OperationResult]:
    return [
        OperationResult(i, error=OperationError.of(o, i)) if isinstance(o, AppError) else OperationResult(i, posted=o)
        for i, o in enumerate(outcomes)
    ]


def _aborted(outcomes: Sequence[Posting | Posted | AppError]) -> list[OperationResult]:
    refused = [i for i, o in enumerate(outcomes) if isinstance(o, AppError)]
    why = f"not posted: the batch is atomic and operation {refused[0]} was refused"
    return [
        OperationResult(i, error=OperationError.of(o, i) if isinstance(o, AppError) else OperationError(ABORTED, why))
        for i, o in enumerate(outcomes)
    ]


async def _posting(ledger: LedgerService, actor: Actor, authorizer: Authorizer, op: Operation) -> Posting:
    if op.metadata is not None and not isinstance(op.metadata, dict):
        raise BadInput("metadata must be a JSON object", field="metadata")
    wallet = await _wallet(ledger, authorizer, op.wallet_id, "walletId", policy.WRITE)
    if op.kind is OperationKind.TRANSFER:
        if op.to_wallet_id is None:
            raise BadInput("a TRANSFER names toWalletId", field="toWalletId")
        # As transferCredits: acting on the source, reading the target.
        target = await _wallet(ledger, authorizer, op.to_wallet_id, "toWalletId", policy.READ)
        if op.reference is not None:
            raise BadInput("a TRANSFER takes no reference", field="reference")
        return posting.transfer_posting(
            actor, wallet, target, op.amount, op.idempotency_key, reason=op.reason, metadata=op.metadata
        )
    if op.to_wallet_id is not None:
        raise BadInput(f"only a TRANSFER names toWalletId, not a {op.kind.value}", field="toWalletId")
    build = posting.credit_posting if op.kind is OperationKind.CREDIT else posting.debit_posting
    return build(
        actor, wallet, op.amount, op.idempotency_key, reason=op.reason, metadata=op.metadata, reference=op.reference
    )


async def _wallet(ledger: LedgerService, authorizer: Authorizer, public_id: str, field: str, rule: Rule) -> WalletRef:
    wallet_id: uuid.UUID = ids.decode("wallet", public_id, field)
    return await wallets.find_wallet(ledger, authorizer, wallet_id, rule, field=field)
