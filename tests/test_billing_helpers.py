"""Helpers for the billing and scheduler tests (no tests here): an injected clock, projects,
wallets, rules, and reads as the table owner."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from ledgerx.db.engine import asyncpg_dsn
from ledgerx.db.migrate import upgrade
from ledgerx.domain.actor import Actor
from ledgerx.domain.billing import records, rules
from ledgerx.domain.billing.service import BillingPolicy, BillingService
from ledgerx.domain.billing.validation import RuleFields
from ledgerx.domain.ledger import WalletRef, posting
from ledgerx.domain.usage import ingest
from ledgerx.domain.usage.metrics import define_metric
from ledgerx.ids import uuid7
from ledgerx.services import Services

UTC = dt.UTC
ACTOR = Actor.system("billing-test")


def utc(*a: int) -> dt.datetime:
    return dt.datetime(*a, tzinfo=UTC)


class FakeClock:
    """An injected clock: tests move time, nothing sleeps for schedule time."""

    def __init__(self, at: dt.datetime) -> None:
        self.at = at

    def __call__(self) -> dt.datetime:
        return self.at

    def set(self, at: dt.datetime) -> None:
        self.at = at

    def advance(self, **delta: float) -> dt.datetime:
        self.at += dt.timedelta(**delta)
        return self.at


def today_midnight() -> dt.datetime:
    """Real today's UTC midnight: fake times near the real one keep usage inside its partitions."""
    return dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def billing(services: Services, clock: FakeClock, **policy: Any) -> BillingService:
    return BillingService(services.db, services.ledger, policy=BillingPolicy(**policy), clock=clock)


async def owner(services: Services) -> asyncpg.Connection:
    assert services.settings.database_url
    return await asyncpg.connect(asyncpg_dsn(services.settings.database_url))


async def owner_fetch(services: Services, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await owner(services)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def new_project(services: Services, *, test_mode: bool = False) -> uuid.UUID:
    pid = uuid7()
    conn = await owner(services)
    try:
        await conn.execute("INSERT INTO projects (id, name, test_mode) VALUES ($1, 'billing test', $2)", pid, test_mode)
    finally:
        await conn.close()
    return pid


async def new_wallet(services: Services, project_id: uuid.UUID, balance: int = 0, *, name: str = "w") -> WalletRef:
    from ledgerx.domain.ledger.wallets import create_wallet

    w = await create_wallet(services.ledger, ACTOR, project_id, name=name, currency=None)
    ref = WalletRef(w.id, w.project_id, w.currency)
    if balance:
        await credit(services, ref, balance)
    return ref


async def credit(services: Services, wallet: WalletRef, amount: int) -> None:
    await posting.credit_wallet(services.ledger, ACTOR, wallet, amount, f"topup-{secrets.token_hex(6)}")


async def balance(services: Services, wallet: WalletRef) -> int:
    rows = await owner_fetch(services, "SELECT balance FROM wallets WHERE id = $1", wallet.id)
    return int(rows[0]["balance"])


async def new_rule(svc: BillingService, wallet: WalletRef, **fields: Any) -> records.Rule:
    fields.setdefault("name", "rule")
    fields.setdefault("mode", "DAILY_FLAT")
    if fields["mode"] in records.AMOUNT_MODES:
        fields.setdefault("amount", 10)
    return await rules.create_rule(
        svc,
        ACTOR,
        project_id=wallet.project_id,
        wallet_id=wallet.id,
        currency=wallet.currency,
        fields=RuleFields(**fields),
    )


async def runs_of(services: Services, rule_id: uuid.UUID) -> list[asyncpg.Record]:
    return await owner_fetch(services, "SELECT * FROM billing_runs WHERE rule_id = $1 ORDER BY scheduled_at", rule_id)


async def billing_txns(services: Services, project_ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    return await owner_fetch(
        services,
        "SELECT * FROM ledger_transactions WHERE kind = 'BILLING' AND project_id = ANY($1::uuid[]) ORDER BY id",
        project_ids,
    )


async def metric(
    services: Services, project_id: uuid.UUID, key: str, price: str, aggregation: str = "SUM", **kw: Any
) -> Any:
    return await define_metric(
        services.db,
        ACTOR,
        project_id,
        key=key,
        name=key,
        aggregation=aggregation,
        unit_price=decimal.Decimal(price),
        **kw,
    )


async def usage(services: Services, project_id: uuid.UUID, key: str, units: str, at: dt.datetime, **props: Any) -> None:
    event: dict[str, Any] = {
        "metricKey": key,
        "units": units,
        "idempotencyKey": secrets.token_hex(8),
        "occurredAt": at.isoformat(),
    }
    if props:
        event["properties"] = props
    result = await ingest.record_batch(services.db, project_id, [event], ingest.IngestConfig(), now=at)
    assert result.accepted == 1, result


async def verify(services: Services, project_id: uuid.UUID) -> None:
    from ledgerx.domain.ledger.verification import verify_ledger

    report = await verify_ledger(services.ledger, project_id)
    assert report.ok, report.mismatches


# -- an isolated database per test (the scheduler claims across all projects) ------------------


@pytest.fixture(scope="module")
async def template_database(admin_database_url: str) -> AsyncIterator[str]:
    name = f"lxtpl_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(asyncpg_dsn(admin_database_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _with_db(admin_database_url, name)
    await asyncio.to_thread(upgrade, url)
    yield name
    admin = await asyncpg.connect(asyncpg_dsn(admin_database_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def isolated_database_url(admin_database_url: str, template_database: str) -> AsyncIterator[str]:
    name = f"lxiso_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(asyncpg_dsn(admin_database_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    finally:
        await admin.close()
    yield _with_db(admin_database_url, name)
    admin = await asyncpg.connect(asyncpg_dsn(admin_database_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _with_db(url: str, name: str) -> str:
    base = url.split("?", 1)
    path_start = base[0].rfind("/")
    return base[0][: path_start + 1] + name + ("?" + base[1] if len(base) > 1 else "")
