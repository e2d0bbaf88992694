"""`ledgerx demo`: a project with life in it, seeded through the domain, idempotent."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

import pytest

from ledgerx import demo
from ledgerx.domain.billing import store
from ledgerx.domain.ledger import reads
from ledgerx.domain.payments import catalog, subscriptions
from ledgerx.domain.usage import metrics, summary
from ledgerx.ids import decode
from ledgerx.services import Services
from tests.conftest import GQL

PROJECT = """
query($id: ID!) { project(id: $id) { id name viewerRole } }
"""


async def test_demo_seeds_a_project_a_user_can_sign_in_to(services: Services, gql: GQL) -> None:
    report = await demo.seed(services)
    project_id = decode("project", report.project_id, "projectId")

    wallets = await reads.list_wallets(services.ledger, project_id, limit=10, after=None)
    assert sorted((w.name, w.balance) for w in wallets) == sorted((n, g) for n, g, _ in demo.WALLETS)
    assert {r.name for r in await store.list_rules(services.db, project_id, limit=10, after=None)} == {
        "Platform fee",
        "API usage",
    }
    assert report.events_recorded > 0
    effective = await subscriptions.effective_plan(services.payments, project_id)
    assert effective.plan is not None and effective.plan.name == demo.PLAN_NAME

    # The printed credentials sign in, and the project is theirs.
    out = "\n".join(report.lines())
    assert demo.EMAIL in out and demo.PASSWORD in out and report.project_id in out
    signed_in = await gql.ok(
        "mutation($e: String!, $p: String!) { logIn(input: {email: $e, password: $p}) { accessToken } }",
        {"e": demo.EMAIL, "p": demo.PASSWORD},
    )
    token = signed_in["logIn"]["accessToken"]
    data = await gql.ok(PROJECT, {"id": report.project_id}, headers={"Authorization": f"Bearer {token}"})
    assert data["project"] == {"id": report.project_id, "name": demo.PROJECT_NAME, "viewerRole": "OWNER"}


async def test_demo_twice_adds_nothing(services: Services) -> None:
    first = await demo.seed(services)
    project_id = decode("project", first.project_id, "projectId")
    usage_before = await _usage_total(services, project_id)
    assert sum(events for _, events in usage_before) == first.events_recorded + first.events_already_there

    again = await demo.seed(services)

    assert again.created == []
    assert again.project_id == first.project_id
    assert again.wallets == first.wallets  # same wallets, same balances: the grants were not repeated
    assert again.events_recorded == 0
    assert again.events_already_there == first.events_recorded + first.events_already_there
    assert await _usage_total(services, project_id) == usage_before
    assert len(await store.list_rules(services.db, project_id, limit=10, after=None)) == 2
    plans = [p for p in await catalog.list_plans(services.payments) if p.name == demo.PLAN_NAME]
    assert len(plans) == 1


async def test_demo_refuses_production(services: Services) -> None:
    prod = dataclasses.replace(services, settings=dataclasses.replace(services.settings, env="production"))
    with pytest.raises(demo.DemoError, match="production"):
        await demo.seed(prod)


async def _usage_total(services: Services, project_id: uuid.UUID) -> list[tuple[str, int]]:
    """(units, events) per day of the demo metric over the seeded fortnight."""
    metric = await metrics.get_metric(services.db, project_id, demo.METRIC_KEY)
    end = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    points = await summary.usage_summary(
        services.db, metric, start=end - dt.timedelta(days=30), end=end, granularity="DAY", timezone="UTC"
    )
    return [(str(p.units), p.events) for p in points if p.events]
