"""projectAnalytics against a hand-computed fixture (ledger postings at pinned instants)."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import pytest

from ledgerx.domain.actor import Actor
from ledgerx.domain.analytics.periods import Granularity, bucket_start, check_range
from ledgerx.domain.errors import BadInput
from ledgerx.domain.ledger import Kind, Leg, Posting, SystemAccount, WalletRef
from ledgerx.domain.ledger.posting import credit_wallet, debit_wallet, post_transaction, transfer_credits
from ledgerx.domain.ledger.refunds import refund_transaction
from ledgerx.domain.ledger.wallets import create_wallet
from ledgerx.ids import decode, encode, uuid7
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, sign_up
from tests.tenancy_helpers import add_member, owner_sql
from tests.test_live_support import DEFINE_METRIC

UTC = dt.UTC


def at(day: int, hour: int, month: int = 3) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, tzinfo=UTC)


QUERY = """
query($p: ID!, $from: DateTime!, $to: DateTime!, $g: AnalyticsGranularity, $c: String) {
  projectAnalytics(projectId: $p, from: $from, to: $to, granularity: $g, currency: $c) {
    projectId from to granularity currency creditsAdded creditsSpent
    series { bucket creditsAdded creditsSpent }
    spendByMetric { metricKey name units charges amount }
    balanceHistory { bucket balance }
    activeUsers activeApiKeys
  }
}
"""


class Clock:
    def __init__(self) -> None:
        self.now = at(1, 0)

    def __call__(self) -> dt.datetime:
        return self.now


async def _usage(
    services: Services,
    settings: Settings,
    clock: Clock,
    when: dt.datetime,
    wallet: WalletRef,
    metric_id: uuid.UUID,
    units: int,
    price: int,
    actor: Actor,
) -> uuid.UUID:
    """A usage charge as the usage domain records it: a USAGE debit and its usage_charges row."""
    clock.now = when
    amount = units * price
    posted = await post_transaction(
        services.ledger,
        Posting(
            project_id=wallet.project_id,
            wallet_id=wallet.id,
            kind=Kind.USAGE,
            currency=wallet.currency,
            legs=(Leg(-amount, wallet_id=wallet.id), Leg(amount, system=SystemAccount.USAGE_REVENUE)),
            idempotency_key=f"usage-{uuid7()}",
            actor=actor,
        ),
    )
    await owner_sql(
        settings,
        "INSERT INTO usage_charges (id, project_id, idempotency_key, wallet_id, metric_id, units, unit_price,"
        " remainder_before, total, amount, remainder_after, transaction_id, actor_type, actor_id, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9, 0, $10, $11, $12, $13)",
        uuid7(),
        wallet.project_id,
        f"charge-{uuid7()}",
        wallet.id,
        metric_id,
        decimal.Decimal(units),
        decimal.Decimal(price),
        decimal.Decimal(amount),
        amount,
        posted.transaction.id,
        actor.type,
        actor.id,
        when,
    )
    return posted.transaction.id


async def test_project_analytics_fixture(gql: GQL, services: Services, settings: Settings) -> None:
    owner = await sign_up(gql)
    pid_public = (
        await gql.ok(
            "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }",
            {"i": {"name": "Fixture", "externalKey": f"fx-{uuid7()}"}},
            token=owner.token,
        )
    )["createProject"]["id"]
    viewer = await add_member(gql, owner, pid_public, "VIEWER")
    pid = decode("project", pid_public)
    for key, price in (("api_calls", "1"), ("storage_gb", "2")):
        await gql.ok(
            DEFINE_METRIC,
            {"i": {"projectId": pid_public, "key": key, "name": key, "aggregation": "SUM", "unitPrice": price}},
            token=owner.token,
        )
    metric = {
        r["key"]: r["id"]
        for r in await owner_sql(settings, "SELECT key, id FROM usage_metrics WHERE project_id = $1", pid)
    }

    clock = Clock()
    services.ledger.clock = clock
    u1 = Actor("user", decode("user", owner.user_id))
    u2 = Actor("user", decode("user", viewer.user_id))
    k1 = Actor("api_key", uuid7())
    system = Actor.system("fixture")

    def ref(w: object) -> WalletRef:
        return WalletRef(w.id, w.project_id, w.currency)  # type: ignore[attr-defined]

    w = ref(await create_wallet(services.ledger, system, pid, name="main"))
    w2 = ref(await create_wallet(services.ledger, system, pid, name="second"))
    usd = ref(await create_wallet(services.ledger, system, pid, name="dollars", currency="USD"))

    # Before the range: the opening balance.
    clock.now = dt.datetime(2026, 2, 28, 23, tzinfo=UTC)
    await credit_wallet(services.ledger, system, w, 50, "open")
    # Day 1: +1000 added; 120 spent (usage).
    clock.now = at(1, 10)
    big_credit = await credit_wallet(services.ledger, u1, w, 1000, "c1")
    await credit_wallet(services.ledger, u1, usd, 999, "usd")  # another currency: left out
    usage1 = await _usage(services, settings, clock, at(1, 12), w, metric["api_calls"], 120, 1, k1)
    # Day 2: 30 spent (usage), a transfer (neutral), 50 spent (debit).
    await _usage(services, settings, clock, at(2, 9), w, metric["storage_gb"], 15, 2, k1)
    clock.now = at(2, 10)
    await transfer_credits(services.ledger, u1, w, w2, 200, "t1")
    clock.now = at(2, 11)
    await debit_wallet(services.ledger, u2, w2, 50, "d1")
    # Day 3: a refund of usage (spent -20), a purchase (+500), a refund of the big credit (added -100).
    clock.now = at(3, 8)
    await refund_transaction(services.ledger, u1, pid, usage1, 20, "r1")
    clock.now = at(3, 9)
    await post_transaction(
        services.ledger,
        Posting(
            project_id=pid,
            wallet_id=w.id,
            kind=Kind.PURCHASE,
            currency="CREDITS",
            legs=(Leg(500, wallet_id=w.id), Leg(-500, system=SystemAccount.EXTERNAL_FUNDING)),
            idempotency_key="p1",
            actor=system,
        ),
    )
    clock.now = at(3, 10)
    await refund_transaction(services.ledger, u1, pid, big_credit.transaction.id, 100, "r2")
    # After the range.
    clock.now = at(4, 1)
    await debit_wallet(services.ledger, u1, w, 10, "late")

    data = (
        await gql.ok(
            QUERY,
            {"p": pid_public, "from": at(1, 0).isoformat(), "to": at(4, 0).isoformat(), "g": "DAY"},
            token=viewer.token,
        )
    )["projectAnalytics"]
    assert data["projectId"] == pid_public
    assert data["currency"] == "CREDITS"
    assert data["granularity"] == "DAY"
    assert data["creditsAdded"] == "1400"  # 1000 + 500 - 100
    assert data["creditsSpent"] == "180"  # 120 + 30 + 50 - 20
    assert [(p["creditsAdded"], p["creditsSpent"]) for p in data["series"]] == [
        ("1000", "120"),
        ("0", "80"),
        ("400", "-20"),
    ]
    assert [p["bucket"] for p in data["series"]] == [at(d, 0).isoformat() for d in (1, 2, 3)]
    # Closing balances of main + second: 50 -> 930 -> 850 -> 1270 (then -10 after the range).
    assert [p["balance"] for p in data["balanceHistory"]] == ["930", "850", "1270"]
    assert data["spendByMetric"] == [
        {"metricKey": "api_calls", "name": "api_calls", "units": "120", "charges": 1, "amount": "120"},
        {"metricKey": "storage_gb", "name": "storage_gb", "units": "15", "charges": 1, "amount": "30"},
    ]
    # Users: the owner (credits, transfer, refunds) and the viewer (the debit); one API key (usage).
    assert data["activeUsers"] == 2
    assert data["activeApiKeys"] == 1

    # The same range hourly and weekly agree on the totals; a USD view sees only the USD wallet.
    hourly = (
        await gql.ok(
            QUERY,
            {"p": pid_public, "from": at(1, 0).isoformat(), "to": at(4, 0).isoformat(), "g": "HOUR"},
            token=owner.token,
        )
    )["projectAnalytics"]
    assert len(hourly["series"]) == 72
    assert (hourly["creditsAdded"], hourly["creditsSpent"]) == ("1400", "180")
    assert hourly["balanceHistory"][9]["balance"] == "50"  # 09:00-10:00 on day 1 closes before the credit
    assert hourly["balanceHistory"][10]["balance"] == "1050"
    weekly = (
        await gql.ok(
            QUERY,
            {"p": pid_public, "from": at(1, 0).isoformat(), "to": at(4, 0).isoformat(), "g": "WEEK"},
            token=owner.token,
        )
    )["projectAnalytics"]
    assert [p["bucket"] for p in weekly["series"]] == [
        dt.datetime(2026, 2, 23, tzinfo=UTC).isoformat(),
        at(2, 0).isoformat(),
    ]
    assert weekly["balanceHistory"][-1]["balance"] == "1270"
    dollars = (
        await gql.ok(
            QUERY,
            {"p": pid_public, "from": at(1, 0).isoformat(), "to": at(4, 0).isoformat(), "c": "usd"},
            token=owner.token,
        )
    )["projectAnalytics"]
    assert (dollars["currency"], dollars["creditsAdded"], dollars["creditsSpent"]) == ("USD", "999", "0")
    assert [p["balance"] for p in dollars["balanceHistory"]] == ["999", "999", "999"]
    assert dollars["spendByMetric"] == []


async def test_project_analytics_authorization_and_input(gql: GQL) -> None:
    owner = await sign_up(gql)
    pid = (
        await gql.ok(
            "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }",
            {"i": {"name": "P", "externalKey": f"p-{uuid7()}"}},
            token=owner.token,
        )
    )["createProject"]["id"]
    outsider = await sign_up(gql)
    v = {"p": pid, "from": at(1, 0).isoformat(), "to": at(2, 0).isoformat()}
    assert (await gql.error(QUERY, v, token=outsider.token))["code"] == "NOT_FOUND"
    assert (await gql.error(QUERY, v))["code"] == "UNAUTHENTICATED"
    err = await gql.error(QUERY, {**v, "to": at(1, 0).isoformat()}, token=owner.token)
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "to")
    err = await gql.error(
        QUERY, {**v, "to": dt.datetime(2030, 1, 1, tzinfo=UTC).isoformat(), "g": "HOUR"}, token=owner.token
    )
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "granularity")
    err = await gql.error(QUERY, {**v, "c": "XX1"}, token=owner.token)
    assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "currency")
    empty = (await gql.ok(QUERY, v, token=owner.token))["projectAnalytics"]
    assert empty["creditsAdded"] == "0"
    assert empty["series"] == [{"bucket": at(1, 0).isoformat(), "creditsAdded": "0", "creditsSpent": "0"}]
    assert empty["balanceHistory"] == [{"bucket": at(1, 0).isoformat(), "balance": "0"}]
    assert encode("project", decode("project", pid)) == pid


def test_buckets() -> None:
    _, _, buckets = check_range(at(1, 5), at(3, 1), Granularity.DAY)
    assert buckets == [at(1, 0), at(2, 0), at(3, 0)]
    _, _, months = check_range(
        dt.datetime(2025, 11, 15, tzinfo=UTC), dt.datetime(2026, 2, 1, tzinfo=UTC), Granularity.MONTH
    )
    assert months == [dt.datetime(2025, m, 1, tzinfo=UTC) for m in (11, 12)] + [dt.datetime(2026, 1, 1, tzinfo=UTC)]
    assert bucket_start(dt.datetime(2026, 3, 1, 12), Granularity.WEEK) == dt.datetime(2026, 2, 23, tzinfo=UTC)
    with pytest.raises(BadInput):
        check_range(at(2, 0), at(1, 0), Granularity.DAY)
