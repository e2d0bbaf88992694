"""Platform revenue: MRR, ARR, MRR movements, customer churn, revenue from payments.

Definitions (docs/analytics.md explains them with a worked example):

- A customer is a project. Money is in one ISO currency per query (plans in other currencies
  are left out); amounts are minor units.
- Which plan a subscription is billed for, and since when, comes from its invoices (kind
  SUBSCRIPTION or PRORATION, not VOID or DRAFT, with a plan): each one starts a *segment* at its
  `period_start` that lasts until the subscription's next segment starts, or until the
  subscription stops (`ended_at`, or `downgraded_at` when dunning dropped it to the free plan).
  A mid-period upgrade's proration invoice starts the new plan at the change; a downgrade at
  period end shows up as the next period's invoice. A subscription invoice billed at zero (a
  trial, a full discount) starts a segment worth nothing.
- A segment's MRR is its plan's list price per month: monthly plans their price, yearly plans
  their price / 12. Sums are exact (fractions) and rounded half up to the minor unit only when
  shown, so ARR = round(12 x MRR) exactly and MRR(to) - MRR(from) = net new MRR before rounding.
- MRR "at t" is the state just before t (changes at t belong to the period that starts at t).
- Movements over [from, to), per customer, comparing MRR at `from` (m0) with MRR at `to` (m1):
  new (m0 = 0, m1 > 0, never paying before), reactivation (m0 = 0, m1 > 0, paying at some
  time before), expansion (0 < m0 < m1), contraction (0 < m1 < m0), churned (m0 > 0, m1 = 0).
  net new = new + reactivation + expansion - contraction - churned.
- Customer churn rate = churned customers / customers paying at `from` (0 when there were none).
- Revenue = payments (`payments.amount`, by `created_at`) minus refunds (`payment_refunds.amount`,
  by their own `created_at`), per bucket.
- Active subscriptions by plan: subscriptions paying (MRR > 0) at `to`, per plan.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from collections import defaultdict
from collections.abc import Iterable
from fractions import Fraction
from typing import Any

from sqlalchemy import text

from ledgerx.db.engine import Database
from ledgerx.domain.analytics.periods import Granularity, check_range, day_start, utc

# The invoices that say which plan a subscription is billed for. `least` ignores NULLs.
_SEGMENTS = """
  SELECT i.subscription_id, s.project_id, i.plan_id, i.kind, i.total, i.period_start AS start,
         i.created_at, i.id, least(s.ended_at, s.downgraded_at) AS stop,
         p.price_amount, p.interval, p.name AS plan_name
  FROM invoices i
  JOIN subscriptions s ON s.id = i.subscription_id
  JOIN plans p ON p.id = i.plan_id
  WHERE i.kind IN ('SUBSCRIPTION', 'PRORATION') AND i.status NOT IN ('VOID', 'DRAFT')
    AND i.period_start IS NOT NULL AND upper(p.currency) = :c
"""
# The segment in effect just before `from` (one per subscription) and those starting in [from, to).
SEGMENTS = text(
    f"""
    WITH seg AS ({_SEGMENTS})
    SELECT * FROM (
      SELECT DISTINCT ON (subscription_id) * FROM seg WHERE start < :from
      ORDER BY subscription_id, start DESC, created_at DESC, id DESC
    ) before_range
    UNION ALL
    SELECT * FROM seg WHERE start >= :from AND start < :to
    """  # noqa: S608 (constants only)
)
# Customers that paid at some time before `from` (to tell reactivation from new).
PAID_BEFORE = text(
    f"""
    WITH seg AS ({_SEGMENTS})
    SELECT DISTINCT project_id FROM seg
    WHERE start < :from AND (stop IS NULL OR stop > start)
      AND (kind = 'PRORATION' OR total > 0) AND price_amount > 0
    """  # noqa: S608 (constants only)
)
# Money received and given back, net of tax: the tax a payment's invoice shows (and a refund's
# credit note gives back) was collected for the tax authority, not earned.
REVENUE = text(
    """
    SELECT bucket, sum(gross) AS gross, sum(refunds) AS refunds, sum(n) AS payments
    FROM (
      SELECT date_trunc(CAST(:g AS text), p.created_at, 'UTC') AS bucket, p.amount - coalesce(i.tax, 0) AS gross,
             0 AS refunds, 1 AS n
      FROM payments p LEFT JOIN invoices i ON i.id = p.invoice_id
      WHERE upper(p.currency) = :c AND p.created_at >= :from AND p.created_at < :to
      UNION ALL
      SELECT date_trunc(CAST(:g AS text), r.created_at, 'UTC'), 0, r.amount - coalesce(cn.tax, 0), 0
      FROM payment_refunds r JOIN payments p ON p.id = r.payment_id
      LEFT JOIN credit_notes cn ON cn.stripe_refund_id = r.stripe_refund_id
      WHERE upper(p.currency) = :c AND r.created_at >= :from AND r.created_at < :to
    ) x
    GROUP BY bucket
    """
)
RECENT_PAYMENTS = text(
    """
    SELECT id, project_id, kind, status, amount, amount_refunded, currency, created_at FROM payments
    WHERE upper(currency) = :c ORDER BY created_at DESC, id DESC LIMIT :n
    """
)


def round_half_up(value: Fraction) -> int:
    """Nearest integer, halves away from zero (as the payments domain rounds)."""
    sign = -1 if value < 0 else 1
    a = abs(value)
    return sign * int((a.numerator * 2 + a.denominator) // (a.denominator * 2))


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    subscription_id: uuid.UUID
    project_id: uuid.UUID
    plan_id: uuid.UUID
    plan_name: str
    plan_interval: str
    start: dt.datetime
    order: tuple[dt.datetime, dt.datetime, uuid.UUID]  # (start, created_at, id): later wins
    stop: dt.datetime | None
    mrr: Fraction


def segment_mrr(kind: str, total: int, price: int, interval: str) -> Fraction:
    if kind == "SUBSCRIPTION" and total <= 0:
        return Fraction(0)
    return Fraction(price, 12) if interval == "YEAR" else Fraction(price)


class Timeline:
    """Each subscription's segments, answering "what was billed just before t"."""

    def __init__(self, segments: Iterable[Segment]) -> None:
        by_sub: dict[uuid.UUID, list[Segment]] = defaultdict(list)
        for s in segments:
            by_sub[s.subscription_id].append(s)
        self.by_sub = {k: sorted(v, key=lambda s: s.order) for k, v in by_sub.items()}

    def at(self, t: dt.datetime) -> dict[uuid.UUID, Segment]:
        """The segment in effect just before `t`, per subscription (none when stopped by then)."""
        out: dict[uuid.UUID, Segment] = {}
        for sub_id, segs in self.by_sub.items():
            current: Segment | None = None
            for s in segs:
                if s.start >= t:
                    break
                current = s
            if current is not None and (current.stop is None or t <= current.stop):
                out[sub_id] = current
        return out

    def paid_before(self, t: dt.datetime) -> set[uuid.UUID]:
        """Customers with a paying segment that started before `t` (and before its stop)."""
        return {
            s.project_id
            for segs in self.by_sub.values()
            for s in segs
            if s.mrr > 0 and s.start < t and (s.stop is None or s.stop > s.start)
        }

    def mrr_by_customer(self, t: dt.datetime) -> dict[uuid.UUID, Fraction]:
        out: dict[uuid.UUID, Fraction] = defaultdict(Fraction)
        for s in self.at(t).values():
            if s.mrr > 0:
                out[s.project_id] += s.mrr
        return dict(out)


@dataclasses.dataclass(frozen=True, slots=True)
class Movements:
    mrr_start: Fraction
    mrr_end: Fraction
    new: Fraction
    reactivation: Fraction
    expansion: Fraction
    contraction: Fraction
    churned: Fraction
    customers_start: int
    customers_end: int
    new_customers: int
    churned_customers: int

    @property
    def net_new(self) -> Fraction:
        return self.new + self.reactivation + self.expansion - self.contraction - self.churned

    @property
    def churn_rate(self) -> decimal.Decimal:
        if self.customers_start == 0:
            return decimal.Decimal(0)
        q = decimal.Decimal(self.churned_customers) / decimal.Decimal(self.customers_start)
        return q.quantize(decimal.Decimal("0.000001"), rounding=decimal.ROUND_HALF_EVEN)


def movements(
    start: dict[uuid.UUID, Fraction], end: dict[uuid.UUID, Fraction], paid_before: set[uuid.UUID]
) -> Movements:
    new = reactivation = expansion = contraction = churned = Fraction(0)
    new_customers = churned_customers = 0
    for customer in set(start) | set(end):
        m0, m1 = start.get(customer, Fraction(0)), end.get(customer, Fraction(0))
        if m0 == 0 and m1 > 0:
            if customer in paid_before:
                reactivation += m1
            else:
                new += m1
                new_customers += 1
        elif m0 > 0 and m1 == 0:
            churned += m0
            churned_customers += 1
        elif m1 > m0:
            expansion += m1 - m0
        elif m1 < m0:
            contraction += m0 - m1
    return Movements(
        mrr_start=sum(start.values(), Fraction(0)),
        mrr_end=sum(end.values(), Fraction(0)),
        new=new,
        reactivation=reactivation,
        expansion=expansion,
        contraction=contraction,
        churned=churned,
        customers_start=sum(1 for v in start.values() if v > 0),
        customers_end=sum(1 for v in end.values() if v > 0),
        new_customers=new_customers,
        churned_customers=churned_customers,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class MrrPoint:
    bucket: dt.datetime
    movements: Movements


@dataclasses.dataclass(frozen=True, slots=True)
class RevenuePoint:
    bucket: dt.datetime
    gross: int
    refunds: int
    payments: int

    @property
    def net(self) -> int:
        return self.gross - self.refunds


@dataclasses.dataclass(frozen=True, slots=True)
class PlanCount:
    plan_id: uuid.UUID
    name: str
    interval: str
    subscriptions: int
    mrr: Fraction


@dataclasses.dataclass(frozen=True, slots=True)
class RevenueAnalytics:
    from_: dt.datetime
    to: dt.datetime
    granularity: Granularity
    currency: str
    totals: Movements
    mrr_series: tuple[MrrPoint, ...]
    revenue_series: tuple[RevenuePoint, ...]
    by_plan: tuple[PlanCount, ...]


def _segment(r: Any) -> Segment:
    return Segment(
        subscription_id=r.subscription_id,
        project_id=r.project_id,
        plan_id=r.plan_id,
        plan_name=r.plan_name,
        plan_interval=r.interval,
        start=utc(r.start),
        order=(utc(r.start), utc(r.created_at), r.id),
        stop=utc(r.stop) if r.stop is not None else None,
        mrr=segment_mrr(r.kind, int(r.total), int(r.price_amount), r.interval),
    )


def by_plan(timeline: Timeline, t: dt.datetime) -> tuple[PlanCount, ...]:
    groups: dict[uuid.UUID, list[Segment]] = defaultdict(list)
    for s in timeline.at(t).values():
        if s.mrr > 0:
            groups[s.plan_id].append(s)
    out = [
        PlanCount(pid, segs[0].plan_name, segs[0].plan_interval, len(segs), sum((s.mrr for s in segs), Fraction(0)))
        for pid, segs in groups.items()
    ]
    out.sort(key=lambda p: (-p.mrr, p.name, str(p.plan_id)))
    return tuple(out)


async def _load(db: Database, currency: str, start: dt.datetime, end: dt.datetime) -> tuple[Timeline, set[uuid.UUID]]:
    params = {"c": currency, "from": start, "to": end}
    async with db.transaction(system=True) as s:
        rows = (await s.execute(SEGMENTS, params)).all()
        before = {r.project_id for r in (await s.execute(PAID_BEFORE, params)).all()}
    return Timeline(_segment(r) for r in rows), before


async def revenue_analytics(
    db: Database, from_: dt.datetime, to: dt.datetime, granularity: Granularity, currency: str
) -> RevenueAnalytics:
    start, end, buckets = check_range(from_, to, granularity)
    timeline, paid_before = await _load(db, currency, start, end)
    params: dict[str, Any] = {"c": currency, "from": start, "to": end, "g": granularity.sql}
    async with db.transaction(system=True) as s:
        revenue_rows = (await s.execute(REVENUE, params)).all()

    # Each bucket compares its own edges (the first and last clipped to the range).
    edges = [start, *buckets[1:], end]
    mrr_at = [timeline.mrr_by_customer(t) for t in edges]
    series = tuple(
        MrrPoint(b, movements(mrr_at[i], mrr_at[i + 1], paid_before | timeline.paid_before(edges[i])))
        for i, b in enumerate(buckets)
    )
    totals = movements(timeline.mrr_by_customer(start), timeline.mrr_by_customer(end), paid_before)
    rev = {utc(r.bucket): r for r in revenue_rows}
    revenue_series = tuple(
        RevenuePoint(b, int(rev[b].gross), int(rev[b].refunds), int(rev[b].payments))
        if b in rev
        else RevenuePoint(b, 0, 0, 0)
        for b in buckets
    )
    return RevenueAnalytics(
        from_=start,
        to=end,
        granularity=granularity,
        currency=currency,
        totals=totals,
        mrr_series=series,
        revenue_series=revenue_series,
        by_plan=by_plan(timeline, end),
    )


# -- live ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RecentPayment:
    payment_id: uuid.UUID
    project_id: uuid.UUID
    kind: str
    status: str
    amount: int
    amount_refunded: int
    currency: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class RevenueLive:
    """One `liveRevenue` snapshot."""

    currency: str
    at: dt.datetime
    mrr: Fraction
    customers: int
    subscriptions: int
    gross_today: int  # payments received since 00:00 UTC
    refunds_today: int  # refunds given since 00:00 UTC
    payments_today: int
    recent_payments: tuple[RecentPayment, ...]

    def same_figures(self, other: object) -> bool:
        return isinstance(other, RevenueLive) and dataclasses.replace(other, at=self.at) == self


async def revenue_live(db: Database, currency: str, now: dt.datetime, *, recent: int = 10) -> RevenueLive:
    now = utc(now)
    day = day_start(now)
    # MRR "now" includes changes at this instant: look just past it.
    instant = now + dt.timedelta(microseconds=1)
    params: dict[str, Any] = {"c": currency, "from": instant, "to": instant, "g": "day", "n": recent}
    async with db.transaction(system=True) as s:
        rows = (await s.execute(SEGMENTS, params)).all()
        today = (await s.execute(REVENUE, {**params, "from": day, "to": instant})).all()
        recent_rows = (await s.execute(RECENT_PAYMENTS, params)).all()
    state = Timeline(_segment(r) for r in rows).at(instant)
    paying = [seg for seg in state.values() if seg.mrr > 0]
    return RevenueLive(
        currency=currency,
        at=now,
        mrr=sum((seg.mrr for seg in paying), Fraction(0)),
        customers=len({seg.project_id for seg in paying}),
        subscriptions=len(paying),
        gross_today=sum(int(r.gross) for r in today),
        refunds_today=sum(int(r.refunds) for r in today),
        payments_today=sum(int(r.payments) for r in today),
        recent_payments=tuple(
            RecentPayment(
                r.id,
                r.project_id,
                r.kind,
                r.status,
                int(r.amount),
                int(r.amount_refunded),
                r.currency.upper(),
                utc(r.created_at),
            )
            for r in recent_rows
        ),
    )
