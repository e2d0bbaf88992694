"""The tax engine (domain/invoicing/tax.py) and the EU VAT number formats (vat_ids.py): property
tests against an independent oracle (Decimal arithmetic at high precision, quantized half-even),
hand-computed examples, rate choice, reverse charge and bad input."""

from __future__ import annotations

import decimal
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledgerx.domain.errors import BadInput
from ledgerx.domain.invoicing import tax, vat_ids
from ledgerx.domain.invoicing.tax import Item, Rate, TaxLine

# Enough digits that the oracle's divisions are exact where the rational is a decimal at all, and
# otherwise far closer than the 1/(100+p) gap between a non-tie and a tie.
ORACLE = decimal.Context(prec=200, rounding=decimal.ROUND_HALF_EVEN)


def oracle_line_tax(net: int, pct: Decimal, inclusive: bool) -> int:
    with decimal.localcontext(ORACLE):
        exact = Decimal(net) * pct / (100 + pct if inclusive else Decimal(100))
        return int(exact.quantize(Decimal(1), rounding=decimal.ROUND_HALF_EVEN))


def vat(pct: str, inclusive: bool = False, country: str = "FR", state: str | None = None, name: str = "VAT") -> Rate:
    return Rate(name, Decimal(pct), inclusive, country, state)


def item(amount: int, quantity: int = 1) -> Item:
    return Item("line", quantity, amount // quantity, amount)


percentages = st.one_of(
    st.integers(0, 100).map(Decimal),
    st.integers(0, 100 * 10**4).map(lambda n: Decimal(n).scaleb(-4)),  # up to 4 decimals
)
amount_lists = st.lists(st.integers(0, 10**9), min_size=1, max_size=30)


# ---- properties ---------------------------------------------------------------------------------


@given(amounts=amount_lists, pct=percentages, inclusive=st.booleans(), data=st.data())
def test_compute_invariants(amounts: list[int], pct: Decimal, inclusive: bool, data: st.DataObject) -> None:
    subtotal = sum(amounts)
    asked = data.draw(st.integers(0, subtotal + 10**6), label="discount")
    result = tax.compute([item(a) for a in amounts], discount=asked, rate=vat(str(pct), inclusive))

    assert result.subtotal == subtotal
    assert result.discount == min(asked, subtotal)
    assert sum(t.discount for t in result.items) == result.discount
    assert [t.item.amount for t in result.items] == amounts
    for t in result.items:
        assert 0 <= t.discount <= t.item.amount
        assert t.net == t.item.amount - t.discount >= 0
        # The discount is spread by amount: each share within one unit of its exact quota.
        if subtotal:
            assert abs(Fraction(t.discount) - Fraction(result.discount * t.item.amount, subtotal)) < 1
        assert t.tax == oracle_line_tax(t.net, pct, inclusive)
        if inclusive:
            assert 0 <= t.tax <= t.net
    assert result.tax == sum(t.tax for t in result.items) == sum(line.amount for line in result.tax_lines)
    assert result.tax_lines == (TaxLine("VAT", pct, inclusive, result.tax),)
    assert result.total == subtotal - result.discount + (0 if inclusive else result.tax)
    assert not result.reverse_charge and result.note is None


@given(amounts=amount_lists, pct=percentages, inclusive=st.booleans(), discount=st.integers(0, 10**10))
def test_no_rate_and_reverse_charge_charge_no_tax(
    amounts: list[int], pct: Decimal, inclusive: bool, discount: int
) -> None:
    items = [item(a) for a in amounts]
    untaxed = tax.compute(items, discount=discount)
    reversed_ = tax.compute(items, discount=discount, rate=vat(str(pct), inclusive), reverse_charge=True)
    expected_total = sum(amounts) - min(discount, sum(amounts))
    for result in (untaxed, reversed_):
        assert result.tax == 0 and all(t.tax == 0 for t in result.items)
        assert result.total == expected_total
    assert untaxed.tax_lines == () and untaxed.note is None and not untaxed.reverse_charge
    assert reversed_.tax_lines == (TaxLine("Reverse charge", Decimal("0"), False, 0),)
    assert reversed_.note == tax.REVERSE_CHARGE_NOTE and reversed_.reverse_charge


@given(weights=st.lists(st.integers(0, 10**9), max_size=30), data=st.data())
def test_allocate_properties(weights: list[int], data: st.DataObject) -> None:
    whole = sum(weights)
    total = data.draw(st.integers(-(10**10), 10**10) if whole else st.just(0), label="total")
    shares = tax.allocate(total, weights)
    assert sum(shares) == total
    assert shares == tax.allocate(total, list(weights))  # deterministic
    for share, w in zip(shares, weights, strict=True):
        if w == 0:
            assert share == 0
        else:
            assert abs(Fraction(share) - Fraction(total * w, whole)) < 1
        if 0 <= total <= whole:
            assert 0 <= share <= w


@given(weights=st.lists(st.integers(1, 1000), min_size=1, max_size=30), data=st.data())
def test_allocate_gives_the_extra_units_to_the_largest_remainders(weights: list[int], data: st.DataObject) -> None:
    total = data.draw(st.integers(0, 10**6), label="total")
    whole = sum(weights)
    shares = tax.allocate(total, weights)
    rounded_up = [i for i, (s, w) in enumerate(zip(shares, weights, strict=True)) if s * whole > total * w]
    kept = [i for i in range(len(weights)) if i not in rounded_up]
    # Every line rounded up has a remainder at least as large as any line rounded down, and when
    # equal, comes earlier.
    for up in rounded_up:
        for down in kept:
            r_up, r_down = (total * weights[up]) % whole, (total * weights[down]) % whole
            assert r_up > r_down or (r_up == r_down and up < down)


@given(numerator=st.integers(-(10**15), 10**15), denominator=st.integers(1, 10**6))
def test_round_half_even_matches_decimal(numerator: int, denominator: int) -> None:
    with decimal.localcontext(ORACLE):
        expected = (Decimal(numerator) / Decimal(denominator)).quantize(Decimal(1), rounding=decimal.ROUND_HALF_EVEN)
    assert tax.round_half_even(numerator, denominator) == int(expected)


# ---- examples (figures computed by hand) --------------------------------------------------------


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [
        (5, 2, 2),
        (7, 2, 4),
        (3, 2, 2),
        (1, 2, 0),
        (-5, 2, -2),
        (-7, 2, -4),
        (-3, 2, -2),
        (-1, 2, 0),
        (7, 3, 2),
        (-7, 3, -2),
        (8, 3, 3),
    ],
)
def test_round_half_even_examples(numerator: int, denominator: int, expected: int) -> None:
    assert tax.round_half_even(numerator, denominator) == expected


def test_round_half_even_needs_a_positive_denominator() -> None:
    with pytest.raises(ValueError, match="denominator"):
        tax.round_half_even(1, 0)


@pytest.mark.parametrize(
    ("amount", "pct", "inclusive", "expected"),
    [
        (1005, "20", False, 201),  # 201.0
        (25, "10", False, 2),  # 2.5 -> 2
        (35, "10", False, 4),  # 3.5 -> 4
        (1000, "7.25", False, 72),  # 72.5 -> 72
        (3000, "7.25", False, 218),  # 217.5 -> 218
        (1, "0.0001", False, 0),
        (500_000, "0.0001", False, 0),  # 0.5 -> 0
        (1_500_000, "0.0001", False, 2),  # 1.5 -> 2
        (11900, "19", True, 1900),  # 11900 * 19 / 119
        (1000, "20", True, 167),  # 166.67
        (5, "100", True, 2),  # 2.5 -> 2
        (7, "100", True, 4),  # 3.5 -> 4
        (999, "0", False, 0),
    ],
)
def test_line_tax_examples(amount: int, pct: str, inclusive: bool, expected: int) -> None:
    result = tax.compute([item(amount)], rate=vat(pct, inclusive))
    assert result.items[0].tax == result.tax == expected
    assert result.total == amount + (0 if inclusive else expected)


def test_rounding_is_per_line_and_totals_are_the_sums() -> None:
    # Two lines of 5 at 10 %: 0.5 each rounds to 0 (half-even), so the invoice's tax is 0, not the
    # 1 that rounding the invoice-level 1.0 would give.
    result = tax.compute([item(5), item(5)], rate=vat("10"))
    assert [t.tax for t in result.items] == [0, 0]
    assert result.tax == 0 and result.total == 10
    # 15 at 10 % (1.5 -> 2) and 25 at 10 % (2.5 -> 2): 4, where 4.0 overall would also be 4.
    result = tax.compute([item(15), item(25)], rate=vat("10"))
    assert [t.tax for t in result.items] == [2, 2] and result.tax == 4 and result.total == 44


def test_discount_is_allocated_by_amount_before_tax() -> None:
    # 100 over 100/200/300: quotas 16.67, 33.33, 50 -> floors 16, 33, 50, the left unit to the
    # largest remainder (line 0).
    result = tax.compute([item(100), item(200), item(300)], discount=100, rate=vat("20"))
    assert [t.discount for t in result.items] == [17, 33, 50]
    assert [t.net for t in result.items] == [83, 167, 250]
    assert [t.tax for t in result.items] == [17, 33, 50]  # 16.6, 33.4, 50.0
    assert (result.subtotal, result.discount, result.tax, result.total) == (600, 100, 100, 600)


def test_a_discount_larger_than_the_invoice_takes_it_to_zero() -> None:
    result = tax.compute([item(300, quantity=3), item(0)], discount=10_000, rate=vat("20"))
    assert result.discount == 300 and [t.discount for t in result.items] == [300, 0]
    assert result.tax == 0 and result.total == 0
    assert result.tax_lines == (TaxLine("VAT", Decimal("20"), False, 0),)


def test_inclusive_prices_already_contain_the_tax() -> None:
    result = tax.compute([item(11900), item(2380)], discount=2380, rate=vat("19", inclusive=True))
    # 2380 over 11900/2380: 1983.33 and 396.67 -> 1983 and 397.
    assert [t.discount for t in result.items] == [1983, 397]
    assert [t.tax for t in result.items] == [1583, 317]  # 9917 * 19/119 = 1583.4, 1983 * 19/119 = 316.6
    assert result.total == 14280 - 2380  # the buyer pays the discounted prices, nothing on top


def test_a_zero_rate_prints_its_line() -> None:
    result = tax.compute([item(1000)], rate=Rate("VAT", Decimal("0"), False, "IE"))
    assert result.tax_lines == (TaxLine("VAT", Decimal("0"), False, 0),)


def test_no_items_is_an_empty_invoice() -> None:
    result = tax.compute([], discount=50, rate=vat("20"))
    assert (result.items, result.subtotal, result.discount, result.tax, result.total) == ((), 0, 0, 0, 0)


def test_stripe_amounts_are_taken_as_they_are() -> None:
    given_amount = Item("proration", 3, 1000, 1234)
    result = tax.compute([given_amount], rate=vat("10"))
    assert result.subtotal == 1234 and result.tax == 123


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        (1, [1, 1, 1], [1, 0, 0]),  # a tie goes to the earliest
        (2, [1, 1, 1], [1, 1, 0]),
        (1, [0, 1, 1], [0, 1, 0]),
        (10, [0, 3, 0, 7], [0, 3, 0, 7]),
        (5, [1, 2, 2], [1, 2, 2]),
        (-1, [1, 1], [-1, 0]),
        (0, [0, 0], [0, 0]),
        (0, [], []),
    ],
)
def test_allocate_examples(total: int, weights: list[int], expected: list[int]) -> None:
    assert tax.allocate(total, weights) == expected


@pytest.mark.parametrize(("total", "weights"), [(1, [0, 0]), (1, []), (1, [2, -1])])
def test_allocate_refuses_what_cannot_be_split(total: int, weights: list[int]) -> None:
    with pytest.raises(ValueError, match="weights"):
        tax.allocate(total, weights)


# ---- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "discount", "pct", "field"),
    [
        ([Item("x", 1, 0, -1)], 0, "20", "items.0.amount"),
        ([item(5), Item("x", 0, 5, 5)], 0, "20", "items.1.quantity"),
        ([Item("x", 1, -5, 5)], 0, "20", "items.0.unitAmount"),
        ([item(5)], -1, "20", "discount"),
        ([item(5)], 0, "100.0001", "rate.percentage"),
        ([item(5)], 0, "-1", "rate.percentage"),
        ([item(5)], 0, "7.12345", "rate.percentage"),
        ([item(5)], 0, "NaN", "rate.percentage"),
        ([item(5)], 0, "Infinity", "rate.percentage"),
    ],
)
def test_bad_input(items: list[Item], discount: int, pct: str, field: str) -> None:
    with pytest.raises(BadInput) as caught:
        tax.compute(items, discount=discount, rate=vat(pct))
    assert caught.value.field == field


def test_a_percentage_is_judged_by_value() -> None:
    # Trailing zeros beyond 4 decimals are still 4 decimals; 100 and 0 are the bounds, inclusive.
    for pct in ("7.25000000", "100", "0", "1E+1"):
        tax.compute([item(100)], rate=vat(pct))


def test_a_float_percentage_is_refused() -> None:
    rate = Rate("VAT", 20.0, False, "FR")  # type: ignore[arg-type]
    with pytest.raises(BadInput) as caught:
        tax.compute([item(100)], rate=rate)
    assert caught.value.field == "rate.percentage"


# ---- choosing the rate --------------------------------------------------------------------------

US = vat("5", country="US", name="Sales tax")
US_CA = vat("7.25", country="US", state="CA", name="Sales tax")
US_NY = vat("8.875", country="US", state="NY", name="Sales tax")
DE = vat("19", inclusive=True, country="DE")


def test_a_state_rate_beats_the_country_rate() -> None:
    assert tax.choose_rate([US, US_CA, DE], "US", "CA") is US_CA
    assert tax.choose_rate([US_CA, US, DE], "US", "CA") is US_CA  # whatever the order
    assert tax.choose_rate([US, US_CA, US_NY], "us", " ny ") is US_NY  # case and spaces ignored


def test_the_country_rate_when_the_state_has_none_or_is_unknown() -> None:
    assert tax.choose_rate([US_CA, US], "US", "TX") is US
    assert tax.choose_rate([US_CA, US], "US", None) is US
    assert tax.choose_rate([US_CA, DE], "US", None) is None  # a state rate never applies elsewhere
    assert tax.choose_rate([US_CA, DE], "US", "TX") is None
    assert tax.choose_rate([US, DE], "de", "BY") is DE


def test_no_rate_without_a_country_or_a_match() -> None:
    assert tax.choose_rate([US, DE], None, None) is None
    assert tax.choose_rate([US, DE], None, "CA") is None
    assert tax.choose_rate([US, DE], "FR", None) is None
    assert tax.choose_rate([], "US", "CA") is None


def test_the_first_of_equally_specific_rates_wins() -> None:
    other = vat("6", country="US", name="Other")
    assert tax.choose_rate([US, other], "US", None) is US
    assert tax.choose_rate([other, US], "US", None) is other


# ---- reverse charge -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seller", "buyer", "ids", "expected"),
    [
        ("DE", "FR", [("eu_vat", "FR12345678901")], True),
        ("de", "fr", [("EU_VAT", "fr 12.345-678 901")], True),
        ("DE", "GR", [("eu_vat", "EL123456789")], True),
        ("FR", "DE", [("de_stn", "12/345/67890"), ("eu_vat", "DE123456789")], True),  # any of them
        ("DE", "DE", [("eu_vat", "DE123456789")], False),  # a domestic sale
        ("DE", "US", [("eu_vat", "DE123456789")], False),  # buyer outside the EU
        ("DE", "GB", [("gb_vat", "GB123456789")], False),
        ("US", "FR", [("eu_vat", "FR12345678901")], False),  # seller outside the EU
        ("DE", "FR", [("eu_vat", "FR1234567890")], False),  # malformed: one digit short
        ("DE", "FR", [("eu_vat", "DE123456789")], False),  # another state's number
        ("DE", "FR", [("fr_siren", "FR12345678901")], False),  # not an EU VAT id type
        ("DE", "FR", [], False),
        ("DE", "GR", [("eu_vat", "GR123456789")], False),  # Greek VAT numbers start with EL
        (None, "FR", [("eu_vat", "FR12345678901")], False),
        ("DE", None, [("eu_vat", "FR12345678901")], False),
    ],
)
def test_reverse_charge_applies(
    seller: str | None, buyer: str | None, ids: list[tuple[str, str]], expected: bool
) -> None:
    assert tax.reverse_charge_applies(seller, buyer, ids) is expected


def test_the_eu_is_27_member_states() -> None:
    assert len(tax.EU_COUNTRIES) == 27
    assert {"DE", "FR", "GR", "IE", "HR"} <= tax.EU_COUNTRIES
    assert not {"GB", "EL", "CH", "NO", "XI"} & tax.EU_COUNTRIES


# ---- VAT number formats -------------------------------------------------------------------------

VALID = {
    "AT": ["ATU12345678"],
    "BE": ["BE0123456789", "BE1234567890"],
    "BG": ["BG123456789", "BG1234567890"],
    "CY": ["CY12345678X"],
    "CZ": ["CZ12345678", "CZ123456789", "CZ1234567890"],
    "DE": ["DE123456789"],
    "DK": ["DK12345678"],
    "EE": ["EE123456789"],
    "ES": ["ESX1234567X", "ESA12345678", "ES12345678Z"],
    "FI": ["FI12345678"],
    "FR": ["FR12345678901", "FR0A123456789"],
    "GR": ["EL123456789"],
    "HR": ["HR12345678901"],
    "HU": ["HU12345678"],
    "IE": ["IE1234567T", "IE1234567TW", "IE1A23456T", "IE1+23456T"],
    "IT": ["IT12345678901"],
    "LT": ["LT123456789", "LT123456789012"],
    "LU": ["LU12345678"],
    "LV": ["LV12345678901"],
    "MT": ["MT12345678"],
    "NL": ["NL123456789B01"],
    "PL": ["PL1234567890"],
    "PT": ["PT123456789"],
    "RO": ["RO12", "RO1234567890"],
    "SE": ["SE123456789001"],
    "SI": ["SI12345678"],
    "SK": ["SK1234567890"],
}

INVALID = {
    "AT": ["AT12345678", "ATU1234567"],
    "BE": ["BE2123456789", "BE123456789"],
    "BG": ["BG12345678", "BG12345678901"],
    "CY": ["CY123456789", "CY1234567X"],
    "CZ": ["CZ1234567", "CZ12345678901"],
    "DE": ["DE12345678", "DE1234567890", "DEX23456789"],
    "DK": ["DK1234567"],
    "EE": ["EE12345678"],
    "ES": ["ES123456789", "ESX12345678X"],
    "FI": ["FI123456789"],
    "FR": ["FR123456789", "FRIO123456789", "FR1234567890"],
    "GR": ["GR123456789", "EL12345678"],
    "HR": ["HR1234567890"],
    "HU": ["HU1234567"],
    "IE": ["IE12345678", "IE1234567TX", "IE1A234567T"],
    "IT": ["IT1234567890"],
    "LT": ["LT1234567890"],
    "LU": ["LU1234567"],
    "LV": ["LV1234567890"],
    "MT": ["MT1234567"],
    "NL": ["NL123456789", "NL123456789C01", "NL123456789B1"],
    "PL": ["PL123456789"],
    "PT": ["PT12345678"],
    "RO": ["RO1", "RO0123", "RO12345678901"],
    "SE": ["SE123456789012", "SE12345678901"],
    "SI": ["SI1234567"],
    "SK": ["SK123456789"],
}


def test_every_member_state_has_examples() -> None:
    assert set(VALID) == set(INVALID) == tax.EU_COUNTRIES == vat_ids.COUNTRIES


@pytest.mark.parametrize(("country", "value"), [(c, v) for c, vs in VALID.items() for v in vs])
def test_valid_looking_numbers(country: str, value: str) -> None:
    assert vat_ids.valid_looking(value, country)
    assert vat_ids.valid_looking(value.lower(), country.lower())
    prefix = "EL" if country == "GR" else country
    assert vat_ids.valid_looking(value.removeprefix(prefix), country)  # the prefix is optional


@pytest.mark.parametrize(("country", "value"), [(c, v) for c, vs in INVALID.items() for v in vs])
def test_malformed_numbers(country: str, value: str) -> None:
    assert not vat_ids.valid_looking(value, country)


@pytest.mark.parametrize(
    ("value", "country", "expected"),
    [
        ("de 123.456-789", "DE", True),  # separators and case
        ("  DE123456789  ", "de", True),
        ("nl123456789b01", "NL", True),
        ("FRFR123456789", "FR", True),  # a letter key "FR": given with the prefix, it is read right
        ("FR123456789", "FR", False),  # read as prefixed: the key is missing
        ("FRAB123456789", "FR", True),  # a letter key
        ("AB123456789", "FR", False),  # ... must come with the prefix: two letters first are read as one
        ("DE123456789", "FR", False),  # so a German number is not a French one with key "DE"
        ("XI123456789", "FR", False),
        ("DE١٢٣٤٥٦٧٨٩", "DE", False),  # ASCII digits only
        ("EL123456789", "EL", True),  # Greece by its VAT prefix too
        ("123456789", "GR", True),
        ("DE123456789", "AT", False),  # another state's number
        ("FR12345678901", "DE", False),
        ("DE123456789", "US", False),  # not an EU state
        ("GB123456789", "GB", False),
        ("DE123/456789", "DE", False),  # slashes are not stripped
        ("", "DE", False),
        ("DE", "DE", False),
    ],
)
def test_valid_looking_normalizes(value: str, country: str, expected: bool) -> None:
    assert vat_ids.valid_looking(value, country) is expected
