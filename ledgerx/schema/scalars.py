"""Scalars: money as BigInt (string of digits out; string or int in), Decimal for prices and units."""

from __future__ import annotations

import decimal
import re
from typing import TYPE_CHECKING, NewType

import strawberry
from strawberry.types.scalar import ScalarDefinition

_DIGITS = re.compile(r"^-?\d{1,19}$")
_INT64 = (-(2**63), 2**63 - 1)


def _parse_bigint(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("BigInt must be an integer, not a boolean")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and _DIGITS.match(value.strip()):
        n = int(value.strip())
    else:
        raise ValueError(f"BigInt must be an integer or a string of digits, got {value!r}")
    if not _INT64[0] <= n <= _INT64[1]:
        raise ValueError("BigInt out of the 64-bit range")
    return n


def _parse_decimal(value: object) -> decimal.Decimal:
    if isinstance(value, bool):
        raise ValueError("Decimal must be a number, not a boolean")
    if isinstance(value, float):
        # Floats arrive from JSON numbers; go through repr so 0.1 stays 0.1.
        value = repr(value)
    try:
        d = decimal.Decimal(str(value).strip())
    except (decimal.InvalidOperation, ValueError):
        raise ValueError(f"Decimal must be a decimal number, got {value!r}") from None
    if not d.is_finite():
        raise ValueError("Decimal must be finite")
    return d


if TYPE_CHECKING:
    # For the type checker these are the plain Python types resolvers hand over.
    BigInt = int
    Decimal = decimal.Decimal
else:
    # At run time they are distinct types, so the scalar map can tell them apart from Int.
    BigInt = NewType("BigInt", int)
    Decimal = NewType("Decimal", decimal.Decimal)

# Registered on the schema with StrawberryConfig(scalar_map=SCALAR_MAP).
SCALAR_MAP: dict[object, ScalarDefinition] = {
    BigInt: strawberry.scalar(
        name="BigInt",
        serialize=lambda v: str(int(v)),
        parse_value=_parse_bigint,
        description="A 64-bit integer amount in minor units, serialized as a string of digits.",
    ),
    Decimal: strawberry.scalar(
        name="Decimal",
        serialize=lambda v: format(decimal.Decimal(v), "f"),
        parse_value=_parse_decimal,
        description="An exact decimal number, serialized as a string; accepts a string or a number.",
    ),
}
