"""No N+1: a list or connection field costs the same number of SQL statements for 5 rows as for 50,
nested object and list fields included (item 7 of issue #13).

Statements are counted at asyncpg (tests/statement_counter.py), so the ORM and the raw pool are
both seen. Every query runs once before it is counted: first-use work (type introspection, the
access cache) is not what these tests are about.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import secrets
from typing import Any

import httpx
import pytest

from ledgerx import ids
from ledgerx.settings import Settings
from tests.conftest import GQL, LiveServer, SignedIn, sign_up
from tests.statement_counter import counting
from tests.tenancy_helpers import create_project, make_platform_admin, owner_sql, sign_up_verified
from tests.test_ledger_subscriptions import _next, _open, _subscribe, _wait_topics


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # 50 rows with their nested lists are more than the default cost budget allows in one document;
    # the access cache outlives a slow run, so a request's access lookup is counted in neither run.
    return dataclasses.replace(settings, graphql_max_cost=10_000_000, graphql_max_aliases=200, access_cache_ttl=3600.0)


async def statements(gql: GQL, query: str, variables: dict[str, Any], user: SignedIn) -> tuple[int, dict[str, Any]]:
    """How many statements `query` sends (after one warm-up run), and its data."""
    await gql.ok(query, variables, token=user.token)
    with counting() as seen:
        data = await gql.ok(query, variables, token=user.token)
    if os.environ.get("LEDGERX_SHOW_STATEMENTS"):
        print("\n".join(["", f"-- {len(seen)} statements", *seen]))
    return len(seen), data


async def same_for_5_and_50(
    gql: GQL, name: str, query: str, variables: dict[str, Any], user: SignedIn, rows: Any
) -> dict[str, Any]:
    """Runs `query` with first 5 and first 50; `rows(data)` is the parent rows it returned."""
    five, data5 = await statements(gql, query, {**variables, "n": 5}, user)
    fifty, data50 = await statements(gql, query, {**variables, "n": 50}, user)
    assert len(rows(data5)) == 5 and len(rows(data50)) == 50, name
    print(f"\nSTATEMENTS {name}: 5 rows {five}, 50 rows {fifty}")
    assert five == fifty, f"{name}: {five} statements for 5 rows, {fifty} for 50 (a query per row)"
    return data50


async def grown(
    gql: GQL, name: str, query: str, variables: dict[str, Any], user: SignedIn, rows: Any, grow: Any
) -> None:
    """For lists without `first`: counts with at least 5 rows, `grow()` adds 45, counts again."""
    small, data_small = await statements(gql, query, variables, user)
    await grow()
    large, data_large = await statements(gql, query, variables, user)
    assert len(rows(data_small)) >= 5 and len(rows(data_large)) >= len(rows(data_small)) + 45, name
    print(f"\nSTATEMENTS {name}: {len(rows(data_small))} rows {small}, {len(rows(data_large))} rows {large}")
    assert small == large, f"{name}: {small} statements for the small list, {large} for the large one"


def nodes(*path: str) -> Any:
    def get(data: dict[str, Any]) -> list[Any]:
        value: Any = data
        for p in path:
            value = value[p]
        return list(value)

    return get


def key() -> str:
    return secrets.token_hex(8)


# -- ledger -----------------------------------------------------------------------------------------------

TXN_FIELDS = """
  id type kind amount balanceBefore balanceAfter refundOfId refundedAmount
  entries { id walletId systemAccount amount balanceBefore balanceAfter sequence hash }
  grantDraws { grantId amount }
"""


async def _wallet(gql: GQL, user: SignedIn, project_id: str, name: str) -> str:
    data = await gql.ok(
        "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }",
        {"i": {"projectId": project_id, "name": name}},
        token=user.token,
    )
    return str(data["createWallet"]["id"])


async def _credit_and_refund(gql: GQL, user: SignedIn, wallet_id: str) -> None:
    credited = await gql.ok(
        "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id } }",
        {"i": {"walletId": wallet_id, "amount": "10", "idempotencyKey": key()}},
        token=user.token,
    )
    await gql.ok(
        "mutation($i: RefundTransactionInput!) { refundTransaction(input: $i) { id } }",
        {"i": {"transactionId": credited["creditWallet"]["id"], "amount": "3", "idempotencyKey": key()}},
        token=user.token,
    )


async def test_ledger_lists_cost_the_same_for_5_and_50_rows(gql: GQL) -> None:
    owner = await sign_up(gql)
    project_id = await create_project(gql, owner)
    wallets = [await _wallet(gql, owner, project_id, f"w{i}") for i in range(50)]
    for w in wallets:
        await _credit_and_refund(gql, owner, w)
    for _ in range(24):  # wallets[0]: 50 transactions (25 credits, 25 refunds)
        await _credit_and_refund(gql, owner, wallets[0])

    await same_for_5_and_50(
        gql,
        "wallets { transactions { refundedAmount entries grantDraws } grants autoTopUp }",
        "query($p: ID!, $n: Int) { wallets(projectId: $p, first: $n) { nodes { id balance autoTopUp { enabled }"
        " grants(first: 2) { nodes { id remaining status } }"
        f" transactions(first: 2) {{ pageInfo {{ hasNextPage endCursor }} nodes {{ {TXN_FIELDS} }} }} }} }} }}",
        {"p": project_id},
        owner,
        nodes("wallets", "nodes"),
    )
    data = await same_for_5_and_50(
        gql,
        "wallet.transactions { refundedAmount entries }",
        "query($w: ID!, $n: Int) { wallet(id: $w) { id"
        f" transactions(first: $n) {{ edges {{ cursor node {{ {TXN_FIELDS} }} }} nodes {{ id }} }} }} }}",
        {"w": wallets[0]},
        owner,
        nodes("wallet", "transactions", "edges"),
    )
    # The loaders hand every row its own values.
    credits = [e["node"] for e in data["wallet"]["transactions"]["edges"] if e["node"]["type"] == "CREDIT"]
    assert credits and all(t["refundedAmount"] == "3" for t in credits)
    # A refund of a credit takes back from the grant that credit made (its own draw row).
    refunds = [e["node"] for e in data["wallet"]["transactions"]["edges"] if e["node"]["type"] == "DEBIT"]
    assert refunds and all([d["amount"] for d in t["grantDraws"]] == ["3"] for t in refunds)
    assert all(len(e["node"]["entries"]) == 2 for e in data["wallet"]["transactions"]["edges"])


# -- usage ------------------------------------------------------------------------------------------------


async def test_usage_metrics_cost_the_same_for_5_and_50_rows(gql: GQL) -> None:
    owner = await sign_up(gql)
    project_id = await create_project(gql, owner)

    async def define(count: int, start: int) -> None:
        for i in range(start, start + count):
            await gql.ok(
                "mutation($i: DefineMetricInput!) { defineMetric(input: $i) { id } }",
                {
                    "i": {
                        "projectId": project_id,
                        "key": f"m_{i}",
                        "name": f"M{i}",
                        "aggregation": "SUM",
                        "unitPrice": "1",
                    }
                },
                token=owner.token,
            )

    await define(5, 0)
    await grown(
        gql,
        "usageMetrics",
        "query($p: ID!) { usageMetrics(projectId: $p) { id key name aggregation unitPrice uniqueProperty createdAt } }",
        {"p": project_id},
        owner,
        nodes("usageMetrics"),
        lambda: define(45, 5),
    )


async def test_usage_summary_costs_the_same_for_5_and_50_buckets(gql: GQL) -> None:
    owner = await sign_up(gql)
    project_id = await create_project(gql, owner)
    await gql.ok(
        "mutation($i: DefineMetricInput!) { defineMetric(input: $i) { id } }",
        {"i": {"projectId": project_id, "key": "calls", "name": "Calls", "aggregation": "SUM", "unitPrice": "1"}},
        token=owner.token,
    )
    start = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0) - dt.timedelta(minutes=55)
    events = [
        {"metricKey": "calls", "units": "1", "idempotencyKey": key(), "occurredAt": at(start, i * 60 + 10)}
        for i in range(50)
    ]
    await gql.ok(
        "mutation($i: RecordUsageBatchInput!) { recordUsageBatch(input: $i) { accepted } }",
        {"i": {"projectId": project_id, "events": events}},
        token=owner.token,
    )
    query = "query($i: UsageSummaryInput!) { usageSummary(input: $i) { bucket units events } }"

    def summary(minutes: int) -> dict[str, Any]:
        span = {"from": at(start, 0), "to": at(start, minutes * 60), "granularity": "MINUTE"}
        return {"i": {"projectId": project_id, "metricKey": "calls", **span}}

    five, data5 = await statements(gql, query, summary(5), owner)
    fifty, data50 = await statements(gql, query, summary(50), owner)
    assert len(data5["usageSummary"]) == 5 and len(data50["usageSummary"]) == 50
    print(f"\nSTATEMENTS usageSummary: 5 rows {five}, 50 rows {fifty}")
    assert five == fifty, f"usageSummary: {five} statements for 5 buckets, {fifty} for 50"


def at(start: dt.datetime, seconds: int) -> str:
    return (start + dt.timedelta(seconds=seconds)).isoformat()


# -- billing ----------------------------------------------------------------------------------------------

RUN_FIELDS = f"id status amount transactionId transaction {{ {TXN_FIELDS} }}"


async def test_billing_lists_cost_the_same_for_5_and_50_rows(gql: GQL) -> None:
    owner = await sign_up(gql)
    project_id = await create_project(gql, owner)
    wallet = await _wallet(gql, owner, project_id, "billed")
    await gql.ok(
        "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id } }",
        {"i": {"walletId": wallet, "amount": "1000000", "idempotencyKey": key()}},
        token=owner.token,
    )
    rules = []
    for i in range(50):
        data = await gql.ok(
            "mutation($i: CreateBillingRuleInput!) { createBillingRule(input: $i) { id } }",
            {"i": {"walletId": wallet, "name": f"r{i}", "mode": "DAILY_FLAT", "amount": "1"}},
            token=owner.token,
        )
        rules.append(data["createBillingRule"]["id"])
    for r in rules:
        await gql.ok("mutation($r: ID!) { runBillingRule(id: $r) { id } }", {"r": r}, token=owner.token)
    for _ in range(49):
        await gql.ok("mutation($r: ID!) { runBillingRule(id: $r) { id } }", {"r": rules[0]}, token=owner.token)

    await same_for_5_and_50(
        gql,
        "billingRules { runs { transaction { refundedAmount entries } } }",
        "query($p: ID!, $n: Int) { billingRules(projectId: $p, first: $n) { nodes { id name"
        f" runs(first: 2) {{ pageInfo {{ hasNextPage }} nodes {{ {RUN_FIELDS} }} }} }} }} }}",
        {"p": project_id},
        owner,
        nodes("billingRules", "nodes"),
    )
    data = await same_for_5_and_50(
        gql,
        "billingRule.runs { transaction { refundedAmount entries } }",
        f"query($r: ID!, $n: Int) {{ billingRule(id: $r) {{ id runs(first: $n) {{ nodes {{ {RUN_FIELDS} }} }} }} }}",
        {"r": rules[0]},
        owner,
        nodes("billingRule", "runs", "nodes"),
    )
    runs = data["billingRule"]["runs"]["nodes"]
    assert all(r["transaction"] is not None and r["transaction"]["id"] == r["transactionId"] for r in runs)
    await same_for_5_and_50(
        gql,
        "previewBillingRule",
        "query($r: ID!, $n: Int!) { previewBillingRule(id: $r, count: $n) { at localAt amount } }",
        {"r": rules[1]},
        owner,
        nodes("previewBillingRule"),
    )


# -- tenancy ----------------------------------------------------------------------------------------------


async def test_tenancy_lists_cost_the_same_for_5_and_50_rows(gql: GQL) -> None:
    owner = await sign_up_verified(gql)
    projects = [await create_project(gql, owner, name=f"P{i}") for i in range(50)]
    project_id = projects[0]
    for i in range(50):
        await gql.ok(
            "mutation($i: CreateInviteInput!) { createInvite(input: $i) { id } }",
            {"i": {"projectId": project_id, "email": f"inv-{i}-{key()}@example.com", "role": "MEMBER"}},
            token=owner.token,
        )
        await gql.ok(
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }",
            {"i": {"projectId": project_id, "name": f"k{i}", "scopes": ["wallets:read"]}},
            token=owner.token,
        )

    await same_for_5_and_50(
        gql,
        "projects { members { user } billingDetails notificationSettings }",
        "query($n: Int) { projects(first: $n) { nodes { id name viewerRole"
        " members { id role joinedAt user { id email name emailVerified isPlatformAdmin createdAt } }"
        " billingDetails { email address { country } taxIds { type value } } notificationSettings { disabled } } } }",
        {},
        owner,
        nodes("projects", "nodes"),
    )
    await same_for_5_and_50(
        gql,
        "invites { invitedBy acceptedBy }",
        "query($p: ID!, $n: Int) { invites(projectId: $p, first: $n) { nodes { id email role status"
        " invitedBy { id email } acceptedBy { id email } } } }",
        {"p": project_id},
        owner,
        nodes("invites", "nodes"),
    )
    await same_for_5_and_50(
        gql,
        "apiKeys",
        "query($p: ID!, $n: Int) { apiKeys(projectId: $p, first: $n) { nodes { id projectId name prefix scopes"
        " createdAt lastUsedAt rotatedAt previousSecretExpiresAt revokedAt } } }",
        {"p": project_id},
        owner,
        nodes("apiKeys", "nodes"),
    )
    await same_for_5_and_50(
        gql,
        "auditLog",
        "query($p: ID!, $n: Int) { auditLog(projectId: $p, first: $n) { nodes { id action actorType actorId"
        " targetType targetId before after requestId ip at } } }",
        {"p": project_id},
        owner,
        nodes("auditLog", "nodes"),
    )


# -- payments ---------------------------------------------------------------------------------------------


async def test_payments_lists_cost_the_same_for_5_and_50_rows(gql: GQL, settings: Settings) -> None:
    admin = await make_platform_admin(gql, settings)
    owner = await sign_up(gql)
    project_id = await create_project(gql, owner)
    project = ids.decode("project", project_id)
    await owner_sql(
        settings,
        "WITH i AS (INSERT INTO invoices (id, project_id, stripe_invoice_id, kind, status, currency, total)"
        " SELECT gen_random_uuid(), $1, 'in_' || md5(random()::text), 'OTHER', 'PAID', 'USD', 100"
        " FROM generate_series(1, 50) RETURNING id)"
        " INSERT INTO invoice_lines (id, invoice_id, project_id, position, description, amount, currency)"
        " SELECT gen_random_uuid(), i.id, $1, n, 'line', 50, 'USD' FROM i, generate_series(1, 2) n",
        project,
    )
    await owner_sql(
        settings,
        "INSERT INTO payments (id, project_id, kind, status, amount, currency, credits)"
        " SELECT gen_random_uuid(), $1, 'CREDIT_PACK', 'SUCCEEDED', 100, 'USD', 10 FROM generate_series(1, 50)",
        project,
    )
    await owner_sql(
        settings,
        "WITH e AS (INSERT INTO webhook_events (id, stripe_event_id, type, created, payload, status, project_id)"
        " SELECT gen_random_uuid(), 'evt_' || md5(random()::text), 'qc.test', now(), '{}', 'PROCESSED', $1"
        " FROM generate_series(1, 50) RETURNING id)"
        " INSERT INTO webhook_attempts (id, event_id, attempt, trigger, ok, started_at)"
        " SELECT gen_random_uuid(), e.id, n, 'WORKER', true, now() FROM e, generate_series(1, 2) n",
        project,
    )

    async def catalog(count: int) -> None:
        await owner_sql(
            settings,
            "INSERT INTO plans (id, name, tier, interval, price_amount, currency, included_credits,"
            " monthly_quotas, features, trial_days)"
            " SELECT gen_random_uuid(), 'qc plan', 'PRO', 'MONTH', 100, 'USD', 0, '{}', '[]', 0"
            " FROM generate_series(1, $1::int)",
            count,
        )
        await owner_sql(
            settings,
            "INSERT INTO credit_packs (id, name, credits, price_amount, currency)"
            " SELECT gen_random_uuid(), 'qc pack', 10, 100, 'USD' FROM generate_series(1, $1::int)",
            count,
        )

    await catalog(5)
    await grown(
        gql,
        "plans",
        "{ plans { id name tier interval price { amount currency } includedCredits rateLimit { burst perSecond }"
        " monthlyQuotas { metric limit } features trialDays archived stripePriceId } }",
        {},
        owner,
        nodes("plans"),
        lambda: catalog(45),
    )
    await grown(
        gql,
        "creditPacks",
        "{ creditPacks { id name credits price { amount currency } archived stripePriceId } }",
        {},
        owner,
        lambda d: d["creditPacks"],
        lambda: catalog(45),
    )
    await same_for_5_and_50(
        gql,
        "invoices { lines }",
        "query($p: ID!, $n: Int) { invoices(projectId: $p, first: $n) { nodes { id status total { amount currency }"
        " lines { description amount { amount } quantity proration planId } } } }",
        {"p": project_id},
        owner,
        nodes("invoices", "nodes"),
    )
    await same_for_5_and_50(
        gql,
        "payments",
        "query($p: ID!, $n: Int) { payments(projectId: $p, first: $n) { nodes { id kind status amount { amount }"
        " credits creditPackId planId invoiceId walletId transactionId createdAt } } }",
        {"p": project_id},
        owner,
        nodes("payments", "nodes"),
    )
    data = await same_for_5_and_50(
        gql,
        "webhookEvents { attemptLog }",
        'query($n: Int) { webhookEvents(type: "qc.test", first: $n) { nodes { id type status'
        " attemptLog { attempt trigger ok result error startedAt finishedAt } } } }",
        {},
        admin,
        nodes("webhookEvents", "nodes"),
    )
    assert all(sorted(a["attempt"] for a in e["attemptLog"]) == [1, 2] for e in data["webhookEvents"]["nodes"])


# -- subscriptions: loaders are per event -----------------------------------------------------------------

WALLET_FEED = """
subscription($w: ID!) { walletUpdated(walletId: $w) {
  transaction { id type refundedAmount }
  wallet { transactions(first: 5) { nodes { id type refundedAmount } } } } }
"""


async def test_a_live_subscription_loads_fresh_values_for_every_event(live_server: LiveServer) -> None:
    """Each event of a subscription is executed with new loaders: the refund posted after the first
    event shows in the second event's `refundedAmount` of the refunded credit."""
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        gql = GQL(http)
        owner = await sign_up(gql)
        wallet = await _wallet(gql, owner, await create_project(gql, owner), "live")
        ws = await _open(live_server, owner.token)
        try:
            await _subscribe(ws, "w", WALLET_FEED, {"w": wallet})
            await _wait_topics(live_server, 1)
            credited = await gql.ok(
                "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id } }",
                {"i": {"walletId": wallet, "amount": "10", "idempotencyKey": key()}},
                token=owner.token,
            )
            credit_id = credited["creditWallet"]["id"]
            first = await _next(ws)
            await gql.ok(
                "mutation($i: RefundTransactionInput!) { refundTransaction(input: $i) { id } }",
                {"i": {"transactionId": credit_id, "amount": "3", "idempotencyKey": key()}},
                token=owner.token,
            )
            second = await _next(ws)
        finally:
            await ws.close()

    assert first["type"] == second["type"] == "next", (first, second)

    def refunded(msg: dict[str, Any]) -> str:
        listed = msg["payload"]["data"]["walletUpdated"]["wallet"]["transactions"]["nodes"]
        return str(next(t["refundedAmount"] for t in listed if t["id"] == credit_id))

    assert first["payload"]["data"]["walletUpdated"]["transaction"]["refundedAmount"] == "0"
    assert refunded(first) == "0"
    assert second["payload"]["data"]["walletUpdated"]["transaction"]["type"] == "DEBIT"
    assert refunded(second) == "3", "the second event served the refunded amount cached at the first"


async def test_each_operation_on_a_websocket_gets_its_own_loaders(live_server: LiveServer) -> None:
    """Two queries sent over one socket: the second sees the refund posted between them."""
    query = "query($t: ID!) { transaction(id: $t) { id refundedAmount } }"
    async with httpx.AsyncClient(base_url=live_server.url) as http:
        gql = GQL(http)
        owner = await sign_up(gql)
        wallet = await _wallet(gql, owner, await create_project(gql, owner), "ws")
        credited = await gql.ok(
            "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id } }",
            {"i": {"walletId": wallet, "amount": "10", "idempotencyKey": key()}},
            token=owner.token,
        )
        credit_id = credited["creditWallet"]["id"]
        ws = await _open(live_server, owner.token)
        try:
            await _subscribe(ws, "q1", query, {"t": credit_id})
            first = await _next(ws)
            assert (await _next(ws))["type"] == "complete"
            await gql.ok(
                "mutation($i: RefundTransactionInput!) { refundTransaction(input: $i) { id } }",
                {"i": {"transactionId": credit_id, "amount": "4", "idempotencyKey": key()}},
                token=owner.token,
            )
            await _subscribe(ws, "q2", query, {"t": credit_id})
            second = await _next(ws)
        finally:
            await ws.close()
    assert first["payload"]["data"]["transaction"]["refundedAmount"] == "0", first
    assert second["payload"]["data"]["transaction"]["refundedAmount"] == "4", "the socket's loaders outlived a query"


async def test_a_mutation_field_sees_the_writes_of_the_fields_before_it(gql: GQL) -> None:
    """Root fields of a mutation run one after another: the replayed credit's refundedAmount, read
    after the refund field, is not the value loaded by the first field."""
    owner = await sign_up(gql)
    wallet = await _wallet(gql, owner, await create_project(gql, owner), "serial")
    credit = {"walletId": wallet, "amount": "10", "idempotencyKey": key()}
    first = await gql.ok(
        "mutation($c: CreditWalletInput!) { creditWallet(input: $c) { id refundedAmount } }",
        {"c": credit},
        token=owner.token,
    )
    credit_id = first["creditWallet"]["id"]
    data = await gql.ok(
        "mutation($c: CreditWalletInput!, $r: RefundTransactionInput!) {"
        " before: creditWallet(input: $c) { id refundedAmount }"
        " refund: refundTransaction(input: $r) { id }"
        " after: creditWallet(input: $c) { id refundedAmount } }",
        {"c": credit, "r": {"transactionId": credit_id, "amount": "3", "idempotencyKey": key()}},
        token=owner.token,
    )
    assert data["before"]["id"] == data["after"]["id"] == credit_id
    assert (data["before"]["refundedAmount"], data["after"]["refundedAmount"]) == ("0", "3")
