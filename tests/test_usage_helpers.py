"""Helpers shared by the usage tests (no tests here): projects, metrics, wallets, API keys, SQL."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import asyncpg

from ledgerx import ids
from ledgerx.db.engine import asyncpg_dsn
from ledgerx.domain.actor import Actor
from ledgerx.domain.ledger import WalletRef
from ledgerx.domain.ledger.posting import credit_wallet
from ledgerx.domain.ledger.wallets import create_wallet
from ledgerx.domain.usage import metrics
from ledgerx.domain.usage.types import MetricRecord
from ledgerx.ids import uuid7
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn

ACTOR = Actor.system("usage-test")

DEFINE = """
mutation($i: DefineMetricInput!) {
  defineMetric(input: $i) { id projectId key name aggregation uniqueProperty unitPrice createdAt }
}
"""
RECORD = """
mutation($i: RecordUsageInput!) {
  recordUsage(input: $i) {
    duplicate
    event { id projectId metricKey units idempotencyKey occurredAt receivedAt walletId properties }
    charge { amount units unitPrice remainderBefore total remainderAfter replayed transaction { id amount kind } }
  }
}
"""
BATCH = """
mutation($i: RecordUsageBatchInput!) {
  recordUsageBatch(input: $i) { accepted duplicates rejected { index code message field reason } }
}
"""
CHARGE = """
mutation($i: ChargeUsageInput!) {
  chargeUsage(input: $i) { id amount type kind walletId idempotencyKey balanceAfter metadata }
}
"""
SUMMARY = """
query($i: UsageSummaryInput!) { usageSummary(input: $i) { bucket units events } }
"""
CREATE_WALLET = "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }"
CREDIT = "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id balanceAfter } }"
WALLET = "query($id: ID!) { wallet(id: $id) { id balance } }"
CREATE_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } secret } }"


def fast_settings(settings: Settings) -> Settings:
    """No gateway rate limit in the way of tests that send many requests."""
    return dataclasses.replace(settings, rate_limit_burst=1_000_000, rate_limit_per_second=1_000_000.0)


async def define(
    gql: GQL,
    who: SignedIn,
    project_id: str,
    key: str,
    *,
    aggregation: str = "SUM",
    unit_price: str = "0",
    unique_property: str | None = None,
) -> dict[str, Any]:
    i: dict[str, Any] = {
        "projectId": project_id,
        "key": key,
        "name": key.replace("_", " ").title(),
        "aggregation": aggregation,
        "unitPrice": unit_price,
    }
    if unique_property is not None:
        i["uniqueProperty"] = unique_property
    data = await gql.ok(DEFINE, {"i": i}, token=who.token)
    return dict(data["defineMetric"])


async def wallet(gql: GQL, who: SignedIn, project_id: str, funds: int = 0) -> str:
    data = await gql.ok(CREATE_WALLET, {"i": {"projectId": project_id, "name": "usage"}}, token=who.token)
    wid = str(data["createWallet"]["id"])
    if funds:
        i = {"walletId": wid, "amount": str(funds), "idempotencyKey": f"fund-{wid}"}
        await gql.ok(CREDIT, {"i": i}, token=who.token)
    return wid


async def balance(gql: GQL, who: SignedIn, wallet_id: str) -> int:
    data = await gql.ok(WALLET, {"id": wallet_id}, token=who.token)
    return int(data["wallet"]["balance"])


async def api_key(gql: GQL, who: SignedIn, project_id: str, scopes: list[str]) -> str:
    data = await gql.ok(
        CREATE_KEY, {"i": {"projectId": project_id, "name": "usage", "scopes": scopes}}, token=who.token
    )
    return str(data["createApiKey"]["secret"])


def pid(public_id: str) -> uuid.UUID:
    return ids.decode("project", public_id)


async def owner_fetch(services: Services, sql: str, *args: object) -> list[asyncpg.Record]:
    """SQL as the table owner (the migration role), outside the app role's grants."""
    assert services.settings.database_url
    conn = await asyncpg.connect(asyncpg_dsn(services.settings.database_url))
    try:
        await conn.execute("SELECT set_config('ledgerx.scope', 'system', false)")
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def new_project(services: Services) -> uuid.UUID:
    """A project row made directly, for domain-level tests."""
    project_id = uuid7()
    await owner_fetch(services, "INSERT INTO projects (id, name) VALUES ($1, 'usage test')", project_id)
    return project_id


async def new_metric(
    services: Services,
    project_id: uuid.UUID,
    key: str,
    aggregation: str = "SUM",
    unit_price: str = "0",
    unique_property: str | None = None,
) -> MetricRecord:
    return await metrics.define_metric(
        services.db,
        ACTOR,
        project_id,
        key=key,
        name=key,
        aggregation=aggregation,
        unit_price=unit_price,
        unique_property=unique_property,
    )


async def new_wallet(services: Services, project_id: uuid.UUID, funds: int = 0, credit_limit: int = 0) -> WalletRef:
    w = await create_wallet(services.ledger, ACTOR, project_id, name="usage", credit_limit=credit_limit)
    ref = WalletRef(w.id, w.project_id, w.currency)
    if funds:
        await credit_wallet(services.ledger, ACTOR, ref, funds, f"fund-{w.id}")
    return ref


async def wallet_balance(services: Services, wallet_id: uuid.UUID) -> int:
    rows = await owner_fetch(services, "SELECT balance FROM wallets WHERE id = $1", wallet_id)
    return int(rows[0]["balance"])
