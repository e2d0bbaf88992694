"""Charging usage: exact fractional pricing with the remainder carried per wallet and metric,
idempotency, the combined record-and-charge path (both or neither), concurrency and access."""

from __future__ import annotations

import asyncio
import decimal
from decimal import Decimal

import asyncpg
import pytest

from ledgerx.domain.errors import IdempotencyConflict, InsufficientFunds
from ledgerx.domain.usage import carry, ingest, pricing
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, sign_up
from tests.ledger_helpers import check_invariants
from tests.tenancy_helpers import add_member, create_project
from tests.test_usage_helpers import (
    ACTOR,
    CHARGE,
    RECORD,
    api_key,
    balance,
    define,
    fast_settings,
    new_metric,
    new_project,
    new_wallet,
    owner_fetch,
    wallet,
    wallet_balance,
)

CONFIG = ingest.IngestConfig()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return fast_settings(settings)


@pytest.mark.parametrize(
    ("units", "price", "remainder", "total", "amount", "after"),
    [
        ("1", "0.002", "0", "0.002", 0, "0.002"),
        ("1", "0.002", "0.998", "1.000", 1, "0"),
        ("3", "0.3", "0.2", "1.1", 1, "0.1"),
        ("0.5", "3", "0.75", "2.25", 2, "0.25"),
        (
            "123456789.123456789",
            "0.000000000001",
            "0.999999999999",
            "1.000123456788123456789",
            1,
            "0.000123456788123456789",
        ),
        ("0", "5", "0.5", "0.5", 0, "0.5"),
    ],
)
def test_split_is_exact(units: str, price: str, remainder: str, total: str, amount: int, after: str) -> None:
    s = carry.split(Decimal(units), Decimal(price), Decimal(remainder))
    assert (s.total, s.amount, s.remainder) == (Decimal(total), amount, Decimal(after))
    assert s.total == s.amount + s.remainder


async def test_ten_thousand_small_charges_debit_exactly_twenty_credits(services: Services) -> None:
    project_id = await new_project(services)
    metric = await new_metric(services, project_id, "api_calls", unit_price="0.002")
    w = await new_wallet(services, project_id, funds=1_000)

    for b in range(10):
        reqs = [pricing.ChargeRequest(w, metric, Decimal(1), f"c-{b}-{i}") for i in range(1000)]
        results = await pricing.charge_usage_batch(services.db, services.ledger, ACTOR, project_id, reqs)
        assert sum(r.charge.amount for r in results) == 2  # 1000 x 0.002 = 2 whole credits per batch
        assert not any(r.replayed for r in results)
    assert await wallet_balance(services, w.id) == 1_000 - 20
    assert await pricing.remainder(services.db, project_id, w.id, metric.id) == 0

    # Retrying a whole batch charges nothing again (same charges come back, replayed).
    reqs = [pricing.ChargeRequest(w, metric, Decimal(1), f"c-3-{i}") for i in range(1000)]
    again = await pricing.charge_usage_batch(services.db, services.ledger, ACTOR, project_id, reqs)
    assert all(r.replayed for r in again) and sum(r.charge.amount for r in again) == 2
    assert await wallet_balance(services, w.id) == 1_000 - 20

    rows = await owner_fetch(
        services,
        "SELECT count(*) AS n, sum(amount) AS debited, count(transaction_id) AS postings, sum(units * unit_price) AS owed"
        " FROM usage_charges WHERE wallet_id = $1",
        w.id,
    )
    assert (rows[0]["n"], rows[0]["debited"], rows[0]["postings"], rows[0]["owed"]) == (10_000, 20, 20, 20)
    txns = await owner_fetch(
        services,
        "SELECT count(*) AS n, sum(amount) AS s FROM ledger_transactions WHERE wallet_id = $1 AND kind = 'USAGE'",
        w.id,
    )
    assert (txns[0]["n"], txns[0]["s"]) == (20, 20)
    await check_invariants(services.ledger, project_id)
    # The charge history is append-only, like the ledger.
    with pytest.raises(asyncpg.PostgresError, match="append-only"):
        await owner_fetch(services, "DELETE FROM usage_charges WHERE wallet_id = $1", w.id)


async def test_single_charges_in_a_loop_carry_the_remainder(services: Services) -> None:
    project_id = await new_project(services)
    metric = await new_metric(services, project_id, "tokens", unit_price="0.0007")
    other = await new_metric(services, project_id, "images", unit_price="0.5")
    w = await new_wallet(services, project_id, funds=100)
    owed = Decimal(0)
    debited = 0
    for i in range(300):
        units = Decimal(3 + i % 7)
        owed += units * metric.unit_price
        r = await pricing.charge_usage(services.db, services.ledger, ACTOR, w, metric, units, f"t-{i}")
        debited += r.charge.amount
        assert (r.transaction is None) == (r.charge.amount == 0)
        assert debited == int(owed) and r.charge.remainder_after == owed - int(owed)
    # Remainders are per metric: another metric starts from zero.
    r = await pricing.charge_usage(services.db, services.ledger, ACTOR, w, other, Decimal(1), "img-1")
    assert (r.charge.remainder_before, r.charge.amount, r.charge.remainder_after) == (0, 0, Decimal("0.5"))
    assert await wallet_balance(services, w.id) == 100 - debited
    assert await pricing.remainder(services.db, project_id, w.id, metric.id) == owed - int(owed)


async def test_concurrent_charges_on_one_wallet_and_metric_are_exact(services: Services) -> None:
    project_id = await new_project(services)
    metric = await new_metric(services, project_id, "api_calls", unit_price="0.3")
    w = await new_wallet(services, project_id, funds=1_000)

    async def charge(i: int) -> pricing.ChargeResult:
        # Keys 0-39 distinct; every key is sent three times at once.
        return await pricing.charge_usage(services.db, services.ledger, ACTOR, w, metric, Decimal(1), f"k-{i % 40}")

    results = await asyncio.gather(*[charge(i) for i in range(120)])
    by_key: dict[str, set[object]] = {}
    for r in results:
        by_key.setdefault(r.charge.idempotency_key, set()).add(r.charge.id)
    assert len(by_key) == 40 and all(len(v) == 1 for v in by_key.values())
    assert sum(1 for r in results if not r.replayed) == 40
    assert await wallet_balance(services, w.id) == 1_000 - 12  # 40 x 0.3 = 12 exactly
    assert await pricing.remainder(services.db, project_id, w.id, metric.id) == 0
    await check_invariants(services.ledger, project_id)


async def test_charge_idempotency_conflicts(services: Services) -> None:
    project_id = await new_project(services)
    metric = await new_metric(services, project_id, "api_calls", unit_price="2")
    other = await new_metric(services, project_id, "other", unit_price="2")
    w = await new_wallet(services, project_id, funds=100)
    w2 = await new_wallet(services, project_id, funds=100)
    first = await pricing.charge_usage(services.db, services.ledger, ACTOR, w, metric, "1.5", "same")
    assert first.charge.amount == 3 and first.transaction is not None
    again = await pricing.charge_usage(services.db, services.ledger, ACTOR, w, metric, Decimal("1.50"), "same")
    assert again.replayed and again.transaction.id == first.transaction.id
    for wallet_ref, m, units in ((w, metric, "2"), (w2, metric, "1.5"), (w, other, "1.5")):
        with pytest.raises(IdempotencyConflict):
            await pricing.charge_usage(services.db, services.ledger, ACTOR, wallet_ref, m, units, "same")
    assert await wallet_balance(services, w.id) == 97
    assert await wallet_balance(services, w2.id) == 100


async def test_record_and_charge_is_both_or_neither(services: Services) -> None:
    project_id = await new_project(services)
    metric = await new_metric(services, project_id, "api_calls", unit_price="0.4")
    w = await new_wallet(services, project_id, funds=1)
    ev = {"metricKey": "api_calls", "units": 2, "idempotencyKey": "e1"}
    r = await ingest.record_usage(services.db, services.ledger, ACTOR, project_id, ev, CONFIG, wallet=w)
    assert not r.duplicate and r.charge is not None
    assert (r.charge.charge.amount, r.charge.charge.remainder_after, r.charge.charge.event_id) == (
        0,
        Decimal("0.8"),
        r.event.id,
    )
    # 2 x 0.4 + 0.8 = 1.6: one credit, the balance is exactly enough.
    r2 = await ingest.record_usage(
        services.db, services.ledger, ACTOR, project_id, {**ev, "idempotencyKey": "e2"}, CONFIG, wallet=w
    )
    assert r2.charge is not None and r2.charge.charge.amount == 1 and r2.charge.transaction is not None
    assert await wallet_balance(services, w.id) == 0
    # Next one would need a credit the wallet does not have: no event, no charge, no remainder change.
    with pytest.raises(InsufficientFunds):
        await ingest.record_usage(
            services.db,
            services.ledger,
            ACTOR,
            project_id,
            {**ev, "units": 5, "idempotencyKey": "e3"},
            CONFIG,
            wallet=w,
        )
    assert await ingest.get_event(services.db, project_id, "e3") is None
    assert await pricing.get_charge(services.db, project_id, "e3") is None
    assert await pricing.remainder(services.db, project_id, w.id, metric.id) == Decimal("0.6")
    # A retry of a recorded-and-charged event returns both, charging nothing more.
    dup = await ingest.record_usage(
        services.db, services.ledger, ACTOR, project_id, {**ev, "idempotencyKey": "e2"}, CONFIG, wallet=w
    )
    assert dup.duplicate and dup.event.id == r2.event.id and dup.charge is not None and dup.charge.replayed
    assert dup.charge.transaction.id == r2.charge.transaction.id
    # The same key without the wallet (or with another) is another request.
    with pytest.raises(IdempotencyConflict):
        await ingest.record_usage(
            services.db, services.ledger, ACTOR, project_id, {**ev, "idempotencyKey": "e2"}, CONFIG
        )
    rows = await owner_fetch(services, "SELECT count(*) AS n FROM usage_events WHERE project_id = $1", project_id)
    assert rows[0]["n"] == 2
    await check_invariants(services.ledger, project_id)


async def test_charge_usage_over_graphql(gql: GQL) -> None:
    owner = await sign_up(gql)
    p = await create_project(gql, owner)
    await define(gql, owner, p, "api_calls", unit_price="0.3")
    wid = await wallet(gql, owner, p, funds=10)

    def i(units: object, key: str) -> dict[str, object]:
        return {"i": {"walletId": wid, "metricKey": "api_calls", "units": units, "idempotencyKey": key}}

    # 0.3: less than a credit, nothing posted, the fraction carried.
    assert (await gql.ok(CHARGE, i(1, "c1"), token=owner.token))["chargeUsage"] is None
    txn = (await gql.ok(CHARGE, i("3", "c2"), token=owner.token))["chargeUsage"]  # 0.9 + 0.3 = 1.2
    assert (txn["amount"], txn["type"], txn["kind"], txn["walletId"]) == ("1", "DEBIT", "USAGE", wid)
    assert txn["id"].startswith("txn_") and txn["metadata"]["unitPrice"] == "0.3"
    again = (await gql.ok(CHARGE, i(3.0, "c2"), token=owner.token))["chargeUsage"]
    assert again["id"] == txn["id"]
    err = await gql.error(CHARGE, i(4, "c2"), token=owner.token)
    assert err["code"] == "IDEMPOTENCY_CONFLICT"
    assert await balance(gql, owner, wid) == 9
    rem = await gql.ok(
        'query($w: ID!) { usageRemainder(walletId: $w, metricKey: "api_calls") }', {"w": wid}, token=owner.token
    )
    assert Decimal(rem["usageRemainder"]) == Decimal("0.2")
    charge = await gql.ok(
        'query($p: ID!) { usageCharge(projectId: $p, idempotencyKey: "c2") { amount total remainderBefore'
        " remainderAfter transaction { id } } }",
        {"p": p},
        token=owner.token,
    )
    assert charge["usageCharge"] == {
        "amount": "1",
        "total": "1.2",
        "remainderBefore": "0.3",
        "remainderAfter": "0.2",
        "transaction": {"id": txn["id"]},
    }

    for bad, field in (({"units": "-1"}, "units"), ({"metricKey": "nope"}, "metricKey")):
        body = i(1, "bad")
        body["i"].update(bad)  # type: ignore[attr-defined]
        err = await gql.error(CHARGE, body, token=owner.token)
        assert err["field"] == field
    err = await gql.error(CHARGE, i(100, "too-much"), token=owner.token)
    assert err["code"] == "INSUFFICIENT_FUNDS"

    # recordUsage with walletId records and charges in one call.
    rec = {"projectId": p, "metricKey": "api_calls", "units": 4, "idempotencyKey": "r1", "walletId": wid}
    out = (await gql.ok(RECORD, {"i": rec}, token=owner.token))["recordUsage"]
    assert out["event"]["walletId"] == wid
    assert (out["charge"]["amount"], out["charge"]["total"], out["charge"]["remainderAfter"]) == ("1", "1.4", "0.4")
    assert out["charge"]["transaction"]["kind"] == "USAGE"
    assert await balance(gql, owner, wid) == 8


async def test_who_may_charge(gql: GQL) -> None:
    owner, stranger = await sign_up(gql), await sign_up(gql)
    p = await create_project(gql, owner)
    await define(gql, owner, p, "api_calls", unit_price="1")
    wid = await wallet(gql, owner, p, funds=10)
    member = await add_member(gql, owner, p, "MEMBER")
    viewer = await add_member(gql, owner, p, "VIEWER")
    i = {"walletId": wid, "metricKey": "api_calls", "units": 1, "idempotencyKey": "m"}
    assert (await gql.ok(CHARGE, {"i": i}, token=member.token))["chargeUsage"]["amount"] == "1"
    assert (await gql.error(CHARGE, {"i": {**i, "idempotencyKey": "v"}}, token=viewer.token))["code"] == "FORBIDDEN"
    err = await gql.error(CHARGE, {"i": {**i, "idempotencyKey": "s"}}, token=stranger.token)
    assert (err["code"], err["field"]) == ("NOT_FOUND", "walletId")
    writer = await api_key(gql, owner, p, ["usage:write"])
    reader = await api_key(gql, owner, p, ["usage:read", "wallets:write"])
    ok = await gql.ok(CHARGE, {"i": {**i, "idempotencyKey": "k"}}, headers={"X-Api-Key": writer})
    assert ok["chargeUsage"]["amount"] == "1"
    err = await gql.error(CHARGE, {"i": {**i, "idempotencyKey": "r"}}, headers={"X-Api-Key": reader})
    assert (err["code"], err.get("scope")) == ("FORBIDDEN", "usage:write")
    # A wallet of another project is not found, even with a metric of the same key there.
    other = await create_project(gql, stranger)
    await define(gql, stranger, other, "api_calls", unit_price="1")
    rec = {"projectId": other, "metricKey": "api_calls", "units": 1, "idempotencyKey": "x", "walletId": wid}
    err = await gql.error(RECORD, {"i": rec}, token=stranger.token)
    assert (err["code"], err["field"]) == ("NOT_FOUND", "walletId")


def test_decimal_context_is_never_rounding() -> None:
    with pytest.raises(decimal.Inexact):
        carry._EXACT.divide(Decimal(1), Decimal(3))
