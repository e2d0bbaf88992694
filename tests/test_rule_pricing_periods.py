"""Billing rules on a tiered metric (issue #17): a USAGE_BASED rule charges its period's total at the
tiers, with the carried remainder; a pricing change applies from the next period of each rule, the
period's start read in the rule's own time zone; and the preview's first item is what the run charges.

Driven through the API on a test-mode project (its clock moves with advanceTestClock). Usage is
recorded through the ingestion domain with an explicit `now`: recordUsage's occurredAt window is
relative to the real clock, not the project's test clock, so far-future periods cannot be fed
through the API.
"""

from __future__ import annotations

import decimal
import itertools
from typing import Any

from ledgerx.domain.usage import carry
from ledgerx.domain.usage.price_models import Pricing, parse
from ledgerx.ids import decode
from ledgerx.services import Services
from tests.conftest import GQL, SignedIn
from tests.test_billing import (
    CREATE_WALLET,
    PREVIEW,
    VERIFY,
    advance,
    create_rule,
    setup,
    top_up,
    ts,
    wallet_balance,
)
from tests.test_billing_helpers import owner_fetch, usage, utc

D = decimal.Decimal
DEFINE = "mutation($i: DefineMetricInput!) { defineMetric(input: $i) { key unitPrice } }"
UPDATE = "mutation($i: UpdateMetricInput!) { updateMetric(input: $i) { key unitPrice } }"
RUNS = """query($id: ID!) { billingRule(id: $id) { runs(first: 100) { edges { node {
  scheduledAt periodStart periodEnd status amount units unitPrice remainderBefore remainderAfter } } } } }"""
MONTHLY = "0 0 1 * *"  # midnight on the 1st, in the rule's time zone

# Old: 100 units at 0.5, the next 900 at 0.25 (+2 on entering the tier), the rest at 0.1.
OLD: dict[str, Any] = {
    "model": "GRADUATED",
    "tiers": [
        {"upTo": "100", "unitPrice": "0.5"},
        {"upTo": "1000", "unitPrice": "0.25", "flatPrice": "2"},
        {"upTo": None, "unitPrice": "0.1"},
    ],
}
# New: 50 units at 1, the rest at 0.3 (+5 on entering the tier).
NEW: dict[str, Any] = {
    "model": "GRADUATED",
    "tiers": [{"upTo": "50", "unitPrice": "1"}, {"upTo": None, "unitPrice": "0.3", "flatPrice": "5"}],
}


def charge(pricing: Pricing, units: decimal.Decimal, remainder: decimal.Decimal) -> carry.Split:
    """What a run must charge: floor(price(total) + carried remainder), the fraction carried on."""
    return carry.split_price(pricing.price(units), remainder)


async def usage_rule(gql: GQL, who: SignedIn, wallet_id: str, timezone: str) -> dict[str, Any]:
    return await create_rule(
        gql, who, wallet_id, name=f"tokens {timezone}", mode="USAGE_BASED", metricKey="tokens", cron=MONTHLY,
        timezone=timezone,
    )  # fmt: skip


async def new_wallet(gql: GQL, who: SignedIn, project_id: str, funds: int) -> str:
    w = await gql.ok(CREATE_WALLET, {"i": {"projectId": project_id, "name": "second"}}, token=who.token)
    wid = str(w["createWallet"]["id"])
    await top_up(gql, who, wid, funds)
    return wid


async def all_runs(gql: GQL, who: SignedIn, rule_id: str) -> list[dict[str, Any]]:
    """The rule's runs, oldest first (with their pricing fields)."""
    edges = (await gql.ok(RUNS, {"id": rule_id}, token=who.token))["billingRule"]["runs"]["edges"]
    return sorted((dict(e["node"]) for e in edges), key=lambda r: ts(r["scheduledAt"]))


async def first_item(gql: GQL, who: SignedIn, rule_id: str) -> dict[str, Any]:
    items = (await gql.ok(PREVIEW, {"id": rule_id, "n": 2}, token=who.token))["previewBillingRule"]
    return dict(items[0])


async def carried(services: Services, rule_id: str) -> list[tuple[decimal.Decimal, decimal.Decimal]]:
    rows = await owner_fetch(
        services,
        "SELECT remainder_before, remainder_after FROM billing_runs WHERE rule_id = $1 ORDER BY scheduled_at",
        decode("rule", rule_id),
    )
    return [(r["remainder_before"], r["remainder_after"]) for r in rows]


async def test_a_pricing_change_applies_from_each_rules_next_period_in_its_time_zone(
    gql: GQL, services: Services
) -> None:
    owner, pid, berlin_wallet = await setup(gql, test_mode=True, funds=100_000)
    # One wallet per rule: each rule's carry (per wallet and metric) is its own chain.
    utc_wallet = await new_wallet(gql, owner, pid, 100_000)
    project = decode("project", pid)
    await advance(gql, owner, pid, utc(2030, 11, 10, 12))
    await gql.ok(
        DEFINE,
        {"i": {"projectId": pid, "key": "tokens", "name": "Tokens", "aggregation": "SUM", "pricing": OLD}},
        token=owner.token,
    )
    berlin = await usage_rule(gql, owner, berlin_wallet, "Europe/Berlin")
    in_utc = await usage_rule(gql, owner, utc_wallet, "UTC")
    assert ts(berlin["nextRunAt"]) == utc(2030, 11, 30, 23)  # Dec 1 00:00 in Berlin
    assert ts(in_utc["nextRunAt"]) == utc(2030, 12, 1)

    # Usage, each event placed against both calendars (Berlin is UTC+1 in winter).
    events = [
        ("80.5", utc(2030, 11, 12, 10)),
        ("120.25", utc(2030, 11, 20, 15, 7, 13)),
        ("33.3", utc(2030, 11, 30, 23, 10)),  # Berlin: December; UTC: November
        ("40", utc(2030, 12, 10, 8)),
        ("17.125", utc(2030, 12, 31, 22, 30)),  # Berlin: Dec 31 23:30
        ("9", utc(2030, 12, 31, 23, 30)),  # Berlin: January; UTC: December
        ("12.55", utc(2031, 1, 5, 12)),
        ("3", utc(2031, 1, 31, 23, 30)),  # Berlin: February; UTC: January
    ]
    for units, at in events:
        await usage(services, project, "tokens", units, at)
    old, new = parse(OLD), parse(NEW)

    # -- November: both rules' periods started before any change: the old tiers. ------------------
    await advance(gql, owner, pid, utc(2030, 11, 30, 22, 59))
    preview_nov = await first_item(gql, owner, berlin["id"])
    assert D(preview_nov["units"]) == D("200.75")
    # 100 x 0.5 + 100.75 x 0.25 + 2 = 77.1875: 77 charged, 0.1875 carried.
    assert preview_nov["amount"] == "77"
    await advance(gql, owner, pid, utc(2030, 11, 30, 23, 30))  # Dec 1 00:30 in Berlin, still Nov 30 in UTC
    [b_nov] = await all_runs(gql, owner, berlin["id"])
    assert (ts(b_nov["periodStart"]), ts(b_nov["periodEnd"])) == (utc(2030, 11, 10, 12), utc(2030, 11, 30, 23))
    assert b_nov["status"] == "SUCCEEDED" and D(b_nov["units"]) == D("200.75")
    assert b_nov["amount"] == preview_nov["amount"] == "77"
    assert D(b_nov["remainderAfter"]) == D("0.1875")
    assert b_nov["unitPrice"] is None  # tiers have no one unit price to state

    # The change, at the project's now: after Berlin's December began, before UTC's did.
    await gql.ok(UPDATE, {"i": {"projectId": pid, "key": "tokens", "pricing": NEW}}, token=owner.token)
    versions = await owner_fetch(
        services,
        "SELECT p.effective_from FROM usage_metric_prices p JOIN usage_metrics m ON m.id = p.metric_id"
        " WHERE m.project_id = $1 ORDER BY p.effective_from",
        project,
    )
    assert [v["effective_from"] for v in versions][1:] == [utc(2030, 11, 30, 23, 30)]

    # UTC's November period started long before the change: still the old tiers, preview and run.
    preview_utc_nov = await first_item(gql, owner, in_utc["id"])
    await advance(gql, owner, pid, utc(2030, 12, 1, 0, 30))
    [u_nov] = await all_runs(gql, owner, in_utc["id"])
    u_nov_split = charge(old, D("234.05"), D(0))  # 50 + 134.05 x 0.25 + 2 = 85.5125
    assert D(u_nov["units"]) == D("234.05") and u_nov["amount"] == str(u_nov_split.amount) == "85"
    assert preview_utc_nov["amount"] == u_nov["amount"]

    # -- December: Berlin's period started at 23:00Z, before the change: OLD; UTC's at 00:00Z: NEW. --
    await advance(gql, owner, pid, utc(2030, 12, 31, 22, 45))
    preview_b_dec = await first_item(gql, owner, berlin["id"])
    await advance(gql, owner, pid, utc(2030, 12, 31, 23, 45))
    b_dec = (await all_runs(gql, owner, berlin["id"]))[1]
    assert (ts(b_dec["periodStart"]), ts(b_dec["periodEnd"])) == (utc(2030, 11, 30, 23), utc(2030, 12, 31, 23))
    b_total = D("33.3") + D("40") + D("17.125")  # 90.425
    assert D(b_dec["units"]) == b_total
    b_dec_split = charge(old, b_total, D("0.1875"))  # 45.2125 + 0.1875 = 45.4
    assert (b_dec_split.amount, b_dec_split.remainder) == (45, D("0.4"))
    assert charge(new, b_total, D("0.1875")).amount != b_dec_split.amount  # the test tells them apart
    assert b_dec["amount"] == str(b_dec_split.amount), "Berlin's December began before the change: old tiers"
    assert D(b_dec["remainderBefore"]) == D("0.1875") and D(b_dec["remainderAfter"]) == D("0.4")
    assert preview_b_dec["amount"] == b_dec["amount"]

    await advance(gql, owner, pid, utc(2031, 1, 1, 0, 30))
    u_dec = (await all_runs(gql, owner, in_utc["id"]))[1]
    u_total = D("40") + D("17.125") + D("9")  # 66.125
    assert D(u_dec["units"]) == u_total
    u_dec_split = charge(new, u_total, u_nov_split.remainder)  # 50 + 16.125 x 0.3 + 5 = 59.8375 + 0.5125
    assert (u_dec_split.amount, u_dec_split.remainder) == (60, D("0.35"))
    assert u_dec["amount"] == str(u_dec_split.amount), "UTC's December began after the change: new tiers"

    # -- January: both periods began after the change: the new tiers. -------------------------------
    await advance(gql, owner, pid, utc(2031, 1, 31, 22))
    preview_b_jan = await first_item(gql, owner, berlin["id"])
    await advance(gql, owner, pid, utc(2031, 2, 1, 1))
    b_jan = (await all_runs(gql, owner, berlin["id"]))[2]
    assert D(b_jan["units"]) == D("21.55")  # 9 + 12.55: Berlin's January began at 23:00Z on Dec 31
    b_jan_split = charge(new, D("21.55"), b_dec_split.remainder)  # 21.55 + 0.4 = 21.95
    assert b_jan["amount"] == str(b_jan_split.amount) == "21"
    assert preview_b_jan["amount"] == b_jan["amount"]
    u_jan = (await all_runs(gql, owner, in_utc["id"]))[2]
    assert D(u_jan["units"]) == D("15.55")
    assert u_jan["amount"] == str(charge(new, D("15.55"), u_dec_split.remainder).amount) == "15"

    # Each rule's carry is one unbroken chain, and the wallets paid exactly what the runs say.
    for rule in (berlin, in_utc):
        chain = await carried(services, rule["id"])
        assert chain[0][0] == 0 and all(a[1] == b[0] for a, b in itertools.pairwise(chain))
    berlin_runs = await all_runs(gql, owner, berlin["id"])
    utc_runs = await all_runs(gql, owner, in_utc["id"])
    assert {r["status"] for r in berlin_runs + utc_runs} == {"SUCCEEDED"}
    assert await wallet_balance(gql, owner, berlin_wallet) == 100_000 - sum(int(r["amount"]) for r in berlin_runs)
    assert await wallet_balance(gql, owner, utc_wallet) == 100_000 - sum(int(r["amount"]) for r in utc_runs)
    v = (await gql.ok(VERIFY, {"p": pid}, token=owner.token))["verifyLedger"]
    assert v["ok"], v


async def test_preview_of_a_graduated_period_is_what_the_run_charges(gql: GQL, services: Services) -> None:
    """A period whose total crosses every tier, with a remainder carried in from the last period."""
    owner, pid, wid = await setup(gql, test_mode=True, funds=100_000)
    project = decode("project", pid)
    await advance(gql, owner, pid, utc(2030, 6, 3, 9))
    await gql.ok(
        DEFINE,
        {"i": {"projectId": pid, "key": "tokens", "name": "Tokens", "aggregation": "SUM", "pricing": OLD}},
        token=owner.token,
    )
    rule = await usage_rule(gql, owner, wid, "Europe/Berlin")
    pricing = parse(OLD)
    # June: 10.3 units (5.15, remainder 0.15). July: 1500.7 units across all three tiers.
    await usage(services, project, "tokens", "10.3", utc(2030, 6, 15))
    july = [("999.9", utc(2030, 7, 2)), ("0.8", utc(2030, 7, 14, 13, 14, 15)), ("500", utc(2030, 7, 31, 21, 59))]
    for units, at in july:
        await usage(services, project, "tokens", units, at)
    await usage(services, project, "tokens", "7", utc(2030, 7, 31, 22, 30))  # Aug 1 00:30 in Berlin (CEST)

    await advance(gql, owner, pid, utc(2030, 7, 1))
    [june] = await all_runs(gql, owner, rule["id"])
    assert june["amount"] == "5" and D(june["remainderAfter"]) == D("0.15")

    await advance(gql, owner, pid, utc(2030, 7, 31, 21, 59, 30))
    item = await first_item(gql, owner, rule["id"])
    total = sum((D(u) for u, _ in july), D(0))  # 1500.7
    # 50 + (900 x 0.25 + 2) + 500.7 x 0.1 = 327.07, + 0.15 carried = 327.22
    expected = charge(pricing, total, D("0.15"))
    assert pricing.price(total) == D("327.07") and (expected.amount, expected.remainder) == (327, D("0.22"))
    assert D(item["units"]) == total and item["amount"] == "327"
    assert ts(item["at"]) == utc(2030, 7, 31, 22)  # Aug 1 00:00 in Berlin

    await advance(gql, owner, pid, utc(2030, 8, 1, 12))
    july_run = (await all_runs(gql, owner, rule["id"]))[1]
    assert D(july_run["units"]) == total
    assert july_run["amount"] == item["amount"]
    assert D(july_run["remainderBefore"]) == D("0.15") and D(july_run["remainderAfter"]) == D("0.22")
    v = (await gql.ok(VERIFY, {"p": pid}, token=owner.token))["verifyLedger"]
    assert v["ok"], v
