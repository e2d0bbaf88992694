"""Billing rules through the API and the domain: validation, mutations, audit, previews, manual
runs, usage-based amounts, test clocks over a year, and the insufficient-funds retry and grace path.

Everything that executes periods here goes through test clocks or manual runs (per project), so
these tests share the session database safely; the live scheduler's tests are test_scheduler.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import secrets
from typing import Any

from ledgerx.domain.billing import clocks, preview, rules, store
from ledgerx.domain.billing import schedule as sch
from ledgerx.ids import decode
from ledgerx.services import Services
from tests.conftest import GQL, SignedIn, sign_up
from tests.tenancy_helpers import add_member
from tests.test_billing_helpers import (
    ACTOR,
    FakeClock,
    billing,
    metric,
    new_project,
    new_rule,
    new_wallet,
    owner_fetch,
    runs_of,
    today_midnight,
    usage,
    utc,
    verify,
)

UTC = dt.UTC

RULE_FIELDS = """id status pausedReason mode amount timezone timeOfDay nextRunAt periodStart graceUntil retryAt
  metricKey unitPrice weekdays monthDays cron catchUp testMode"""
RUN_FIELDS = """id ruleId scheduledAt periodStart periodEnd status trigger amount units attempts nextRetryAt error
  idempotencyKey transactionId transaction { id amount kind idempotencyKey }"""
CREATE_PROJECT = "mutation($i: CreateProjectInput!) { createProject(input: $i) { id testMode } }"
CREATE_WALLET = "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }"
CREDIT = "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id } }"
BALANCE = "query($id: ID!) { wallet(id: $id) { balance } }"
VERIFY = "query($p: ID!) { verifyLedger(projectId: $p) { ok mismatches { kind message } } }"
DEFINE_METRIC = "mutation($i: DefineMetricInput!) { defineMetric(input: $i) { key } }"
CREATE_RULE = f"mutation($i: CreateBillingRuleInput!) {{ createBillingRule(input: $i) {{ {RULE_FIELDS} }} }}"
UPDATE_RULE = f"mutation($i: UpdateBillingRuleInput!) {{ updateBillingRule(input: $i) {{ {RULE_FIELDS} }} }}"
PAUSE = f"mutation($id: ID!) {{ pauseBillingRule(id: $id) {{ {RULE_FIELDS} }} }}"
RESUME = f"mutation($id: ID!) {{ resumeBillingRule(id: $id) {{ {RULE_FIELDS} }} }}"
RUN = f"mutation($id: ID!) {{ runBillingRule(id: $id) {{ {RUN_FIELDS} }} }}"
RULE = f"""query($id: ID!, $after: String) {{ billingRule(id: $id) {{ {RULE_FIELDS}
  runs(first: 100, after: $after) {{ edges {{ node {{ {RUN_FIELDS} }} }} pageInfo {{ hasNextPage endCursor }} }} }} }}"""
PREVIEW = """query($id: ID!, $n: Int!) { previewBillingRule(id: $id, count: $n) {
  at localAt timezone periodStart amount units } }"""
CLOCK = "query($p: ID!) { testClock(projectId: $p) { projectId now runsExecuted } }"
ADVANCE = "mutation($i: AdvanceTestClockInput!) { advanceTestClock(input: $i) { projectId now runsExecuted } }"
AUDIT = "query($p: ID!) { auditLog(projectId: $p, first: 100) { edges { node { action actorType targetId } } } }"


def ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


async def setup(gql: GQL, *, test_mode: bool = False, funds: int = 0) -> tuple[SignedIn, str, str]:
    owner = await sign_up(gql)
    p = await gql.ok(
        CREATE_PROJECT,
        {"i": {"name": "Billing", "externalKey": f"b-{secrets.token_hex(5)}", "testMode": test_mode}},
        token=owner.token,
    )
    pid = p["createProject"]["id"]
    w = await gql.ok(CREATE_WALLET, {"i": {"projectId": pid, "name": "main"}}, token=owner.token)
    wid = w["createWallet"]["id"]
    if funds:
        await top_up(gql, owner, wid, funds)
    return owner, pid, wid


async def top_up(gql: GQL, who: SignedIn, wallet_id: str, amount: int) -> None:
    await gql.ok(
        CREDIT,
        {"i": {"walletId": wallet_id, "amount": amount, "idempotencyKey": secrets.token_hex(8)}},
        token=who.token,
    )


async def wallet_balance(gql: GQL, who: SignedIn, wallet_id: str) -> int:
    return int((await gql.ok(BALANCE, {"id": wallet_id}, token=who.token))["wallet"]["balance"])


async def create_rule(gql: GQL, who: SignedIn, wallet_id: str, **fields: Any) -> dict[str, Any]:
    fields.setdefault("name", "rule")
    fields.setdefault("mode", "DAILY_FLAT")
    data = await gql.ok(CREATE_RULE, {"i": {"walletId": wallet_id, **fields}}, token=who.token)
    return dict(data["createBillingRule"])


async def all_runs(gql: GQL, who: SignedIn, rule_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = None
    while True:
        data = (await gql.ok(RULE, {"id": rule_id, "after": after}, token=who.token))["billingRule"]["runs"]
        out.extend(e["node"] for e in data["edges"])
        if not data["pageInfo"]["hasNextPage"]:
            return list(reversed(out))  # oldest first
        after = data["pageInfo"]["endCursor"]


async def advance(gql: GQL, who: SignedIn, project_id: str, to: dt.datetime) -> dict[str, Any]:
    data = await gql.ok(ADVANCE, {"i": {"projectId": project_id, "to": to.isoformat()}}, token=who.token)
    return dict(data["advanceTestClock"])


# -- validation and access --------------------------------------------------------------------


async def test_bad_input_names_the_field(gql: GQL) -> None:
    owner, pid, wid = await setup(gql)
    other_owner, other_pid, _ = await setup(gql)
    await gql.ok(
        DEFINE_METRIC,
        {"i": {"projectId": other_pid, "key": "tokens", "name": "t", "aggregation": "SUM", "unitPrice": "0.1"}},
        token=other_owner.token,
    )
    cases: list[tuple[dict[str, Any], str]] = [
        ({"amount": 1, "timezone": "Mars/Olympus"}, "timezone"),
        ({"mode": "CRON", "amount": 1, "cron": "61 * * * *"}, "cron"),
        ({"mode": "CRON", "amount": 1, "cron": "* * *"}, "cron"),
        ({"mode": "CRON", "amount": 1}, "cron"),
        ({"mode": "DAILY_FLAT"}, "amount"),
        ({"mode": "MONTHLY_FLAT"}, "amount"),
        ({"mode": "DAILY_FLAT", "amount": 0}, "amount"),
        ({"mode": "DAILY_FLAT", "amount": -5}, "amount"),
        ({"mode": "USAGE_BASED"}, "metricKey"),
        ({"mode": "USAGE_BASED", "metricKey": "tokens"}, "metricKey"),  # the other project's metric
        ({"mode": "USAGE_BASED", "metricKey": "nope"}, "metricKey"),
        ({"mode": "USAGE_BASED", "metricKey": "tokens", "amount": 5}, "amount"),
        ({"mode": "HYBRID", "metricKey": "tokens"}, "amount"),
        ({"mode": "SELECTED_DAYS", "amount": 1}, "weekdays"),
        ({"mode": "SELECTED_DAYS", "amount": 1, "monthDays": [32]}, "monthDays"),
        ({"mode": "SELECTED_DAYS", "amount": 1, "monthDays": [0]}, "monthDays"),
        ({"mode": "DAILY_FLAT", "amount": 1, "weekdays": ["MONDAY"]}, "weekdays"),
        ({"mode": "DAILY_FLAT", "amount": 1, "timeOfDay": "25:00"}, "timeOfDay"),
        ({"mode": "DAILY_FLAT", "amount": 1, "metricKey": "tokens"}, "metricKey"),
        ({"mode": "DAILY_FLAT", "amount": 1, "cron": "0 * * * *"}, "cron"),
        ({"mode": "DAILY_FLAT", "amount": 1, "name": " "}, "name"),
        ({"mode": "CRON", "amount": 1, "cron": "0 0 30 2 *"}, "cron"),  # February 30th never comes
    ]
    for fields, field in cases:
        data = {"walletId": wid, "name": "r", "mode": "DAILY_FLAT", **fields}
        ext = await gql.error(CREATE_RULE, {"i": data}, token=owner.token)
        assert ext["code"] == "BAD_USER_INPUT", (fields, ext)
        assert ext["field"] == field, (fields, ext)
    # A wallet of a project the caller is not in does not exist for them.
    _, _, foreign_wallet = await setup(gql)
    ext = await gql.error(
        CREATE_RULE,
        {"i": {"walletId": foreign_wallet, "name": "r", "mode": "DAILY_FLAT", "amount": 1}},
        token=owner.token,
    )
    assert ext["code"] == "NOT_FOUND" and ext["field"] == "walletId"
    ext = await gql.error(
        CREATE_RULE, {"i": {"walletId": pid, "name": "r", "mode": "DAILY_FLAT", "amount": 1}}, token=owner.token
    )
    assert ext["code"] == "BAD_USER_INPUT" and ext["field"] == "walletId"  # a project id is not a wallet id


async def test_roles_admins_write_members_read_strangers_see_nothing(gql: GQL) -> None:
    owner, pid, wid = await setup(gql, funds=100)
    member = await add_member(gql, owner, pid, "MEMBER")
    viewer = await add_member(gql, owner, pid, "VIEWER")
    admin = await add_member(gql, owner, pid, "ADMIN")
    stranger = await sign_up(gql)
    rule = await create_rule(gql, admin, wid, amount=5)
    for who in (member, viewer):
        assert (await gql.ok(RULE, {"id": rule["id"]}, token=who.token))["billingRule"]["id"] == rule["id"]
        for q in (PAUSE, RUN):
            assert (await gql.error(q, {"id": rule["id"]}, token=who.token))["code"] == "FORBIDDEN"
        ext = await gql.error(
            CREATE_RULE, {"i": {"walletId": wid, "name": "x", "mode": "DAILY_FLAT", "amount": 1}}, token=who.token
        )
        assert ext["code"] == "FORBIDDEN"
    for q in (RULE, PAUSE, RUN, RESUME):
        ext = await gql.error(q, {"id": rule["id"]}, token=stranger.token)
        assert ext["code"] == "NOT_FOUND", q
    assert (await gql.error(PREVIEW, {"id": rule["id"], "n": 3}, token=stranger.token))["code"] == "NOT_FOUND"


# -- mutations, audit, preview, manual runs ---------------------------------------------------------


async def test_create_update_pause_resume_are_audited(gql: GQL) -> None:
    owner, pid, wid = await setup(gql)
    rule = await create_rule(gql, owner, wid, amount=7, timezone="Europe/Berlin", timeOfDay="06:30", catchUp="LATEST")
    assert rule["status"] == "ACTIVE" and rule["amount"] == "7" and rule["timeOfDay"] == "06:30"
    nxt = ts(rule["nextRunAt"]).astimezone(sch.zone("Europe/Berlin"))
    assert (nxt.hour, nxt.minute) == (6, 30) and ts(rule["nextRunAt"]) > dt.datetime.now(UTC)
    assert rule["catchUp"] == "LATEST"

    updated = (
        await gql.ok(UPDATE_RULE, {"i": {"id": rule["id"], "amount": 9, "timeOfDay": "23:00"}}, token=owner.token)
    )["updateBillingRule"]
    assert updated["amount"] == "9"
    nxt = ts(updated["nextRunAt"]).astimezone(sch.zone("Europe/Berlin"))
    assert (nxt.hour, nxt.minute) == (23, 0)
    ext = await gql.error(UPDATE_RULE, {"i": {"id": rule["id"], "timezone": "Nowhere/Land"}}, token=owner.token)
    assert ext["code"] == "BAD_USER_INPUT" and ext["field"] == "timezone"

    paused = (await gql.ok(PAUSE, {"id": rule["id"]}, token=owner.token))["pauseBillingRule"]
    assert paused["status"] == "PAUSED" and paused["pausedReason"] == "MANUAL" and paused["nextRunAt"] is None
    ext = await gql.error(RUN, {"id": rule["id"]}, token=owner.token)
    assert ext["code"] == "CONFLICT"
    resumed = (await gql.ok(RESUME, {"id": rule["id"]}, token=owner.token))["resumeBillingRule"]
    assert resumed["status"] == "ACTIVE" and resumed["nextRunAt"] == updated["nextRunAt"]

    entries = (await gql.ok(AUDIT, {"p": pid}, token=owner.token))["auditLog"]["edges"]
    actions = [e["node"]["action"] for e in entries if e["node"]["targetId"] == rule["id"]]
    assert actions == ["billing_rule.resume", "billing_rule.pause", "billing_rule.update", "billing_rule.create"]


async def test_preview_lists_instants_in_utc_and_local_and_writes_nothing(gql: GQL, services: Services) -> None:
    owner, pid, wid = await setup(gql)
    rule = await create_rule(
        gql,
        owner,
        wid,
        mode="SELECTED_DAYS",
        amount=4,
        weekdays=["MONDAY", "FRIDAY"],
        monthDays=[31],
        timezone="America/New_York",
        timeOfDay="09:15",
    )
    before = await owner_fetch(
        services, "SELECT count(*) AS n FROM audit_log WHERE project_id = $1", decode("project", pid)
    )
    items = (await gql.ok(PREVIEW, {"id": rule["id"], "n": 25}, token=owner.token))["previewBillingRule"]
    assert len(items) == 25
    assert items[0]["at"] == rule["nextRunAt"] and items[0]["periodStart"] == rule["periodStart"]
    prev = None
    for item in items:
        local = dt.datetime.fromisoformat(item["localAt"])
        assert local == ts(item["at"])  # the same instant
        assert (local.hour, local.minute) == (9, 15) and item["timezone"] == "America/New_York"
        last_day = (local.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)
        assert local.weekday() in (0, 4) or (local.day == last_day.day and last_day.day <= 31)
        assert item["amount"] == "4"
        if prev is not None:
            assert item["periodStart"] == prev["at"]
        prev = item
    after = await owner_fetch(
        services, "SELECT count(*) AS n FROM audit_log WHERE project_id = $1", decode("project", pid)
    )
    assert after == before
    assert (
        await owner_fetch(services, "SELECT 1 FROM billing_runs WHERE rule_id = $1", decode("rule", rule["id"])) == []
    )
    for n in (0, 1001):
        ext = await gql.error(PREVIEW, {"id": rule["id"], "n": n}, token=owner.token)
        assert ext["code"] == "BAD_USER_INPUT" and ext["field"] == "count"


async def test_manual_run_charges_the_next_period_once_and_is_audited(gql: GQL) -> None:
    owner, pid, wid = await setup(gql, funds=100)
    rule = await create_rule(gql, owner, wid, amount=30)
    run = (await gql.ok(RUN, {"id": rule["id"]}, token=owner.token))["runBillingRule"]
    assert run["status"] == "SUCCEEDED" and run["trigger"] == "MANUAL" and run["amount"] == "30"
    assert run["scheduledAt"] == rule["nextRunAt"] and run["periodStart"] == rule["periodStart"]
    assert ts(run["periodEnd"]) <= dt.datetime.now(UTC)
    assert run["transaction"]["kind"] == "BILLING" and run["transaction"]["idempotencyKey"] == run["idempotencyKey"]
    assert run["idempotencyKey"].startswith(f"rule:{rule['id']}:")
    after = (await gql.ok(RULE, {"id": rule["id"]}, token=owner.token))["billingRule"]
    assert ts(after["nextRunAt"]) == ts(rule["nextRunAt"]) + dt.timedelta(days=1)
    assert after["periodStart"] == run["periodEnd"]
    assert await wallet_balance(gql, owner, wid) == 70
    entries = (await gql.ok(AUDIT, {"p": pid}, token=owner.token))["auditLog"]["edges"]
    assert "billing_rule.run" in [e["node"]["action"] for e in entries]
    assert [r["id"] for r in await all_runs(gql, owner, rule["id"])] == [run["id"]]
    v = (await gql.ok(VERIFY, {"p": pid}, token=owner.token))["verifyLedger"]
    assert v["ok"], v


# -- amounts from recorded usage -------------------------------------------------------------------


async def test_usage_based_and_hybrid_amounts_from_recorded_usage(services: Services) -> None:
    """Usage in [period start, instant) from rollups and raw edges, priced exactly with the carried
    remainder; HYBRID adds its base. Driven through a test clock (the project's own time)."""
    pid = await new_project(services, test_mode=True)
    w = await new_wallet(services, pid, 10_000)
    # Yesterday 01:00 UTC: period 1 runs to midnight and holds every event time below, whatever
    # the time of day the test runs at (from real now, d1 - 2h17m fell before the start after 21:43).
    clock = FakeClock(dt.datetime.now(UTC).replace(hour=1, minute=0, second=0, microsecond=0) - dt.timedelta(days=1))
    svc = billing(services, clock)
    await metric(services, pid, "tokens", "0.3")
    await metric(services, pid, "calls", "2", aggregation="COUNT")
    await metric(services, pid, "peak", "1.5", aggregation="MAX")
    await metric(services, pid, "seats", "7", aggregation="UNIQUE", unique_property="user")
    start = (await clocks.get_clock(svc, pid)).now
    tokens = await new_rule(svc, w, mode="USAGE_BASED", metric_key="tokens")
    calls = await new_rule(svc, w, mode="HYBRID", metric_key="calls", amount=5)
    peak = await new_rule(svc, w, mode="USAGE_BASED", metric_key="peak")
    seats = await new_rule(svc, w, mode="USAGE_BASED", metric_key="seats", unit_price=decimal.Decimal("0.25"))
    d1 = tokens.next_run_at
    assert d1 is not None and d1 == start.replace(hour=0, minute=0, second=0, microsecond=0) + dt.timedelta(days=1)

    # Period 1 is [start, d1): edges inside a minute, whole minutes and whole quarter hours.
    times = [
        start + dt.timedelta(seconds=1),
        start + dt.timedelta(minutes=3, seconds=7),
        d1 - dt.timedelta(hours=2, minutes=17),
    ]
    times += [d1 - dt.timedelta(minutes=16), d1 - dt.timedelta(seconds=30), d1 - dt.timedelta(microseconds=2)]
    units = ["1.5", "2.25", "10", "0.1", "3", "4.05"]
    for t, u in zip(times, units, strict=True):
        await usage(services, pid, "tokens", u, t)
        await usage(services, pid, "calls", "1", t)
        await usage(services, pid, "peak", u, t)
        await usage(services, pid, "seats", "1", t, user=f"u{times.index(t) % 4}")
    outside = [start - dt.timedelta(seconds=1), d1, d1 + dt.timedelta(minutes=20)]  # not period 1
    for t in outside:
        await usage(services, pid, "tokens", "100", t)
        await usage(services, pid, "calls", "1", t)
        await usage(services, pid, "peak", "50", t)
        await usage(services, pid, "seats", "1", t, user="late")

    # The preview just before the instant already sees the whole period's usage.
    await clocks.advance(svc, ACTOR, pid, d1 - dt.timedelta(microseconds=1))
    _, _, items = await preview.preview(svc, pid, tokens.id, 2)
    total = sum(decimal.Decimal(u) for u in units)  # 20.9 tokens
    assert items[0].units == total and items[0].amount == 6  # floor(20.9 * 0.3 = 6.27)
    assert items[1].amount == 0 and items[1].units == 0

    await clocks.advance(svc, ACTOR, pid, d1)
    [t1] = await runs_of(services, tokens.id)
    assert t1["units"] == total and t1["amount"] == 6 and t1["remainder_after"] == decimal.Decimal("0.27")
    assert (t1["period_start"], t1["period_end"]) == (start, d1)
    [c1] = await runs_of(services, calls.id)
    assert c1["units"] == 6 and c1["amount"] == 5 + 12 and c1["base_amount"] == 5
    [p1] = await runs_of(services, peak.id)
    assert p1["units"] == 10 and p1["amount"] == 15
    [s1] = await runs_of(services, seats.id)
    assert s1["units"] == 4 and s1["amount"] == 1  # 4 distinct users * 0.25
    assert s1["unit_price"] == decimal.Decimal("0.25")

    # Period 2 carries the remainder: 200 tokens * 0.3 + 0.27 = 60.27 -> 60, 0.27 carried again.
    d2 = d1 + dt.timedelta(days=1)
    await clocks.advance(svc, ACTOR, pid, d2)
    t2 = (await runs_of(services, tokens.id))[1]
    assert t2["units"] == 200 and t2["remainder_before"] == decimal.Decimal("0.27") and t2["amount"] == 60
    assert t2["remainder_after"] == decimal.Decimal("0.27")
    [carry] = await owner_fetch(
        services,
        "SELECT remainder FROM usage_charge_remainders r JOIN usage_metrics m ON m.id = r.metric_id"
        " WHERE r.wallet_id = $1 AND m.key = 'tokens'",
        w.id,
    )
    assert carry["remainder"] == decimal.Decimal("0.27")
    c2 = (await runs_of(services, calls.id))[1]
    assert c2["units"] == 2 and c2["amount"] == 5 + 4
    # The debits are what the runs say, and the ledger stays consistent.
    txns = await owner_fetch(
        services, "SELECT amount FROM ledger_transactions WHERE project_id = $1 AND kind = 'BILLING'", pid
    )
    runs = await owner_fetch(services, "SELECT amount FROM billing_runs WHERE project_id = $1 AND amount > 0", pid)
    assert sorted(t["amount"] for t in txns) == sorted(r["amount"] for r in runs)
    await verify(services, pid)


# -- test clocks ---------------------------------------------------------------------------------------


async def test_a_year_on_a_test_clock_matches_the_preview_instant_by_instant(gql: GQL) -> None:
    owner, pid, wid = await setup(gql, test_mode=True, funds=1_000_000)
    # Start just before 2028, a leap year, to cross Feb 29 and both DST changes in two zones.
    start = utc(2027, 12, 30, 12)
    await advance(gql, owner, pid, start)
    specs: list[dict[str, Any]] = [
        {"mode": "DAILY_FLAT", "amount": 3, "timezone": "America/New_York", "timeOfDay": "02:30"},
        {
            "mode": "SELECTED_DAYS",
            "amount": 5,
            "timezone": "Europe/Berlin",
            "timeOfDay": "02:30",
            "weekdays": ["MONDAY"],
            "monthDays": [29, 31],
        },
        {"mode": "MONTHLY_FLAT", "amount": 100, "timezone": "America/New_York", "startAt": "2028-01-31T01:30:00-05:00"},
        {"mode": "CRON", "amount": 7, "timezone": "Europe/Berlin", "cron": "30 2 * * 0"},
        {"mode": "CRON", "amount": 1, "timezone": "America/New_York", "cron": "0 1,2 * * *"},
    ]
    created = [await create_rule(gql, owner, wid, name=f"r{i}", **s) for i, s in enumerate(specs)]
    previews = {
        r["id"]: (await gql.ok(PREVIEW, {"id": r["id"], "n": 800}, token=owner.token))["previewBillingRule"]
        for r in created
    }
    end = utc(2028, 12, 31, 12)
    # Two steps (a clock may be advanced any number of times).
    first = await advance(gql, owner, pid, utc(2028, 6, 30))
    second = await advance(gql, owner, pid, end)
    assert second["now"].startswith("2028-12-31T12:00:00")
    total_runs = 0
    charged = 0
    for rule in created:
        runs = await all_runs(gql, owner, rule["id"])
        expected = [p for p in previews[rule["id"]] if ts(p["at"]) <= end]
        assert [r["scheduledAt"] for r in runs] == [p["at"] for p in expected], rule
        assert [r["amount"] for r in runs] == [p["amount"] for p in expected]
        assert [r["periodStart"] for r in runs] == [p["periodStart"] for p in expected]
        assert {r["status"] for r in runs} == {"SUCCEEDED"} and {r["trigger"] for r in runs} == {"TEST_CLOCK"}
        total_runs += len(runs)
        charged += sum(int(r["amount"]) for r in runs)
    assert first["runsExecuted"] + second["runsExecuted"] == total_runs
    daily, selected, monthly, weekly, twice = [await all_runs(gql, owner, r["id"]) for r in created]
    ny = sch.zone("America/New_York")
    assert len([r for r in daily if ts(r["scheduledAt"]).astimezone(ny).year == 2028]) == 366  # a leap year
    berlin = sch.zone("Europe/Berlin")
    spring = [r for r in daily if ts(r["scheduledAt"]).astimezone(ny).date() == dt.date(2028, 3, 12)]
    assert ts(spring[0]["scheduledAt"]).astimezone(ny).strftime("%H:%M %Z") == "03:00 EDT"  # 02:30 did not exist
    monthly_days = [ts(r["scheduledAt"]).astimezone(ny).strftime("%m-%d %H:%M") for r in monthly]
    assert monthly_days[:3] == ["01-31 01:30", "02-29 01:30", "03-31 01:30"] and len(monthly) == 12
    assert monthly_days[3] == "04-30 01:30"
    fall = [ts(r["scheduledAt"]) for r in twice if ts(r["scheduledAt"]).astimezone(ny).date() == dt.date(2028, 11, 5)]
    assert len(fall) == 2  # 01:00 happens twice and runs once; 02:00 runs once
    spring_b = [
        ts(r["scheduledAt"]).astimezone(berlin)
        for r in weekly
        if ts(r["scheduledAt"]).astimezone(berlin).date() == dt.date(2028, 3, 26)
    ]
    assert [x.strftime("%H:%M") for x in spring_b] == ["03:00"]
    feb = [
        ts(r["scheduledAt"]).astimezone(berlin).date()
        for r in selected
        if ts(r["scheduledAt"]).astimezone(berlin).month == 2
    ]
    assert dt.date(2028, 2, 29) in feb
    assert await wallet_balance(gql, owner, wid) == 1_000_000 - charged
    v = (await gql.ok(VERIFY, {"p": pid}, token=owner.token))["verifyLedger"]
    assert v["ok"], v
    assert (await gql.ok(CLOCK, {"p": pid}, token=owner.token))["testClock"]["now"] == second["now"]
    # Backwards is refused.
    ext = await gql.error(ADVANCE, {"i": {"projectId": pid, "to": start.isoformat()}}, token=owner.token)
    assert ext["code"] == "BAD_USER_INPUT" and ext["field"] == "to"


async def test_test_clocks_are_per_project_and_live_projects_refuse_them(gql: GQL) -> None:
    owner, pid, _ = await setup(gql, test_mode=True)
    live_owner = await sign_up(gql)
    p = await gql.ok(
        CREATE_PROJECT, {"i": {"name": "Live", "externalKey": f"l-{secrets.token_hex(5)}"}}, token=live_owner.token
    )
    live = p["createProject"]["id"]
    ext = await gql.error(ADVANCE, {"i": {"projectId": live, "to": "2030-01-01T00:00:00Z"}}, token=live_owner.token)
    assert ext["code"] == "BAD_USER_INPUT" and ext["field"] == "projectId" and "live project" in ext["message"]
    assert (await gql.error(CLOCK, {"p": live}, token=live_owner.token))["code"] == "BAD_USER_INPUT"
    # Two sandboxes of one owner: moving one leaves the other where it was.
    second = (
        await gql.ok(
            CREATE_PROJECT,
            {"i": {"name": "Sandbox 2", "externalKey": f"s-{secrets.token_hex(5)}", "testMode": True}},
            token=owner.token,
        )
    )["createProject"]["id"]
    before = (await gql.ok(CLOCK, {"p": second}, token=owner.token))["testClock"]["now"]
    moved = await advance(gql, owner, pid, utc(2031, 1, 1))
    assert moved["now"].startswith("2031-01-01")
    assert (await gql.ok(CLOCK, {"p": second}, token=owner.token))["testClock"]["now"] == before
    assert (await gql.ok(CLOCK, {"p": pid}, token=owner.token))["testClock"]["now"].startswith("2031-01-01")
    # Someone else's sandbox does not exist for this owner.
    ext = await gql.error(ADVANCE, {"i": {"projectId": live, "to": "2030-01-01T00:00:00Z"}}, token=owner.token)
    assert ext["code"] == "NOT_FOUND"


async def test_insufficient_funds_retries_grace_pause_event_and_top_up(gql: GQL, services: Services) -> None:
    owner, pid, wid = await setup(gql, test_mode=True)
    start = utc(2029, 5, 1, 12)
    await advance(gql, owner, pid, start)
    rule = await create_rule(gql, owner, wid, amount=100)
    d1 = utc(2029, 5, 2)
    assert ts(rule["nextRunAt"]) == d1

    # 1st attempt at the instant fails: retry in 1h, grace for 3 days.
    await advance(gql, owner, pid, d1)
    [run] = await all_runs(gql, owner, rule["id"])
    assert run["status"] == "INSUFFICIENT_FUNDS" and run["attempts"] == 1 and run["transactionId"] is None
    assert ts(run["nextRetryAt"]) == d1 + dt.timedelta(hours=1)
    r = (await gql.ok(RULE, {"id": rule["id"]}, token=owner.token))["billingRule"]
    assert ts(r["graceUntil"]) == d1 + dt.timedelta(days=3) and ts(r["retryAt"]) == d1 + dt.timedelta(hours=1)
    # 2nd attempt an hour later fails too: the next one is 6 hours after it.
    await advance(gql, owner, pid, d1 + dt.timedelta(hours=1, minutes=30))
    [run] = await all_runs(gql, owner, rule["id"])
    assert run["attempts"] == 2 and ts(run["nextRetryAt"]) == d1 + dt.timedelta(hours=7)
    # A top-up lets the pending retry succeed; the grace period ends.
    await top_up(gql, owner, wid, 100)
    await advance(gql, owner, pid, d1 + dt.timedelta(hours=7))
    [run] = await all_runs(gql, owner, rule["id"])
    assert run["status"] == "SUCCEEDED" and run["attempts"] == 3 and run["transaction"]["amount"] == "100"
    assert run["idempotencyKey"] == run["transaction"]["idempotencyKey"]
    r = (await gql.ok(RULE, {"id": rule["id"]}, token=owner.token))["billingRule"]
    assert r["graceUntil"] is None and r["retryAt"] is None and r["status"] == "ACTIVE"
    assert await wallet_balance(gql, owner, wid) == 0

    # Without a top-up: retries 1h, 6h, 24h go by, the grace period ends, the rule is paused.
    async with services.events.subscribe(f"project:{decode('project', pid)}:billing") as sub:
        d2 = d1 + dt.timedelta(days=1)
        await advance(gql, owner, pid, d2 + dt.timedelta(days=3, hours=1))
        paused_event = None
        for _ in range(400):
            ev = await asyncio.wait_for(sub.__anext__(), 5)
            if ev["type"] == "billing.rule_paused":
                paused_event = ev
                break
    assert paused_event is not None and paused_event["ruleId"] == rule["id"]
    assert paused_event["reason"] == "GRACE_EXPIRED" and paused_event["owed"] == "400"
    r = (await gql.ok(RULE, {"id": rule["id"]}, token=owner.token))["billingRule"]
    assert r["status"] == "PAUSED" and r["pausedReason"] == "GRACE_EXPIRED"
    runs = await all_runs(gql, owner, rule["id"])
    unpaid = [x for x in runs if x["status"] == "INSUFFICIENT_FUNDS"]
    assert [ts(x["scheduledAt"]) for x in unpaid] == [d2 + dt.timedelta(days=i) for i in range(4)]
    first = unpaid[0]
    assert first["attempts"] == 5 and first["nextRetryAt"] is None  # 1st + 3 retries + the last try at grace end
    entries = (await gql.ok(AUDIT, {"p": pid}, token=owner.token))["auditLog"]["edges"]
    pauses = [e["node"] for e in entries if e["node"]["action"] == "billing_rule.pause"]
    assert pauses and pauses[0]["actorType"] == "SYSTEM"
    # Paused: time passes, nothing runs.
    await advance(gql, owner, pid, d2 + dt.timedelta(days=10))
    assert len(await all_runs(gql, owner, rule["id"])) == len(runs)
    # Top up and resume: the unpaid runs are retried at once and succeed; billing goes on from now.
    await top_up(gql, owner, wid, 1000)
    resumed = (await gql.ok(RESUME, {"id": rule["id"]}, token=owner.token))["resumeBillingRule"]
    assert resumed["status"] == "ACTIVE" and ts(resumed["nextRunAt"]) == d2 + dt.timedelta(days=11)
    last = (await gql.ok(RUN, {"id": rule["id"]}, token=owner.token))["runBillingRule"]
    assert last["status"] == "SUCCEEDED"
    runs = await all_runs(gql, owner, rule["id"])
    assert {x["status"] for x in runs} == {"SUCCEEDED"} and len(runs) == 5
    assert await wallet_balance(gql, owner, wid) == 1000 - 400
    v = (await gql.ok(VERIFY, {"p": pid}, token=owner.token))["verifyLedger"]
    assert v["ok"], v


async def test_manual_run_in_a_test_project_uses_its_clock(services: Services) -> None:
    pid = await new_project(services, test_mode=True)
    w = await new_wallet(services, pid, 100)
    svc = billing(services, FakeClock(today_midnight()))
    await clocks.advance(svc, ACTOR, pid, utc(2030, 3, 3, 10))
    rule = await new_rule(svc, w, amount=10)
    assert rule.next_run_at == utc(2030, 3, 4) and rule.period_start == utc(2030, 3, 3, 10)
    run = await rules.run_rule_now(svc, ACTOR, pid, rule.id)
    assert run.scheduled_at == utc(2030, 3, 4) and run.period_end == utc(2030, 3, 3, 10) and run.status == "SUCCEEDED"
    # The period ran early: the clock passing its instant does not charge it again.
    await clocks.advance(svc, ACTOR, pid, utc(2030, 3, 4, 1))
    assert len(await runs_of(services, rule.id)) == 1
    await clocks.advance(svc, ACTOR, pid, utc(2030, 3, 5))
    runs = await runs_of(services, rule.id)
    assert [r["scheduled_at"] for r in runs] == [utc(2030, 3, 4), utc(2030, 3, 5)]
    assert runs[1]["period_start"] == utc(2030, 3, 3, 10)  # the next period starts where the early one ended
    assert runs[0]["period_end"] == runs[1]["period_start"]


CREATE_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }"


async def test_api_keys_need_billing_scopes(gql: GQL) -> None:
    owner, pid, wid = await setup(gql)
    keys = {}
    for scopes in (["billing:read"], ["billing:read", "billing:write"], ["wallets:read"]):
        data = await gql.ok(CREATE_KEY, {"i": {"projectId": pid, "name": "k", "scopes": scopes}}, token=owner.token)
        keys[tuple(scopes)] = data["createApiKey"]["secret"]
    writer = keys[("billing:read", "billing:write")]
    rule = (
        await gql.ok(
            CREATE_RULE, {"i": {"walletId": wid, "name": "k", "mode": "DAILY_FLAT", "amount": 2}}, token=writer
        )
    )["createBillingRule"]
    assert (await gql.ok(RULE, {"id": rule["id"]}, token=keys[("billing:read",)]))["billingRule"]["id"] == rule["id"]
    ext = await gql.error(PAUSE, {"id": rule["id"]}, token=keys[("billing:read",)])
    assert ext["code"] == "FORBIDDEN"
    ext = await gql.error(RULE, {"id": rule["id"]}, token=keys[("wallets:read",)])
    assert ext["code"] == "FORBIDDEN"
    assert (await gql.ok(PAUSE, {"id": rule["id"]}, token=writer))["pauseBillingRule"]["status"] == "PAUSED"


async def test_one_run_per_rule_and_period_is_a_database_rule(services: Services) -> None:
    """Even a buggy caller cannot record a period twice, and tenants only see their own rows."""
    import asyncpg
    import pytest
    from sqlalchemy import text

    from tests.test_billing_helpers import owner

    pid = await new_project(services, test_mode=True)
    w = await new_wallet(services, pid, 100)
    svc = billing(services, FakeClock(today_midnight()))
    await clocks.advance(svc, ACTOR, pid, utc(2030, 1, 1, 12))
    rule = await new_rule(svc, w)
    await clocks.advance(svc, ACTOR, pid, utc(2030, 1, 2, 12))
    [run] = await runs_of(services, rule.id)
    conn = await owner(services)
    try:
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(
                "INSERT INTO billing_runs (id, project_id, rule_id, wallet_id, scheduled_at, period_start, period_end,"
                " status, trigger, idempotency_key, started_at, finished_at)"
                " SELECT gen_random_uuid(), project_id, rule_id, wallet_id, scheduled_at, period_start, period_end,"
                " 'SKIPPED', trigger, idempotency_key, started_at, finished_at FROM billing_runs WHERE id = $1",
                run["id"],
            )
    finally:
        await conn.close()
    other = await new_project(services)
    async with services.db.transaction(project_id=other) as s:
        seen = (await s.execute(text("SELECT count(*) FROM billing_rules WHERE id = :i"), {"i": rule.id})).scalar()
        runs = (await s.execute(text("SELECT count(*) FROM billing_runs WHERE rule_id = :i"), {"i": rule.id})).scalar()
    assert seen == 0 and runs == 0
    assert await store.list_runs(services.db, other, rule.id, limit=10, before=None) == []
