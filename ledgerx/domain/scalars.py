"""How a value of each GraphQL scalar is written out, in one place.

The schema's scalars (schema/scalars.py) serialize with these, and so do outbound webhook events,
whose `data` has the field names of a GraphQL type: a value reads the same in a query's answer and
in an event about the same object.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Callable
from typing import TypeVar

from ledgerx import ids

_T = TypeVar("_T")


def datetime_text(value: dt.datetime) -> str:
    """DateTime: ISO 8601 as Python writes it (the offset kept)."""
    return value.isoformat()


def bigint_text(value: int) -> str:
    """BigInt: a string of digits (no 64-bit limit on output)."""
    return str(int(value))


def decimal_text(value: decimal.Decimal | int | str) -> str:
    """Decimal: exact, fixed-point, no exponent."""
    return format(decimal.Decimal(value), "f")


def optional(render: Callable[[_T], str], value: _T | None) -> str | None:
    return None if value is None else render(value)


def public_id(kind: str, value: uuid.UUID | None) -> str | None:
    """An ID field: the typed public id (`wal_…`), or null."""
    return None if value is None else ids.encode(kind, value)
