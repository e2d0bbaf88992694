"""Money inputs of the payments domain: `{amount, currency}` with an ISO code in either case."""

from __future__ import annotations

import dataclasses

from ledgerx.domain.errors import BadInput
from ledgerx.domain.ledger.posting import normalize_currency
from ledgerx.domain.ledger.types import CREDITS, MAX_BIGINT


@dataclasses.dataclass(frozen=True, slots=True)
class Money:
    amount: int
    currency: str


def iso_currency(value: str, field: str = "currency") -> str:
    """An ISO 4217 code (either case in, upper case out); CREDITS is not a price currency."""
    code = normalize_currency(value, field)
    if code == CREDITS:
        raise BadInput("a price needs an ISO 4217 currency, not CREDITS", field=field)
    return code


def money(amount: int, currency: str, *, field: str = "price", allow_zero: bool = False) -> Money:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise BadInput("amount must be an integer in minor units", field=f"{field}.amount")
    if amount < 0 or (amount == 0 and not allow_zero) or amount > MAX_BIGINT:
        raise BadInput(
            "amount must be zero or positive" if allow_zero else "amount must be positive",
            field=f"{field}.amount",
        )
    return Money(amount, iso_currency(currency, f"{field}.currency"))
