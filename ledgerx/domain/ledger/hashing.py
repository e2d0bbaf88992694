"""Canonical content and hashes: the tamper evidence of the ledger.

Every transaction stores sha256 of its canonical content. Every entry stores
sha256(previous entry's hash of the same wallet || canonical entry content), and the entry content
includes its transaction's hash, so changing a transaction or an entry breaks the wallet's chain
from that point on. System-account entries are not chained (chaining them would serialize every
posting of a project on one row) but are hashed the same way from GENESIS.

Canonical content is a JSON array (unambiguous: no separator can be smuggled in a string).
`metadata` is descriptive and is not covered: PostgreSQL's jsonb normalizes numbers, so bytes
hashed before the insert could not be reproduced from what is read back.

The bytes are a stored format (existing chains must keep verifying): they are exactly what
`json.dumps([...], separators=(",", ":"), ensure_ascii=False)` writes for the array, built here
without the generic encoder (it cost a third of a posting's Python time). Strings go through the
same C function json.dumps uses for them (`json.encoder.encode_basestring`), integers through
`int.__repr__` as json does, UUIDs are hex and dashes (nothing to escape), None is `null`.
tests/test_ledger_core_hashes.py pins known hashes and compares with the generic encoder.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import json.encoder
import uuid
from collections.abc import Callable, Mapping
from typing import Any

GENESIS = bytes(32)
_VERSION_TXN = "lxtxn1"
_VERSION_ENTRY = "lxent1"


# The string encoder json.dumps(..., ensure_ascii=False) uses: '"' + escaped text + '"'.
_q: Callable[[str], str] = json.encoder.encode_basestring
_int = int.__repr__  # json writes an int as its repr


def _canon(items: list[Any]) -> bytes:
    """The generic form of the canonical content (what the fast paths below must equal)."""
    return json.dumps(items, separators=(",", ":"), ensure_ascii=False).encode()


def _u(value: uuid.UUID | None) -> str | None:
    return str(value) if value is not None else None


def _uq(value: uuid.UUID | None) -> str:
    """A UUID as its canonical JSON string (hex digits and dashes need no escape), or null."""
    return "null" if value is None else f'"{value}"'


def _sq(value: str | None) -> str:
    return "null" if value is None else _q(value)


def _iq(value: int | None) -> str:
    return "null" if value is None else _int(value)


@functools.lru_cache(maxsize=256)
def _ts(value: dt.datetime) -> str:
    """A timestamp's canonical text (memoized: a batch stamps every row with the same instant)."""
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
    content = (
        f'["{_VERSION_TXN}","{id}","{project_id}","{wallet_id}",{_q(type)},{_q(kind)},{_q(currency)},'
        f"{_int(amount)},{_int(balance_before)},{_int(balance_after)},{_q(idempotency_key)},"
        f'"{request_hash.hex()}",{_sq(reference)},{_sq(reason)},{_uq(refund_of)},{_q(actor_type)},'
        f"{_uq(actor_id)},{_q(_ts(created_at))}]"
    )
    return hashlib.sha256(content.encode()).digest()


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
    content = (
        f'["{_VERSION_ENTRY}","{id}","{transaction_id}","{transaction_hash.hex()}",{_uq(wallet_id)},'
        f"{_uq(system_account_id)},{_q(currency)},{_int(amount)},{_iq(balance_before)},{_iq(balance_after)},"
        f"{_iq(seq)},{_q(_ts(created_at))}]"
    )
    return hashlib.sha256(prev_hash + content.encode()).digest()
