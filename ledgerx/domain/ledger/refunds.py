"""Refunds: a reversing transaction linked to the original, partial or whole, never more in total.

The refundable remainder is decided under the wallets' row locks (every refund of a transaction
locks the same wallets), so concurrent refunds cannot together exceed the original.
"""

from __future__ import annotations

import uuid

from ledgerx import ids
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput, NotFound
from ledgerx.domain.ledger import apply, hashing, reads
from ledgerx.domain.ledger.posting import check_amount, check_key, submit
from ledgerx.domain.ledger.service import LedgerService
from ledgerx.domain.ledger.types import Kind, Posted, SystemAccount, TransactionRecord


async def refund_transaction(
    ledger: LedgerService,
    actor: Actor,
    project_id: uuid.UUID,
    transaction_id: uuid.UUID,
    amount: int | None,
    idempotency_key: str,
    *,
    reason: str | None = None,
) -> Posted:
    """Reverse `amount` (default: all that is left) of a transaction of `project_id`."""
    check_key(idempotency_key)
    if amount is not None:
        check_amount(amount)
    original = await reads.get_transaction(ledger, project_id, transaction_id)
    if original is None:
        raise NotFound("transaction not found", field="transactionId")
    return await submit(ledger, await prepared(ledger, actor, original, amount, idempotency_key, reason=reason))


async def prepared(
    ledger: LedgerService,
    actor: Actor,
    original: TransactionRecord,
    amount: int | None,
    idempotency_key: str,
    *,
    reason: str | None = None,
    action: str = "ledger.refund",
) -> apply.Prepared:
    """A refund of `original`, ready to submit (alone, or in the caller's session: `submit(...,
    session=)`); the money goes back to the grants the original drew."""
    if original.refund_of is not None:
        raise BadInput("a refund cannot be refunded", field="transactionId")
    refunds_account = await ledger.system_account(original.project_id, SystemAccount.REFUNDS.value, original.currency)
    fingerprint = {"op": "refund", "transaction": str(original.id), "amount": amount, "reason": reason}
    return apply.Prepared(
        project_id=original.project_id,
        wallet_id=original.wallet_id,
        kind=Kind.REFUND.value,
        currency=original.currency,
        legs=(),
        idempotency_key=idempotency_key,
        request_hash=hashing.request_hash(fingerprint),
        actor=actor,
        action=action,
        reference=ids.encode("transaction", original.id),
        reason=reason,
        metadata_json="{}",
        refund=apply.RefundSpec(original, amount, refunds_account),
    )
