"""Tiered usage pricing (issue #17) as a user meets it over GraphQL: defineMetric with a pricing
model, per-event chargeUsage priced at the tiers the period's units reach (GRADUATED, VOLUME,
PACKAGE), exactness under concurrency and replays, previewUsageCharge as a true dry run, and
updateMetric (renames now, reprices from the next period, admins only).

Every test makes its own users, project, wallets and metrics: the database is shared with other
tests running at the same time. Per-event charges are priced per UTC calendar month; a test that
straddled midnight at the end of a month would start a new period half-way (not a product bug).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from decimal import Decimal
from typing import Any

from ledgerx.domain.usage.price_models import Pricing, parse
from ledgerx.services import Services
from tests.conftest import GQL, SignedIn, sign_up
from tests.ledger_helpers import check_invariants
from tests.tenancy_helpers import create_project, make_team
from tests.test_usage_helpers import RECORD, api_key, balance, pid, wallet

PRICING_FIELDS = "pricing { model tiers { upTo unitPrice flatPrice } packageSize }"
DEFINE = f"""
mutation($i: DefineMetricInput!) {{ defineMetric(input: $i) {{ key name unitPrice {PRICING_FIELDS} }} }}
"""
METRIC = f"""
query($p: ID!, $k: String!) {{ usageMetric(projectId: $p, key: $k) {{ key name unitPrice {PRICING_FIELDS} }} }}
"""
METRICS = "query($p: ID!) { usageMetrics(projectId: $p) { key name } }"
UPDATE = f"""
mutation($i: UpdateMetricInput!) {{ updateMetric(input: $i) {{ key name unitPrice {PRICING_FIELDS} }} }}
"""
CHARGE = """
mutation($i: ChargeUsageInput!) {
  chargeUsage(input: $i) { id amount type kind walletId idempotencyKey balanceAfter metadata }
}
"""
USAGE_CHARGE = """
query($p: ID!, $k: String!) {
  usageCharge(projectId: $p, idempotencyKey: $k) {
    units unitPrice price remainderBefore total amount remainderAfter transaction { id type amount }
  }
}
"""
PREVIEW = """
query($i: PreviewUsageChargeInput!) {
  previewUsageCharge(input: $i) { amount price unitPrice periodStart periodUnits remainderAfter }
}
"""
REMAINDER = "query($w: ID!, $m: String!) { usageRemainder(walletId: $w, metricKey: $m) }"
CREATE_TEST_PROJECT = "mutation($i: CreateProjectInput!) { createProject(input: $i) { id testMode } }"
ADVANCE = "mutation($i: AdvanceTestClockInput!) { advanceTestClock(input: $i) { now } }"

# First 100 free, then 0.5 up to 1000, then 0.25 with a flat 10 once usage enters the last tier.
GRADUATED: dict[str, Any] = {
    "model": "GRADUATED",
    "tiers": [
        {"upTo": "100", "unitPrice": "0"},
        {"upTo": "1000", "unitPrice": "0.5"},
        {"upTo": None, "unitPrice": "0.25", "flatPrice": "10"},
    ],
}
# Every unit at 1.00 up to 100 units, every unit at 0.50 from 101.
VOLUME: dict[str, Any] = {
    "model": "VOLUME",
    "tiers": [{"upTo": "100", "unitPrice": "1"}, {"upTo": None, "unitPrice": "0.5"}],
}
# Whole packages of 1000 units at 5 each.
PACKAGE: dict[str, Any] = {"model": "PACKAGE", "tiers": [{"unitPrice": "5"}], "packageSize": "1000"}


def model_of(raw: dict[str, Any]) -> Pricing:
    """The domain model of a GraphQL pricing input, to compute expected prices independently of
    the charging path."""
    return parse(raw)


def key(tag: str) -> str:
    return f"{tag}_{secrets.token_hex(4)}"


async def define(gql: GQL, who: SignedIn, project_id: str, metric_key: str, **price: Any) -> dict[str, Any]:
    i = {"projectId": project_id, "key": metric_key, "name": "Tokens", "aggregation": "SUM", **price}
    return dict((await gql.ok(DEFINE, {"i": i}, token=who.token))["defineMetric"])


async def charge(gql: GQL, who: SignedIn, wallet_id: str, metric_key: str, units: str, idem: str) -> Any:
    i = {"walletId": wallet_id, "metricKey": metric_key, "units": units, "idempotencyKey": idem}
    return (await gql.ok(CHARGE, {"i": i}, token=who.token))["chargeUsage"]


async def usage_charge(gql: GQL, who: SignedIn, project_id: str, idem: str) -> dict[str, Any]:
    data = await gql.ok(USAGE_CHARGE, {"p": project_id, "k": idem}, token=who.token)
    assert data["usageCharge"] is not None, idem
    return dict(data["usageCharge"])


async def preview(gql: GQL, who: SignedIn, wallet_id: str, metric_key: str, units: str) -> dict[str, Any]:
    i = {"walletId": wallet_id, "metricKey": metric_key, "units": units}
    return dict((await gql.ok(PREVIEW, {"i": i}, token=who.token))["previewUsageCharge"])


async def remainder(gql: GQL, who: SignedIn, wallet_id: str, metric_key: str) -> Decimal:
    data = await gql.ok(REMAINDER, {"w": wallet_id, "m": metric_key}, token=who.token)
    return Decimal(data["usageRemainder"])


async def owner_project(gql: GQL) -> tuple[SignedIn, str]:
    owner = await sign_up(gql)
    return owner, await create_project(gql, owner)


def tiers_of(metric: dict[str, Any]) -> list[tuple[Decimal | None, Decimal, Decimal]]:
    """A metric's tiers read back, as decimals (so 0.5 and 0.50 compare equal)."""
    return [
        (None if t["upTo"] is None else Decimal(t["upTo"]), Decimal(t["unitPrice"]), Decimal(t["flatPrice"]))
        for t in metric["pricing"]["tiers"]
    ]


# -- defineMetric ------------------------------------------------------------------------------


async def test_define_graduated_metric_reads_back_its_tiers(gql: GQL) -> None:
    owner, p = await owner_project(gql)
    k = key("tokens")
    defined = await define(gql, owner, p, k, pricing=GRADUATED)
    read = (await gql.ok(METRIC, {"p": p, "k": k}, token=owner.token))["usageMetric"]
    for m in (defined, read):
        assert m["pricing"]["model"] == "GRADUATED" and m["pricing"]["packageSize"] is None
        assert tiers_of(m) == [
            (Decimal(100), Decimal(0), Decimal(0)),  # flatPrice omitted: 0
            (Decimal(1000), Decimal("0.5"), Decimal(0)),
            (None, Decimal("0.25"), Decimal(10)),
        ]
        assert Decimal(m["unitPrice"]) == 0  # the first tier's, as documented

    # A plain unitPrice still works and reads back as PER_UNIT with one unbounded tier.
    plain = await define(gql, owner, p, key("plain"), unitPrice="0.002")
    assert plain["pricing"]["model"] == "PER_UNIT"
    assert tiers_of(plain) == [(None, Decimal("0.002"), Decimal(0))]

    pkg = await define(gql, owner, p, key("pkg"), pricing=PACKAGE)
    assert pkg["pricing"]["model"] == "PACKAGE" and Decimal(pkg["pricing"]["packageSize"]) == 1000


async def test_define_metric_refuses_bad_pricing_with_field_paths_and_writes_nothing(gql: GQL) -> None:
    owner, p = await owner_project(gql)
    t = GRADUATED["tiers"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"unitPrice": "1", "pricing": GRADUATED}, "pricing"),  # both
        ({}, "unitPrice"),  # neither
        # Tiers must go up strictly.
        ({"pricing": {"model": "GRADUATED", "tiers": [t[0], {**t[1], "upTo": "50"}, t[2]]}}, "pricing.tiers[1].upTo"),
        ({"pricing": {"model": "GRADUATED", "tiers": [t[0], {**t[1], "upTo": "100"}, t[2]]}}, "pricing.tiers[1].upTo"),
        # Only the last tier is unbounded, and it must be.
        ({"pricing": {"model": "GRADUATED", "tiers": [t[0], t[1]]}}, "pricing.tiers[1].upTo"),
        ({"pricing": {"model": "GRADUATED", "tiers": [t[2], t[2]]}}, "pricing.tiers[0].upTo"),
        ({"pricing": {"model": "GRADUATED", "tiers": [{**t[0], "upTo": "0"}, t[2]]}}, "pricing.tiers[0].upTo"),
        (
            {"pricing": {"model": "GRADUATED", "tiers": [t[0], t[1], {**t[2], "unitPrice": "-1"}]}},
            "pricing.tiers[2].unitPrice",
        ),
        (
            {"pricing": {"model": "GRADUATED", "tiers": [{**t[0], "flatPrice": "0.0000000000001"}, t[1], t[2]]}},
            "pricing.tiers[0].flatPrice",
        ),
        ({"pricing": {"model": "GRADUATED", "tiers": []}}, "pricing.tiers"),
        ({"pricing": {"model": "VOLUME", "tiers": VOLUME["tiers"], "packageSize": "10"}}, "pricing.packageSize"),
        ({"pricing": {"model": "PACKAGE", "tiers": PACKAGE["tiers"]}}, "pricing.packageSize"),
        ({"pricing": {**PACKAGE, "packageSize": "0"}}, "pricing.packageSize"),
        ({"pricing": {**PACKAGE, "tiers": VOLUME["tiers"]}}, "pricing.tiers"),
        ({"pricing": {"model": "PER_UNIT", "tiers": VOLUME["tiers"]}}, "pricing.tiers"),
    ]
    for n, (price, field) in enumerate(cases):
        k = f"bad_{n}"
        i = {"projectId": p, "key": k, "name": "Bad", "aggregation": "SUM", **price}
        err = await gql.error(DEFINE, {"i": i}, token=owner.token)
        assert (err["code"], err.get("field")) == ("BAD_USER_INPUT", field), (price, err)
        # Nothing was written: the key is still free.
        missing = await gql.error(METRIC, {"p": p, "k": k}, token=owner.token)
        assert missing["code"] == "NOT_FOUND", (price, missing)
    assert (await gql.ok(METRICS, {"p": p}, token=owner.token))["usageMetrics"] == []


# -- chargeUsage -------------------------------------------------------------------------------


async def test_graduated_charges_add_up_to_the_period_price(gql: GQL, services: Services) -> None:
    owner, p = await owner_project(gql)
    k = key("tokens")
    await define(gql, owner, p, k, pricing=GRADUATED)
    wid = await wallet(gql, owner, p, funds=1_000)
    model = model_of(GRADUATED)
    # By hand: 900 x 0.5 + 623 x 0.25 + 10 = 615.75 for 1623 units (the oracle agrees).
    assert model.price(Decimal(1623)) == Decimal("615.75")

    # Charge by charge (units, expected price = increment, expected whole credits posted).
    steps = [
        ("60", Decimal(0), 0),  # all in the free tier: nothing posted
        ("61", Decimal("10.5"), 10),  # 121: 21 x 0.5; 0.5 carried
        ("503", Decimal("251.5"), 252),  # 624: 524 x 0.5 = 262; 251.5 + 0.5 carried
        ("999", Decimal("353.75"), 353),  # 1623: enters the last tier (+10 flat); 0.75 carried
    ]
    total = Decimal(0)
    posted = 0
    for n, (units, price, amount) in enumerate(steps):
        before = total
        total += Decimal(units)
        assert model.increment(before, Decimal(units)) == price  # the hand figures are the model's
        txn = await charge(gql, owner, wid, k, units, f"g-{n}")
        assert (txn is None) == (amount == 0)
        if txn is not None:
            assert (txn["amount"], txn["type"], txn["kind"]) == (str(amount), "DEBIT", "USAGE")
        c = await usage_charge(gql, owner, p, f"g-{n}")
        assert (Decimal(c["price"]), int(c["amount"])) == (price, amount), c
        assert Decimal(c["total"]) == Decimal(c["price"]) + Decimal(c["remainderBefore"])
        posted += amount
    assert posted == 615 == int(model.price(total))
    assert await balance(gql, owner, wid) == 1_000 - 615
    assert await remainder(gql, owner, wid, k) == Decimal("0.75")
    assert Decimal((await usage_charge(gql, owner, p, "g-3"))["unitPrice"]) == Decimal("0.25")

    # recordUsage with a wallet continues the same period at the same tiers.
    rec = {"projectId": p, "metricKey": k, "units": "1", "idempotencyKey": "g-rec", "walletId": wid}
    out = (await gql.ok(RECORD, {"i": rec}, token=owner.token))["recordUsage"]["charge"]
    # 0.25 + 0.75 carried = 1 credit.
    assert (out["amount"], Decimal(out["remainderAfter"])) == ("1", Decimal(0))
    assert await balance(gql, owner, wid) == 1_000 - 616 == 1_000 - int(model.price(total + 1))
    await check_invariants(services.ledger, pid(p))


async def test_graduated_flat_price_starts_when_usage_enters_the_tier(gql: GQL) -> None:
    owner, p = await owner_project(gql)
    k = key("tokens")
    await define(gql, owner, p, k, pricing=GRADUATED)
    wid = await wallet(gql, owner, p, funds=1_000)
    # Exactly 1000 units fill the second tier: the last tier's flat 10 is not due yet.
    txn = await charge(gql, owner, wid, k, "1000", "f-1")
    assert txn is not None and txn["amount"] == "450"
    # The 1001st unit enters the last tier: 0.25 plus its flat 10, once.
    txn = await charge(gql, owner, wid, k, "1", "f-2")
    assert txn is not None and txn["amount"] == "10"
    assert Decimal((await usage_charge(gql, owner, p, "f-2"))["price"]) == Decimal("10.25")
    txn = await charge(gql, owner, wid, k, "3", "f-3")  # 0.75 + 0.25 carried; no second flat price
    assert txn is not None and txn["amount"] == "1"
    assert await balance(gql, owner, wid) == 1_000 - 461


async def test_concurrent_graduated_charges_debit_the_exact_period_price(gql: GQL, services: Services) -> None:
    owner, p = await owner_project(gql)
    k = key("calls")
    tiered = {
        "model": "GRADUATED",
        "tiers": [
            {"upTo": "100", "unitPrice": "0.3"},
            {"upTo": "300", "unitPrice": "0.17"},
            {"upTo": None, "unitPrice": "0.05", "flatPrice": "2.5"},
        ],
    }
    await define(gql, owner, p, k, pricing=tiered)
    wid = await wallet(gql, owner, p, funds=1_000)
    units = [Decimal(13 + i) + Decimal("0.5") for i in range(20)]  # 460 in all, across all three tiers
    total = sum(units, Decimal(0))
    expected = model_of(tiered).price(total)
    assert (total, expected) == (Decimal(460), Decimal("74.5"))  # 30 + 34 + 8 + 2.5

    await asyncio.gather(*(charge(gql, owner, wid, k, format(u, "f"), f"c-{i}") for i, u in enumerate(units)))

    charges = [await usage_charge(gql, owner, p, f"c-{i}") for i in range(20)]
    # Whatever order the lock gave them, the increments telescope to the period's price...
    assert sum((Decimal(c["price"]) for c in charges), Decimal(0)) == expected
    # ... and the whole credits posted are its floor, the rest carried.
    assert sum(int(c["amount"]) for c in charges) == 74
    assert await balance(gql, owner, wid) == 1_000 - 74
    assert await remainder(gql, owner, wid, k) == Decimal("0.5")
    assert Decimal((await preview(gql, owner, wid, k, "1"))["periodUnits"]) == total
    await check_invariants(services.ledger, pid(p))


async def test_replayed_charge_debits_nothing_more_and_other_units_conflict(gql: GQL) -> None:
    owner, p = await owner_project(gql)
    k = key("tokens")
    await define(gql, owner, p, k, pricing=GRADUATED)
    wid = await wallet(gql, owner, p, funds=1_000)

    first = await charge(gql, owner, wid, k, "150", "r-1")  # 100 free + 50 x 0.5
    assert first is not None and first["amount"] == "25"
    again = await charge(gql, owner, wid, k, "150.0", "r-1")
    assert again is not None and again["id"] == first["id"]
    assert await balance(gql, owner, wid) == 975
    i = {"walletId": wid, "metricKey": k, "units": "151", "idempotencyKey": "r-1"}
    err = await gql.error(CHARGE, {"i": i}, token=owner.token)
    assert err["code"] == "IDEMPOTENCY_CONFLICT"
    assert await balance(gql, owner, wid) == 975

    # A replay (or a refused conflict) does not count its units into the period again: the next
    # charge is priced from 150 units.
    assert Decimal((await preview(gql, owner, wid, k, "10"))["periodUnits"]) == 150
    nxt = await charge(gql, owner, wid, k, "10", "r-2")
    assert nxt is not None and nxt["amount"] == "5"
    assert await balance(gql, owner, wid) == 970


async def test_replayed_zero_charge_does_not_count_its_units_twice(gql: GQL) -> None:
    owner, p = await owner_project(gql)
    k = key("tokens")
    await define(gql, owner, p, k, pricing=GRADUATED)
    wid = await wallet(gql, owner, p, funds=100)
    assert await charge(gql, owner, wid, k, "90", "z-1") is None  # free tier: no transaction
    assert await charge(gql, owner, wid, k, "90", "z-1") is None  # replay: still none
    # 90 units in the period, not 180: ten more are still free.
    assert await charge(gql, owner, wid, k, "10", "z-2") is None
    txn = await charge(gql, owner, wid, k, "2", "z-3")
    assert txn is not None and txn["amount"] == "1"
    assert await balance(gql, owner, wid) == 99


async def test_volume_tier_crossing_credits_the_wallet_back(gql: GQL, services: Services) -> None:
    owner, p = await owner_project(gql)
    k = key("seats")
    await define(gql, owner, p, k, pricing=VOLUME)
    wid = await wallet(gql, owner, p, funds=100)
    model = model_of(VOLUME)
    assert (model.price(Decimal(100)), model.price(Decimal(101))) == (Decimal(100), Decimal("50.5"))

    debit = await charge(gql, owner, wid, k, "100", "v-1")
    assert debit is not None and (debit["amount"], debit["type"]) == ("100", "DEBIT")
    assert await balance(gql, owner, wid) == 0

    # 101 units now cost 50.50: the 101st unit gives back 49.50; floor(-49.5) = -50 is credited
    # and 0.5 carried (the period's posted total is 50 = floor(50.5)). The credit is a refund of
    # the debit it reverses (so it goes back to the grants that debit drew).
    credit = await charge(gql, owner, wid, k, "1", "v-2")
    assert credit is not None and credit["type"] == "CREDIT" and credit["amount"] == "50", credit
    assert credit["kind"] == "REFUND"
    c = await usage_charge(gql, owner, p, "v-2")
    assert (Decimal(c["price"]), int(c["amount"]), Decimal(c["remainderAfter"])) == (
        Decimal("-49.5"),
        -50,
        Decimal("0.5"),
    )
    assert Decimal(c["unitPrice"]) == Decimal("0.5")
    assert c["transaction"] is not None and c["transaction"]["id"] == credit["id"]
    assert await balance(gql, owner, wid) == 50
    assert await remainder(gql, owner, wid, k) == Decimal("0.5")

    # One more unit: 0.5 + 0.5 carried = 1 credit; the period has now posted floor(51) = 51.
    more = await charge(gql, owner, wid, k, "1", "v-3")
    assert more is not None and (more["amount"], more["type"]) == ("1", "DEBIT")
    assert await balance(gql, owner, wid) == 100 - int(model.price(Decimal(102)))
    await check_invariants(services.ledger, pid(p))


async def test_package_pricing_charges_whole_packages(gql: GQL) -> None:
    owner, p = await owner_project(gql)
    k = key("emails")
    await define(gql, owner, p, k, pricing=PACKAGE)
    wid = await wallet(gql, owner, p, funds=100)
    txn = await charge(gql, owner, wid, k, "1001", "p-1")  # two packages started
    assert txn is not None and txn["amount"] == "10"
    assert await charge(gql, owner, wid, k, "999", "p-2") is None  # still inside the second package
    txn = await charge(gql, owner, wid, k, "1", "p-3")  # the third package
    assert txn is not None and txn["amount"] == "5"
    assert await balance(gql, owner, wid) == 85


# -- previewUsageCharge ------------------------------------------------------------------------


async def test_preview_is_what_the_next_charge_posts_and_writes_nothing(gql: GQL) -> None:
    owner, p = await owner_project(gql)
    k = key("tokens")
    await define(gql, owner, p, k, pricing=GRADUATED)
    wid = await wallet(gql, owner, p, funds=1_000)

    # A wallet that never charged: a preview creates no carry and moves nothing.
    first = await preview(gql, owner, wid, k, "90")
    assert (first["amount"], Decimal(first["price"]), Decimal(first["periodUnits"])) == ("0", Decimal(0), Decimal(0))
    now = dt.datetime.now(dt.UTC)
    assert dt.datetime.fromisoformat(first["periodStart"]) == dt.datetime(now.year, now.month, 1, tzinfo=dt.UTC)

    # Each preview, then the same charge: the same amount, price and carry; mid-tier with a
    # remainder carried in and out, and across into the last tier.
    for n, units in enumerate(["90", "13", "3", "1", "900", "0.5"]):
        bal = await balance(gql, owner, wid)
        rem = await remainder(gql, owner, wid, k)
        seen = await preview(gql, owner, wid, k, units)
        assert await preview(gql, owner, wid, k, units) == seen  # a dry run: repeatable
        assert await balance(gql, owner, wid) == bal
        assert await remainder(gql, owner, wid, k) == rem
        await charge(gql, owner, wid, k, units, f"pv-{n}")
        c = await usage_charge(gql, owner, p, f"pv-{n}")
        assert seen["amount"] == c["amount"], (units, seen, c)
        assert Decimal(seen["price"]) == Decimal(c["price"]), (units, seen, c)
        assert Decimal(seen["remainderAfter"]) == Decimal(c["remainderAfter"]), (units, seen, c)
        assert Decimal(seen["unitPrice"]) == Decimal(c["unitPrice"]), (units, seen, c)
        assert await balance(gql, owner, wid) == bal - int(c["amount"])
    # 1007.5 units: 450 + 7.5 x 0.25 + 10 = 461.875; posted 461.
    assert await balance(gql, owner, wid) == 1_000 - 461
    assert await remainder(gql, owner, wid, k) == Decimal("0.875")


# -- updateMetric ------------------------------------------------------------------------------


async def test_update_metric_renames_now_but_keeps_the_running_period_price(gql: GQL) -> None:
    team = await make_team(gql)
    p = team.project_id
    k = key("tokens")
    await define(gql, team.admin, p, k, pricing=GRADUATED)
    wid = await wallet(gql, team.owner, p, funds=1_000)
    assert (await charge(gql, team.owner, wid, k, "200", "u-1"))["amount"] == "50"

    renamed = await gql.ok(UPDATE, {"i": {"projectId": p, "key": k, "name": "Model tokens"}}, token=team.admin.token)
    assert renamed["updateMetric"]["name"] == "Model tokens"
    assert (await gql.ok(METRIC, {"p": p, "k": k}, token=team.viewer.token))["usageMetric"]["name"] == "Model tokens"
    assert (await gql.ok(METRICS, {"p": p}, token=team.viewer.token))["usageMetrics"] == [
        {"key": k, "name": "Model tokens"}
    ]

    # Reprice to 10 per unit. The metric shows its latest pricing at once...
    up = await gql.ok(UPDATE, {"i": {"projectId": p, "key": k, "unitPrice": "10"}}, token=team.owner.token)
    assert up["updateMetric"]["pricing"]["model"] == "PER_UNIT" and Decimal(up["updateMetric"]["unitPrice"]) == 10
    read = (await gql.ok(METRIC, {"p": p, "k": k}, token=team.owner.token))["usageMetric"]
    assert tiers_of(read) == [(None, Decimal(10), Decimal(0))]
    # ... but the running period (this UTC month) was started under the GRADUATED tiers, and a
    # period is priced by the version in effect at its start: changing prices mid-period would
    # make a month's events no longer add up to one price, and would charge customers a price
    # they were not on when the period began. So 10 more units still cost 10 x 0.5.
    seen = await preview(gql, team.owner, wid, k, "10")
    assert (seen["amount"], Decimal(seen["unitPrice"])) == ("5", Decimal("0.5"))
    txn = await charge(gql, team.owner, wid, k, "10", "u-2")
    assert txn is not None and txn["amount"] == "5"
    assert Decimal((await usage_charge(gql, team.owner, p, "u-2"))["price"]) == 5
    assert await balance(gql, team.owner, wid) == 945


async def test_update_metric_new_price_applies_from_the_next_period(gql: GQL) -> None:
    owner = await sign_up(gql)
    created = await gql.ok(
        CREATE_TEST_PROJECT,
        {"i": {"name": "Sandbox", "externalKey": f"s-{secrets.token_hex(5)}", "testMode": True}},
        token=owner.token,
    )
    p = created["createProject"]["id"]
    await gql.ok(ADVANCE, {"i": {"projectId": p, "to": "2031-01-15T12:00:00+00:00"}}, token=owner.token)
    k = key("tokens")
    await define(gql, owner, p, k, pricing=GRADUATED)
    wid = await wallet(gql, owner, p, funds=1_000)
    assert (await charge(gql, owner, wid, k, "200", "n-1"))["amount"] == "50"
    await gql.ok(UPDATE, {"i": {"projectId": p, "key": k, "unitPrice": "2"}}, token=owner.token)
    # Still January 2031 on the project's clock: the old tiers.
    assert (await charge(gql, owner, wid, k, "10", "n-2"))["amount"] == "5"
    # February 2031: a new period, priced by the version in effect at its start (2 per unit), with
    # its units counted from zero.
    await gql.ok(ADVANCE, {"i": {"projectId": p, "to": "2031-02-01T00:00:01+00:00"}}, token=owner.token)
    seen = await preview(gql, owner, wid, k, "10")
    assert dt.datetime.fromisoformat(seen["periodStart"]) == dt.datetime(2031, 2, 1, tzinfo=dt.UTC)
    assert (seen["amount"], Decimal(seen["periodUnits"])) == ("20", Decimal(0))
    assert (await charge(gql, owner, wid, k, "10", "n-3"))["amount"] == "20"
    assert await balance(gql, owner, wid) == 1_000 - 50 - 5 - 20


async def test_update_metric_is_for_admins_and_known_keys(gql: GQL) -> None:
    team = await make_team(gql)
    p = team.project_id
    k = key("tokens")
    await define(gql, team.owner, p, k, pricing=GRADUATED)
    change = {"projectId": p, "key": k, "name": "Hacked", "unitPrice": "0"}
    for role in ("MEMBER", "VIEWER"):
        err = await gql.error(UPDATE, {"i": change}, token=team.by_role(role).token)
        assert err["code"] == "FORBIDDEN", (role, err)
    secret = await api_key(gql, team.owner, p, ["usage:write", "usage:read"])
    err = await gql.error(UPDATE, {"i": change}, headers={"X-Api-Key": secret})
    assert err["code"] == "FORBIDDEN", err
    # Nothing changed.
    read = (await gql.ok(METRIC, {"p": p, "k": k}, token=team.owner.token))["usageMetric"]
    assert read["name"] == "Tokens" and read["pricing"]["model"] == "GRADUATED"

    err = await gql.error(UPDATE, {"i": {"projectId": p, "key": "no_such_metric", "name": "x"}}, token=team.admin.token)
    assert (err["code"], err.get("field")) == ("NOT_FOUND", "key")
    err = await gql.error(
        UPDATE, {"i": {"projectId": p, "key": k, "unitPrice": "1", "pricing": VOLUME}}, token=team.admin.token
    )
    assert (err["code"], err.get("field")) == ("BAD_USER_INPUT", "pricing")
    bad = {"model": "VOLUME", "tiers": [{"upTo": "100", "unitPrice": "1"}, {"upTo": "100", "unitPrice": "0.5"}]}
    err = await gql.error(UPDATE, {"i": {"projectId": p, "key": k, "pricing": bad}}, token=team.admin.token)
    assert (err["code"], err.get("field")) == ("BAD_USER_INPUT", "pricing.tiers[1].upTo")
    read = (await gql.ok(METRIC, {"p": p, "k": k}, token=team.owner.token))["usageMetric"]
    assert read["pricing"]["model"] == "GRADUATED"


async def test_answers_never_show_a_negative_zero(gql: GQL) -> None:
    """A charge whose total is a whole number carries nothing: the answers say 0, not -0 (a
    negative zero reads as a credit owed back, and differs from what usageCharge later reads)."""
    owner, p = await owner_project(gql)
    k = key("tokens")
    await define(gql, owner, p, k, pricing=GRADUATED)
    wid = await wallet(gql, owner, p, funds=1_000)
    shown: dict[str, str] = {}  # every decimal answer that should be a plain zero
    await charge(gql, owner, wid, k, "101", "nz-1")  # 0.5 carried
    seen = await preview(gql, owner, wid, k, "1")  # 0.5 + 0.5 = 1 whole credit, nothing carried
    assert seen["amount"] == "1" and Decimal(seen["remainderAfter"]) == 0
    shown["preview.remainderAfter"] = seen["remainderAfter"]
    rec = {"projectId": p, "metricKey": k, "units": "1", "idempotencyKey": "nz-2", "walletId": wid}
    out = (await gql.ok(RECORD, {"i": rec}, token=owner.token))["recordUsage"]["charge"]
    assert out["amount"] == "1" and Decimal(out["remainderAfter"]) == 0
    shown["recordUsage.charge.remainderAfter"] = out["remainderAfter"]
    shown["usageCharge.remainderAfter"] = (await usage_charge(gql, owner, p, "nz-2"))["remainderAfter"]

    # A VOLUME credit of exactly 0.5 against a carried 0.5: a total of 0, not -0.
    v = key("seats")
    volume = {"model": "VOLUME", "tiers": [{"upTo": "1", "unitPrice": "1.5"}, {"upTo": None, "unitPrice": "0.5"}]}
    await define(gql, owner, p, v, pricing=volume)
    await charge(gql, owner, wid, v, "1", "nz-3")  # 1.5: one credit, 0.5 carried
    seen = await preview(gql, owner, wid, v, "1")  # 2 units cost 1.0: -0.5 + 0.5 carried = 0
    assert (seen["amount"], Decimal(seen["price"]), Decimal(seen["remainderAfter"])) == (
        "0",
        Decimal("-0.5"),
        Decimal(0),
    )
    shown["volume preview.remainderAfter"] = seen["remainderAfter"]
    rec = {"projectId": p, "metricKey": v, "units": "1", "idempotencyKey": "nz-4", "walletId": wid}
    out = (await gql.ok(RECORD, {"i": rec}, token=owner.token))["recordUsage"]["charge"]
    assert (out["amount"], Decimal(out["total"])) == ("0", Decimal(0))
    shown["volume recordUsage.charge.total"] = out["total"]
    shown["volume recordUsage.charge.remainderAfter"] = out["remainderAfter"]
    stored = await usage_charge(gql, owner, p, "nz-4")
    shown["volume usageCharge.total"] = stored["total"]
    shown["volume usageCharge.remainderAfter"] = stored["remainderAfter"]
    assert {f: s for f, s in shown.items() if s.startswith("-")} == {}, shown


GRANT = "mutation($i: GrantCreditsInput!) { grantCredits(input: $i) { id } }"
GRANTS = (
    "query($w: ID!) { wallet(id: $w) { balance grants(first: 50) { nodes { category remaining expiresAt status } } } }"
)


async def test_a_volume_give_back_returns_promotional_credit_as_promotional(gql: GQL) -> None:
    """The credit of a VOLUME crossing goes back to the grants the earlier debits drew: a
    promotional grant that paid for them is refilled, with its expiry, not replaced by paid credit
    that never expires."""
    owner, p = await owner_project(gql)
    k = key("seats")
    await define(gql, owner, p, k, pricing=VOLUME)
    wid = await wallet(gql, owner, p, funds=0)
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).replace(microsecond=0)
    grant = {"walletId": wid, "amount": 100, "idempotencyKey": "promo", "expiresAt": expires.isoformat()}
    await gql.ok(GRANT, {"i": grant}, token=owner.token)

    assert await charge(gql, owner, wid, k, "100", "p-1") is not None  # draws the promotional 100
    back = await charge(gql, owner, wid, k, "1", "p-2")  # 101 at 0.5: 50 back
    assert back is not None and (back["type"], back["amount"]) == ("CREDIT", "50")
    w = (await gql.ok(GRANTS, {"w": wid}, token=owner.token))["wallet"]
    assert w["balance"] == "50"
    live = [g for g in w["grants"]["nodes"] if g["remaining"] != "0"]
    assert [(g["category"], g["remaining"]) for g in live] == [("PROMOTIONAL", "50")]
    assert dt.datetime.fromisoformat(live[0]["expiresAt"].replace("Z", "+00:00")) == expires
    # And the books still add up.
    c = await usage_charge(gql, owner, p, "p-2")
    assert (int(c["amount"]), Decimal(c["remainderAfter"])) == (-50, Decimal("0.5"))
