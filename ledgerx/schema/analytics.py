"""GraphQL types of analytics: project and revenue analytics, and the live snapshots."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING, Any, TypeVar

import strawberry

from ledgerx import ids
from ledgerx.domain.analytics import project as project_domain
from ledgerx.domain.analytics import revenue as revenue_domain
from ledgerx.domain.analytics.hub import Update
from ledgerx.domain.analytics.live import ProjectLive
from ledgerx.domain.analytics.periods import Granularity
from ledgerx.domain.analytics.revenue import RevenueLive, round_half_up
from ledgerx.schema import scalars
from ledgerx.schema.shared_results import SharedResults

if TYPE_CHECKING:  # the scalars are NewTypes of these; mypy checks the plain types
    BigInt = int
    Decimal = decimal.Decimal
else:
    BigInt = scalars.BigInt
    Decimal = scalars.Decimal


@strawberry.enum(description="Bucket width of an analytics series (UTC; weeks start on Monday).")
class AnalyticsGranularity(enum.Enum):
    HOUR = "HOUR"
    DAY = "DAY"
    WEEK = "WEEK"
    MONTH = "MONTH"

    def domain(self) -> Granularity:
        return Granularity(self.value)


def _money(value: Fraction) -> int:
    return round_half_up(value)


# -- project analytics --------------------------------------------------------------------------


@strawberry.type(description="Credits added to and spent from the project's wallets in one bucket.")
class CreditsPoint:
    bucket: dt.datetime
    credits_added: BigInt
    credits_spent: BigInt


@strawberry.type(description="Usage charges of one metric in the range (gross: refunds are not netted).")
class MetricSpend:
    metric_key: str
    name: str
    units: Decimal
    charges: int
    amount: BigInt


@strawberry.type(description="The sum of the project's wallet balances at the end of a bucket (at `to` for the last).")
class BalancePoint:
    bucket: dt.datetime
    balance: BigInt


@strawberry.type(
    description="A project's credits, spend, balances and active callers over a range (docs/analytics.md)."
)
class ProjectAnalytics:
    project_id: strawberry.ID
    from_: dt.datetime = strawberry.field(name="from")
    to: dt.datetime
    granularity: AnalyticsGranularity
    currency: str
    credits_added: BigInt
    credits_spent: BigInt
    series: list[CreditsPoint]
    spend_by_metric: list[MetricSpend]
    balance_history: list[BalancePoint]
    active_users: int = strawberry.field(description="Distinct users that acted on the project in the range.")
    active_api_keys: int = strawberry.field(description="Distinct API keys that acted on the project in the range.")

    @classmethod
    def of(cls, a: project_domain.ProjectAnalytics) -> ProjectAnalytics:
        return cls(
            project_id=strawberry.ID(ids.encode("project", a.project_id)),
            from_=a.from_,
            to=a.to,
            granularity=AnalyticsGranularity(a.granularity.value),
            currency=a.currency,
            credits_added=int(a.credits_added),
            credits_spent=int(a.credits_spent),
            series=[
                CreditsPoint(bucket=p.bucket, credits_added=int(p.added), credits_spent=int(p.spent)) for p in a.series
            ],
            spend_by_metric=[
                MetricSpend(
                    metric_key=m.metric_key,
                    name=m.name,
                    units=m.units,
                    charges=m.charges,
                    amount=int(m.amount),
                )
                for m in a.spend_by_metric
            ],
            balance_history=[BalancePoint(bucket=p.bucket, balance=int(p.balance)) for p in a.balance_history],
            active_users=a.active_users,
            active_api_keys=a.active_api_keys,
        )


# -- revenue analytics --------------------------------------------------------------------------


@strawberry.type(description="MRR at the end of a bucket and how it moved during the bucket.")
class MrrPoint:
    bucket: dt.datetime
    mrr: BigInt
    new_mrr: BigInt
    reactivation_mrr: BigInt
    expansion_mrr: BigInt
    contraction_mrr: BigInt
    churned_mrr: BigInt
    net_new_mrr: BigInt
    customers: int
    new_customers: int
    churned_customers: int
    customer_churn_rate: Decimal

    @classmethod
    def of(cls, p: revenue_domain.MrrPoint) -> MrrPoint:
        m = p.movements
        return cls(
            bucket=p.bucket,
            mrr=int(_money(m.mrr_end)),
            new_mrr=int(_money(m.new)),
            reactivation_mrr=int(_money(m.reactivation)),
            expansion_mrr=int(_money(m.expansion)),
            contraction_mrr=int(_money(m.contraction)),
            churned_mrr=int(_money(m.churned)),
            net_new_mrr=int(_money(m.net_new)),
            customers=m.customers_end,
            new_customers=m.new_customers,
            churned_customers=m.churned_customers,
            customer_churn_rate=m.churn_rate,
        )


@strawberry.type(
    description="Payments received in a bucket, refunds given in it, and the difference; net of the tax their"
    " invoices and credit notes show (collected for the tax authority, not earned)."
)
class RevenuePoint:
    bucket: dt.datetime
    gross: BigInt
    refunds: BigInt
    net: BigInt
    payments: int


@strawberry.type(description="Subscriptions paying for one plan at the end of the range.")
class PlanSubscriptions:
    plan_id: strawberry.ID
    name: str
    interval: str
    subscriptions: int
    mrr: BigInt


@strawberry.type(
    description="Platform revenue over a range: MRR, ARR, MRR movements, churn, payments (docs/analytics.md)."
)
class RevenueAnalytics:
    from_: dt.datetime = strawberry.field(name="from")
    to: dt.datetime
    granularity: AnalyticsGranularity
    currency: str
    mrr: BigInt = strawberry.field(description="MRR at `to`.")
    arr: BigInt = strawberry.field(description="12 x MRR at `to`.")
    mrr_at_start: BigInt = strawberry.field(description="MRR at `from`.")
    new_mrr: BigInt
    reactivation_mrr: BigInt
    expansion_mrr: BigInt
    contraction_mrr: BigInt
    churned_mrr: BigInt
    net_new_mrr: BigInt
    customers: int = strawberry.field(description="Paying customers (projects) at `to`.")
    customers_at_start: int
    new_customers: int
    churned_customers: int
    customer_churn_rate: Decimal = strawberry.field(description="churnedCustomers / customersAtStart (0 when none).")
    gross_revenue: BigInt
    refunds: BigInt
    net_revenue: BigInt
    payments: int
    mrr_series: list[MrrPoint]
    revenue_series: list[RevenuePoint]
    active_subscriptions_by_plan: list[PlanSubscriptions]

    @classmethod
    def of(cls, a: revenue_domain.RevenueAnalytics) -> RevenueAnalytics:
        t = a.totals
        gross = sum(p.gross for p in a.revenue_series)
        refunds = sum(p.refunds for p in a.revenue_series)
        return cls(
            from_=a.from_,
            to=a.to,
            granularity=AnalyticsGranularity(a.granularity.value),
            currency=a.currency,
            mrr=int(_money(t.mrr_end)),
            arr=int(_money(t.mrr_end * 12)),
            mrr_at_start=int(_money(t.mrr_start)),
            new_mrr=int(_money(t.new)),
            reactivation_mrr=int(_money(t.reactivation)),
            expansion_mrr=int(_money(t.expansion)),
            contraction_mrr=int(_money(t.contraction)),
            churned_mrr=int(_money(t.churned)),
            net_new_mrr=int(_money(t.net_new)),
            customers=t.customers_end,
            customers_at_start=t.customers_start,
            new_customers=t.new_customers,
            churned_customers=t.churned_customers,
            customer_churn_rate=t.churn_rate,
            gross_revenue=int(gross),
            refunds=int(refunds),
            net_revenue=int(gross - refunds),
            payments=sum(p.payments for p in a.revenue_series),
            mrr_series=[MrrPoint.of(p) for p in a.mrr_series],
            revenue_series=[
                RevenuePoint(
                    bucket=p.bucket,
                    gross=int(p.gross),
                    refunds=int(p.refunds),
                    net=int(p.net),
                    payments=p.payments,
                )
                for p in a.revenue_series
            ],
            active_subscriptions_by_plan=[
                PlanSubscriptions(
                    plan_id=strawberry.ID(ids.encode("plan", p.plan_id)),
                    name=p.name,
                    interval=p.interval,
                    subscriptions=p.subscriptions,
                    mrr=int(_money(p.mrr)),
                )
                for p in a.by_plan
            ],
        )


# -- live ---------------------------------------------------------------------------------------


@strawberry.type(description="A metric's usage over the last 60 seconds.")
class LiveMetricUsage:
    metric_key: str
    name: str
    units: Decimal
    events: int


@strawberry.type(description="One wallet's balance.")
class LiveWalletBalance:
    wallet_id: strawberry.ID
    name: str
    balance: BigInt


@strawberry.type(
    description="A project's live figures. The first message is the full snapshot (`sequence` 1); every later"
    " message is a full snapshot too, sent when figures change, at most a few per second however many events"
    " happen (`events` says how many it folds in)."
)
class LiveMetrics:
    project_id: strawberry.ID
    currency: str
    at: dt.datetime = strawberry.field(description="When the figures were read.")
    usage: list[LiveMetricUsage] = strawberry.field(description="Per metric: units and events in the last 60 s.")
    spend_today: BigInt = strawberry.field(description="Credits spent since 00:00 UTC (as projectAnalytics).")
    credits_added_today: BigInt
    total_balance: BigInt
    wallet_count: int
    wallets: list[LiveWalletBalance] = strawberry.field(description="The largest balances (up to 20).")
    active_users: int = strawberry.field(description="Distinct users that acted in the last 5 minutes.")
    active_api_keys: int = strawberry.field(description="Distinct API keys that acted in the last 5 minutes.")
    sequence: int = strawberry.field(description="1 for the first message of the stream, then 2, 3, …")
    initial: bool
    events: int = strawberry.field(description="Domain events folded into this message since the previous one.")
    first_event_at: dt.datetime | None = strawberry.field(
        description="When the oldest of those events happened (lag = receipt time - firstEventAt)."
    )
    last_event_at: dt.datetime | None
    # Renders of this message's snapshot, shared by every subscriber of the feed (shared_results.py).
    shared_results: strawberry.Private[SharedResults | None] = None

    @classmethod
    def of(cls, u: Update[ProjectLive]) -> LiveMetrics:
        s = u.snapshot
        project_id, usage, wallets, shared = _shared(s, _metrics_parts)
        return cls(
            project_id=project_id,
            currency=s.currency,
            at=s.at,
            usage=usage,
            spend_today=int(s.spend_today),
            credits_added_today=int(s.credits_added_today),
            total_balance=int(s.total_balance),
            wallet_count=s.wallet_count,
            wallets=wallets,
            active_users=s.active_users,
            active_api_keys=s.active_api_keys,
            sequence=u.sequence,
            initial=u.initial,
            events=u.events,
            first_event_at=u.first_event_at,
            last_event_at=u.last_event_at,
            shared_results=shared,
        )


# What differs between the messages that subscribers of one feed receive for one snapshot.
PER_SUBSCRIBER = frozenset({"sequence", "initial", "events", "first_event_at", "last_event_at"})

_MetricsParts = tuple[strawberry.ID, list[LiveMetricUsage], list[LiveWalletBalance], SharedResults]


def _metrics_parts(s: ProjectLive) -> _MetricsParts:
    return (
        strawberry.ID(ids.encode("project", s.project_id)),
        [LiveMetricUsage(metric_key=m.metric_key, name=m.name, units=m.units, events=m.events) for m in s.usage],
        [
            LiveWalletBalance(
                wallet_id=strawberry.ID(ids.encode("wallet", w.wallet_id)), name=w.name, balance=w.balance
            )
            for w in s.wallets
        ],
        SharedResults(PER_SUBSCRIBER),
    )


# The parts of a message that depend only on the snapshot are built once per snapshot and shared
# by every subscriber of the feed (GraphQL execution never mutates them). Keyed by identity; the
# entry keeps the snapshot alive so its id is not reused while cached.
_PARTS: dict[int, tuple[object, Any]] = {}
_PARTS_MAX = 256
P = TypeVar("P")
K = TypeVar("K")


def _shared(snapshot: K, build: Callable[[K], P]) -> P:
    hit = _PARTS.get(id(snapshot))
    if hit is not None and hit[0] is snapshot:
        parts: P = hit[1]
        return parts
    parts = build(snapshot)
    if len(_PARTS) >= _PARTS_MAX:
        _PARTS.clear()
    _PARTS[id(snapshot)] = (snapshot, parts)
    return parts


@strawberry.type(description="A payment as it happened.")
class LivePayment:
    id: strawberry.ID
    project_id: strawberry.ID
    kind: str
    status: str
    amount: BigInt
    amount_refunded: BigInt
    currency: str
    created_at: dt.datetime


@strawberry.type(description="Platform revenue, live (platform admins). Same message rules as LiveMetrics.")
class LiveRevenue:
    currency: str
    at: dt.datetime
    mrr: BigInt
    arr: BigInt
    customers: int
    active_subscriptions: int
    revenue_today: BigInt = strawberry.field(
        description="Payments since 00:00 UTC minus refunds given since then, net of tax."
    )
    refunds_today: BigInt
    payments_today: int
    recent_payments: list[LivePayment] = strawberry.field(description="The newest payments (up to 10), newest first.")
    sequence: int
    initial: bool
    events: int
    first_event_at: dt.datetime | None
    last_event_at: dt.datetime | None
    shared_results: strawberry.Private[SharedResults | None] = None

    @classmethod
    def of(cls, u: Update[RevenueLive]) -> LiveRevenue:
        s = u.snapshot
        payments, shared = _shared(s, _revenue_parts)
        return cls(
            currency=s.currency,
            at=s.at,
            mrr=_money(s.mrr),
            arr=_money(s.mrr * 12),
            customers=s.customers,
            active_subscriptions=s.subscriptions,
            revenue_today=int(s.gross_today - s.refunds_today),
            refunds_today=int(s.refunds_today),
            payments_today=s.payments_today,
            recent_payments=payments,
            sequence=u.sequence,
            initial=u.initial,
            events=u.events,
            first_event_at=u.first_event_at,
            last_event_at=u.last_event_at,
            shared_results=shared,
        )


def _revenue_parts(s: RevenueLive) -> tuple[list[LivePayment], SharedResults]:
    return _payments(s), SharedResults(PER_SUBSCRIBER)


def _payments(s: RevenueLive) -> list[LivePayment]:
    return [
        LivePayment(
            id=strawberry.ID(ids.encode("payment", p.payment_id)),
            project_id=strawberry.ID(ids.encode("project", p.project_id)),
            kind=p.kind,
            status=p.status,
            amount=p.amount,
            amount_refunded=p.amount_refunded,
            currency=p.currency,
            created_at=p.created_at,
        )
        for p in s.recent_payments
    ]
