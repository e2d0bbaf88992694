"""Canonical content and hashes: the tamper evidence of the ledger.

Every transaction stores sha256 of its canonical content. Every entry stores
sha256(previous entry's hash of the same wallet || canonical entry content), and the entry content
includes its transaction's hash, so changing a transaction or an entry breaks the wallet's chain
from that point on. System-account entries are not chained (chaining them would serialize every
posting of a project on one row) but are hashed the same way from GENESIS.

Canonical content is a JSON array (unambiguous: no separator can be smuggled in a string).
`metadata` is descriptive and is not covered: PostgreSQL's jsonb normalizes numbers, so bytes
hashed before the insert could not be reproduced from what is read back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Mapping
from typing import Any

GENESIS = bytes(32)
_VERSION_TXN = "lxtxn1"
_VERSION_ENTRY = "lxent1"


def _canon(items: list[Any]) -> bytes:
    return json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode()


def _u(value: uuid.UUID | None) -> str | None:
    return str(value) if value is not None else None


def _ts(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat()


def request_hash(fingerprint: Mapping[str, Any]) -> bytes:
    """sha256 of a request's canonical JSON (sorted keys): what "the same request" means."""
    text = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).digest()


def txn_hash(
    *,
    id: uuid.UUID,
    project_id: uuid.UUID,
    wallet_id: uuid.UUID,
    type: str,
    kind: str,
    currency: str,
    amount: int,
    balance_before: int,
    balance_after: int,
    idempotency_key: str,
    request_hash: bytes,
    reference: str | None,
    reason: str | None,
    refund_of: uuid.UUID | None,
    actor_type: str,
    actor_id: uuid.UUID | None,
    created_at: dt.datetime,
) -> bytes:
    content = _canon(
        [
            _VERSION_TXN,
            str(id),
            str(project_id),
            str(wallet_id),
            type,
            kind,
            currency,
            amount,
            balance_before,
            balance_after,
            idempotency_key,
            request_hash.hex(),
            reference,
            reason,
            _u(refund_of),
            actor_type,
            _u(actor_id),
            _ts(created_at),
        ]
    )
    return hashlib.sha256(content).digest()


def entry_hash(
    prev_hash: bytes,
    *,
    id: uuid.UUID,
    transaction_id: uuid.UUID,
    transaction_hash: bytes,
    wallet_id: uuid.UUID | None,
    system_account_id: uuid.UUID | None,
    currency: str,
    amount: int,
    balance_before: int | None,
    balance_after: int | None,
    seq: int | None,
    created_at: dt.datetime,
) -> bytes:
    content = _canon(
        [
            _VERSION_ENTRY,
            str(id),
            str(transaction_id),
            transaction_hash.hex(),
            _u(wallet_id),
            _u(system_account_id),
            currency,
            amount,
            balance_before,
            balance_after,
            seq,
            _ts(created_at),
        ]
    )
    return hashlib.sha256(prev_hash + content).digest()
