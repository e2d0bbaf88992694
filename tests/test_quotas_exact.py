"""Monthly quotas are exact under concurrency, across instances, and never count a duplicate or a
rolled-back event; a repeated idempotency key is not a database error anywhere on the usage path."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from ledgerx.app import create_app
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, sign_up
from tests.tenancy_helpers import create_project, make_platform_admin
from tests.test_quotas import BATCH, DEFINE, OVERRIDE, RECORD, _batch_event, _event, _project_with_quota
from tests.test_usage_helpers import api_key, define, owner_fetch, pid, wallet

CONCURRENT = 50


@pytest.fixture
async def second(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    """A second app instance: its own Services (pools, caches, batchers) on the same database and Redis."""
    other = Services.build(services.settings)
    transport = httpx.ASGITransport(app=create_app(other.settings, other), client=("203.0.113.8", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
    await other.close()


async def _used(services: Services, project_id: str) -> tuple[int, int]:
    rows = await owner_fetch(
        services,
        "SELECT count(*) AS n, coalesce(sum(units), 0) AS u FROM usage_events WHERE project_id = $1",
        pid(project_id),
    )
    return int(rows[0]["n"]), int(rows[0]["u"])


async def _rolled_up(services: Services, project_id: str) -> int:
    rows = await owner_fetch(
        services,
        "SELECT coalesce(sum(units_sum), 0) AS u FROM usage_rollups WHERE project_id = $1 AND width = 15",
        pid(project_id),
    )
    return int(rows[0]["u"])


async def test_fifty_concurrent_record_usage_on_two_instances_accept_exactly_the_quota(
    gql: GQL, settings: Settings, services: Services, second: httpx.AsyncClient
) -> None:
    token, project = await _project_with_quota(gql, settings, quota=100)
    clients = [gql, GQL(second)]
    bodies = await asyncio.gather(
        *(clients[i % 2](RECORD, {"i": _event(project, "10")}, token=token) for i in range(CONCURRENT))
    )
    accepted = [b for b in bodies if not b.get("errors")]
    refused = [b["errors"][0]["extensions"]["code"] for b in bodies if b.get("errors")]
    assert len(accepted) == 10, bodies
    assert refused == ["QUOTA_EXCEEDED"] * (CONCURRENT - 10)
    assert await _used(services, project) == (10, 100)
    assert await _rolled_up(services, project) == 100


@pytest.mark.parametrize("path", ["recordUsageBatch", "POST /v1/usage"])
async def test_fifty_concurrent_batches_on_two_instances_accept_exactly_the_quota(
    gql: GQL, settings: Settings, services: Services, second: httpx.AsyncClient, path: str
) -> None:
    token, project = await _project_with_quota(gql, settings, quota=100)
    secret = await api_key(gql, _as(token), project, ["usage:write"])
    clients = [gql.client, second]

    async def send(i: int) -> tuple[int, int, int]:
        # Two events of 10 units and one of 0 (which always fits) per request.
        events = [_batch_event("10"), _batch_event("10"), _batch_event("0")]
        if path == "recordUsageBatch":
            body = await GQL(clients[i % 2])(BATCH, {"i": {"projectId": project, "events": events}}, token=token)
            r = body["data"]["recordUsageBatch"]
        else:
            resp = await clients[i % 2].post(
                "/v1/usage", json={"events": events}, headers={"Authorization": f"Bearer {secret}"}
            )
            assert resp.status_code == 200, resp.text
            r = resp.json()
        assert {x["code"] for x in r["rejected"]} <= {"QUOTA_EXCEEDED"}, r
        return r["accepted"], len(r["rejected"]), r["duplicates"]

    results = await asyncio.gather(*(send(i) for i in range(CONCURRENT)))
    assert sum(a for a, _, _ in results) == 10 + CONCURRENT  # ten events of 10, and every 0
    assert sum(r for _, r, _ in results) == 2 * CONCURRENT - 10
    assert sum(d for _, _, d in results) == 0
    assert await _used(services, project) == (10 + CONCURRENT, 100)
    assert await _rolled_up(services, project) == 100


async def test_concurrent_replays_do_not_count_twice(
    gql: GQL, settings: Settings, services: Services, second: httpx.AsyncClient
) -> None:
    token, project = await _project_with_quota(gql, settings, quota=100)
    clients = [gql, GQL(second)]
    first = [_event(project, "10") for _ in range(5)]
    # Every event sent four times at once (single and batch, both instances): stored once, counted once.
    calls = []
    for i, ev in enumerate(first * 4):
        c = clients[i % 2]
        if i % 3:
            calls.append(c(RECORD, {"i": ev}, token=token))
        else:
            batch = {"projectId": project, "events": [{k: v for k, v in ev.items() if k != "projectId"}]}
            calls.append(c(BATCH, {"i": batch}, token=token))
    bodies = await asyncio.gather(*calls)
    assert not [b for b in bodies if b.get("errors")], bodies
    assert await _used(services, project) == (5, 50)
    # So exactly five more fit, and not a sixth.
    for _ in range(5):
        await gql.ok(RECORD, {"i": _event(project, "10")}, token=token)
    assert (await gql.error(RECORD, {"i": _event(project, "10")}, token=token))["code"] == "QUOTA_EXCEEDED"


async def test_a_rolled_back_event_consumes_no_quota(gql: GQL, settings: Settings, services: Services) -> None:
    owner = await sign_up(gql)
    project = await create_project(gql, owner)
    token = owner.token
    await define(gql, owner, project, "api_calls", unit_price="1")
    admin = await make_platform_admin(gql, settings)
    quotas = [{"metric": "api_calls", "limit": 100}]
    await gql.ok(OVERRIDE, {"i": {"projectId": project, "monthlyQuotas": quotas, "reason": "t"}}, token=admin.token)
    poor = await wallet(gql, owner, project, funds=5)
    ev = {**_event(project, "100"), "walletId": poor}
    assert (await gql.error(RECORD, {"i": ev}, token=token))["code"] == "INSUFFICIENT_FUNDS"
    assert await _used(services, project) == (0, 0)
    r = await gql.ok(RECORD, {"i": _event(project, "100")}, token=token)
    assert r["recordUsage"]["overage"] is False


def _as(token: str) -> SignedIn:
    """The project's owner, for helpers that only use the token."""
    return SignedIn(token, "", "", "", "")


# -- a repeated key is not a database error ------------------------------------------------------


def _count_errors(services: Services) -> Callable[[], list[str]]:
    """Every statement of this instance's pool that PostgreSQL answered with an error."""
    errors: list[str] = []

    def logger(record: Any) -> None:
        if record.exception is not None:
            errors.append(f"{type(record.exception).__name__}: {record.exception}")

    @event.listens_for(services.db.engine.sync_engine, "connect")
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.driver_connection.add_query_logger(logger)

    return lambda: errors


async def test_repeated_usage_keys_are_not_database_errors(settings: Settings) -> None:
    svc = Services.build(settings)
    errors = _count_errors(svc)
    transport = httpx.ASGITransport(app=create_app(settings, svc), client=("203.0.113.9", 5555))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            gql = GQL(c)
            token, project = await _project_with_quota(gql, settings, quota=1_000_000)
            secret = await api_key(gql, _as(token), project, ["usage:write"])
            ev = _event(project, "1")
            batch = [_batch_event("1") for _ in range(3)]
            for _ in range(2):
                await gql.ok(RECORD, {"i": ev}, token=token)
                await gql.ok(BATCH, {"i": {"projectId": project, "events": batch}}, token=token)
                r = await c.post("/v1/usage", json={"events": batch}, headers={"Authorization": f"Bearer {secret}"})
                assert r.status_code == 200
            # A key stored by one request and repeated inside another batch with new keys.
            mixed = [*batch, _batch_event("1")]
            r = await c.post("/v1/usage", json={"events": mixed}, headers={"Authorization": f"Bearer {secret}"})
            assert r.json()["accepted"] == 1 and r.json()["duplicates"] == 3
            # Defining a metric key twice is the caller's CONFLICT, not a database error either.
            again = {"projectId": project, "key": "api_calls", "name": "x", "aggregation": "SUM", "unitPrice": "0"}
            assert (await gql.error(DEFINE, {"i": again}, token=token))["code"] == "CONFLICT"
            assert errors() == []
    finally:
        await svc.close()
