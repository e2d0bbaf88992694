"""The tax engine: discounts and taxes of an invoice's lines, exactly, with no database.

Amounts are integers in minor units; percentages are Decimals (Decimal("7.25") is 7.25 %) with at
most 4 decimals. Everything is computed as exact rationals and rounded once, half-even, per line;
the invoice's figures are sums of the per-line figures, so they add up to the cent by construction
(rounding the invoice-level sum instead would print lines that do not add up to the total).
"""

from __future__ import annotations

import dataclasses
import decimal
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from fractions import Fraction

from ledgerx.domain.errors import BadInput
from ledgerx.domain.invoicing import vat_ids

# The 27 member states: vat_ids knows each one's VAT number format, so the list lives there once.
EU_COUNTRIES: frozenset[str] = vat_ids.COUNTRIES

REVERSE_CHARGE_NOTE = (
    "Reverse charge: VAT to be accounted for by the recipient (Article 196, Council Directive 2006/112/EC)."
)

EU_VAT = "eu_vat"  # the Stripe tax id type of an EU VAT number (domain/notifications/tax_ids.py)
MAX_DECIMALS = 4


@dataclasses.dataclass(frozen=True, slots=True)
class Rate:
    """A tax rate as chosen for a buyer."""

    name: str  # "VAT", "GST", "Sales tax"
    percentage: decimal.Decimal
    inclusive: bool
    country: str  # ISO 3166-1 alpha-2, upper case
    state: str | None = None
    id: uuid.UUID | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    """One charged line, before discount."""

    description: str
    quantity: int  # >= 1
    unit_amount: int  # >= 0
    amount: int  # >= 0; normally quantity * unit_amount, but amounts Stripe gives are taken as they are
    period_start: datetime | None = None
    period_end: datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class TaxedItem:
    item: Item
    discount: int  # this line's share of the invoice discount (0 <= discount <= item.amount)
    net: int  # item.amount - discount: what the tax applies to
    tax: int  # this line's tax, rounded half-even


@dataclasses.dataclass(frozen=True, slots=True)
class TaxLine:
    name: str
    rate: decimal.Decimal
    inclusive: bool
    amount: int


@dataclasses.dataclass(frozen=True, slots=True)
class Computation:
    items: tuple[TaxedItem, ...]
    subtotal: int  # sum of item.amount
    discount: int  # sum of the allocated discounts (== min(discount asked, subtotal))
    tax: int  # sum of the line taxes
    total: int  # what the buyer pays: subtotal - discount + (tax if exclusive else 0)
    tax_lines: tuple[TaxLine, ...]  # one per rate applied (empty when no tax)
    reverse_charge: bool
    note: str | None  # printed wording, e.g. the reverse-charge sentence


def round_half_even(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded to the nearest integer, ties to the even one (exact)."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    # Floor division keeps 0 <= remainder < denominator for negative numerators too.
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        return quotient + 1
    return quotient


def allocate(total: int, weights: Sequence[int]) -> list[int]:
    """`total` split over `weights` proportionally (largest remainder, ties to the earliest index).

    The shares sum to `total` exactly, each is the floor or the ceiling of its exact quota, a weight
    0 gets 0, and no share exceeds its weight when 0 <= total <= sum(weights). A negative total is
    split as the mirror of its absolute value.
    """
    if any(w < 0 for w in weights):
        raise ValueError("weights must not be negative")
    if total < 0:
        return [-share for share in allocate(-total, weights)]
    whole = sum(weights)
    if whole == 0:
        if total != 0:
            raise ValueError("cannot allocate a non-zero total over zero weights")
        return [0] * len(weights)
    shares: list[int] = []
    remainders: list[int] = []
    for w in weights:
        share, remainder = divmod(total * w, whole)
        shares.append(share)
        remainders.append(remainder)
    # The remainders sum to `left * whole` and each is below `whole`, so at least `left` of them
    # are positive: the extra units never go to a weight 0.
    left = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[:left]:
        shares[i] += 1
    return shares


def _integer(value: object, field: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput("expected an integer", field=field)
    if value < minimum:
        raise BadInput(f"must be at least {minimum}", field=field)
    return value


def percentage(value: object, field: str = "rate.percentage") -> Fraction:
    """A percentage as an exact fraction: a Decimal (or int) in 0..100 with at most 4 decimals."""
    if isinstance(value, bool) or not isinstance(value, decimal.Decimal | int):
        raise BadInput("a percentage must be a decimal number", field=field)
    if isinstance(value, decimal.Decimal) and not value.is_finite():
        raise BadInput("a percentage must be a finite number", field=field)
    exact = Fraction(value)
    if not 0 <= exact <= 100:
        raise BadInput("a percentage must be between 0 and 100", field=field)
    # By value, so Decimal("7.25000") is as good as Decimal("7.25").
    if (exact * 10**MAX_DECIMALS).denominator != 1:
        raise BadInput(f"a percentage has at most {MAX_DECIMALS} decimals", field=field)
    return exact


def _check_item(item: Item, index: int) -> None:
    _integer(item.quantity, f"items.{index}.quantity", 1)
    _integer(item.unit_amount, f"items.{index}.unitAmount", 0)
    _integer(item.amount, f"items.{index}.amount", 0)


def line_tax(net: int, rate: Fraction, inclusive: bool) -> int:
    """The tax of one line of `net`: on top of it (exclusive), or contained in it (inclusive)."""
    if inclusive:
        # net = base * (1 + p/100), so the tax in it is net * p / (100 + p).
        return round_half_even(net * rate.numerator, 100 * rate.denominator + rate.numerator)
    return round_half_even(net * rate.numerator, 100 * rate.denominator)


def compute(
    items: Sequence[Item],
    *,
    discount: int = 0,
    rate: Rate | None = None,
    reverse_charge: bool = False,
) -> Computation:
    """The discount spread over `items` by their amounts, then each line's tax on what remains.

    With `reverse_charge` no tax is charged and the reverse-charge line and note are printed; with
    no `rate` no tax is charged and no tax line printed. A 0 % rate still prints its (0) line.
    """
    for i, item in enumerate(items):
        _check_item(item, i)
    _integer(discount, "discount", 0)
    exact = percentage(rate.percentage) if rate is not None else Fraction(0)
    subtotal = sum(item.amount for item in items)
    # A discount larger than the invoice takes it to zero, never below.
    shares = allocate(min(discount, subtotal), [item.amount for item in items])
    taxing = rate is not None and not reverse_charge
    inclusive = rate is not None and rate.inclusive
    taxed: list[TaxedItem] = []
    for item, share in zip(items, shares, strict=True):
        net = item.amount - share
        tax = line_tax(net, exact, inclusive) if taxing else 0
        taxed.append(TaxedItem(item, share, net, tax))
    allocated = sum(t.discount for t in taxed)
    tax_total = sum(t.tax for t in taxed)
    tax_lines: tuple[TaxLine, ...] = ()
    if reverse_charge:
        tax_lines = (TaxLine("Reverse charge", decimal.Decimal("0"), False, 0),)
    elif rate is not None:
        tax_lines = (TaxLine(rate.name, rate.percentage, rate.inclusive, tax_total),)
    total = subtotal - allocated + (0 if inclusive else tax_total)
    return Computation(
        items=tuple(taxed),
        subtotal=subtotal,
        discount=allocated,
        tax=tax_total,
        total=total,
        tax_lines=tax_lines,
        reverse_charge=reverse_charge,
        note=REVERSE_CHARGE_NOTE if reverse_charge else None,
    )


def _code(value: str | None) -> str | None:
    code = value.strip().upper() if value is not None else None
    return code or None


def choose_rate(rates: Iterable[Rate], country: str | None, state: str | None) -> Rate | None:
    """The rate for a buyer in (country, state): one for that state beats the country-wide one
    (state None); a state-specific rate never applies to a buyer of another or unknown state.
    Among equally specific rates the first one given wins."""
    country_code = _code(country)
    if country_code is None:
        return None
    state_code = _code(state)
    country_wide: Rate | None = None
    for rate in rates:
        if _code(rate.country) != country_code:
            continue
        rate_state = _code(rate.state)
        if rate_state is None:
            if country_wide is None:
                country_wide = rate
        elif state_code is not None and rate_state == state_code:
            return rate
    return country_wide


def reverse_charge_applies(
    seller_country: str | None, buyer_country: str | None, tax_ids: Iterable[tuple[str, str]]
) -> bool:
    """EU intra-community B2B supply: seller and buyer in different member states and the buyer
    gives a valid-looking VAT number ("eu_vat") of its own state. Format only: VIES is not asked."""
    seller = _code(seller_country)
    buyer = _code(buyer_country)
    if seller is None or buyer is None or seller == buyer:
        return False
    if seller not in EU_COUNTRIES or buyer not in EU_COUNTRIES:
        return False
    return any(kind.strip().lower() == EU_VAT and vat_ids.valid_looking(value, buyer) for kind, value in tax_ids)
