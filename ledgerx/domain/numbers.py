"""How numbers are written on the wire: one rule for GraphQL scalars and JSON routes alike.

ASCII only: Python's `int()` and `decimal.Decimal()` accept spaces, underscores, exponents,
NaN/Infinity and every Unicode decimal digit; an amount must be exactly what a client typed.
Lengths are capped so a megabyte of digits is refused by the pattern, before any conversion work.
"""

from __future__ import annotations

import re

INTEGER_TEXT = re.compile(r"-?[0-9]{1,64}")
DECIMAL_TEXT = re.compile(r"-?[0-9]{1,64}(?:\.[0-9]{1,64})?")
