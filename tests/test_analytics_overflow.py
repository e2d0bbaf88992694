"""Analytics over int64-sized amounts: every amount fits in 64 bits, their sums need not.

projectAnalytics, revenueAnalytics and liveMetrics report totals past 2^63 exactly (BigInt output
carries any size) instead of failing with INTERNAL or, for live feeds, sending nothing at all.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import secrets
import string

import pytest

from ledgerx.domain.actor import Actor
from ledgerx.domain.ledger import WalletRef
from ledgerx.domain.ledger.posting import credit_wallet, debit_wallet
from ledgerx.domain.ledger.wallets import create_wallet
from ledgerx.ids import decode, uuid7
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, LiveServer, sign_up
from tests.tenancy_helpers import create_project, make_platform_admin, owner_sql
from tests.test_analytics_project import QUERY as PROJECT_ANALYTICS
from tests.test_analytics_project import Clock, _usage
from tests.test_analytics_revenue import QUERY as REVENUE_ANALYTICS
from tests.test_live_support import CREATE_WALLET, CREDIT, DEBIT, DEFINE_METRIC, LIVE_METRICS, WsClient, live_settings

MAX = 2**63 - 1
UTC = dt.UTC


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return live_settings(settings)


def at(day: int, hour: int) -> dt.datetime:
    return dt.datetime(2026, 5, day, hour, tzinfo=UTC)


async def test_project_analytics_sums_past_64_bits(gql: GQL, services: Services, settings: Settings) -> None:
    owner = await sign_up(gql)
    pid_public = await create_project(gql, owner)
    pid = decode("project", pid_public)
    await gql.ok(
        DEFINE_METRIC,
        {"i": {"projectId": pid_public, "key": "tokens", "name": "tokens", "aggregation": "SUM", "unitPrice": "1"}},
        token=owner.token,
    )
    metric = (await owner_sql(settings, "SELECT id FROM usage_metrics WHERE project_id = $1", pid))[0]["id"]
    clock = Clock()
    services.ledger.clock = clock
    actor = Actor("user", decode("user", owner.user_id))
    wallets = []
    for n in range(4):
        w = await create_wallet(services.ledger, actor, pid, name=f"w{n}")
        wallets.append(WalletRef(w.id, w.project_id, w.currency))

    # Day 1: every wallet gets the largest credit a wallet can hold (4 x (2^63 - 1) added).
    clock.now = at(1, 10)
    for n, w in enumerate(wallets):
        await credit_wallet(services.ledger, actor, w, MAX, f"big-{n}")
    # Day 2: two wallets spend it all as usage, a third as a plain debit (3 x (2^63 - 1) spent).
    for w in wallets[:2]:
        await _usage(services, settings, clock, at(2, 9), w, metric, MAX, 1, actor)
    clock.now = at(2, 11)
    await debit_wallet(services.ledger, actor, wallets[2], MAX, "spend-all")

    variables = {"p": pid_public, "from": at(1, 0).isoformat(), "to": at(3, 0).isoformat(), "g": "DAY"}
    data = (await gql.ok(PROJECT_ANALYTICS, variables, token=owner.token))["projectAnalytics"]
    assert data["creditsAdded"] == str(4 * MAX)
    assert data["creditsSpent"] == str(3 * MAX)
    assert [(p["creditsAdded"], p["creditsSpent"]) for p in data["series"]] == [
        (str(4 * MAX), "0"),
        ("0", str(3 * MAX)),
    ]
    assert [p["balance"] for p in data["balanceHistory"]] == [str(4 * MAX), str(MAX)]
    assert data["spendByMetric"] == [
        {"metricKey": "tokens", "name": "tokens", "units": str(2 * MAX), "charges": 2, "amount": str(2 * MAX)}
    ]
    # Hourly buckets walk the balance back through the same large numbers.
    hourly = (await gql.ok(PROJECT_ANALYTICS, {**variables, "g": "HOUR"}, token=owner.token))["projectAnalytics"]
    assert hourly["balanceHistory"][9]["balance"] == "0"
    assert hourly["balanceHistory"][10]["balance"] == str(4 * MAX)


async def test_revenue_analytics_sums_past_64_bits(gql: GQL, settings: Settings) -> None:
    admin = await make_platform_admin(gql, settings)
    currency = "Q" + "".join(random.choice(string.ascii_uppercase) for _ in range(2))
    project = uuid7()
    await owner_sql(settings, "INSERT INTO projects (id, name) VALUES ($1, 'rich customer')", project)
    for hour in (9, 10, 11):
        await owner_sql(
            settings,
            "INSERT INTO payments (id, project_id, kind, status, amount, currency, created_at)"
            " VALUES ($1, $2, 'CREDIT_PACK', 'SUCCEEDED', $3, $4, $5)",
            uuid7(),
            project,
            MAX,
            currency,
            at(1, hour),
        )
    variables = {"from": at(1, 0).isoformat(), "to": at(2, 0).isoformat(), "g": "DAY", "c": currency}
    data = (await gql.ok(REVENUE_ANALYTICS, variables, token=admin.token))["revenueAnalytics"]
    assert (data["grossRevenue"], data["netRevenue"], data["payments"]) == (str(3 * MAX), str(3 * MAX), 3)
    assert data["revenueSeries"] == [
        {"bucket": at(1, 0).isoformat(), "gross": str(3 * MAX), "refunds": "0", "net": str(3 * MAX), "payments": 3}
    ]


async def test_live_metrics_reports_balances_past_64_bits(
    gql: GQL, live_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    wallet_ids = []
    for n in range(3):
        data = await gql.ok(CREATE_WALLET, {"i": {"projectId": pid, "name": f"w{n}"}}, token=owner.token)
        wallet_ids.append(data["createWallet"]["id"])
        credit = {"walletId": wallet_ids[-1], "amount": str(MAX), "idempotencyKey": secrets.token_hex(6)}
        await gql.ok(CREDIT, {"i": credit}, token=owner.token)

    caplog.set_level(logging.WARNING)
    ws = await WsClient.connect(live_server.ws_url, owner.token)
    try:
        op = await ws.subscribe(LIVE_METRICS, {"p": pid})
        first = await ws.next_data(op, "liveMetrics")
        assert first["totalBalance"] == str(3 * MAX)
        assert first["creditsAddedToday"] == str(3 * MAX)
        assert first["walletCount"] == 3
        assert sorted(w["balance"] for w in first["wallets"]) == [str(MAX)] * 3

        # Spending moves past-64-bit totals too, and updates keep flowing.
        debit = {"walletId": wallet_ids[0], "amount": str(MAX), "idempotencyKey": secrets.token_hex(6)}
        await gql.ok(DEBIT, {"i": debit}, token=owner.token)
        upd = await ws.until(op, "liveMetrics", lambda d: d["spendToday"] == str(MAX))
        assert upd["totalBalance"] == str(2 * MAX)
    finally:
        await ws.close()
    # The feed never failed a read on the way.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
