"""Ledger records <-> JSON, for events that cross app instances through Redis."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from typing import Any

from ledgerx.domain.ledger.types import EntryRecord, TransactionRecord, TxnType, WalletRecord


def _u(v: uuid.UUID | None) -> str | None:
    return str(v) if v is not None else None


def _iso(v: dt.datetime) -> str:
    """isoformat, memoized: a batch's records and entries all carry the batch's instant."""
    return _iso_at(v, v.utcoffset())


@functools.lru_cache(maxsize=1024)
def _iso_at(v: dt.datetime, offset: dt.timedelta | None) -> str:
    # Keyed on the offset too: equal instants in other zones compare equal but write other text.
    return v.isoformat()


def _pu(v: Any) -> uuid.UUID | None:
    return uuid.UUID(v) if v else None


def wallet_to_json(w: WalletRecord) -> dict[str, Any]:
    return {
        "id": str(w.id),
        "projectId": str(w.project_id),
        "name": w.name,
        "ownerUserId": _u(w.owner_user_id),
        "currency": w.currency,
        "balance": w.balance,
        "creditLimit": w.credit_limit,
        "lowBalanceThreshold": w.low_balance_threshold,
        "createdAt": _iso(w.created_at),
        "updatedAt": _iso(w.updated_at),
    }


def wallet_from_json(d: dict[str, Any]) -> WalletRecord:
    return WalletRecord(
        id=uuid.UUID(d["id"]),
        project_id=uuid.UUID(d["projectId"]),
        name=d["name"],
        owner_user_id=_pu(d.get("ownerUserId")),
        currency=d["currency"],
        balance=int(d["balance"]),
        credit_limit=int(d["creditLimit"]),
        low_balance_threshold=None if d.get("lowBalanceThreshold") is None else int(d["lowBalanceThreshold"]),
        created_at=dt.datetime.fromisoformat(d["createdAt"]),
        updated_at=dt.datetime.fromisoformat(d["updatedAt"]),
    )


def _entry_to_json(e: EntryRecord) -> dict[str, Any]:
    return {
        "id": str(e.id),
        "walletId": _u(e.wallet_id),
        "systemAccount": e.system_account,
        "currency": e.currency,
        "amount": e.amount,
        "balanceBefore": e.balance_before,
        "balanceAfter": e.balance_after,
        "seq": e.seq,
        "hash": e.hash.hex(),
        "createdAt": _iso(e.created_at),
    }


def _entry_from_json(txn_id: uuid.UUID, d: dict[str, Any]) -> EntryRecord:
    return EntryRecord(
        id=uuid.UUID(d["id"]),
        transaction_id=txn_id,
        wallet_id=_pu(d.get("walletId")),
        system_account=d.get("systemAccount"),
        currency=d["currency"],
        amount=int(d["amount"]),
        balance_before=d.get("balanceBefore"),
        balance_after=d.get("balanceAfter"),
        seq=d.get("seq"),
        hash=bytes.fromhex(d["hash"]),
        created_at=dt.datetime.fromisoformat(d["createdAt"]),
    )


def txn_to_json(t: TransactionRecord) -> dict[str, Any]:
    return {
        "id": str(t.id),
        "projectId": str(t.project_id),
        "walletId": str(t.wallet_id),
        "type": t.type.value,
        "kind": t.kind,
        "currency": t.currency,
        "amount": t.amount,
        "balanceBefore": t.balance_before,
        "balanceAfter": t.balance_after,
        "idempotencyKey": t.idempotency_key,
        "reference": t.reference,
        "reason": t.reason,
        "metadata": t.metadata,
        "refundOf": _u(t.refund_of),
        "createdAt": _iso(t.created_at),
        "entries": [_entry_to_json(e) for e in t.entries],
    }


def txn_from_json(d: dict[str, Any]) -> TransactionRecord:
    tid = uuid.UUID(d["id"])
    return TransactionRecord(
        id=tid,
        project_id=uuid.UUID(d["projectId"]),
        wallet_id=uuid.UUID(d["walletId"]),
        type=TxnType(d["type"]),
        kind=d["kind"],
        currency=d["currency"],
        amount=int(d["amount"]),
        balance_before=int(d["balanceBefore"]),
        balance_after=int(d["balanceAfter"]),
        idempotency_key=d["idempotencyKey"],
        reference=d.get("reference"),
        reason=d.get("reason"),
        metadata=d.get("metadata") or {},
        refund_of=_pu(d.get("refundOf")),
        created_at=dt.datetime.fromisoformat(d["createdAt"]),
        entries=tuple(_entry_from_json(tid, e) for e in d.get("entries") or ()),
    )
