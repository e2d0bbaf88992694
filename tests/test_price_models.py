"""Properties of the pricing models (domain/usage/price_models.py), pure: no database.

Every model: event increments telescope to the period's price, also through the sub-unit carry's
floor step; GRADUATED, VOLUME and PACKAGE against oracles written another way; prices that only
go up except VOLUME's documented true-up; the stored form round-trips; parse names the field of
each bad input; and worked examples from public price sheets."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from decimal import ROUND_FLOOR, Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledgerx.domain.errors import BadInput
from ledgerx.domain.usage import validate
from ledgerx.domain.usage.price_models import Model, Pricing, Tier, parse, stored

D = Decimal
EXAMPLES = 150


def scaled(max_int: int, max_places: int) -> st.SearchStrategy[Decimal]:
    """Decimals n / 10^p with 0 <= n <= max_int and p <= max_places (exactly representable)."""
    return st.builds(lambda n, p: D(n).scaleb(-p), st.integers(0, max_int), st.integers(0, max_places))


UNITS = scaled(3000, 3)  # small enough to cross the generated tier boundaries often
PRICES = scaled(10**6, validate.PRICE_MAX_PLACES)
FLATS = st.one_of(st.just(D(0)), scaled(10**4, 2))


@st.composite
def raw_pricing(draw: st.DrawFn, model: Model | None = None, integer_bounds: bool = False) -> dict[str, Any]:
    """User input (the GraphQL input as a dict) of a valid pricing of `model` (any when None)."""
    m = draw(st.sampled_from(list(Model))) if model is None else model
    n = 1 if m in (Model.PER_UNIT, Model.PACKAGE) else draw(st.integers(1, 5))
    bound = st.integers(1, 2000).map(D) if integer_bounds else scaled(2000, 3).filter(lambda d: d > 0)
    ups = sorted(draw(st.sets(bound, min_size=n - 1, max_size=n - 1)))
    tiers: list[dict[str, Any]] = []
    for up in [*ups, None]:
        tier: dict[str, Any] = {"upTo": None if up is None else format(up, "f"), "unitPrice": format(draw(PRICES), "f")}
        if draw(st.booleans()):  # flatPrice is optional in the input
            tier["flatPrice"] = format(draw(FLATS), "f")
        tiers.append(tier)
    size = format(draw(scaled(5000, 9).filter(lambda d: d > 0)), "f") if m is Model.PACKAGE else None
    return {"model": str(m), "tiers": tiers, "packageSize": size}


def pricings(model: Model | None = None, integer_bounds: bool = False) -> st.SearchStrategy[Pricing]:
    return raw_pricing(model, integer_bounds).map(parse)


def floor(d: Decimal) -> Decimal:
    return d.to_integral_value(rounding=ROUND_FLOOR)


# 1. Increments telescope, also through the carry's floor step.


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(pricings(), st.lists(UNITS, max_size=25), st.integers(0, 999_999).map(lambda n: D(n).scaleb(-6)))
def test_increments_telescope_and_carry(p: Pricing, events: list[Decimal], start: Decimal) -> None:
    ptd = D(0)
    increments = D(0)
    remainder = start  # carried from earlier charges, in [0, 1)
    charged = D(0)
    for u in events:
        inc = p.increment(ptd, u)
        ptd += u
        increments += inc
        # carry.split's step, inline: a VOLUME true-up makes `total` (and the amount) negative.
        total = inc + remainder
        amount = floor(total)
        remainder = total - amount
        assert D(0) <= remainder < 1
        assert amount == amount.to_integral_value()
        charged += amount
    assert increments == p.price(ptd)
    assert charged == floor(p.price(ptd) + start)
    assert charged + remainder == p.price(ptd) + start  # nothing lost, nothing made up


# 2. GRADUATED against oracles.


def _tier_of_unit(tiers: tuple[Tier, ...], k: int) -> int:
    """The tier of the k-th unit, (k - 1, k] (integer bounds: it lies in one tier)."""
    return next(i for i, t in enumerate(tiers) if t.up_to is None or k <= t.up_to)


@settings(max_examples=EXAMPLES, deadline=None)
@given(pricings(Model.GRADUATED, integer_bounds=True), st.integers(0, 2500))
def test_graduated_unit_by_unit(p: Pricing, units: int) -> None:
    owed = D(0)
    entered: set[int] = set()
    for k in range(1, units + 1):
        i = _tier_of_unit(p.tiers, k)
        owed += p.tiers[i].unit_price
        entered.add(i)
    owed += sum((p.tiers[i].flat_price for i in entered), D(0))
    assert p.price(D(units)) == owed


def _near_bounds(p: Pricing) -> st.SearchStrategy[Decimal]:
    """Units on a tier boundary or a billionth either side of one, where off-by-one bugs live."""
    bounds = [t.up_to for t in p.tiers if t.up_to is not None]
    if not bounds:
        return UNITS
    tiny = D("0.000000001")
    return st.sampled_from(bounds).flatmap(lambda b: st.sampled_from([b - tiny, b, b + tiny]))


@settings(max_examples=EXAMPLES, deadline=None)
@given(pricings(Model.GRADUATED).flatmap(lambda p: st.tuples(st.just(p), st.one_of(UNITS, _near_bounds(p)))))
def test_graduated_clamped_ranges(pu: tuple[Pricing, Decimal]) -> None:
    p, units = pu
    # Each tier's share is its range (lo, hi] clamped to (0, units], in exact fractions.
    lows = [Fraction(0)] + [Fraction(t.up_to) for t in p.tiers[:-1] if t.up_to is not None]
    owed = Fraction(0)
    for lo, t in zip(lows, p.tiers, strict=True):
        hi = Fraction(units) if t.up_to is None else min(Fraction(units), Fraction(t.up_to))
        share = max(Fraction(0), hi - lo)
        owed += share * Fraction(t.unit_price) + (Fraction(t.flat_price) if units > lo else 0)
    assert Fraction(p.price(units)) == owed


# 3. VOLUME and PACKAGE against oracles.


@settings(max_examples=EXAMPLES, deadline=None)
@given(pricings(Model.VOLUME).flatmap(lambda p: st.tuples(st.just(p), st.one_of(UNITS, _near_bounds(p)))))
def test_volume_oracle(pu: tuple[Pricing, Decimal]) -> None:
    p, units = pu
    # The tier of the total is the LAST one whose lower bound is below it.
    lows = [D(0)] + [t.up_to for t in p.tiers[:-1] if t.up_to is not None]
    expected = Fraction(0)
    if units > 0:
        tier = [t for lo, t in zip(lows, p.tiers, strict=True) if lo < units][-1]
        expected = Fraction(units) * Fraction(tier.unit_price) + Fraction(tier.flat_price)
        assert p.unit_price_at(units) == tier.unit_price
    assert Fraction(p.price(units)) == expected


@settings(max_examples=EXAMPLES, deadline=None)
@given(pricings(Model.VOLUME, integer_bounds=True), st.integers(1, 2500))
def test_volume_unit_by_unit(p: Pricing, units: int) -> None:
    tier = p.tiers[_tier_of_unit(p.tiers, units)]  # every unit at the price of the total's tier
    owed = sum((tier.unit_price for _ in range(units)), D(0)) + tier.flat_price
    assert p.price(D(units)) == owed


@settings(max_examples=EXAMPLES, deadline=None)
@given(pricings(Model.PACKAGE), scaled(10**12, 9))
def test_package_oracle(p: Pricing, units: Decimal) -> None:
    assert p.package_size is not None
    packages = math.ceil(Fraction(units) / Fraction(p.package_size))
    tier = p.tiers[0]
    expected = packages * tier.unit_price + (tier.flat_price if units > 0 else 0)
    assert p.price(units) == expected


def test_package_ceil_is_exact() -> None:
    p = parse({"model": "PACKAGE", "tiers": [{"upTo": None, "unitPrice": "5"}], "packageSize": "1000"})
    assert p.price(D("1000")) == 5
    assert p.price(D("1000.000000001")) == 10  # a billionth of a unit opens a package
    assert p.price(D("0.000000001")) == 5
    assert p.price(D("999999999999999.999999999")) == 5 * 10**12
    assert p.increment(D("1000"), D("0.000000001")) == 5
    assert p.increment(D("1000.000000001"), D("999.999999999")) == 0
    assert p.unit_price_at(D("1")) == 5  # the package's price
    odd = parse({"model": "PACKAGE", "tiers": [{"unitPrice": "0.3"}], "packageSize": "0.000000003"})
    assert odd.price(D("0.000000009")) == D("0.9")
    assert odd.price(D("0.00000001")) == D("1.2")  # 10 / 3 -> 4 packages


# 4. Monotone prices, VOLUME's true-up.


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.sampled_from([Model.GRADUATED, Model.PER_UNIT, Model.PACKAGE]).flatmap(pricings),
    UNITS,
    UNITS,
)
def test_prices_never_decrease(p: Pricing, before: Decimal, units: Decimal) -> None:
    assert p.increment(before, units) >= 0
    assert p.price(before + units) >= p.price(before)


def test_volume_increment_can_be_negative() -> None:
    # 100 units at 1.00, then everything at 0.50: the 101st unit reprices the first 100.
    p = parse({"model": "VOLUME", "tiers": [{"upTo": "100", "unitPrice": "1"}, {"upTo": None, "unitPrice": "0.5"}]})
    assert p.price(D(100)) == 100
    assert p.price(D(101)) == D("50.5")
    assert p.increment(D(100), D(1)) == D("-49.5")
    assert p.increment(D(0), D(101)) == D("50.5")  # the same total in one event: same price


def test_zero_units_cost_nothing_and_zero_is_never_negative() -> None:
    for m in Model:
        tiers = [{"upTo": None, "unitPrice": "2", "flatPrice": "7"}]
        size = "10" if m is Model.PACKAGE else None
        p = parse({"model": str(m), "tiers": tiers, "packageSize": size})
        assert p.price(D(0)) == 0
        assert p.increment(D(5), D(0)) == 0
        assert not p.increment(D(5), D(0)).is_signed()  # never "-0" in a record
        assert p.price(D("0.5")) > 0
    with pytest.raises(ValueError, match="zero or more"):
        Pricing.per_unit(D(1)).price(D(-1))


# 5. Stored form and input validation.


@settings(max_examples=EXAMPLES, deadline=None)
@given(pricings())
def test_json_round_trip(p: Pricing) -> None:
    stored = json.loads(json.dumps(p.to_json()))
    back = Pricing.from_json(stored)
    assert back == p
    assert back.to_json() == p.to_json()
    assert parse(stored) == p  # the stored form is also valid input
    for t in stored["tiers"]:
        assert isinstance(t["unitPrice"], str) and "E" not in t["unitPrice"].upper()


def test_to_json_shape() -> None:
    p = parse(
        {
            "model": "GRADUATED",
            "tiers": [{"upTo": 100, "unitPrice": "0.50"}, {"upTo": None, "unitPrice": "0.1", "flatPrice": "2"}],
        }
    )
    assert p.to_json() == {
        "model": "GRADUATED",
        "tiers": [
            {"upTo": "100", "unitPrice": "0.50", "flatPrice": "0"},
            {"upTo": None, "unitPrice": "0.1", "flatPrice": "2"},
        ],
        "packageSize": None,
    }
    assert Pricing.per_unit(D("0.002")) == Pricing(Model.PER_UNIT, (Tier(None, D("0.002"), D(0)),))
    assert Pricing.per_unit(D("0.002")).first_unit_price() == D("0.002")


def _tier(up: str | None, price: str = "1") -> dict[str, Any]:
    return {"upTo": up, "unitPrice": price}


TWO = [_tier("10"), _tier(None)]
BAD: list[tuple[str, Mapping[str, Any], str]] = [
    ("non-increasing upTo", {"model": "GRADUATED", "tiers": [_tier("10"), _tier("10"), _tier(None)]}, "tiers[1].upTo"),
    ("decreasing upTo", {"model": "VOLUME", "tiers": [_tier("10"), _tier("5"), _tier(None)]}, "tiers[1].upTo"),
    ("zero upTo", {"model": "GRADUATED", "tiers": [_tier("0"), _tier(None)]}, "tiers[0].upTo"),
    ("last tier bounded", {"model": "GRADUATED", "tiers": [_tier("10"), _tier("20")]}, "tiers[1].upTo"),
    (
        "middle tier unbounded",
        {"model": "GRADUATED", "tiers": [_tier("10"), _tier(None), _tier(None)]},
        "tiers[1].upTo",
    ),
    ("upTo too many places", {"model": "GRADUATED", "tiers": [_tier("0.0000000001"), _tier(None)]}, "tiers[0].upTo"),
    ("upTo too large", {"model": "GRADUATED", "tiers": [_tier(str(validate.UNITS_MAX)), _tier(None)]}, "tiers[0].upTo"),
    ("negative price", {"model": "GRADUATED", "tiers": [_tier("10"), _tier(None, "-1")]}, "tiers[1].unitPrice"),
    ("price too many places", {"model": "PER_UNIT", "tiers": [_tier(None, "0.0000000000001")]}, "tiers[0].unitPrice"),
    ("price too large", {"model": "PER_UNIT", "tiers": [_tier(None, str(validate.PRICE_MAX))]}, "tiers[0].unitPrice"),
    ("missing price", {"model": "PER_UNIT", "tiers": [{"upTo": None}]}, "tiers[0].unitPrice"),
    (
        "negative flat",
        {"model": "VOLUME", "tiers": [{**_tier("1"), "flatPrice": "-0.5"}, _tier(None)]},
        "tiers[0].flatPrice",
    ),
    ("flat as float text", {"model": "PER_UNIT", "tiers": [{**_tier(None), "flatPrice": "1e3"}]}, "tiers[0].flatPrice"),
    ("PACKAGE without packageSize", {"model": "PACKAGE", "tiers": [_tier(None)]}, "packageSize"),
    ("PACKAGE packageSize 0", {"model": "PACKAGE", "tiers": [_tier(None)], "packageSize": "0"}, "packageSize"),
    ("packageSize places", {"model": "PACKAGE", "tiers": [_tier(None)], "packageSize": "0.0000000001"}, "packageSize"),
    ("packageSize on GRADUATED", {"model": "GRADUATED", "tiers": TWO, "packageSize": "10"}, "packageSize"),
    ("PER_UNIT with 2 tiers", {"model": "PER_UNIT", "tiers": TWO}, "tiers"),
    ("PACKAGE with 2 tiers", {"model": "PACKAGE", "tiers": TWO, "packageSize": "10"}, "tiers"),
    ("unknown model", {"model": "TIERED", "tiers": [_tier(None)]}, "model"),
    ("lower-case model", {"model": "per_unit", "tiers": [_tier(None)]}, "model"),
    ("missing model", {"tiers": [_tier(None)]}, "model"),
    ("empty tiers", {"model": "GRADUATED", "tiers": []}, "tiers"),
    ("no tiers", {"model": "GRADUATED"}, "tiers"),
    ("51 tiers", {"model": "GRADUATED", "tiers": [*[_tier(str(i)) for i in range(1, 51)], _tier(None)]}, "tiers"),
    ("tier not an object", {"model": "GRADUATED", "tiers": [_tier("1"), "x"]}, "tiers[1]"),
]


@pytest.mark.parametrize(("raw", "path"), [(raw, path) for _, raw, path in BAD], ids=[b[0] for b in BAD])
def test_parse_refuses_with_field_path(raw: Mapping[str, Any], path: str) -> None:
    with pytest.raises(BadInput) as caught:
        parse(raw)
    assert caught.value.field == f"pricing.{path}"
    with pytest.raises(BadInput) as nested:
        parse(raw, field="input.pricing")
    assert nested.value.field == f"input.pricing.{path}"


def test_parse_messages_name_the_field() -> None:
    with pytest.raises(BadInput, match=r"^flatPrice must be zero or more"):
        parse({"model": "PER_UNIT", "tiers": [{"upTo": None, "unitPrice": "1", "flatPrice": "-1"}]})
    with pytest.raises(BadInput, match=r"^upTo has at most 9 decimal places"):
        parse({"model": "VOLUME", "tiers": [_tier("0.0000000001"), _tier(None)]})
    with pytest.raises(BadInput, match=r"previous tier's upTo \(10\)"):
        parse({"model": "VOLUME", "tiers": [_tier("10"), _tier("9.5"), _tier(None)]})
    assert parse({"model": "PER_UNIT", "tiers": [_tier(None, "-0")]}).to_json()["tiers"][0]["unitPrice"] == "0"
    assert (
        len(parse({"model": "GRADUATED", "tiers": [*[_tier(str(i)) for i in range(1, 50)], _tier(None)]}).tiers) == 50
    )


SCALARS: st.SearchStrategy[Any] = st.one_of(
    st.builds(lambda n, p: format(D(n).scaleb(-p), "f"), st.integers(-(10**17), 10**17), st.integers(0, 14)),
    st.builds(lambda n, p: D(n).scaleb(-p), st.integers(-(10**17), 10**17), st.integers(0, 14)),
    st.builds(lambda n, p: str(D(n).scaleb(-p)), st.integers(-5, 5), st.integers(0, 14)),  # "0E-7": refused
    st.integers(-5, 2 * 10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([None, True, False, "", "1e3", " 1", "-0", "0.0", "1_000", "٣", "NaN", "+1", "1.", [], {}]),
    st.text(max_size=6),
)


def _outcome(f: Any, *args: Any) -> Any:
    try:
        return f(*args)
    except BadInput:
        return None


@settings(max_examples=EXAMPLES * 2, deadline=None)
@given(SCALARS)
def test_scalar_checks_agree_with_validate(value: Any) -> None:
    price = _outcome(validate.unit_price, value)
    parsed = _outcome(lambda v: parse({"model": "PER_UNIT", "tiers": [{"upTo": None, "unitPrice": v}]}), value)
    assert (parsed is None) == (price is None)
    if parsed is not None:
        assert parsed.tiers[0].unit_price == price
    units = _outcome(validate.units, value)
    raw = {"model": "PACKAGE", "tiers": [{"unitPrice": "1"}], "packageSize": value}
    package = _outcome(lambda v: parse({**raw, "packageSize": v}), value)
    if value is None:
        assert package is None  # PACKAGE needs packageSize
    else:
        assert (package is None) == (units is None or units == 0)
    if package is not None:
        assert package.package_size == units


def test_stored_column() -> None:
    assert stored(None, D("0.25")) == Pricing.per_unit(D("0.25"))
    p = parse({"model": "VOLUME", "tiers": [_tier("10", "2"), _tier(None, "1")]})
    assert stored(p.to_json(), D(2)) == p
    assert stored(json.dumps(p.to_json()), D(2)) == p


def test_bad_stored_form_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid pricing"):
        Pricing(Model.GRADUATED, (Tier(D(10), D(1), D(0)),))
    with pytest.raises(ValueError, match="invalid pricing"):
        Pricing(Model.PACKAGE, (Tier(None, D(1), D(0)),))


# 6. Worked examples from public price sheets.


def test_free_tier_then_two_rates() -> None:
    # First 10,000 calls free, then 0.002 per call up to 1M, then 0.001.
    p = parse(
        {
            "model": "GRADUATED",
            "tiers": [_tier("10000", "0"), _tier("1000000", "0.002"), _tier(None, "0.001")],
        }
    )
    assert p.price(D(10_000)) == 0
    assert p.price(D(10_001)) == D("0.002")
    assert p.price(D(1_000_000)) == D("1980")  # 990,000 x 0.002
    assert p.price(D(2_500_000)) == D("3480")  # + 1,500,000 x 0.001
    assert p.unit_price_at(D(10_000)) == 0
    assert p.unit_price_at(D(10_001)) == D("0.002")
    assert p.unit_price_at(D(5_000_000)) == D("0.001")
    assert p.first_unit_price() == 0
    # Charged as 25 events of 100,000 calls: the same 3480.
    ptd = D(0)
    total = D(0)
    for _ in range(25):
        total += p.increment(ptd, D(100_000))
        ptd += 100_000
    assert total == D("3480")


def test_graduated_flat_price_on_entering_a_tier() -> None:
    # A platform fee of 20 with the first 1,000 units included, then 0.01 and a 5 fee from 1,000.
    p = parse(
        {
            "model": "GRADUATED",
            "tiers": [
                {"upTo": "1000", "unitPrice": "0", "flatPrice": "20"},
                {"upTo": None, "unitPrice": "0.01", "flatPrice": "5"},
            ],
        }
    )
    assert p.price(D(0)) == 0
    assert p.price(D("0.5")) == 20
    assert p.price(D(1000)) == 20  # on the boundary: the second tier is not entered yet
    assert p.price(D("1000.000000001")) == D("25.00000000001")
    assert p.increment(D(1000), D(100)) == 6


def test_tiered_sheet_graduated_and_volume() -> None:
    # 0-1,000 at 0.10, 1,001-10,000 at 0.05, above at 0.01; 15,000 units.
    tiers = [_tier("1000", "0.10"), _tier("10000", "0.05"), _tier(None, "0.01")]
    assert parse({"model": "GRADUATED", "tiers": tiers}).price(D(15_000)) == D("600")  # 100 + 450 + 50
    assert parse({"model": "VOLUME", "tiers": tiers}).price(D(15_000)) == D("150")  # 15,000 x 0.01


def test_volume_sheet_with_flat_fee() -> None:
    # Tiers to 10,000 / 50,000 / 100,000 / above at 0.0010 / 0.0008 / 0.0006 / 0.0004, each +10 flat.
    ups = ["10000", "50000", "100000", None]
    prices = ["0.0010", "0.0008", "0.0006", "0.0004"]
    p = parse(
        {
            "model": "VOLUME",
            "tiers": [{"upTo": u, "unitPrice": c, "flatPrice": "10"} for u, c in zip(ups, prices, strict=True)],
        }
    )
    assert p.price(D(65_000)) == D("49")  # 65,000 x 0.0006 + 10
    assert p.price(D(10_000)) == D("20")
    assert p.price(D(10_001)) == D("18.0008")
