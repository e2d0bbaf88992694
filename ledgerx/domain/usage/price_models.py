"""Pricing models of a metric: what a billing period's usage costs, computed exactly. Pure: no
database, no I/O.

A `Pricing` is a model and its tiers. A tier covers the units (previous tier's up_to, up_to]; the
first tier starts at 0 and the last one (and only it) is unbounded (up_to None). Each tier has a
unit price and a flat price. The models, for `units` used in a period (0 units always cost 0):

- PER_UNIT: one unbounded tier. price = units x unit_price (+ flat_price once units > 0).
- PACKAGE: one unbounded tier and a package size. Units are sold in whole packages, so
  price = ceil(units / package_size) x unit_price (+ flat_price once units > 0); the unit price is
  the price of one package. The ceiling comes from an exact Decimal divmod: a package started by
  a billionth of a unit is a package bought, and no rounding can decide otherwise.
- GRADUATED: the units in each tier are priced at that tier's unit price (the first 100 at one
  price, the next 900 at another, ...), and a tier's flat price is charged once usage enters the
  tier (units above its lower bound). Each unit keeps the price it was used at.
- VOLUME: every unit is priced at the unit price of the tier the period's TOTAL falls in (the first
  tier with total <= up_to, or the unbounded one), plus that tier's flat price. Crossing a tier
  boundary reprices the units already used, so the price can go DOWN as usage grows (100 units at
  1.00 cost 100, 101 units at 0.50 cost 50.50): the volume discount is a true-up.

Usage is charged event by event, so the engine prices an event as an `increment`: the period's
price with the event minus the price without it. Increments telescope: over a period, their sum is
exactly the price of the period's total, whatever the order and sizes of the events, and fed
through the sub-unit carry (`carry.py`) the whole units charged sum to floor(price + carried
remainder). For VOLUME an increment may be negative (the true-up above); the other models' prices
never decrease, so their increments are >= 0.

Every operation is exact: decimals in a context of 100 digits with Inexact trapped (as
`carry._EXACT`; the largest product, units < 10^15 with 9 places times a price < 10^9 with 12
places, needs 45 digits, and period totals a few more), never floats. Unlike carry's context this
one rounds half-even, which never happens (Inexact is trapped) but keeps an exact zero difference
positive: a ROUND_FLOOR context makes x - x equal to -0, which would print as "-0" in records.

`parse` validates user input (with the field path of the offending value in BadInput), with the
limits of validate.py for units (upTo, packageSize) and prices (unitPrice, flatPrice); `to_json` /
`from_json` are the stored form (decimals as plain strings, keys as the GraphQL input's), and
`stored` reads a metric's column (NULL: PER_UNIT at the metric's unit price).

This module imports nothing of usage/: usage/types.py imports Pricing, so it sits below them all.
"""

from __future__ import annotations

import dataclasses
import decimal
import enum
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from ledgerx.domain.errors import BadInput
from ledgerx.domain.usage import validate

# See the module docstring: no operation rounds, and one that would raises instead.
_EXACT = decimal.Context(prec=100, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.Inexact, decimal.InvalidOperation])
ZERO = Decimal(0)
TIERS_MAX = 50


class Model(enum.StrEnum):
    PER_UNIT = "PER_UNIT"
    GRADUATED = "GRADUATED"
    VOLUME = "VOLUME"
    PACKAGE = "PACKAGE"


# The models priced by a single unbounded tier.
_ONE_TIER = frozenset({Model.PER_UNIT, Model.PACKAGE})


@dataclasses.dataclass(frozen=True, slots=True)
class Tier:
    up_to: Decimal | None  # None: unbounded (only the last tier)
    unit_price: Decimal
    flat_price: Decimal


@dataclasses.dataclass(frozen=True, slots=True)
class Pricing:
    model: Model
    tiers: tuple[Tier, ...]
    package_size: Decimal | None = None

    def __post_init__(self) -> None:
        # The shape every price below relies on (e.g. a total always falls in some tier). `parse`
        # checks it first with field paths; this catches a corrupt stored form or a bad caller.
        problem = _shape_problem(self)
        if problem is not None:
            raise ValueError(f"invalid pricing: {problem}")

    @classmethod
    def per_unit(cls, unit_price: Decimal) -> Pricing:
        return cls(Model.PER_UNIT, (Tier(None, unit_price, ZERO),))

    def price(self, units: Decimal) -> Decimal:
        """The exact price of `units` (>= 0) used in one period."""
        if units < 0:
            raise ValueError(f"units must be zero or more: {units}")
        if units == 0:
            return ZERO  # every model: nothing used, nothing owed (no flat price either)
        if self.model is Model.GRADUATED:
            return self._graduated(units)
        if self.model is Model.PACKAGE:
            assert self.package_size is not None
            tier = self.tiers[0]
            packages = _ceil_div(units, self.package_size)
            return _EXACT.add(_EXACT.multiply(packages, tier.unit_price), tier.flat_price)
        # PER_UNIT is VOLUME with its one tier.
        tier = self._tier_of(units)
        return _EXACT.add(_EXACT.multiply(units, tier.unit_price), tier.flat_price)

    def increment(self, before: Decimal, units: Decimal) -> Decimal:
        """What `units` more cost after `before` units in the period: price(before + units) -
        price(before), exact. Negative for VOLUME when the new total reaches a cheaper tier."""
        if before < 0 or units < 0:
            raise ValueError(f"units must be zero or more: before={before}, units={units}")
        return _EXACT.subtract(self.price(_EXACT.add(before, units)), self.price(before))

    def unit_price_at(self, total: Decimal) -> Decimal:
        """The unit price of the tier `total` falls in (recorded with a charge); for PACKAGE the
        price of one package."""
        if self.model is Model.PACKAGE:
            return self.tiers[0].unit_price
        return self._tier_of(total).unit_price

    def first_unit_price(self) -> Decimal:
        return self.tiers[0].unit_price

    def flat_unit_price(self) -> Decimal | None:
        """The one price of every unit when there is one (PER_UNIT without a flat price), else None:
        what a record's `unitPrice` can state without misleading (units x unitPrice = price)."""
        t = self.tiers[0]
        return t.unit_price if self.model is Model.PER_UNIT and t.flat_price == 0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": str(self.model),
            "tiers": [
                {
                    "upTo": _text(t.up_to),
                    "unitPrice": format(t.unit_price, "f"),
                    "flatPrice": format(t.flat_price, "f"),
                }
                for t in self.tiers
            ],
            "packageSize": _text(self.package_size),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Pricing:
        """The inverse of `to_json`; trusts stored data (written by `to_json` after `parse`)."""
        tiers = tuple(Tier(_number(t["upTo"]), Decimal(t["unitPrice"]), Decimal(t["flatPrice"])) for t in raw["tiers"])
        return cls(Model(raw["model"]), tiers, _number(raw.get("packageSize")))

    def _tier_of(self, total: Decimal) -> Tier:
        """The first tier whose range reaches `total` (the last one is unbounded: always found)."""
        for tier in self.tiers:
            if tier.up_to is None or total <= tier.up_to:
                return tier
        raise AssertionError("the last tier is unbounded")

    def _graduated(self, units: Decimal) -> Decimal:
        total = ZERO
        lower = ZERO
        for tier in self.tiers:
            if units <= lower:
                break  # usage never entered this tier: neither its units nor its flat price
            top = units if tier.up_to is None or units < tier.up_to else tier.up_to
            in_tier = _EXACT.subtract(top, lower)
            total = _EXACT.add(total, _EXACT.add(_EXACT.multiply(in_tier, tier.unit_price), tier.flat_price))
            if tier.up_to is None:
                break
            lower = tier.up_to
        return total


def stored(raw: Mapping[str, Any] | str | None, unit_price: Decimal) -> Pricing:
    """A metric's stored pricing: its `to_json` form (a dict, or its JSON text as asyncpg returns a
    jsonb column without a codec), or None for a metric priced before pricing models (PER_UNIT at
    its `unit_price`)."""
    value = json.loads(raw) if isinstance(raw, str) else raw
    if value is None:  # SQL NULL, or a JSON null
        return Pricing.per_unit(unit_price)
    return Pricing.from_json(value)


def _ceil_div(units: Decimal, size: Decimal) -> Decimal:
    """ceil(units / size) for units >= 0 and size > 0, exact (integer division and remainder)."""
    whole, rest = _EXACT.divmod(units, size)
    return _EXACT.add(whole, 1) if rest else whole


def _text(d: Decimal | None) -> str | None:
    return None if d is None else format(d, "f")


def _number(text: Any) -> Decimal | None:
    return None if text is None else Decimal(text)


def _shape_problem(p: Pricing) -> str | None:
    """What is structurally wrong with a Pricing (without field paths), or None."""
    if not isinstance(p.model, Model):
        return f"unknown model {p.model!r}"
    if not 1 <= len(p.tiers) <= TIERS_MAX:
        return f"1 to {TIERS_MAX} tiers"
    if p.model in _ONE_TIER and len(p.tiers) != 1:
        return f"{p.model} has exactly one tier"
    if p.tiers[-1].up_to is not None:
        return "the last tier is unbounded"
    lower = ZERO
    for tier in p.tiers[:-1]:
        if tier.up_to is None or tier.up_to <= lower:
            return "up_to increases strictly from above 0, and only the last tier is unbounded"
        lower = tier.up_to
    if (p.package_size is not None) != (p.model is Model.PACKAGE):
        return "a package size is for PACKAGE, and PACKAGE needs one"
    if p.package_size is not None and p.package_size <= 0:
        return "the package size is more than 0"
    return None


def parse(raw: Mapping[str, Any], field: str = "pricing") -> Pricing:
    """A Pricing from user input ({"model", "tiers": [{"upTo", "unitPrice", "flatPrice"?}],
    "packageSize"?}); BadInput names the offending value's path, e.g. pricing.tiers[1].upTo."""
    if not isinstance(raw, Mapping):
        raise BadInput("pricing must be an object with model and tiers", field=field)
    model = _model(raw.get("model"), f"{field}.model")
    tiers = _tiers(raw.get("tiers"), model, f"{field}.tiers")
    size_field = f"{field}.packageSize"
    size_raw = raw.get("packageSize")
    package_size: Decimal | None = None
    if model is Model.PACKAGE:
        if size_raw is None:
            raise BadInput("PACKAGE pricing needs packageSize (the units in one package)", field=size_field)
        package_size = _units(size_raw, size_field, "packageSize")
        if package_size <= 0:
            raise BadInput("packageSize must be more than 0", field=size_field)
    elif size_raw is not None:
        raise BadInput(f"packageSize is only for PACKAGE pricing, not {model}", field=size_field)
    return Pricing(model, tiers, package_size)


def _model(value: Any, field: str) -> Model:
    if isinstance(value, str) and value in Model.__members__:
        return Model(value)
    names = ", ".join(Model)
    raise BadInput(f"model must be one of {names}", field=field)


def _tiers(value: Any, model: Model, field: str) -> tuple[Tier, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise BadInput("tiers must be a list", field=field)
    if not 1 <= len(value) <= TIERS_MAX:
        raise BadInput(f"pricing has 1 to {TIERS_MAX} tiers", field=field)
    # Before the tiers' own checks: "one tier" says more than "only the last tier is unbounded".
    if model in _ONE_TIER and len(value) != 1:
        raise BadInput(f"{model} pricing has exactly one tier (with upTo null)", field=field)
    last = len(value) - 1
    tiers: list[Tier] = []
    lower = ZERO
    for i, raw in enumerate(value):
        at = f"{field}[{i}]"
        if not isinstance(raw, Mapping):
            raise BadInput("each tier must be an object with upTo, unitPrice and flatPrice", field=at)
        up_to = _up_to(raw.get("upTo"), lower, i == last, f"{at}.upTo")
        unit_price = _price(raw.get("unitPrice"), f"{at}.unitPrice", "unitPrice")
        flat_raw = raw.get("flatPrice")
        flat_price = ZERO if flat_raw is None else _price(flat_raw, f"{at}.flatPrice", "flatPrice")
        tiers.append(Tier(up_to, unit_price, flat_price))
        if up_to is not None:
            lower = up_to
    return tuple(tiers)


def _up_to(value: Any, lower: Decimal, last: bool, field: str) -> Decimal | None:
    if last:
        if value is not None:
            raise BadInput("the last tier is unbounded: give it upTo null", field=field)
        return None
    if value is None:
        raise BadInput("only the last tier is unbounded: give this tier an upTo", field=field)
    up_to = _units(value, field, "upTo")
    if up_to <= lower:
        bound = "0" if lower == 0 else f"the previous tier's upTo ({format(lower, 'f')})"
        raise BadInput(f"upTo must be more than {bound}: tiers go up strictly", field=field)
    return up_to


def _price(value: Any, field: str, name: str) -> Decimal:
    return validate.unit_price(value, field, name)


def _units(value: Any, field: str, name: str) -> Decimal:
    return validate.units(value, field, name)
