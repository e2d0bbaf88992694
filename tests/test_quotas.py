"""Monthly quotas per metric from the plan: blocked past the quota, or accepted and flagged as overage."""

from __future__ import annotations

import uuid

import pytest

from ledgerx import ids
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, sign_up
from tests.tenancy_helpers import create_project, make_platform_admin, owner_sql

DEFINE = "mutation($i: DefineMetricInput!) { defineMetric(input: $i) { key } }"
RECORD = "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { duplicate overage event { units } } }"
BATCH = """mutation($i: RecordUsageBatchInput!) {
  recordUsageBatch(input: $i) { accepted duplicates overage rejected { index code field } } }"""
OVERRIDE = "mutation($i: OverridePlanInput!) { overridePlan(input: $i) { source } }"


async def _project_with_quota(gql: GQL, settings: Settings, quota: int, policy: str | None = None) -> tuple[str, str]:
    """A project whose plan (a platform-admin override) allows `quota` api_calls a month; returns (token, id)."""
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    for key, agg in (("api_calls", "SUM"), ("logins", "COUNT"), ("peak", "MAX")):
        await gql.ok(
            DEFINE,
            {"i": {"projectId": pid, "key": key, "name": key, "aggregation": agg, "unitPrice": "0"}},
            token=owner.token,
        )
    admin = await make_platform_admin(gql, settings)
    quotas = [{"metric": "api_calls", "limit": quota}, {"metric": "logins", "limit": 2}, {"metric": "peak", "limit": 1}]
    await gql.ok(OVERRIDE, {"i": {"projectId": pid, "monthlyQuotas": quotas, "reason": "test"}}, token=admin.token)
    if policy:
        await owner_sql(
            settings,
            "UPDATE projects SET overrides = jsonb_set(overrides, '{quotaPolicy}', to_jsonb($2::text)) WHERE id = $1",
            ids.decode("project", pid),
            policy,
        )
    return owner.token, pid


def _event(pid: str, units: str, metric: str = "api_calls") -> dict[str, object]:
    return {"projectId": pid, "metricKey": metric, "units": units, "idempotencyKey": uuid.uuid4().hex}


def _batch_event(units: str, metric: str = "api_calls") -> dict[str, object]:
    return {"metricKey": metric, "units": units, "idempotencyKey": uuid.uuid4().hex}


async def test_nested_input_errors_are_bad_user_input(gql: GQL, settings: Settings) -> None:
    token, pid = await _project_with_quota(gql, settings, quota=10)
    err = await gql.error(BATCH, {"i": {"projectId": pid, "events": [_event(pid, "1")]}}, token=token)
    assert err["code"] == "BAD_USER_INPUT" and "projectId" in err["message"]


async def test_record_usage_is_refused_past_the_quota_and_stores_nothing(gql: GQL, settings: Settings) -> None:
    token, pid = await _project_with_quota(gql, settings, quota=10)
    assert (await gql.ok(RECORD, {"i": _event(pid, "6")}, token=token))["recordUsage"]["overage"] is False
    assert (await gql.ok(RECORD, {"i": _event(pid, "4")}, token=token))["recordUsage"]["overage"] is False  # exactly 10
    refused = _event(pid, "0.5")
    err = await gql.error(RECORD, {"i": refused}, token=token)
    assert err["code"] == "QUOTA_EXCEEDED" and err["quota"] == 10 and err["field"] == "metricKey"
    stored = await owner_sql(
        settings, "SELECT count(*) AS n FROM usage_events WHERE idempotency_key = $1", refused["idempotencyKey"]
    )
    assert stored[0]["n"] == 0
    # A metric without a quota, and MAX metrics (which take no quota), are not affected.
    await gql.ok(RECORD, {"i": _event(pid, "100", "peak")}, token=token)


async def test_count_quota_counts_events(gql: GQL, settings: Settings) -> None:
    token, pid = await _project_with_quota(gql, settings, quota=10)
    await gql.ok(RECORD, {"i": _event(pid, "50", "logins")}, token=token)
    await gql.ok(RECORD, {"i": _event(pid, "50", "logins")}, token=token)
    assert (await gql.error(RECORD, {"i": _event(pid, "1", "logins")}, token=token))["code"] == "QUOTA_EXCEEDED"


async def test_replaying_an_accepted_event_is_not_refused(gql: GQL, settings: Settings) -> None:
    token, pid = await _project_with_quota(gql, settings, quota=5)
    ev = _event(pid, "5")
    await gql.ok(RECORD, {"i": ev}, token=token)
    again = (await gql.ok(RECORD, {"i": ev}, token=token))["recordUsage"]
    assert again["duplicate"] is True


async def test_batch_rejects_only_the_events_past_the_quota(gql: GQL, settings: Settings) -> None:
    token, pid = await _project_with_quota(gql, settings, quota=10)
    events = [_batch_event("4"), _batch_event("4"), _batch_event("4"), _batch_event("2"), _batch_event("1", "peak")]
    r = (await gql.ok(BATCH, {"i": {"projectId": pid, "events": events}}, token=token))["recordUsageBatch"]
    # 4 + 4 fit, the third 4 would make 12, the 2 makes exactly 10; peak has no quota.
    assert r["accepted"] == 4 and r["overage"] == 0
    assert r["rejected"] == [{"index": 2, "code": "QUOTA_EXCEEDED", "field": "units"}]


async def test_overage_policy_accepts_and_flags(gql: GQL, settings: Settings, services: Services) -> None:
    token, pid = await _project_with_quota(gql, settings, quota=3, policy="OVERAGE")
    assert (await gql.ok(RECORD, {"i": _event(pid, "3")}, token=token))["recordUsage"]["overage"] is False
    flagged = (await gql.ok(RECORD, {"i": _event(pid, "1")}, token=token))["recordUsage"]
    assert flagged["overage"] is True and flagged["event"]["units"] == "1"
    r = await gql.ok(BATCH, {"i": {"projectId": pid, "events": [_batch_event("1"), _batch_event("1")]}}, token=token)
    assert r["recordUsageBatch"]["accepted"] == 2 and r["recordUsageBatch"]["overage"] == 2


@pytest.mark.parametrize("policy", ["BLOCK", "OVERAGE"])
async def test_no_quota_means_unlimited(gql: GQL, settings: Settings, policy: str) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    await gql.ok(
        DEFINE,
        {"i": {"projectId": pid, "key": "api_calls", "name": "x", "aggregation": "SUM", "unitPrice": "0"}},
        token=owner.token,
    )
    r = (await gql.ok(RECORD, {"i": _event(pid, "1000000")}, token=owner.token))["recordUsage"]
    assert r["overage"] is False
