"""Proration, computed by LedgerX to the cent (no floats; exact fractions, half rounded up).

An upgrade in the middle of a period charges the price difference for the time left:

    charge = (new price - old price) x (period end - now) / (period end - period start)

measured in microseconds, rounded half up to the minor unit. The included credits of the new plan
are prorated the same way. A downgrade (or a change of interval) takes effect at the period end
and charges nothing now.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from fractions import Fraction

_US = dt.timedelta(microseconds=1)


def round_half_up(value: Fraction) -> int:
    """Round to the nearest integer, halves away from zero (money convention)."""
    sign = -1 if value < 0 else 1
    magnitude = abs(value)
    whole, rest = divmod(magnitude.numerator, magnitude.denominator)
    if 2 * rest >= magnitude.denominator:
        whole += 1
    return sign * whole


def remaining_fraction(period_start: dt.datetime, period_end: dt.datetime, at: dt.datetime) -> Fraction:
    """The share of the period still ahead at `at` (0 after the end, 1 before the start)."""
    total = (period_end - period_start) // _US
    if total <= 0:
        return Fraction(0)
    left = (period_end - at) // _US
    return Fraction(min(max(left, 0), total), total)


def prorate(amount: int, period_start: dt.datetime, period_end: dt.datetime, at: dt.datetime) -> int:
    return round_half_up(amount * remaining_fraction(period_start, period_end, at))


@dataclasses.dataclass(frozen=True, slots=True)
class PlanTerms:
    price: int
    interval: str  # MONTH | YEAR
    included_credits: int
    currency: str


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """What a plan change costs and when it applies."""

    immediate: bool
    amount: int  # charged now (minor units); 0 for changes at the period end
    credits: int  # extra credits granted now (prorated included credits of the upgrade)
    effective_at: dt.datetime
    remaining: Fraction


def plan_change(
    old: PlanTerms,
    new: PlanTerms,
    period_start: dt.datetime,
    period_end: dt.datetime,
    at: dt.datetime,
    *,
    trialing: bool = False,
) -> Change:
    """Upgrade now (same interval, higher price) with a prorated charge; anything else at period end.

    During a trial nothing has been paid, so a change applies at once and charges nothing.
    """
    share = remaining_fraction(period_start, period_end, at)
    if trialing:
        return Change(True, 0, 0, at, share)
    if old.interval == new.interval and old.currency == new.currency and new.price > old.price:
        amount = round_half_up((new.price - old.price) * share)
        credits = max(round_half_up((new.included_credits - old.included_credits) * share), 0)
        return Change(True, amount, credits, at, share)
    return Change(False, 0, 0, period_end, share)


def describe_share(period_start: dt.datetime, period_end: dt.datetime, at: dt.datetime) -> str:
    """A human description of the time left, e.g. '20d 12h 0m of 31d'."""
    left = max(min(period_end - at, period_end - period_start), dt.timedelta(0))
    total = period_end - period_start

    def fmt(d: dt.timedelta) -> str:
        secs = int(d.total_seconds())
        days, secs = divmod(secs, 86400)
        hours, secs = divmod(secs, 3600)
        return f"{days}d {hours}h {secs // 60}m"

    return f"{fmt(left)} of {fmt(total)}"
