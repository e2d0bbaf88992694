"""The ledger's records as outbound webhook `data`: the field names of the GraphQL types
`Transaction`, `LedgerEntry`, `Wallet`, `WalletUpdate` and `CreditGrant`, each value written as the API writes it
(typed public ids, BigInt as a string of digits, DateTime in ISO 8601; domain/scalars.py).

Fields a resolver computes at query time (`Transaction.refundedAmount`, `Wallet.transactions`)
are left out: an event is what the object was when it happened. tests/test_webhook_events.py
checks every key against the schema and every value against a query of the same object.
"""

from __future__ import annotations

from typing import Any

from ledgerx import ids
from ledgerx.domain.ledger.types import EntryRecord, GrantRecord, TransactionRecord, WalletRecord
from ledgerx.domain.scalars import bigint_text, datetime_text, optional, public_id


def entry(e: EntryRecord) -> dict[str, Any]:
    """GraphQL `LedgerEntry`."""
    return {
        "id": ids.encode("entry", e.id),
        "walletId": public_id("wallet", e.wallet_id),
        "systemAccount": e.system_account,
        "currency": e.currency,
        "amount": bigint_text(e.amount),
        "balanceBefore": optional(bigint_text, e.balance_before),
        "balanceAfter": optional(bigint_text, e.balance_after),
        "sequence": e.seq,
        "hash": e.hash.hex(),
    }


def transaction(t: TransactionRecord) -> dict[str, Any]:
    """GraphQL `Transaction` (the `transaction.posted` event)."""
    return {
        "id": ids.encode("transaction", t.id),
        "projectId": ids.encode("project", t.project_id),
        "walletId": ids.encode("wallet", t.wallet_id),
        "type": t.type.value,
        "kind": t.kind,
        "currency": t.currency,
        "amount": bigint_text(t.amount),
        "balanceBefore": bigint_text(t.balance_before),
        "balanceAfter": bigint_text(t.balance_after),
        "idempotencyKey": t.idempotency_key,
        "reference": t.reference,
        "reason": t.reason,
        "metadata": t.metadata,
        "refundOfId": public_id("transaction", t.refund_of),
        "createdAt": datetime_text(t.created_at),
        "entries": [entry(e) for e in t.entries],
    }


def wallet(w: WalletRecord) -> dict[str, Any]:
    """GraphQL `Wallet`."""
    return {
        "id": ids.encode("wallet", w.id),
        "projectId": ids.encode("project", w.project_id),
        "name": w.name,
        "ownerUserId": public_id("user", w.owner_user_id),
        "currency": w.currency,
        "balance": bigint_text(w.balance),
        "creditLimit": bigint_text(w.credit_limit),
        "lowBalanceThreshold": optional(bigint_text, w.low_balance_threshold),
        "createdAt": datetime_text(w.created_at),
        "updatedAt": datetime_text(w.updated_at),
    }


def wallet_update(w: WalletRecord, t: TransactionRecord, *, low_balance: bool) -> dict[str, Any]:
    """GraphQL `WalletUpdate` (the `wallet.low_balance` event): the wallet right after the
    transaction that took it below its threshold, and that transaction."""
    return {"wallet": wallet(w), "transaction": transaction(t), "lowBalance": low_balance}


def credit_grant(g: GrantRecord) -> dict[str, Any]:
    """GraphQL `CreditGrant` (the `credit_grant.expired` event: the grant right after its expiry)."""
    return {
        "id": ids.encode("credit_grant", g.id),
        "walletId": ids.encode("wallet", g.wallet_id),
        "amount": bigint_text(g.amount),
        "remaining": bigint_text(g.remaining),
        "category": g.category.value,
        "priority": g.priority,
        "expiresAt": optional(datetime_text, g.expires_at),
        "status": g.status.value,
        "createdAt": datetime_text(g.created_at),
    }
