"""Amounts as a mail writes them (money is integers in minor units everywhere else; instants:
`mail.instant`)."""

from __future__ import annotations

# ISO 4217 currencies without minor units (Stripe's zero-decimal list).
ZERO_DECIMAL = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split()  # noqa: SIM905 (a list to read)
)
THREE_DECIMAL = frozenset("BHD JOD KWD OMR TND".split())  # noqa: SIM905


def amount(minor: int, currency: str) -> str:
    """`1,234 credits`, `USD 12.34`, `JPY 1,234`."""
    code = currency.upper()
    if code == "CREDITS":
        return f"{minor:,} credits"
    places = 0 if code in ZERO_DECIMAL else 3 if code in THREE_DECIMAL else 2
    if places == 0:
        return f"{code} {minor:,}"
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), 10**places)
    return f"{code} {sign}{whole:,}.{frac:0{places}d}"
