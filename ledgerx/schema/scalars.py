"""Scalars: money as BigInt (string of digits out; string or int in), Decimal for prices and units.

Input is strict on purpose. Python's `int()` and `decimal.Decimal()` accept surrounding spaces,
underscores, exponents, NaN/Infinity and every Unicode decimal digit (Arabic-Indic, full-width, ...); an amount must be
exactly what a client typed in ASCII, so both scalars match a regular expression before any
conversion:

- BigInt: `-?[0-9]+` as a string, or an integer (a JSON integer or a GraphQL Int literal; never a
  boolean or a float), within signed 64 bits.
- Decimal: `-?[0-9]+(\\.[0-9]+)?` as a string or a GraphQL literal (exact: the literal's text is
  read, not a float), or a JSON number (an integer exactly; a float as decoded, finite).

Every refusal raises BadInput, on both of graphql-core's paths: `parse_value` (variables) and
`parse_literal` (values written in the query text). A plain ValueError would do for variables,
but on the literal path graphql-core's validation keeps the ValueError as the error's
`original_error`, which error shaping masks as INTERNAL; BadInput carries BAD_USER_INPUT there
(graphql-core copies its `extensions`, schema/errors.py keeps its message).

Output: BigInt serializes any integer as a string of digits, with no 64-bit limit. Stored amounts
and balances are 64-bit, but aggregates over them (a project's total balance, credits added over
a range) can exceed 2^63, and a total must still be reported exactly; input stays 64-bit because
every input is a single amount.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import TYPE_CHECKING, Any, NewType

import strawberry
from graphql.language import FloatValueNode, IntValueNode, StringValueNode, ValueNode, VariableNode
from strawberry.types.scalar import ScalarDefinition

from ledgerx.domain import scalars as rendered
from ledgerx.domain.errors import BadInput
from ledgerx.domain.numbers import DECIMAL_TEXT, INTEGER_TEXT

_BIGINT_TEXT = INTEGER_TEXT
_DECIMAL_TEXT = DECIMAL_TEXT
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Decimal inputs are prices and unit counts: 64 digits either side of the point is far beyond any
# real value; the same bound applies to JSON integers (by bit length, without formatting them).
_DECIMAL_INT_BITS = 212  # 2**212 has 64 decimal digits


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _bigint_from_text(text: str, shown: object) -> int:
    if _BIGINT_TEXT.fullmatch(text) is None:
        raise BadInput(f"BigInt must be an integer or a string of ASCII digits (-?[0-9]+), got {_show(shown)}")
    return _int64(int(text))


def _int64(n: int) -> int:
    if not INT64_MIN <= n <= INT64_MAX:
        raise BadInput("BigInt is out of the signed 64-bit range")
    return n


def parse_bigint(value: object) -> int:
    """A variable's value (decoded JSON)."""
    if isinstance(value, bool):
        raise BadInput("BigInt must be an integer, not a boolean")
    if isinstance(value, int):
        return _int64(value)
    if isinstance(value, str):
        return _bigint_from_text(value, value)
    raise BadInput(f"BigInt must be an integer or a string of ASCII digits (-?[0-9]+), got {_show(value)}")


def parse_bigint_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> int:
    """A value written in the query: an Int literal or a string; a Float literal is refused."""
    if isinstance(node, VariableNode):
        return parse_bigint((variables or {}).get(node.name.value))
    if isinstance(node, IntValueNode | StringValueNode):
        return _bigint_from_text(node.value, node.value)
    raise BadInput("BigInt must be an integer or a string of ASCII digits (-?[0-9]+)")


def _decimal_from_text(text: str, shown: object) -> decimal.Decimal:
    if _DECIMAL_TEXT.fullmatch(text) is None:
        raise BadInput(
            f"Decimal must be a plain decimal number in ASCII (-?[0-9]+ with an optional .[0-9]+), got {_show(shown)}"
        )
    d = decimal.Decimal(text)
    return d.copy_abs() if d.is_zero() else d  # "-0" is zero, as PostgreSQL stores it


def parse_decimal(value: object) -> decimal.Decimal:
    """A variable's value (decoded JSON): a string, or a JSON number."""
    if isinstance(value, bool):
        raise BadInput("Decimal must be a number, not a boolean")
    if isinstance(value, int):
        if value.bit_length() > _DECIMAL_INT_BITS:
            raise BadInput("Decimal has too many digits")
        return decimal.Decimal(value)
    if isinstance(value, float):
        # A JSON number with a fraction or exponent arrives decoded as a float; its shortest repr
        # is the number the client sent (0.1 stays 0.1). 1e999 decodes as inf: refused.
        d = decimal.Decimal(repr(value)) if value == value and abs(value) != float("inf") else None
        if d is None:
            raise BadInput("Decimal must be finite")
        return d
    if isinstance(value, str):
        return _decimal_from_text(value, value)
    raise BadInput(f"Decimal must be a string or a number, got {_show(value)}")


def parse_decimal_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> decimal.Decimal:
    """A value written in the query: read from the literal's text, so no float rounding."""
    if isinstance(node, VariableNode):
        return parse_decimal((variables or {}).get(node.name.value))
    if isinstance(node, IntValueNode | FloatValueNode | StringValueNode):
        return _decimal_from_text(node.value, node.value)
    raise BadInput("Decimal must be a string or a number")


# Instants a billing system can mean. The calendar's two ends are not: asyncpg sends datetime.min
# and datetime.max as -infinity/infinity (a usage summary then walks a series towards infinity),
# and an instant near either end overflows when shifted to UTC or a rule's time zone, or when a
# period is added to it. Years 1970 to 8999 leave every computation room on both sides.
DATETIME_MIN = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
DATETIME_MAX = dt.datetime(9000, 1, 1, tzinfo=dt.UTC)


def parse_datetime(value: object) -> dt.datetime:
    """ISO 8601 (Python's reading of it), within [1970-01-01, 9000-01-01) UTC."""
    if not isinstance(value, str):
        raise BadInput(f"DateTime must be an ISO 8601 string, got {_show(value)}")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except (ValueError, OverflowError):
        raise BadInput(f"DateTime must be an ISO 8601 string, got {_show(value)}") from None
    try:
        instant = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)
        in_range = DATETIME_MIN <= instant < DATETIME_MAX
    except OverflowError:  # comparing converts to UTC, which can leave the calendar
        in_range = False
    if not in_range:
        raise BadInput("DateTime must be between 1970-01-01 and 9000-01-01 (UTC)")
    return parsed


def parse_datetime_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> dt.datetime:
    if isinstance(node, VariableNode):
        return parse_datetime((variables or {}).get(node.name.value))
    if isinstance(node, StringValueNode):
        return parse_datetime(node.value)
    raise BadInput("DateTime must be an ISO 8601 string")


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
    dt.datetime: strawberry.scalar(
        name="DateTime",
        serialize=rendered.datetime_text,
        parse_value=parse_datetime,
        parse_literal=parse_datetime_literal,
        description="Date with time (ISO 8601, e.g. 2026-12-05T10:30:00Z), between 1970-01-01 and 9000-01-01 UTC.",
    ),
    BigInt: strawberry.scalar(
        name="BigInt",
        serialize=rendered.bigint_text,
        parse_value=parse_bigint,
        parse_literal=parse_bigint_literal,
        description="An integer amount in minor units, serialized as a string of digits. Input: a string"
        " matching -?[0-9]+ or an integer, within signed 64 bits. Output: any size (totals over many"
        " amounts may exceed 64 bits).",
    ),
    Decimal: strawberry.scalar(
        name="Decimal",
        serialize=rendered.decimal_text,
        parse_value=parse_decimal,
        parse_literal=parse_decimal_literal,
        description="An exact decimal number, serialized as a string. Input: a string like -12.345 (ASCII"
        " digits, no exponent) or a number.",
    ),
}
