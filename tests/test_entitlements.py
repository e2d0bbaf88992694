"""Entitlements (domain/entitlements): a plan's BOOLEAN, METERED and CONFIG features, its monthly
quotas as METERED features of the same mechanism, per-project overrides, and the checks answered
from each instance's cache, which every instance forgets when a change is announced.

A second app instance (`instance_b`, its own caches, following the announcements) shows that a
change reaches other instances: every wait below is far inside the checks' 10 s TTL, so only the
announcement (or an entry bounded by the instant its answer changes) can explain a flip.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from ledgerx import ids
from ledgerx.domain.entitlements.checks import TTL_SECONDS, Entitlement
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, sign_up
from tests.instances import following_instance
from tests.tenancy_helpers import create_project, make_platform_admin, owner_sql

UTC = dt.UTC
D = decimal.Decimal

CREATE_PLAN = "mutation($i: CreatePlanInput!) { createPlan(input: $i) { id entitlements { featureKey type } } }"
UPDATE_PLAN = "mutation($i: UpdatePlanInput!) { updatePlan(input: $i) { id } }"
PLANS = """{ plans(includeArchived: true) { id name
  entitlements { featureKey type enabled limit metricKey period config } } }"""
OVERRIDE_PLAN = "mutation($i: OverridePlanInput!) { overridePlan(input: $i) { source plan { id } } }"
DEFINE = "mutation($i: DefineMetricInput!) { defineMetric(input: $i) { key } }"
RECORD = "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { duplicate overage } }"
BATCH = "mutation($i: RecordUsageBatchInput!) { recordUsageBatch(input: $i) { accepted rejected { index code } } }"
FIELDS = "featureKey type hasAccess limit usage remaining config resetsAt"
ONE = f"query($p: ID!, $k: String!) {{ entitlement(projectId: $p, featureKey: $k) {{ {FIELDS} }} }}"
ALL = f"query($p: ID!) {{ entitlements(projectId: $p) {{ {FIELDS} }} }}"
OVERRIDE = f"mutation($i: OverrideEntitlementInput!) {{ overrideEntitlement(input: $i) {{ {FIELDS} }} }}"
CREATE_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }"

# Well inside the checks' TTL: a flip within this long was caused by an announcement.
PROMPTLY = 3.0
assert PROMPTLY < TTL_SECONDS


@pytest.fixture
async def instance_b(settings: Settings) -> AsyncIterator[Services]:
    async with following_instance(settings) as other:
        yield other


# -- helpers -----------------------------------------------------------------------------------------


def unique(tag: str) -> str:
    # The catalog is global to the session's database: names and feature keys of this test only.
    return f"{tag}_{secrets.token_hex(4)}"


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = PROMPTLY) -> float:
    """Poll until `check` holds; returns how long it took."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < within, what
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def next_month(t: dt.datetime) -> dt.datetime:
    return dt.datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=UTC)


def next_midnight(t: dt.datetime) -> dt.datetime:
    return dt.datetime(t.year, t.month, t.day, tzinfo=UTC) + dt.timedelta(days=1)


def json_of(value: Any) -> dict[str, Any]:
    # asyncpg hands JSONB over as text unless a codec is set.
    out: dict[str, Any] = json.loads(value) if isinstance(value, str) else value
    return out


def instant(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def resets_between(
    got: str, before: dt.datetime, after: dt.datetime, step: Callable[[dt.datetime], dt.datetime]
) -> bool:
    # A test that straddles a period boundary may see either reset; nothing else is right.
    return instant(got) in {step(before), step(after)}


async def create_plan(gql: GQL, admin: SignedIn, entitlements: list[dict[str, Any]], **extra: Any) -> str:
    i = {
        "name": unique("ent-plan"),
        "tier": "PRO",
        "interval": "MONTH",
        "price": {"amount": 1000, "currency": "USD"},
        "entitlements": entitlements,
        **extra,
    }
    return str((await gql.ok(CREATE_PLAN, {"i": i}, token=admin.token))["createPlan"]["id"])


async def project_on(gql: GQL, admin: SignedIn, plan_id: str, metrics: dict[str, str]) -> tuple[SignedIn, str]:
    """A new project (its owner and id) with `metrics` {key: aggregation}, put on the plan by a
    platform admin's overridePlan."""
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    for key, agg in metrics.items():
        m = {"projectId": pid, "key": key, "name": key, "aggregation": agg, "unitPrice": "0"}
        await gql.ok(DEFINE, {"i": m}, token=owner.token)
    o = await gql.ok(OVERRIDE_PLAN, {"i": {"projectId": pid, "planId": plan_id}}, token=admin.token)
    assert o["overridePlan"] == {"source": "OVERRIDE", "plan": {"id": plan_id}}
    return owner, pid


def event(pid: str, metric: str, units: str = "1", at: dt.datetime | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"projectId": pid, "metricKey": metric, "units": units, "idempotencyKey": uuid.uuid4().hex}
    if at is not None:
        e["occurredAt"] = at.isoformat()
    return e


async def record(gql: GQL, owner: SignedIn, pid: str, metric: str, n: int, at: dt.datetime | None = None) -> None:
    for _ in range(n):
        await gql.ok(RECORD, {"i": event(pid, metric, at=at)}, token=owner.token)


async def refused(gql: GQL, owner: SignedIn, pid: str, metric: str, at: dt.datetime | None = None) -> dict[str, Any]:
    return await gql.error(RECORD, {"i": event(pid, metric, at=at)}, token=owner.token)


async def check(gql: GQL, user: SignedIn, pid: str, key: str) -> dict[str, Any]:
    data: dict[str, Any] = (await gql.ok(ONE, {"p": pid, "k": key}, token=user.token))["entitlement"]
    return data


async def on_b(b: Services, pid: str, key: str) -> Entitlement:
    return await b.entitlements.check(ids.decode("project", pid), key)


def metered(key: str, metric: str, limit: int, period: str = "MONTH") -> dict[str, Any]:
    return {"featureKey": key, "type": "METERED", "metricKey": metric, "limit": str(limit), "period": period}


@pytest.fixture
async def admin(gql: GQL, settings: Settings) -> SignedIn:
    return await make_platform_admin(gql, settings)


# -- 1. what a plan grants, as a project sees it -------------------------------------------------------


async def test_a_projects_entitlements_list_its_plans_features(gql: GQL, admin: SignedIn) -> None:
    plan = await create_plan(
        gql,
        admin,
        [
            {"featureKey": "sso", "type": "BOOLEAN"},
            metered("api_calls", "api_calls", 5),
            {"featureKey": "limits", "type": "CONFIG", "config": {"seats": 3}},
        ],
    )
    owner, pid = await project_on(gql, admin, plan, {"api_calls": "SUM"})
    before = dt.datetime.now(UTC)
    got = (await gql.ok(ALL, {"p": pid}, token=owner.token))["entitlements"]
    after = dt.datetime.now(UTC)

    assert [e["featureKey"] for e in got] == ["api_calls", "limits", "sso"]  # by key
    by_key = {e["featureKey"]: e for e in got}
    assert by_key["sso"] == {
        "featureKey": "sso",
        "type": "BOOLEAN",
        "hasAccess": True,
        "limit": None,
        "usage": None,
        "remaining": None,
        "config": None,
        "resetsAt": None,
    }
    assert by_key["limits"] == {**by_key["sso"], "featureKey": "limits", "type": "CONFIG", "config": {"seats": 3}}
    calls = by_key["api_calls"]
    assert (calls["type"], calls["hasAccess"], calls["limit"], calls["config"]) == ("METERED", True, "5", None)
    assert (D(calls["usage"]), D(calls["remaining"])) == (D(0), D(5))
    assert resets_between(calls["resetsAt"], before, after, next_month), calls["resetsAt"]

    # One feature at a time answers the same; a feature the plan does not name denies.
    assert await check(gql, owner, pid, "sso") == by_key["sso"]
    assert await check(gql, owner, pid, "limits") == by_key["limits"]
    nothing = await check(gql, owner, pid, unique("no_such_feature"))
    assert (nothing["type"], nothing["hasAccess"], nothing["limit"], nothing["config"]) == (
        "BOOLEAN",
        False,
        None,
        None,
    )


# -- 2. METERED: usage, the limit reached on every instance, ingestion refused ---------------------------


async def test_usage_reaching_a_metered_limit_is_announced_and_blocks_ingestion(
    gql: GQL, admin: SignedIn, instance_b: Services
) -> None:
    plan = await create_plan(gql, admin, [metered("api_calls", "api_calls", 5)])
    owner, pid = await project_on(gql, admin, plan, {"api_calls": "SUM"})

    await record(gql, owner, pid, "api_calls", 3)
    a = await check(gql, owner, pid, "api_calls")
    assert (a["hasAccess"], D(a["usage"]), D(a["remaining"]), a["limit"]) == (True, D(3), D(2), "5")
    b = await on_b(instance_b, pid, "api_calls")  # instance B caches this answer now
    assert (b.has_access, b.usage, b.remaining, b.limit) == (True, D(3), D(2), 5)

    await record(gql, owner, pid, "api_calls", 2)  # the 5th reaches the limit

    async def b_sees_the_limit_reached() -> bool:
        e = await on_b(instance_b, pid, "api_calls")
        return (e.has_access, e.usage, e.remaining) == (False, D(5), D(0))

    await eventually(b_sees_the_limit_reached, "instance B kept granting api_calls after its limit was reached")
    a = await check(gql, owner, pid, "api_calls")
    assert (a["hasAccess"], D(a["usage"]), D(a["remaining"])) == (False, D(5), D(0))

    # One mechanism: the METERED limit refuses ingestion as a monthly quota would.
    err = await refused(gql, owner, pid, "api_calls")
    assert (err["code"], err["quota"], err["period"]) == ("QUOTA_EXCEEDED", 5, "MONTH")
    a = await check(gql, owner, pid, "api_calls")
    assert D(a["usage"]) == D(5)  # the refused event was not stored


async def test_a_batch_reaching_a_metered_limit_is_announced_too(
    gql: GQL, admin: SignedIn, instance_b: Services
) -> None:
    plan = await create_plan(gql, admin, [metered("api_calls", "api_calls", 5)])
    owner, pid = await project_on(gql, admin, plan, {"api_calls": "SUM"})
    assert (await on_b(instance_b, pid, "api_calls")).has_access is True  # cached on B

    events = [{"metricKey": "api_calls", "units": "1", "idempotencyKey": uuid.uuid4().hex} for _ in range(6)]
    r = (await gql.ok(BATCH, {"i": {"projectId": pid, "events": events}}, token=owner.token))["recordUsageBatch"]
    assert (r["accepted"], r["rejected"]) == (5, [{"index": 5, "code": "QUOTA_EXCEEDED"}])

    async def b_sees_the_limit_reached() -> bool:
        e = await on_b(instance_b, pid, "api_calls")
        return (e.has_access, e.usage, e.remaining) == (False, D(5), D(0))

    await eventually(b_sees_the_limit_reached, "instance B kept granting api_calls after a batch reached its limit")


# -- 3. monthly quotas are METERED features; an override's limit governs ingestion ----------------------


async def test_monthly_quotas_are_metered_entitlements_and_an_override_limit_governs_ingestion(
    gql: GQL, admin: SignedIn, instance_b: Services
) -> None:
    calls = unique("calls")
    plan = await create_plan(
        gql, admin, [{"featureKey": "sso", "type": "BOOLEAN"}], monthlyQuotas=[{"metric": calls, "limit": "5"}]
    )
    owner, pid = await project_on(gql, admin, plan, {calls: "COUNT"})
    before = dt.datetime.now(UTC)
    quota = await check(gql, owner, pid, calls)
    after = dt.datetime.now(UTC)
    assert (quota["featureKey"], quota["type"], quota["hasAccess"], quota["limit"]) == (calls, "METERED", True, "5")
    assert (D(quota["usage"]), D(quota["remaining"])) == (D(0), D(5))
    assert resets_between(quota["resetsAt"], before, after, next_month)  # MONTH
    listed = {e["featureKey"] for e in (await gql.ok(ALL, {"p": pid}, token=owner.token))["entitlements"]}
    assert listed == {calls, "sso"}

    await record(gql, owner, pid, calls, 5)
    assert (await refused(gql, owner, pid, calls))["code"] == "QUOTA_EXCEEDED"
    assert (await check(gql, owner, pid, calls))["hasAccess"] is False
    assert (await on_b(instance_b, pid, calls)).has_access is False  # cached on B

    # Raising the feature's limit for this project lets two more events in, on every instance.
    raised = (await gql.ok(OVERRIDE, {"i": {"projectId": pid, "featureKey": calls, "limit": "7"}}, token=admin.token))[
        "overrideEntitlement"
    ]
    assert (raised["hasAccess"], raised["limit"], D(raised["remaining"])) == (True, "7", D(2))

    async def b_sees_the_raise() -> bool:
        e = await on_b(instance_b, pid, calls)
        return (e.has_access, e.limit, e.remaining) == (True, 7, D(2))

    await eventually(b_sees_the_raise, "instance B kept the plan's quota after the override raised it")
    await record(gql, owner, pid, calls, 2)
    err = await refused(gql, owner, pid, calls)
    assert (err["code"], err["quota"]) == ("QUOTA_EXCEEDED", 7)

    # Lowering it below the usage refuses at once.
    await gql.ok(OVERRIDE, {"i": {"projectId": pid, "featureKey": calls, "limit": "1"}}, token=admin.token)
    err = await refused(gql, owner, pid, calls)
    assert (err["code"], err["quota"]) == ("QUOTA_EXCEEDED", 1)


# -- 4. overrideEntitlement ------------------------------------------------------------------------------


async def test_override_entitlement_disables_expires_clears_and_grants(
    gql: GQL, admin: SignedIn, settings: Settings, instance_b: Services
) -> None:
    plan = await create_plan(
        gql,
        admin,
        [{"featureKey": "sso", "type": "BOOLEAN"}, {"featureKey": "limits", "type": "CONFIG", "config": {"seats": 3}}],
    )
    owner, pid = await project_on(gql, admin, plan, {})
    other_owner, other_pid = await project_on(gql, admin, plan, {})
    assert (await check(gql, owner, pid, "sso"))["hasAccess"] is True
    assert (await on_b(instance_b, pid, "sso")).has_access is True  # cached on B

    # Disabled for one project: both instances answer false promptly; the other project keeps it.
    off = (await gql.ok(OVERRIDE, {"i": {"projectId": pid, "featureKey": "sso", "enabled": False}}, token=admin.token))[
        "overrideEntitlement"
    ]
    assert (off["featureKey"], off["type"], off["hasAccess"]) == ("sso", "BOOLEAN", False)
    assert (await check(gql, owner, pid, "sso"))["hasAccess"] is False

    async def b_sees(value: bool) -> bool:
        return (await on_b(instance_b, pid, "sso")).has_access is value

    await eventually(lambda: b_sees(False), "instance B kept granting sso after the override disabled it")
    assert (await check(gql, other_owner, other_pid, "sso"))["hasAccess"] is True

    # Clearing (no enabled, limit or config) restores the plan's answer everywhere.
    cleared = await gql.ok(OVERRIDE, {"i": {"projectId": pid, "featureKey": "sso"}}, token=admin.token)
    assert cleared["overrideEntitlement"]["hasAccess"] is True
    await eventually(lambda: b_sees(True), "instance B kept the cleared override")

    # With expiresAt a few seconds ahead it ends by itself: no cache entry outlives the expiry.
    expires = dt.datetime.now(UTC) + dt.timedelta(seconds=3)
    i = {"projectId": pid, "featureKey": "sso", "enabled": False, "expiresAt": expires.isoformat()}
    assert (await gql.ok(OVERRIDE, {"i": i}, token=admin.token))["overrideEntitlement"]["hasAccess"] is False
    await eventually(lambda: b_sees(False), "instance B did not hear of the expiring override")
    assert (await check(gql, owner, pid, "sso"))["hasAccess"] is False  # cached on A until the expiry

    async def a_sees_it_back() -> bool:
        return bool((await check(gql, owner, pid, "sso"))["hasAccess"])

    wait = (expires - dt.datetime.now(UTC)).total_seconds()
    await eventually(a_sees_it_back, "instance A kept an expired override (its cache outlived expiresAt)", wait + 2)
    await eventually(lambda: b_sees(True), "instance B kept an expired override (its cache outlived expiresAt)", 2)
    assert dt.datetime.now(UTC) >= expires

    # A feature no plan defines is granted by its override alone (a BOOLEAN beta flag).
    beta = unique("beta")
    assert (await check(gql, owner, pid, beta))["hasAccess"] is False
    granted = (
        await gql.ok(OVERRIDE, {"i": {"projectId": pid, "featureKey": beta, "enabled": True}}, token=admin.token)
    )["overrideEntitlement"]
    assert (granted["featureKey"], granted["type"], granted["hasAccess"]) == (beta, "BOOLEAN", True)
    assert beta in {e["featureKey"] for e in (await gql.ok(ALL, {"p": pid}, token=owner.token))["entitlements"]}
    assert (await check(gql, other_owner, other_pid, beta))["hasAccess"] is False

    # A CONFIG feature's value, for this project only.
    i = {"projectId": pid, "featureKey": "limits", "config": {"seats": 10}}
    assert (await gql.ok(OVERRIDE, {"i": i}, token=admin.token))["overrideEntitlement"]["config"] == {"seats": 10}
    assert (await check(gql, other_owner, other_pid, "limits"))["config"] == {"seats": 3}

    # Refused input, and callers who are not platform admins.
    bad: list[tuple[dict[str, Any], str]] = [
        ({"featureKey": unique("nowhere"), "limit": "5"}, "limit"),  # no METERED definition: no metric to count
        ({"featureKey": "sso", "limit": "5"}, "limit"),  # a BOOLEAN feature takes no limit
        ({"featureKey": "sso", "config": {"x": 1}}, "config"),  # nor a config
        ({"featureKey": "sso", "enabled": True, "expiresAt": "2020-01-01T00:00:00Z"}, "expiresAt"),
        ({"featureKey": "Not A Key!", "enabled": True}, "featureKey"),
    ]
    for change, field in bad:
        err = await gql.error(OVERRIDE, {"i": {"projectId": pid, **change}}, token=admin.token)
        assert (err["code"], err.get("field")) == ("BAD_USER_INPUT", field), (change, err)
    for user in (owner, other_owner):
        i = {"projectId": pid, "featureKey": "sso", "enabled": False}
        assert (await gql.error(OVERRIDE, {"i": i}, token=user.token))["code"] == "FORBIDDEN"
    assert (await check(gql, owner, pid, "sso"))["hasAccess"] is True  # nothing refused took effect

    rows = await owner_sql(
        settings,
        "SELECT action, actor_id, target_id, before, after FROM audit_log"
        " WHERE project_id = $1 AND action LIKE 'entitlement.%' ORDER BY at, id",
        ids.decode("project", pid),
    )
    assert [r["action"] for r in rows] == [
        "entitlement.override",
        "entitlement.override_clear",
        "entitlement.override",
        "entitlement.override",  # the beta flag
        "entitlement.override",  # the config
    ]
    assert {r["actor_id"] for r in rows} == {ids.decode("user", admin.user_id)}
    assert {r["target_id"] for r in rows} == {pid}
    first, clear = json_of(rows[0]["after"]), json_of(rows[1]["before"])
    assert (first["featureKey"], first["type"], first["enabled"], first["expiresAt"]) == ("sso", "BOOLEAN", False, None)
    assert clear == first and rows[1]["after"] is None


async def test_an_expired_override_limit_no_longer_governs_ingestion(gql: GQL, admin: SignedIn) -> None:
    """The checks and the meters are one resolution and must not disagree: once a raised limit
    expires, the check denies (usage is past the plan's limit) and ingestion must refuse too."""
    plan = await create_plan(gql, admin, [metered("api_calls", "api_calls", 5)])
    owner, pid = await project_on(gql, admin, plan, {"api_calls": "SUM"})
    expires = dt.datetime.now(UTC) + dt.timedelta(seconds=3)
    i = {"projectId": pid, "featureKey": "api_calls", "limit": "10", "expiresAt": expires.isoformat()}
    await gql.ok(OVERRIDE, {"i": i}, token=admin.token)
    await record(gql, owner, pid, "api_calls", 6)  # past the plan's 5, below the override's 10: nothing reached

    async def check_denies() -> bool:
        return not (await check(gql, owner, pid, "api_calls"))["hasAccess"]

    wait = (expires - dt.datetime.now(UTC)).total_seconds()
    await eventually(check_denies, "the check kept the expired override's limit", wait + 2)
    e = await check(gql, owner, pid, "api_calls")
    assert (e["limit"], D(e["usage"]), D(e["remaining"])) == ("5", D(6), D(0))
    # Well inside the meters' cache time (30 s): only an entry bounded by the expiry refuses here.
    body = await gql(RECORD, {"i": event(pid, "api_calls")}, token=owner.token)
    assert body.get("errors"), (
        "an event was accepted past the plan's limit after the override that raised it expired,"
        f" while the entitlement check denies: {body}"
    )
    assert body["errors"][0]["extensions"]["code"] == "QUOTA_EXCEEDED"


async def test_a_quota_from_a_plan_override_can_be_overridden_like_the_plans(gql: GQL, admin: SignedIn) -> None:
    """A project's monthly quota given by overridePlan (no planId) is a METERED feature it sees in
    entitlements(projectId); overrideEntitlement's limit must apply to it as to a plan's quota."""
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    calls = unique("calls")
    m = {"projectId": pid, "key": calls, "name": calls, "aggregation": "COUNT", "unitPrice": "0"}
    await gql.ok(DEFINE, {"i": m}, token=owner.token)
    quotas = [{"metric": calls, "limit": "2"}]
    await gql.ok(OVERRIDE_PLAN, {"i": {"projectId": pid, "monthlyQuotas": quotas}}, token=admin.token)
    seen = await check(gql, owner, pid, calls)
    assert (seen["type"], seen["limit"], seen["hasAccess"]) == ("METERED", "2", True)

    body = await gql(OVERRIDE, {"i": {"projectId": pid, "featureKey": calls, "limit": "3"}}, token=admin.token)
    assert not body.get("errors"), f"overrideEntitlement refused a limit on a METERED feature the project has: {body}"
    await record(gql, owner, pid, calls, 3)
    assert (await refused(gql, owner, pid, calls))["quota"] == 3


# -- 5. plan changes ------------------------------------------------------------------------------------


async def test_a_plan_update_reaches_every_instance_promptly(gql: GQL, admin: SignedIn, instance_b: Services) -> None:
    plan = await create_plan(gql, admin, [{"featureKey": "sso", "type": "BOOLEAN", "enabled": False}])
    owner, pid = await project_on(gql, admin, plan, {})
    assert (await check(gql, owner, pid, "sso"))["hasAccess"] is False
    assert (await on_b(instance_b, pid, "sso")).has_access is False  # cached on B
    audit = unique("audit")
    assert (await on_b(instance_b, pid, audit)).has_access is False

    entitlements = [
        {"featureKey": "sso", "type": "BOOLEAN", "enabled": True},
        {"featureKey": audit, "type": "CONFIG", "config": {"days": 90}},
    ]
    await gql.ok(UPDATE_PLAN, {"i": {"id": plan, "entitlements": entitlements}}, token=admin.token)
    assert (await check(gql, owner, pid, "sso"))["hasAccess"] is True

    async def b_sees_the_new_plan() -> bool:
        sso, cfg = await on_b(instance_b, pid, "sso"), await on_b(instance_b, pid, audit)
        return sso.has_access and (cfg.type, cfg.has_access, cfg.config) == ("CONFIG", True, {"days": 90})

    await eventually(b_sees_the_new_plan, "instance B kept the plan's entitlements from before updatePlan")
    stored = next(p for p in (await gql.ok(PLANS))["plans"] if p["id"] == plan)["entitlements"]
    assert [(e["featureKey"], e["type"], e["enabled"], e["config"]) for e in stored] == [
        ("sso", "BOOLEAN", True, None),
        (audit, "CONFIG", True, {"days": 90}),
    ]


# -- 6. DAY periods -------------------------------------------------------------------------------------


async def test_a_daily_metered_limit_counts_each_utc_day(gql: GQL, admin: SignedIn) -> None:
    plan = await create_plan(gql, admin, [metered("daily_logins", "logins", 2, "DAY")])
    owner, pid = await project_on(gql, admin, plan, {"logins": "COUNT"})
    now = dt.datetime.now(UTC)
    yesterday = now - dt.timedelta(days=1)
    await record(gql, owner, pid, "logins", 1, at=yesterday)  # another day's limit

    before = dt.datetime.now(UTC)
    e = await check(gql, owner, pid, "daily_logins")
    after = dt.datetime.now(UTC)
    assert (e["type"], e["hasAccess"], e["limit"], D(e["usage"]), D(e["remaining"])) == (
        "METERED",
        True,
        "2",
        D(0),
        D(2),
    )
    assert resets_between(e["resetsAt"], before, after, next_midnight), e["resetsAt"]

    await record(gql, owner, pid, "logins", 2)
    err = await refused(gql, owner, pid, "logins")
    assert (err["code"], err["quota"], err["period"]) == ("QUOTA_EXCEEDED", 2, "DAY")
    e = await check(gql, owner, pid, "daily_logins")
    assert (e["hasAccess"], D(e["usage"]), D(e["remaining"])) == (False, D(2), D(0))
    # Yesterday had one: a second event of yesterday still fits, a third does not.
    await record(gql, owner, pid, "logins", 1, at=yesterday)
    assert (await refused(gql, owner, pid, "logins", at=yesterday))["code"] == "QUOTA_EXCEEDED"


# -- 7. HTTP and API keys -------------------------------------------------------------------------------


async def test_http_entitlement_routes(gql: GQL, client: httpx.AsyncClient, admin: SignedIn) -> None:
    plan = await create_plan(
        gql,
        admin,
        [{"featureKey": "sso", "type": "BOOLEAN"}, {"featureKey": "limits", "type": "CONFIG", "config": {"seats": 3}}],
    )
    owner, pid = await project_on(gql, admin, plan, {})
    stranger, stranger_pid = await project_on(gql, admin, plan, {})

    async def key(scopes: list[str]) -> dict[str, str]:
        i = {"projectId": pid, "name": "server", "scopes": scopes}
        secret = (await gql.ok(CREATE_KEY, {"i": i}, token=owner.token))["createApiKey"]["secret"]
        return {"Authorization": f"Bearer {secret}"}

    reader, writer = await key(["entitlements:read"]), await key(["usage:write"])

    r = await client.get("/v1/entitlements/sso", headers=reader)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "featureKey": "sso",
        "type": "BOOLEAN",
        "hasAccess": True,
        "limit": None,
        "usage": None,
        "remaining": None,
        "config": None,
        "resetsAt": None,
    }
    r = await client.get("/v1/entitlements", headers=reader)
    assert r.status_code == 200, r.text
    listed = r.json()["entitlements"]
    assert [(e["featureKey"], e["hasAccess"], e["config"]) for e in listed] == [
        ("limits", True, {"seats": 3}),
        ("sso", True, None),
    ]
    r = await client.get(f"/v1/entitlements/{unique('nothing')}", headers=reader)
    assert (r.status_code, r.json()["hasAccess"], r.json()["type"]) == (200, False, "BOOLEAN")

    r = await client.get("/v1/entitlements/sso", headers=writer)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "FORBIDDEN")
    r = await client.get("/v1/entitlements", headers=writer)
    assert (r.status_code, r.json()["error"]["code"]) == (403, "FORBIDDEN")
    r = await client.get("/v1/entitlements/sso")
    assert (r.status_code, r.json()["error"]["code"]) == (401, "UNAUTHENTICATED")
    # A key naming another project than its own.
    r = await client.get("/v1/entitlements/sso", params={"projectId": stranger_pid}, headers=reader)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "NOT_FOUND")

    # A signed-in member names the project.
    as_owner = {"Authorization": f"Bearer {owner.token}"}
    r = await client.get("/v1/entitlements/sso", params={"projectId": pid}, headers=as_owner)
    assert (r.status_code, r.json()["hasAccess"]) == (200, True), r.text
    r = await client.get("/v1/entitlements", params={"projectId": pid}, headers=as_owner)
    assert (r.status_code, len(r.json()["entitlements"])) == (200, 2), r.text
    r = await client.get("/v1/entitlements/sso", headers=as_owner)
    assert (r.status_code, r.json()["error"]["code"]) == (400, "BAD_USER_INPUT")
    # Another tenant's project is not found (not forbidden: its existence is not revealed).
    for path in ("/v1/entitlements/sso", "/v1/entitlements"):
        r = await client.get(path, params={"projectId": stranger_pid}, headers=as_owner)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "NOT_FOUND"), r.text
    r = await client.get(
        "/v1/entitlements/sso", params={"projectId": pid}, headers={"Authorization": f"Bearer {stranger.token}"}
    )
    assert (r.status_code, r.json()["error"]["code"]) == (404, "NOT_FOUND"), r.text

    # GraphQL: the same scope gates the fields.
    ok = await gql.ok(ONE, {"p": pid, "k": "sso"}, headers=reader)
    assert ok["entitlement"]["hasAccess"] is True
    assert (await gql.error(ONE, {"p": pid, "k": "sso"}, headers=writer))["code"] == "FORBIDDEN"
    assert (await gql.error(ALL, {"p": pid}, headers=writer))["code"] == "FORBIDDEN"
    assert (await gql.error(ONE, {"p": pid, "k": "sso"}, token=stranger.token))["code"] == "NOT_FOUND"


# -- 8. refused plan input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entitlements", "field"),
    [
        ([{"featureKey": "api_calls", "type": "METERED", "limit": "5"}], "entitlements[0].metricKey"),
        ([{"featureKey": "api_calls", "type": "METERED", "metricKey": "api_calls"}], "entitlements[0].limit"),
        (
            [{"featureKey": "sso", "type": "BOOLEAN"}, {"featureKey": "sso", "type": "BOOLEAN"}],
            "entitlements[1].featureKey",
        ),
        ([{"featureKey": "Single Sign-On", "type": "BOOLEAN"}], "entitlements[0].featureKey"),
        ([{"featureKey": "", "type": "BOOLEAN"}], "entitlements[0].featureKey"),
        (
            [{"featureKey": "sso", "type": "BOOLEAN"}, {"featureKey": "limits", "type": "CONFIG"}],
            "entitlements[1].config",
        ),
        ([{"featureKey": "sso", "type": "BOOLEAN", "limit": "3"}], "entitlements[0].limit"),
    ],
)
async def test_bad_plan_entitlements_are_refused_and_nothing_is_written(
    gql: GQL, admin: SignedIn, settings: Settings, entitlements: list[dict[str, Any]], field: str
) -> None:
    name = unique("refused-plan")
    i = {
        "name": name,
        "tier": "PRO",
        "interval": "MONTH",
        "price": {"amount": 1000, "currency": "USD"},
        "entitlements": entitlements,
    }
    err = await gql.error(CREATE_PLAN, {"i": i}, token=admin.token)
    assert (err["code"], err.get("field")) == ("BAD_USER_INPUT", field), err
    assert await owner_sql(settings, "SELECT id FROM plans WHERE name = $1", name) == []

    # updatePlan: refused alike, and the plan keeps its entitlements (and no audit row is written).
    good = [{"featureKey": "kept", "type": "BOOLEAN"}]
    plan = await create_plan(gql, admin, good)
    err = await gql.error(UPDATE_PLAN, {"i": {"id": plan, "entitlements": entitlements}}, token=admin.token)
    assert (err["code"], err.get("field")) == ("BAD_USER_INPUT", field), err
    stored = next(p for p in (await gql.ok(PLANS))["plans"] if p["id"] == plan)["entitlements"]
    assert [(e["featureKey"], e["type"]) for e in stored] == [("kept", "BOOLEAN")]
    updates = await owner_sql(
        settings, "SELECT 1 FROM audit_log WHERE action = 'catalog.plan.update' AND target_id = $1", plan
    )
    assert updates == []
