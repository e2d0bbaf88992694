"""One scope registry, one authorization path: what each API-key scope gates, and GraphQL and
POST /v1/usage answering a refusal the same way.

The table test walks `domain/tenancy/scopes.py`: every operation a scope claims is refused (FORBIDDEN,
naming that scope) to a key holding every other scope, and is served to a key holding only the
scopes that claim it; so a scope gates exactly the operations it says it does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import secrets
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from ledgerx import ids
from ledgerx.domain.tenancy import scopes
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, LiveServer, SignedIn, sign_up
from tests.tenancy_helpers import add_member, make_platform_admin, owner_sql
from tests.test_live_support import WsClient, live_settings

CREATE_PROJECT = "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }"
CREATE_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }"
BATCH = "mutation($i: RecordUsageBatchInput!) { recordUsageBatch(input: $i) { accepted } }"
SUSPEND = "mutation($i: SuspendProjectInput!) { suspendProject(input: $i) { status } }"
HTTP_USAGE = "POST /v1/usage"
HTTP_TRANSACTIONS = "POST /v1/transactions"
HTTP_ENTITLEMENTS = "GET /v1/entitlements"
HTTP_ENTITLEMENT = "GET /v1/entitlements/{featureKey}"
HTTP_GETS = {HTTP_ENTITLEMENTS: "/v1/entitlements", HTTP_ENTITLEMENT: "/v1/entitlements/sso"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return live_settings(settings)


def fresh() -> str:
    return secrets.token_hex(8)


def later(days: int = 1) -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).isoformat()


def earlier(days: int = 1) -> str:
    return (dt.datetime.now(dt.UTC) - dt.timedelta(days=days)).isoformat()


@dataclasses.dataclass
class World:
    """A test-mode project with a metric, two funded wallets, a transaction, a billing rule and run."""

    owner: SignedIn
    project_id: str
    wallet_id: str
    other_wallet_id: str
    transaction_id: str
    rule_id: str
    run_id: str
    webhook_endpoint_id: str = ""
    webhook_delivery_id: str = ""


async def make_world(gql: GQL, services: Services) -> World:
    owner = await sign_up(gql)
    t = owner.token
    i: dict[str, Any] = {"name": "Scopes", "externalKey": f"s-{fresh()}", "testMode": True}
    pid = (await gql.ok(CREATE_PROJECT, {"i": i}, token=t))["createProject"]["id"]
    # The project's own gateway limit: a plan another test made default must not throttle this one.
    limit = json.dumps({"rateLimit": {"burst": 1_000_000, "perSecond": 1_000_000.0}})
    await owner_sql(
        services.settings,
        "UPDATE projects SET overrides = $2::jsonb WHERE id = $1",
        ids.decode("project", pid),
        limit,
    )
    metric = {"projectId": pid, "key": "api_calls", "name": "calls", "aggregation": "SUM", "unitPrice": "1"}
    await gql.ok("mutation($i: DefineMetricInput!) { defineMetric(input: $i) { key } }", {"i": metric}, token=t)
    wallets = []
    for name in ("main", "other"):
        w = await gql.ok(
            "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }",
            {"i": {"projectId": pid, "name": name}},
            token=t,
        )
        wallets.append(w["createWallet"]["id"])
    credit = await gql.ok(
        "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id } }",
        {"i": {"walletId": wallets[0], "amount": 100_000, "idempotencyKey": fresh()}},
        token=t,
    )
    rule = await gql.ok(
        "mutation($i: CreateBillingRuleInput!) { createBillingRule(input: $i) { id } }",
        {"i": {"walletId": wallets[0], "name": "daily", "mode": "DAILY_FLAT", "amount": 1}},
        token=t,
    )
    rule_id = rule["createBillingRule"]["id"]
    run = await gql.ok("mutation($id: ID!) { runBillingRule(id: $id) { id } }", {"id": rule_id}, token=t)
    hook = await gql.ok(
        "mutation($i: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $i) { endpoint { id } } }",
        {"i": {"projectId": pid, "url": "http://127.0.0.1:9/hook", "events": ["*"]}},
        token=t,
    )
    hook_id = hook["createWebhookEndpoint"]["endpoint"]["id"]
    test = await gql.ok("mutation($e: ID!) { sendTestWebhook(endpointId: $e) { id } }", {"e": hook_id}, token=t)
    return World(
        owner,
        pid,
        wallets[0],
        wallets[1],
        credit["creditWallet"]["id"],
        rule_id,
        run["runBillingRule"]["id"],
        hook_id,
        test["sendTestWebhook"]["id"],
    )


@dataclasses.dataclass(frozen=True)
class Op:
    """One public operation: a GraphQL document and its variables, or the HTTP usage route."""

    query: str = ""
    variables: Callable[[World], dict[str, Any]] = lambda w: {}
    subscription: bool = False


def _usage_input(w: World) -> dict[str, Any]:
    return {"projectId": w.project_id, "metricKey": "api_calls", "units": "1", "idempotencyKey": fresh()}


# Every operation the registry names, in an order that keeps each one servable (pause before resume).
OPS: dict[str, Op] = {
    "projectAnalytics": Op(
        "query($p: ID!, $f: DateTime!, $t: DateTime!) { projectAnalytics(projectId: $p, from: $f, to: $t)"
        " { __typename } }",
        lambda w: {"p": w.project_id, "f": earlier(), "t": later()},
    ),
    "liveMetrics": Op(
        "subscription($p: ID!) { liveMetrics(projectId: $p) { projectId } }", lambda w: {"p": w.project_id}, True
    ),
    "usageMetrics": Op("query($p: ID!) { usageMetrics(projectId: $p) { key } }", lambda w: {"p": w.project_id}),
    "usageMetric": Op(
        'query($p: ID!) { usageMetric(projectId: $p, key: "api_calls") { key } }', lambda w: {"p": w.project_id}
    ),
    "usageEvent": Op(
        'query($p: ID!) { usageEvent(projectId: $p, idempotencyKey: "none") { id } }', lambda w: {"p": w.project_id}
    ),
    "usageSummary": Op(
        "query($i: UsageSummaryInput!) { usageSummary(input: $i) { units } }",
        lambda w: {
            "i": {
                "projectId": w.project_id,
                "metricKey": "api_calls",
                "from": earlier(),
                "to": later(),
                "granularity": "DAY",
            }
        },
    ),
    "usageCharge": Op(
        'query($p: ID!) { usageCharge(projectId: $p, idempotencyKey: "none") { amount } }',
        lambda w: {"p": w.project_id},
    ),
    "usageRemainder": Op(
        'query($w: ID!) { usageRemainder(walletId: $w, metricKey: "api_calls") }', lambda w: {"w": w.wallet_id}
    ),
    "previewUsageCharge": Op(
        "query($i: PreviewUsageChargeInput!) { previewUsageCharge(input: $i) { amount } }",
        lambda w: {"i": {"walletId": w.wallet_id, "metricKey": "api_calls", "units": "1"}},
    ),
    "entitlement": Op(
        'query($p: ID!) { entitlement(projectId: $p, featureKey: "sso") { hasAccess } }',
        lambda w: {"p": w.project_id},
    ),
    "entitlements": Op("query($p: ID!) { entitlements(projectId: $p) { featureKey } }", lambda w: {"p": w.project_id}),
    "recordUsage": Op(
        "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { duplicate } }", lambda w: {"i": _usage_input(w)}
    ),
    "recordUsageBatch": Op(
        BATCH,
        lambda w: {
            "i": {
                "projectId": w.project_id,
                "events": [{"metricKey": "api_calls", "units": "1", "idempotencyKey": fresh()}],
            }
        },
    ),
    "chargeUsage": Op(
        "mutation($i: ChargeUsageInput!) { chargeUsage(input: $i) { id } }",
        lambda w: {"i": {"walletId": w.wallet_id, "metricKey": "api_calls", "units": "1", "idempotencyKey": fresh()}},
    ),
    HTTP_USAGE: Op(),
    HTTP_TRANSACTIONS: Op(),
    HTTP_ENTITLEMENTS: Op(),
    HTTP_ENTITLEMENT: Op(),
    "wallet": Op("query($w: ID!) { wallet(id: $w) { id } }", lambda w: {"w": w.wallet_id}),
    "wallets": Op("query($p: ID!) { wallets(projectId: $p) { edges { node { id } } } }", lambda w: {"p": w.project_id}),
    "transaction": Op("query($t: ID!) { transaction(id: $t) { id } }", lambda w: {"t": w.transaction_id}),
    "walletUpdated": Op(
        "subscription($w: ID!) { walletUpdated(walletId: $w) { wallet { id } } }", lambda w: {"w": w.wallet_id}, True
    ),
    "transactionPosted": Op(
        "subscription($p: ID!) { transactionPosted(projectId: $p) { id } }", lambda w: {"p": w.project_id}, True
    ),
    "createWallet": Op(
        "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }",
        lambda w: {"i": {"projectId": w.project_id, "name": "by key"}},
    ),
    "creditWallet": Op(
        "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id } }",
        lambda w: {"i": {"walletId": w.wallet_id, "amount": 5, "idempotencyKey": fresh()}},
    ),
    "debitWallet": Op(
        "mutation($i: DebitWalletInput!) { debitWallet(input: $i) { id } }",
        lambda w: {"i": {"walletId": w.wallet_id, "amount": 1, "idempotencyKey": fresh()}},
    ),
    "transferCredits": Op(
        "mutation($i: TransferCreditsInput!) { transferCredits(input: $i) { id } }",
        lambda w: {
            "i": {"fromWalletId": w.wallet_id, "toWalletId": w.other_wallet_id, "amount": 1, "idempotencyKey": fresh()}
        },
    ),
    "refundTransaction": Op(
        "mutation($i: RefundTransactionInput!) { refundTransaction(input: $i) { id } }",
        lambda w: {"i": {"transactionId": w.transaction_id, "amount": 1, "idempotencyKey": fresh()}},
    ),
    "postTransactions": Op(
        "mutation($i: PostTransactionsInput!) { postTransactions(input: $i) { results { error { code } } } }",
        lambda w: {
            "i": {"operations": [{"kind": "CREDIT", "walletId": w.wallet_id, "amount": 1, "idempotencyKey": fresh()}]}
        },
    ),
    "billingRule": Op("query($id: ID!) { billingRule(id: $id) { id } }", lambda w: {"id": w.rule_id}),
    "billingRules": Op(
        "query($p: ID!) { billingRules(projectId: $p) { edges { node { id } } } }", lambda w: {"p": w.project_id}
    ),
    "billingRun": Op("query($id: ID!) { billingRun(id: $id) { id } }", lambda w: {"id": w.run_id}),
    "previewBillingRule": Op(
        "query($id: ID!) { previewBillingRule(id: $id, count: 1) { at } }", lambda w: {"id": w.rule_id}
    ),
    "testClock": Op("query($p: ID!) { testClock(projectId: $p) { now } }", lambda w: {"p": w.project_id}),
    "Project.billingDetails": Op(
        "query($p: ID!) { project(id: $p) { billingDetails { email taxIds { type } } } }", lambda w: {"p": w.project_id}
    ),
    "Project.notificationSettings": Op(
        "query($p: ID!) { project(id: $p) { notificationSettings { disabled } } }", lambda w: {"p": w.project_id}
    ),
    "createBillingRule": Op(
        "mutation($i: CreateBillingRuleInput!) { createBillingRule(input: $i) { id } }",
        lambda w: {"i": {"walletId": w.wallet_id, "name": "by key", "mode": "DAILY_FLAT", "amount": 1}},
    ),
    "updateBillingRule": Op(
        "mutation($i: UpdateBillingRuleInput!) { updateBillingRule(input: $i) { id } }",
        lambda w: {"i": {"id": w.rule_id, "name": "renamed"}},
    ),
    "previewBillingRuleDraft": Op(
        "query($i: CreateBillingRuleInput!) { previewBillingRuleDraft(input: $i, count: 1) { at } }",
        lambda w: {"i": {"walletId": w.wallet_id, "name": "draft", "mode": "DAILY_FLAT", "amount": 1}},
    ),
    "previewBillingRuleChange": Op(
        "query($i: UpdateBillingRuleInput!) { previewBillingRuleChange(input: $i, count: 1) { at } }",
        lambda w: {"i": {"id": w.rule_id, "amount": 2}},
    ),
    "pauseBillingRule": Op("mutation($id: ID!) { pauseBillingRule(id: $id) { id } }", lambda w: {"id": w.rule_id}),
    "resumeBillingRule": Op("mutation($id: ID!) { resumeBillingRule(id: $id) { id } }", lambda w: {"id": w.rule_id}),
    "runBillingRule": Op("mutation($id: ID!) { runBillingRule(id: $id) { id } }", lambda w: {"id": w.rule_id}),
    "advanceTestClock": Op(
        "mutation($i: AdvanceTestClockInput!) { advanceTestClock(input: $i) { now } }",
        lambda w: {"i": {"projectId": w.project_id, "to": later(2)}},
    ),
    "webhookEndpoints": Op(
        "query($p: ID!) { webhookEndpoints(projectId: $p) { edges { node { id } } } }", lambda w: {"p": w.project_id}
    ),
    "webhookEndpoint": Op(
        "query($id: ID!) { webhookEndpoint(id: $id) { id } }", lambda w: {"id": w.webhook_endpoint_id}
    ),
    "createWebhookEndpoint": Op(
        "mutation($i: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $i) { secret } }",
        lambda w: {"i": {"projectId": w.project_id, "url": "http://127.0.0.1:9/by-key", "events": ["invoice.paid"]}},
    ),
    "updateWebhookEndpoint": Op(
        "mutation($i: UpdateWebhookEndpointInput!) { updateWebhookEndpoint(input: $i) { id } }",
        lambda w: {"i": {"id": w.webhook_endpoint_id, "description": "by key"}},
    ),
    "rotateWebhookEndpointSecret": Op(
        "mutation($id: ID!) { rotateWebhookEndpointSecret(id: $id) { secret } }",
        lambda w: {"id": w.webhook_endpoint_id},
    ),
    "sendTestWebhook": Op(
        "mutation($e: ID!) { sendTestWebhook(endpointId: $e) { id } }", lambda w: {"e": w.webhook_endpoint_id}
    ),
    "redeliverWebhook": Op(
        "mutation($d: ID!) { redeliverWebhook(deliveryId: $d) { id } }", lambda w: {"d": w.webhook_delivery_id}
    ),
    "deleteWebhookEndpoint": Op(
        "mutation($id: ID!) { deleteWebhookEndpoint(id: $id) }", lambda w: {"id": w.webhook_endpoint_id}
    ),
}


def required(operation: str) -> set[str]:
    """The scopes that claim `operation` (a key needs all of them)."""
    return {s.name for s in scopes.ALL if operation in s.allows}


class Caller:
    """Runs an operation with an API key over GraphQL (HTTP or websocket) or POST /v1/usage."""

    def __init__(self, gql: GQL, live: LiveServer, world: World) -> None:
        self.gql, self.live, self.world = gql, live, world
        self.keys: dict[frozenset[str], str] = {}

    async def key(self, names: set[str]) -> str:
        wanted = frozenset(names)
        if wanted not in self.keys:
            i = {"projectId": self.world.project_id, "name": "k", "scopes": sorted(wanted)}
            self.keys[wanted] = (await self.gql.ok(CREATE_KEY, {"i": i}, token=self.world.owner.token))["createApiKey"][
                "secret"
            ]
        return self.keys[wanted]

    async def run(self, operation: str, names: set[str]) -> dict[str, Any] | None:
        """The refusal's error (code, scope, message), or None when the operation was served."""
        secret = await self.key(names)
        op = OPS[operation]
        if operation == HTTP_USAGE:
            body = {"events": [{"metricKey": "api_calls", "units": 1, "idempotencyKey": fresh()}]}
            r = await self.gql.client.post("/v1/usage", json=body, headers={"Authorization": f"Bearer {secret}"})
            if r.status_code == 200 and r.json()["accepted"] == 1:
                return None
            return dict(r.json().get("error") or {"code": f"HTTP {r.status_code}", "body": r.text})
        if operation == HTTP_TRANSACTIONS:
            op_ = {"kind": "CREDIT", "walletId": self.world.wallet_id, "amount": 1, "idempotencyKey": fresh()}
            r = await self.gql.client.post(
                "/v1/transactions", json={"operations": [op_]}, headers={"Authorization": f"Bearer {secret}"}
            )
            if r.status_code == 200 and r.json()["results"][0]["error"] is None:
                return None
            return dict(r.json().get("error") or {"code": f"HTTP {r.status_code}", "body": r.text})
        if operation in HTTP_GETS:
            r = await self.gql.client.get(HTTP_GETS[operation], headers={"Authorization": f"Bearer {secret}"})
            if r.status_code == 200:
                return None
            return dict(r.json().get("error") or {"code": f"HTTP {r.status_code}", "body": r.text})
        if op.subscription:
            return await self._subscribe(op, secret)
        body = await self.gql(op.query, op.variables(self.world), headers={"Authorization": f"Bearer {secret}"})
        if not body.get("errors"):
            return None
        return {**body["errors"][0].get("extensions", {}), "message": body["errors"][0]["message"]}

    async def _subscribe(self, op: Op, secret: str) -> dict[str, Any] | None:
        ws = await WsClient.connect(self.live.ws_url, payload={"authorization": f"Bearer {secret}"})
        try:
            sub = await ws.subscribe(op.query, op.variables(self.world))
            # Streams that only speak when money moves get a credit until one speaks (or refuses).
            for _ in range(20):
                try:
                    msg = await ws.recv(sub, wait=0.5)
                except TimeoutError:
                    await self.gql.ok(
                        "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id } }",
                        {"i": {"walletId": self.world.wallet_id, "amount": 1, "idempotencyKey": fresh()}},
                        token=self.world.owner.token,
                    )
                    continue
                errors = msg["payload"] if msg["type"] == "error" else msg["payload"].get("errors")
                if not errors:
                    return None
                return {**errors[0].get("extensions", {}), "message": errors[0]["message"]}
            return {"code": "NO ANSWER"}
        finally:
            await ws.close()


def test_the_table_names_every_operation_the_registry_claims() -> None:
    claimed = {op for s in scopes.ALL for op in s.allows}
    assert set(OPS) == claimed
    assert len(scopes.BY_NAME) == len(scopes.ALL)  # no name twice
    assert tuple(sorted(s.name for s in scopes.ALL)) == scopes.NAMES
    assert all(s.description for s in scopes.ALL)


async def test_each_scope_gates_exactly_the_operations_it_claims(
    gql: GQL, services: Services, live_server: LiveServer
) -> None:
    world = await make_world(gql, services)
    caller = Caller(gql, live_server, world)
    every = {s.name for s in scopes.ALL}
    wrong: list[str] = []
    for operation in OPS:
        needs = required(operation)
        for scope in sorted(needs):
            refused = await caller.run(operation, every - {scope})
            if refused is None or (refused.get("code"), refused.get("scope")) != ("FORBIDDEN", scope):
                wrong.append(f"{operation} without {scope}: expected FORBIDDEN naming it, got {refused}")
        served = await caller.run(operation, needs)
        if served is not None:
            wrong.append(f"{operation} with only {sorted(needs)}: expected it served, got {served}")
    assert not wrong, "\n".join(wrong)


# --- GraphQL and POST /v1/usage: one rule, one answer --------------------------------------------------


async def post_usage(client: httpx.AsyncClient, credential: str, project_id: str | None) -> httpx.Response:
    body: dict[str, Any] = {"events": [{"metricKey": "api_calls", "units": 1, "idempotencyKey": fresh()}]}
    if project_id is not None:
        body["projectId"] = project_id
    return await client.post("/v1/usage", json=body, headers={"Authorization": f"Bearer {credential}"})


async def graphql_usage(gql: GQL, credential: str, project_id: str) -> dict[str, Any]:
    i = {"projectId": project_id, "events": [{"metricKey": "api_calls", "units": "1", "idempotencyKey": fresh()}]}
    return await gql.error(BATCH, {"i": i}, headers={"Authorization": f"Bearer {credential}"})


async def test_graphql_and_post_usage_refuse_alike(gql: GQL, client: httpx.AsyncClient, services: Services) -> None:
    """The same callers get the same code, message and scope from recordUsageBatch and /v1/usage."""
    world = await make_world(gql, services)
    pid = world.project_id
    reader = (
        await gql.ok(
            CREATE_KEY, {"i": {"projectId": pid, "name": "r", "scopes": ["usage:read"]}}, token=world.owner.token
        )
    )["createApiKey"]["secret"]
    viewer = await add_member(gql, world.owner, pid, "VIEWER")
    outsider = await sign_up(gql)
    cases: list[tuple[str, str, str | None, str]] = [
        ("a key without usage:write", reader, None, "FORBIDDEN"),
        ("a viewer", viewer.token, pid, "FORBIDDEN"),
        ("an outsider", outsider.token, pid, "NOT_FOUND"),
    ]
    for who, credential, named, code in cases:
        over_graphql = await graphql_usage(gql, credential, pid)
        r = await post_usage(client, credential, named)
        over_http = r.json()["error"]
        assert over_graphql["code"] == over_http["code"] == code, who
        assert over_graphql["message"] == over_http["message"], who
        assert over_graphql.get("scope") == over_http.get("scope"), who
        assert r.status_code == {"FORBIDDEN": 403, "NOT_FOUND": 404}[code], who
    assert (await graphql_usage(gql, reader, pid))["scope"] == "usage:write"

    # A suspended project: both refuse the member's write with PROJECT_SUSPENDED.
    member = await add_member(gql, world.owner, pid, "MEMBER")
    platform = await make_platform_admin(gql, services.settings)
    await gql.ok(SUSPEND, {"i": {"projectId": pid, "reason": "test"}}, token=platform.token)
    over_graphql = await graphql_usage(gql, member.token, pid)
    over_http = (await post_usage(client, member.token, pid)).json()["error"]
    assert over_graphql["code"] == over_http["code"] == "PROJECT_SUSPENDED"
    assert over_graphql["message"] == over_http["message"]
