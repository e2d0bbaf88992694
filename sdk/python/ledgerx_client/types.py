"""Every type of the generated operations: results (TypedDicts of the JSON as sent), inputs, enums
(`Literal`s) and the scalar aliases (`BigInt`, `Decimal` and `DateTime` are exact strings)."""

from ledgerx_client._generated.types import *  # noqa: F403
from ledgerx_client._generated.types import __all__ as __all__
