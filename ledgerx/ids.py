"""UUIDv7 generation and the API's type-prefixed, sortable identifiers.

The database stores plain UUIDv7 values; the API shows `prefix_` + 26 Crockford base32
characters. Base32 of a fixed-width big-endian integer sorts like the integer, and UUIDv7 sorts
by creation time, so public ids sort by creation time too.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

from ledgerx.domain.errors import BadInput

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_DECODE = {c: i for i, c in enumerate(_ALPHABET)}

PREFIXES = {
    "user": "usr",
    "project": "prj",
    "member": "mem",
    "invite": "inv",
    "api_key": "key",
    "wallet": "wal",
    "transaction": "txn",
    "entry": "ent",
    "event": "evt",
    "rule": "rul",
    "run": "run",
    "metric": "met",
    "plan": "pln",
    "credit_pack": "pck",
    "coupon": "cpn",
    "coupon_redemption": "cpr",
    "payment": "pay",
    "invoice": "ivc",
    "credit_note": "crn",
    "tax_rate": "txr",
    "credit_grant": "grt",
    "subscription": "sub",
    "webhook_event": "whe",
    "webhook_endpoint": "whk",
    "webhook_delivery": "dlv",
    "audit": "aud",
}

_lock = threading.Lock()
_last_ms = 0
_seq = 0

# Random bits come from one os.urandom read per _POOL_IDS ids (a system call per id cost more than
# the rest of the id); bytes are never reused.
_POOL_IDS = 512
_pool = b""
_pool_at = 0
_RAND_MASK = (1 << 62) - 1
_VERSION_VARIANT = (0x7 << 76) | (0b10 << 62)
_new_uuid = object.__new__
_set = object.__setattr__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown


def uuid7() -> uuid.UUID:
    """A UUIDv7 that is strictly increasing within this process (RFC 9562, method 1 counter)."""
    global _last_ms, _seq, _pool, _pool_at
    with _lock:
        ms = time.time_ns() // 1_000_000
        if _pool_at >= len(_pool):
            _pool, _pool_at = os.urandom(10 * _POOL_IDS), 0
        at = _pool_at
        _pool_at = at + 10
        if ms <= _last_ms:
            ms = _last_ms
            _seq += 1
            if _seq >= 1 << 12:
                ms += 1
                _seq = 0
        else:
            _seq = int.from_bytes(_pool[at + 8 : at + 10], "big") & 0x3FF  # leave headroom for the counter
        _last_ms = ms
        seq = _seq
    rand = int.from_bytes(_pool[at : at + 8], "big") & _RAND_MASK
    # uuid.UUID(int=...) re-checks the range and version of what is built right here: skip it.
    value = _new_uuid(uuid.UUID)
    _set(value, "int", (ms << 80) | (seq << 64) | rand | _VERSION_VARIANT)
    _set(value, "is_safe", _SAFE_UNKNOWN)
    return value


# Base32 two characters (10 bits) at a time: 13 lookups for the 130 bits of a public id.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]


def encode(kind: str, value: uuid.UUID) -> str:
    n = value.int
    p = _PAIRS
    body = "".join([p[(n >> s) & 1023] for s in range(120, -10, -10)])
    return f"{PREFIXES[kind]}_{body}"


def decode(kind: str, public_id: str, field: str = "id") -> uuid.UUID:
    """Parse a public id of the given kind; an id of another kind or malformed is BAD_USER_INPUT."""
    prefix = PREFIXES[kind]
    if not isinstance(public_id, str) or not public_id.startswith(prefix + "_"):
        raise BadInput(f"expected a {kind.replace('_', ' ')} id starting with {prefix}_", field=field)
    body = public_id[len(prefix) + 1 :].lower()
    if len(body) != 26:
        raise BadInput(f"malformed {kind.replace('_', ' ')} id", field=field)
    n = 0
    for c in body:
        d = _DECODE.get(c)
        if d is None:
            raise BadInput(f"malformed {kind.replace('_', ' ')} id", field=field)
        n = (n << 5) | d
    if n >> 128:
        raise BadInput(f"malformed {kind.replace('_', ' ')} id", field=field)
    return uuid.UUID(int=n)
