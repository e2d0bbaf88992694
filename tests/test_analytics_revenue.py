"""revenueAnalytics and liveRevenue against a hand-computed fixture.

Every figure below is worked out by hand in the comments (docs/analytics.md has the definitions).
Each test uses its own made-up currency, so other tests' plans and payments never mix in.
"""

from __future__ import annotations

import datetime as dt
import random
import string
import uuid
from typing import Any

import pytest

from ledgerx.domain import topics
from ledgerx.ids import encode, uuid7
from ledgerx.settings import Settings
from tests.conftest import GQL, LiveServer, sign_up
from tests.tenancy_helpers import make_platform_admin, owner_sql
from tests.test_live_support import LIVE_REVENUE, WsClient, live_settings

UTC = dt.UTC


def d(y: int, m: int, day: int) -> dt.datetime:
    return dt.datetime(y, m, day, tzinfo=UTC)


def add_months(t: dt.datetime, n: int) -> dt.datetime:
    m = t.month - 1 + n
    return t.replace(year=t.year + m // 12, month=m % 12 + 1)


QUERY = """
query($from: DateTime!, $to: DateTime!, $g: AnalyticsGranularity, $c: String) {
  revenueAnalytics(from: $from, to: $to, granularity: $g, currency: $c) {
    from to granularity currency
    mrr arr mrrAtStart newMrr reactivationMrr expansionMrr contractionMrr churnedMrr netNewMrr
    customers customersAtStart newCustomers churnedCustomers customerChurnRate
    grossRevenue refunds netRevenue payments
    mrrSeries { bucket mrr newMrr reactivationMrr expansionMrr contractionMrr churnedMrr netNewMrr
                customers newCustomers churnedCustomers customerChurnRate }
    revenueSeries { bucket gross refunds net payments }
    activeSubscriptionsByPlan { planId name interval subscriptions mrr }
  }
}
"""


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return live_settings(settings)


class Fixture:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.currency = "Q" + "".join(random.choice(string.ascii_uppercase) for _ in range(2))
        self.plans: dict[str, uuid.UUID] = {}
        self.projects: dict[str, uuid.UUID] = {}

    async def sql(self, q: str, *args: Any) -> list[Any]:
        return await owner_sql(self.settings, q, *args)

    async def plan(self, name: str, interval: str, price: int, currency: str | None = None) -> uuid.UUID:
        pid = uuid7()
        await self.sql(
            "INSERT INTO plans (id, name, tier, interval, price_amount, currency) VALUES ($1, $2, 'PRO', $3, $4, $5)",
            pid,
            name,
            interval,
            price,
            currency or self.currency,
        )
        self.plans[name] = pid
        return pid

    async def project(self, name: str) -> uuid.UUID:
        pid = uuid7()
        await self.sql("INSERT INTO projects (id, name) VALUES ($1, $2)", pid, f"revenue {name}")
        self.projects[name] = pid
        return pid

    async def subscription(
        self, customer: str, plan: str, *, ended_at: dt.datetime | None = None, downgraded_at: dt.datetime | None = None
    ) -> uuid.UUID:
        sid = uuid7()
        await self.sql(
            "INSERT INTO subscriptions (id, project_id, plan_id, stripe_status, ended_at, downgraded_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            sid,
            self.projects[customer],
            self.plans[plan],
            "canceled" if ended_at else "active",
            ended_at,
            downgraded_at,
        )
        return sid

    async def invoice(
        self,
        sub: uuid.UUID,
        customer: str,
        plan: str,
        start: dt.datetime,
        end: dt.datetime,
        total: int,
        *,
        kind: str = "SUBSCRIPTION",
        status: str = "PAID",
    ) -> None:
        await self.sql(
            "INSERT INTO invoices (id, project_id, subscription_id, kind, status, currency, total, amount_due,"
            " amount_paid, period_start, period_end, plan_id, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10, $11, $9)",
            uuid7(),
            self.projects[customer],
            sub,
            kind,
            status,
            self.currency,
            total,
            total if status == "PAID" else 0,
            start,
            end,
            self.plans[plan],
        )

    async def monthly(
        self, sub: uuid.UUID, customer: str, plan: str, first: dt.datetime, count: int, price: int
    ) -> None:
        for i in range(count):
            await self.invoice(sub, customer, plan, add_months(first, i), add_months(first, i + 1), price)

    async def payment(self, customer: str, amount: int, when: dt.datetime, kind: str = "SUBSCRIPTION") -> uuid.UUID:
        pay = uuid7()
        await self.sql(
            "INSERT INTO payments (id, project_id, kind, status, amount, currency, created_at)"
            " VALUES ($1, $2, $3, 'SUCCEEDED', $4, $5, $6)",
            pay,
            self.projects[customer],
            kind,
            amount,
            self.currency,
            when,
        )
        return pay

    async def refund(self, payment: uuid.UUID, customer: str, amount: int, when: dt.datetime) -> None:
        await self.sql(
            "INSERT INTO payment_refunds (stripe_refund_id, payment_id, project_id, amount, credits, created_at)"
            " VALUES ($1, $2, $3, $4, 0, $5)",
            f"re_{uuid7().hex}",
            payment,
            self.projects[customer],
            amount,
            when,
        )


async def build_fixture(settings: Settings) -> Fixture:
    f = Fixture(settings)
    await f.plan("Basic", "MONTH", 1000)
    await f.plan("Pro", "MONTH", 3000)
    await f.plan("Team", "YEAR", 120000)  # 10000 a month
    await f.plan("Odd", "YEAR", 9999)  # 833.25 a month
    await f.plan("Elsewhere", "MONTH", 7777, currency="EUR" if f.currency != "EUR" else "GBP")
    for c in "ABCDEFGHI":
        await f.project(c)

    # A: Basic since 2025-12-01, monthly, all along.
    a = await f.subscription("A", "Basic")
    await f.monthly(a, "A", "Basic", d(2025, 12, 1), 4, 1000)
    await f.invoice(a, "A", "Pro", d(2026, 2, 1), d(2026, 3, 1), 3000, status="VOID")  # void: ignored
    # B: Basic since 2025-12-15, upgraded to Pro on 2026-02-10 (proration), Pro from the 02-15 cycle.
    b = await f.subscription("B", "Pro")
    await f.monthly(b, "B", "Basic", d(2025, 12, 15), 2, 1000)
    await f.invoice(b, "B", "Pro", d(2026, 2, 10), d(2026, 2, 15), 357, kind="PRORATION")
    await f.monthly(b, "B", "Pro", d(2026, 2, 15), 2, 3000)
    # C: Pro since 2025-11-20, downgraded to Basic at period end (from the 2026-01-20 cycle).
    c = await f.subscription("C", "Basic")
    await f.monthly(c, "C", "Pro", d(2025, 11, 20), 2, 3000)
    await f.monthly(c, "C", "Basic", d(2026, 1, 20), 3, 1000)
    # D: Team yearly since 2025-06-01, canceled at once on 2026-02-05.
    dd = await f.subscription("D", "Team", ended_at=d(2026, 2, 5))
    await f.invoice(dd, "D", "Team", d(2025, 6, 1), d(2026, 6, 1), 120000)
    # E: a Pro trial from 2026-01-10 (a zero invoice), paying from 2026-01-24.
    e = await f.subscription("E", "Pro")
    await f.invoice(e, "E", "Pro", d(2026, 1, 10), d(2026, 1, 24), 0)
    await f.monthly(e, "E", "Pro", d(2026, 1, 24), 3, 3000)
    # F: Odd yearly from 2026-03-05.
    ff = await f.subscription("F", "Odd")
    await f.invoice(ff, "F", "Odd", d(2026, 3, 5), d(2027, 3, 5), 9999)
    # G: Basic 2025-09-01 .. 2025-11-01 (ended), back on Basic from 2026-03-10 (a new subscription).
    g_old = await f.subscription("G", "Basic", ended_at=d(2025, 11, 1))
    await f.monthly(g_old, "G", "Basic", d(2025, 9, 1), 2, 1000)
    g_new = await f.subscription("G", "Basic")
    await f.invoice(g_new, "G", "Basic", d(2026, 3, 10), d(2026, 4, 10), 1000)
    # H: Basic since 2025-10-01; the 2026-01-01 invoice failed; dropped to free on 2026-01-08.
    h = await f.subscription("H", "Basic", downgraded_at=d(2026, 1, 8))
    await f.monthly(h, "H", "Basic", d(2025, 10, 1), 3, 1000)
    await f.invoice(h, "H", "Basic", d(2026, 1, 1), d(2026, 2, 1), 1000, status="OPEN")
    # I: a plan in another currency: left out.
    i = await f.subscription("I", "Elsewhere")
    await f.sql(
        "INSERT INTO invoices (id, project_id, subscription_id, kind, status, currency, total, period_start,"
        " period_end, plan_id) VALUES ($1, $2, $3, 'SUBSCRIPTION', 'PAID', 'EUR', 7777, $4, $5, $6)",
        uuid7(),
        f.projects["I"],
        i,
        d(2026, 1, 1),
        d(2026, 2, 1),
        f.plans["Elsewhere"],
    )

    # Payments in the fixture currency.
    for m in (1, 2, 3):
        await f.payment("A", 1000, d(2026, m, 1))
    await f.payment("E", 3000, d(2026, 1, 24))
    p5 = await f.payment("E", 3000, d(2026, 2, 24))
    await f.refund(p5, "E", 500, d(2026, 3, 2))
    await f.payment("F", 9999, d(2026, 3, 5))
    await f.payment("B", 2500, d(2026, 2, 14), kind="CREDIT_PACK")
    await f.payment("C", 3000, d(2025, 12, 20))  # before the range
    return f


async def test_revenue_analytics_fixture(gql: GQL, settings: Settings) -> None:
    f = await build_fixture(settings)
    admin = await make_platform_admin(gql, settings)
    data = (
        await gql.ok(
            QUERY,
            {"from": d(2026, 1, 1).isoformat(), "to": d(2026, 4, 1).isoformat(), "g": "MONTH", "c": f.currency.lower()},
            token=admin.token,
        )
    )["revenueAnalytics"]
    assert data["currency"] == f.currency
    # At 2026-01-01: A 1000 + B 1000 + C 3000 + D 10000 + H 1000 = 16000 (5 customers).
    assert data["mrrAtStart"] == "16000"
    assert data["customersAtStart"] == 5
    # At 2026-04-01: A 1000 + B 3000 + C 1000 + E 3000 + F 833.25 + G 1000 = 9833.25 (6 customers).
    assert data["mrr"] == "9833"
    assert data["arr"] == "117999"  # 12 x 9833.25, exactly
    assert data["customers"] == 6
    assert data["newMrr"] == "3833"  # E 3000 + F 833.25
    assert data["reactivationMrr"] == "1000"  # G
    assert data["expansionMrr"] == "2000"  # B 1000 -> 3000
    assert data["contractionMrr"] == "2000"  # C 3000 -> 1000
    assert data["churnedMrr"] == "11000"  # D 10000 + H 1000
    assert data["netNewMrr"] == "-6167"  # 9833.25 - 16000 = -6166.75, halves away from zero
    assert (data["newCustomers"], data["churnedCustomers"]) == (2, 2)
    assert data["customerChurnRate"] == "0.400000"  # 2 of 5
    # Payments: Jan 1000 + 3000; Feb 1000 + 3000 + 2500; Mar 1000 + 9999, refund 500.
    assert (data["grossRevenue"], data["refunds"], data["netRevenue"], data["payments"]) == ("21499", "500", "20999", 7)
    assert data["revenueSeries"] == [
        {"bucket": d(2026, 1, 1).isoformat(), "gross": "4000", "refunds": "0", "net": "4000", "payments": 2},
        {"bucket": d(2026, 2, 1).isoformat(), "gross": "6500", "refunds": "0", "net": "6500", "payments": 3},
        {"bucket": d(2026, 3, 1).isoformat(), "gross": "10999", "refunds": "500", "net": "10499", "payments": 2},
    ]
    series = data["mrrSeries"]
    assert [p["bucket"] for p in series] == [d(2026, m, 1).isoformat() for m in (1, 2, 3)]
    # January: C contracts 2000, E new 3000, H churns 1000: 16000 -> 16000; 1 of 5 churned.
    assert series[0] == {
        "bucket": d(2026, 1, 1).isoformat(),
        "mrr": "16000",
        "newMrr": "3000",
        "reactivationMrr": "0",
        "expansionMrr": "0",
        "contractionMrr": "2000",
        "churnedMrr": "1000",
        "netNewMrr": "0",
        "customers": 5,
        "newCustomers": 1,
        "churnedCustomers": 1,
        "customerChurnRate": "0.200000",
    }
    # February: B expands 2000, D churns 10000: 16000 -> 8000; 1 of 5 churned.
    assert (series[1]["mrr"], series[1]["expansionMrr"], series[1]["churnedMrr"], series[1]["netNewMrr"]) == (
        "8000",
        "2000",
        "10000",
        "-8000",
    )
    assert (series[1]["customers"], series[1]["customerChurnRate"]) == (4, "0.200000")
    # March: F new 833.25, G back 1000: 8000 -> 9833.25; nobody churned.
    assert (series[2]["mrr"], series[2]["newMrr"], series[2]["reactivationMrr"], series[2]["netNewMrr"]) == (
        "9833",
        "833",
        "1000",
        "1833",
    )
    assert (series[2]["churnedMrr"], series[2]["customerChurnRate"]) == ("0", "0.000000")
    # Paying at the end, by plan (largest MRR first).
    plans = data["activeSubscriptionsByPlan"]
    assert [(p["name"], p["interval"], p["subscriptions"], p["mrr"]) for p in plans] == [
        ("Pro", "MONTH", 2, "6000"),
        ("Basic", "MONTH", 3, "3000"),
        ("Odd", "YEAR", 1, "833"),
    ]
    assert plans[0]["planId"] == encode("plan", f.plans["Pro"])

    # A daily view of February: the upgrade lands on 02-10, the cancellation on 02-05.
    feb = (
        await gql.ok(
            QUERY,
            {"from": d(2026, 2, 1).isoformat(), "to": d(2026, 3, 1).isoformat(), "g": "DAY", "c": f.currency},
            token=admin.token,
        )
    )["revenueAnalytics"]
    by_day = {p["bucket"][:10]: p for p in feb["mrrSeries"]}
    assert by_day["2026-02-05"]["churnedMrr"] == "10000"
    assert by_day["2026-02-05"]["mrr"] == "6000"
    assert by_day["2026-02-10"]["expansionMrr"] == "2000"
    assert by_day["2026-02-10"]["mrr"] == "8000"
    assert sum(int(p["netNewMrr"]) for p in feb["mrrSeries"]) == int(feb["netNewMrr"]) == -8000


async def test_revenue_analytics_is_for_platform_admins(gql: GQL) -> None:
    user = await sign_up(gql)
    v = {"from": d(2026, 1, 1).isoformat(), "to": d(2026, 2, 1).isoformat()}
    assert (await gql.error(QUERY, v, token=user.token))["code"] == "FORBIDDEN"
    assert (await gql.error(QUERY, v))["code"] == "UNAUTHENTICATED"


async def test_live_revenue_snapshot_then_payments_as_they_happen(
    gql: GQL, settings: Settings, live_server: LiveServer
) -> None:
    f = await build_fixture(settings)
    admin = await make_platform_admin(gql, settings)
    ws = await WsClient.connect(live_server.ws_url, admin.token)
    try:
        op = await ws.subscribe(LIVE_REVENUE, {"c": f.currency})
        first = await ws.next_data(op, "liveRevenue")
        # Nothing in the fixture ends after March: today's MRR is the April figure.
        assert (first["mrr"], first["arr"], first["customers"], first["activeSubscriptions"]) == (
            "9833",
            "117999",
            6,
            6,
        )
        assert first["revenueToday"] == "0"
        assert first["recentPayments"][0]["amount"] == "9999"

        # A payment now, announced as the payments domain does after commit.
        now = dt.datetime.now(UTC)
        pay = await f.payment("B", 4200, now, kind="CREDIT_PACK")
        await live_server.services.events.publish(
            f"project:{f.projects['B']}:payments",
            topics.payment_event(f.projects["B"], payment_id=pay, amount=4200, currency=f.currency)[1],
        )
        upd = await ws.until(op, "liveRevenue", lambda x: x["revenueToday"] == "4200")
        assert upd["paymentsToday"] == 1
        assert upd["recentPayments"][0]["id"] == encode("payment", pay)
        assert upd["events"] >= 1

        # A new customer subscribes (the payments domain's subscription topic): MRR moves.
        await f.project("J")
        j = await f.subscription("J", "Pro")
        await f.invoice(j, "J", "Pro", now - dt.timedelta(minutes=1), add_months(now, 1), 3000)
        await live_server.services.events.publish(
            f"project:{f.projects['J']}:subscription", {"type": "subscription.changed", "status": "ACTIVE"}
        )
        upd = await ws.until(op, "liveRevenue", lambda x: x["mrr"] == "12833")
        assert upd["customers"] == 7
    finally:
        await ws.close()
