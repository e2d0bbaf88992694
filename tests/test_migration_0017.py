"""Migration 0017 (pricing models and entitlements) on a database that already meters and charges
usage: every metric gets one price version from -infinity at its PER_UNIT price, so charging after
the upgrade prices exactly as before; the usage charges already made satisfy the new CHECKs and read
back with price = units x unit_price; plans get no entitlements; the quota crossings keep their rows,
as MONTH crossings; the books verify before and after; the downgrade removes what the upgrade made
and the upgrade after it gives the same result; and it all works for an owner that is not a
superuser (the tenant tables force row-level security on their owner)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import decimal
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ledgerx.db.engine import asyncpg_dsn
from ledgerx.db.migrate import downgrade, upgrade
from ledgerx.domain.ledger import Kind, Leg, Posting, SystemAccount, WalletRef, posting
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.domain.usage import carry, metrics, price_versions, pricing
from ledgerx.domain.usage.price_models import Pricing
from ledgerx.ids import uuid7
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.ledger_helpers import ACTOR, new_project, new_wallet

UTC = dt.UTC
D = decimal.Decimal
BEFORE = "0016_invoicing"
NOVEMBER = dt.datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
async def conn(scratch_database: str) -> AsyncIterator[asyncpg.Connection]:
    """The scratch database at 0016, as its owner."""
    await asyncio.to_thread(upgrade, scratch_database, BEFORE)
    c = await asyncpg.connect(asyncpg_dsn(scratch_database))
    yield c
    await c.close()


async def put(conn: asyncpg.Connection, table: str, **values: Any) -> None:
    cols = ", ".join(values)
    marks = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    await conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", *values.values())


async def insert(conn: asyncpg.Connection, table: str, **values: Any) -> uuid.UUID:
    """A row of a table keyed by `id` (a new one unless given)."""
    rid: uuid.UUID = values.setdefault("id", uuid7())
    await put(conn, table, **values)
    return rid


async def old_metric(conn: asyncpg.Connection, project_id: uuid.UUID, key: str, unit_price: str, agg: str) -> uuid.UUID:
    """A metric as 0016 stored it: a unit price, nothing else."""
    return await insert(
        conn, "usage_metrics", project_id=project_id, key=key, name=key, aggregation=agg, unit_price=D(unit_price)
    )


async def old_charge(
    conn: asyncpg.Connection,
    wallet: WalletRef,
    metric_id: uuid.UUID,
    units: str,
    unit_price: str,
    remainder: str,
    transaction_id: uuid.UUID | None,
) -> uuid.UUID:
    """A usage charge as 0016's code recorded it (total = units x unit_price + remainder_before)."""
    s = carry.split(D(units), D(unit_price), D(remainder))
    assert (s.amount > 0) == (transaction_id is not None)
    return await insert(
        conn,
        "usage_charges",
        project_id=wallet.project_id,
        idempotency_key=f"old-{uuid7()}",
        wallet_id=wallet.id,
        metric_id=metric_id,
        units=D(units),
        unit_price=D(unit_price),
        remainder_before=D(remainder),
        total=s.total,
        amount=s.amount,
        remainder_after=s.remainder,
        transaction_id=transaction_id,
        actor_type="system",
    )


async def usage_debit(svc: Services, wallet: WalletRef, amount: int) -> uuid.UUID:
    """The ledger side of an old charge: a USAGE debit of `amount` from the wallet."""
    posted = await posting.post_transaction(
        svc.ledger,
        Posting(
            project_id=wallet.project_id,
            wallet_id=wallet.id,
            kind=Kind.USAGE,
            currency=wallet.currency,
            legs=(Leg(-amount, wallet_id=wallet.id), Leg(amount, system=SystemAccount.USAGE_REVENUE)),
            idempotency_key=f"usage:old-{uuid7()}",
            actor=ACTOR,
            reference="tokens",
            action="usage.charge",
        ),
    )
    tid: uuid.UUID = posted.transaction.id
    return tid


async def books_clean(svc: Services, *projects: uuid.UUID) -> None:
    for pid in projects:
        report = await verify_ledger(svc.ledger, pid)
        assert report.ok, report.mismatches


async def versions(conn: asyncpg.Connection) -> dict[uuid.UUID, list[tuple[bool, Pricing]]]:
    """Each metric's price versions: (from -infinity?, pricing)."""
    rows = await conn.fetch(
        "SELECT metric_id, effective_from = '-infinity' AS forever, pricing FROM usage_metric_prices"
        " ORDER BY metric_id, effective_from"
    )
    out: dict[uuid.UUID, list[tuple[bool, Pricing]]] = {}
    for r in rows:
        out.setdefault(r["metric_id"], []).append((r["forever"], Pricing.from_json(json.loads(r["pricing"]))))
    return out


async def crossings(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    rows = await conn.fetch("SELECT project_id, metric_id, month, quota FROM usage_quota_crossings ORDER BY quota")
    return [tuple(r) for r in rows]


async def test_migration_0017_versions_metric_prices_and_keeps_charges_crossings_and_books(
    scratch_database: str, conn: asyncpg.Connection, settings: Settings
) -> None:
    scratch = dataclasses.replace(settings, database_url=scratch_database, db_pool_size=2)

    # -- the books at 0016: a wallet charged for usage (one posted charge, one carried fraction) ------
    old = Services.build(scratch)
    try:
        acme = await new_project(old)
        wallet = await new_wallet(old, acme)
        await posting.credit_wallet(old.ledger, ACTOR, wallet, 1_000, f"k-{uuid7()}")
        debit = await usage_debit(old, wallet, 3)
        await books_clean(old, acme)
    finally:
        await old.close()
    tokens = await old_metric(conn, acme, "tokens", "0.3", "SUM")
    calls = await old_metric(conn, acme, "calls", "2", "COUNT")
    posted = await old_charge(conn, wallet, tokens, "10.5", "0.3", "0", debit)  # 3.15: 3 posted, 0.15 carried
    fraction = await old_charge(conn, wallet, tokens, "0.5", "0.3", "0.15", None)  # 0.30: all carried
    await put(
        conn, "usage_charge_remainders", wallet_id=wallet.id, metric_id=tokens, project_id=acme, remainder=D("0.3")
    )
    plan = await insert(conn, "plans", name="Pro", tier="PRO", interval="MONTH", price_amount=2000, currency="USD")
    await put(conn, "usage_quota_crossings", project_id=acme, metric_id=tokens, month=NOVEMBER, quota=1000)
    await put(conn, "usage_quota_crossings", project_id=acme, metric_id=calls, month=NOVEMBER, quota=5)
    crossed = await crossings(conn)
    charges_before = [tuple(r) for r in await conn.fetch("SELECT * FROM usage_charges ORDER BY id")]

    await asyncio.to_thread(upgrade, scratch_database)

    # -- one version per metric, from -infinity, at its PER_UNIT price ----------------------------------
    got = await versions(conn)
    assert got == {
        tokens: [(True, Pricing.per_unit(D("0.3")))],
        calls: [(True, Pricing.per_unit(D("2")))],
    }
    assert await conn.fetchval("SELECT count(*) FROM usage_metrics WHERE pricing IS NOT NULL") == 0
    # -- the old charges: unchanged, within the new CHECKs, and read back with their price ------------
    assert [
        tuple(r)[: len(charges_before[0])] for r in await conn.fetch("SELECT * FROM usage_charges ORDER BY id")
    ] == (charges_before)
    assert await conn.fetchval("SELECT count(*) FROM usage_charges WHERE price IS NOT NULL") == 0
    checks = await conn.fetch(
        "SELECT conname, convalidated FROM pg_constraint WHERE conrelid = 'usage_charges'::regclass"
        " AND conname IN ('ck_usage_charges_total', 'ck_usage_charges_split', 'ck_usage_charges_posting')"
    )
    assert sorted((r["conname"], r["convalidated"]) for r in checks) == [
        ("ck_usage_charges_posting", True),
        ("ck_usage_charges_split", True),
        ("ck_usage_charges_total", True),
    ]
    rows = await conn.fetch(f"SELECT {pricing.CHARGE_COLS} FROM usage_charges ORDER BY id")
    read = {r["id"]: pricing.charge_from_row(r) for r in rows}
    assert read[posted].price == D("3.15") and read[fraction].price == D("0.15")
    assert all(c.price == c.units * c.unit_price for c in read.values())
    # -- plans, remainders and crossings -------------------------------------------------------------
    assert json.loads(await conn.fetchval("SELECT entitlements FROM plans WHERE id = $1", plan)) == []
    carry_row = await conn.fetchrow(
        "SELECT remainder, period_start, period_units FROM usage_charge_remainders WHERE wallet_id = $1", wallet.id
    )
    assert tuple(carry_row) == (D("0.3"), None, 0)
    assert await crossings(conn) == crossed
    assert {r["period"] for r in await conn.fetch("SELECT period FROM usage_quota_crossings")} == {"MONTH"}

    # -- charging after the upgrade prices as 0016 did: units x unit price, with the carry --------------
    svc = Services.build(scratch)
    try:
        await books_clean(svc, acme)
        now = dt.datetime.now(UTC)
        async with svc.db.raw(project_id=acme) as c:
            at_now = await price_versions.at(c, [(tokens, now), (calls, now)])
        assert at_now == [Pricing.per_unit(D("0.3")), Pricing.per_unit(D("2"))]
        tok = await metrics.get_metric(svc.db, acme, "tokens")
        first = await pricing.charge_usage(svc.db, svc.ledger, ACTOR, wallet, tok, "10.5", "after-1")
        expected = carry.split(D("10.5"), D("0.3"), D("0.3"))  # 3.15 + 0.3 = 3.45: 3 posted, 0.45 carried
        assert (first.charge.amount, first.charge.remainder_after) == (expected.amount, expected.remainder)
        assert first.charge.unit_price == D("0.3") and first.charge.price == D("3.15")
        second = await pricing.charge_usage(svc.db, svc.ledger, ACTOR, wallet, tok, "1.85", "after-2")
        expected = carry.split(D("1.85"), D("0.3"), expected.remainder)  # 0.555 + 0.45 = 1.005
        assert (
            (second.charge.amount, second.charge.remainder_after)
            == (1, D("0.005"))
            == (
                expected.amount,
                expected.remainder,
            )
        )
        await books_clean(svc, acme)
    finally:
        await svc.close()

    # -- the new CHECKs still refuse what they should ---------------------------------------------------
    with pytest.raises(asyncpg.CheckViolationError):  # total is not price + remainder_before
        await old_charge_with(conn, wallet, tokens, total=D("0.9"), price=D("0.3"))
    with pytest.raises(asyncpg.CheckViolationError):  # a posting with no amount
        await old_charge_with(conn, wallet, tokens, total=D("0.5"), price=D("0.5"), transaction_id=debit)

    # -- down to 0016: what the upgrade added is gone, the rest is as it was ------------------------------
    await asyncio.to_thread(downgrade, scratch_database, BEFORE)
    gone = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'"
        " AND (table_name IN ('usage_metric_prices', 'entitlement_overrides')"
        "      OR (table_name = 'usage_metrics' AND column_name IN ('pricing', 'updated_at'))"
        "      OR (table_name = 'usage_charges' AND column_name = 'price')"
        "      OR (table_name = 'usage_charge_remainders' AND column_name IN ('period_start', 'period_units'))"
        "      OR (table_name = 'plans' AND column_name = 'entitlements')"
        "      OR (table_name = 'usage_quota_crossings' AND column_name = 'period'))"
    )
    assert gone == []
    assert await crossings(conn) == crossed
    assert await conn.fetchval("SELECT count(*) FROM usage_charges") == 4
    old_checks = await conn.fetch(
        "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint"
        " WHERE conrelid = 'usage_charges'::regclass AND conname LIKE 'ck_usage_charges_%'"
    )
    defs = {r["conname"]: r["def"] for r in old_checks}
    assert "amount >= 0" in defs["ck_usage_charges_split"] and "amount > 0" in defs["ck_usage_charges_posting"]
    assert "coalesce" not in defs["ck_usage_charges_total"].lower()

    # -- and up again: the same versions, crossings and charges ---------------------------------------------
    await asyncio.to_thread(upgrade, scratch_database)
    assert await versions(conn) == got
    assert await crossings(conn) == crossed
    rows = await conn.fetch(f"SELECT {pricing.CHARGE_COLS} FROM usage_charges ORDER BY id")
    assert all(pricing.charge_from_row(r).price == r["units"] * r["unit_price"] for r in rows)
    assert json.loads(await conn.fetchval("SELECT entitlements FROM plans WHERE id = $1", plan)) == []
    svc = Services.build(scratch)
    try:
        await books_clean(svc, acme)
    finally:
        await svc.close()


async def old_charge_with(
    conn: asyncpg.Connection,
    wallet: WalletRef,
    metric_id: uuid.UUID,
    *,
    total: decimal.Decimal,
    price: decimal.Decimal,
    transaction_id: uuid.UUID | None = None,
) -> None:
    """A usage charge row of 1 unit at `price`, amount 0, with the given total (to probe the CHECKs)."""
    await insert(
        conn,
        "usage_charges",
        project_id=wallet.project_id,
        idempotency_key=f"probe-{uuid7()}",
        wallet_id=wallet.id,
        metric_id=metric_id,
        units=D(1),
        unit_price=price,
        remainder_before=D(0),
        total=total,
        amount=0,
        remainder_after=total,
        transaction_id=transaction_id,
        actor_type="system",
        price=price,
    )


async def test_the_migration_runs_for_an_owner_that_is_not_a_superuser(scratch_database: str) -> None:
    """Managed databases give the migrating owner no superuser. The tenant tables force row-level
    security on their owner too, so the version backfill must take the system path, or it reads no
    metric at all (and every existing metric would be left without a price)."""
    role = f"lx_owner_{uuid.uuid4().hex[:8]}"
    parts = urlsplit(scratch_database)
    db = parts.path.lstrip("/")
    owner_url = urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}"))
    admin = await asyncpg.connect(asyncpg_dsn(scratch_database))  # a superuser: no RLS binds it
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER')
        await admin.execute(f'ALTER DATABASE "{db}" OWNER TO "{role}"')
        await admin.execute(f'GRANT ALL ON SCHEMA public TO "{role}"')
        await asyncio.to_thread(upgrade, owner_url, BEFORE)
        pid = uuid7()
        await admin.execute("INSERT INTO projects (id, name) VALUES ($1, 'managed')", pid)
        metric = await old_metric(admin, pid, "tokens", "0.002", "SUM")
        await put(admin, "usage_quota_crossings", project_id=pid, metric_id=metric, month=NOVEMBER, quota=7)
        await asyncio.to_thread(upgrade, owner_url)
        assert await versions(admin) == {metric: [(True, Pricing.per_unit(D("0.002")))]}
        assert await admin.fetchval("SELECT period FROM usage_quota_crossings WHERE metric_id = $1", metric) == "MONTH"
        await asyncio.to_thread(downgrade, owner_url, BEFORE)  # on the system path too
        assert await admin.fetchval("SELECT count(*) FROM usage_quota_crossings WHERE metric_id = $1", metric) == 1
        await asyncio.to_thread(upgrade, owner_url)
        assert await versions(admin) == {metric: [(True, Pricing.per_unit(D("0.002")))]}
    finally:
        await admin.execute(f'ALTER DATABASE "{db}" OWNER TO CURRENT_USER')
        await admin.execute(f'REASSIGN OWNED BY "{role}" TO CURRENT_USER')
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.close()


async def test_the_downgrade_refuses_charges_priced_by_tiers(
    scratch_database: str, conn: asyncpg.Connection, settings: Settings
) -> None:
    """A tiered charge's price is not units x unit_price: the old columns would misstate it, so the
    downgrade stops (and leaves the database at 0017) instead of rewriting history."""
    await asyncio.to_thread(upgrade, scratch_database)
    svc = Services.build(dataclasses.replace(settings, database_url=scratch_database, db_pool_size=2))
    try:
        pid = await new_project(svc)
        wallet = await new_wallet(svc, pid)
        await posting.credit_wallet(svc.ledger, ACTOR, wallet, 1_000, f"k-{uuid7()}")
        graduated = {"model": "GRADUATED", "tiers": [{"upTo": "10", "unitPrice": "1"}, {"unitPrice": "0.5"}]}
        m = await metrics.define_metric(svc.db, ACTOR, pid, key="tokens", name="t", aggregation="SUM",
                                        unit_price=None, pricing=graduated)  # fmt: skip
        done = await pricing.charge_usage(svc.db, svc.ledger, ACTOR, wallet, m, "20", "tiered")
        assert done.charge.price == D(15) and done.charge.unit_price * done.charge.units != D(15)
    finally:
        await svc.close()
    with pytest.raises(Exception, match="priced by tiers"):
        await asyncio.to_thread(downgrade, scratch_database, BEFORE)
    assert await conn.fetchval("SELECT version_num FROM alembic_version") == "0017_pricing_entitlements"
    assert await conn.fetchval("SELECT count(*) FROM usage_metric_prices") == 1


async def test_the_downgrade_refuses_a_tiered_metric_without_charges(
    scratch_database: str, conn: asyncpg.Connection, settings: Settings
) -> None:
    """A metric priced by tiers has no old form: after the downgrade it would be charged units x its
    first tier's price (a free first tier: free for ever), so the downgrade stops."""
    await asyncio.to_thread(upgrade, scratch_database)
    svc = Services.build(dataclasses.replace(settings, database_url=scratch_database, db_pool_size=2))
    try:
        pid = await new_project(svc)
        graduated = {"model": "GRADUATED", "tiers": [{"upTo": "10000", "unitPrice": "0"}, {"unitPrice": "0.5"}]}
        await metrics.define_metric(svc.db, ACTOR, pid, key="tokens", name="t", aggregation="SUM",
                                    unit_price=None, pricing=graduated)  # fmt: skip
    finally:
        await svc.close()
    with pytest.raises(Exception, match="priced by tiers or repriced"):
        await asyncio.to_thread(downgrade, scratch_database, BEFORE)
    assert await conn.fetchval("SELECT version_num FROM alembic_version") == "0017_pricing_entitlements"
