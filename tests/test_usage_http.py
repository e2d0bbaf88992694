"""POST /v1/usage: bulk ingestion with an API key, partial rejection, limits, errors, concurrency."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ledgerx.app import create_app
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, LiveServer, SignedIn, sign_up
from tests.tenancy_helpers import create_project
from tests.test_usage_helpers import api_key, define, fast_settings, owner_fetch, pid


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return fast_settings(settings)


@dataclasses.dataclass
class Env:
    client: httpx.AsyncClient
    gql: GQL
    project_id: str
    key: str
    services: Services
    owner: SignedIn


@pytest.fixture
async def env(gql: GQL, client: httpx.AsyncClient, services: Services) -> Env:
    owner = await sign_up(gql)
    p = await create_project(gql, owner)
    await define(gql, owner, p, "api_calls")
    await define(gql, owner, p, "seats", aggregation="UNIQUE", unique_property="seat")
    key = await api_key(gql, owner, p, ["usage:write"])
    await limit_project(services, p, burst=1_000_000)
    return Env(client, gql, p, key, services, owner)


async def limit_project(services: Services, project_id: str, *, burst: int, per_second: float = 1_000_000.0) -> None:
    """The project's own gateway limit (an override beats plans other tests may have made default)."""
    limit = json.dumps({"rateLimit": {"burst": burst, "perSecond": per_second}})
    await owner_fetch(services, "UPDATE projects SET overrides = $2::jsonb WHERE id = $1", pid(project_id), limit)


def events(n: int, prefix: str = "e", **extra: Any) -> list[dict[str, Any]]:
    return [{"metricKey": "api_calls", "units": 1, "idempotencyKey": f"{prefix}{i}", **extra} for i in range(n)]


async def post(env: Env, body: Any, *, key: str | None = None, header: str = "Authorization") -> httpx.Response:
    secret = env.key if key is None else key
    headers = {"Authorization": f"Bearer {secret}"} if header == "Authorization" else {"X-Api-Key": secret}
    if not secret:
        headers = {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await env.client.post("/v1/usage", content=content, headers={**headers, "Content-Type": "application/json"})


async def stored(env: Env) -> int:
    rows = await owner_fetch(
        env.services, "SELECT count(*) AS n FROM usage_events WHERE project_id = $1", pid(env.project_id)
    )
    return int(rows[0]["n"])


async def test_post_usage_accepts_rejects_and_dedupes(env: Env) -> None:
    old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=60)).isoformat()
    body = {
        "events": [
            *events(3),
            {"metricKey": "api_calls", "units": 1, "idempotencyKey": "e1"},  # 3: duplicate in the batch
            {"metricKey": "nope", "units": 1, "idempotencyKey": "x1"},  # 4
            {"metricKey": "api_calls", "units": -1, "idempotencyKey": "x2"},  # 5
            {"metricKey": "api_calls", "units": 1, "idempotencyKey": "x3", "occurredAt": old},  # 6
            {"metricKey": "api_calls", "units": 0.1, "idempotencyKey": "f1"},  # 7: JSON float, exact
            {"metricKey": "seats", "units": 1, "idempotencyKey": "s1", "properties": {"seat": "a"}},  # 8
            {"metricKey": "seats", "units": 1, "idempotencyKey": "s2"},  # 9: no seat
            42,  # 10
        ]
    }
    r = await post(env, body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    out = r.json()
    assert (out["accepted"], out["duplicates"]) == (5, 1)
    assert [(x["index"], x["code"], x.get("field"), x.get("reason")) for x in out["rejected"]] == [
        (4, "NOT_FOUND", "metricKey", None),
        (5, "BAD_USER_INPUT", "units", None),
        (6, "BAD_USER_INPUT", "occurredAt", "OCCURRED_AT_TOO_OLD"),
        (9, "BAD_USER_INPUT", "properties", None),
        (10, "BAD_USER_INPUT", "events", None),
    ]
    assert all(x["message"] for x in out["rejected"])
    units = await owner_fetch(
        env.services,
        "SELECT units FROM usage_events WHERE project_id = $1 AND idempotency_key = 'f1'",
        pid(env.project_id),
    )
    assert str(units[0]["units"]) == "0.1"

    # The same batch again (X-Api-Key this time): everything good is a duplicate now.
    r = await post(env, body, header="X-Api-Key")
    assert r.json()["accepted"] == 0 and r.json()["duplicates"] == 6
    assert await stored(env) == 5


async def test_post_usage_errors_are_json_with_codes(env: Env, gql: GQL) -> None:
    owner = env.owner
    reader = await api_key(gql, owner, env.project_id, ["usage:read"])
    r = await post(env, {"events": events(1)}, key=reader)
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "FORBIDDEN" and r.json()["error"]["scope"] == "usage:write"

    r = await post(env, {"events": events(1)}, key="")
    assert (r.status_code, r.json()["error"]["code"]) == (401, "UNAUTHENTICATED")
    r = await post(env, {"events": events(1)}, key="lx_000000000000_" + "A" * 43)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "UNAUTHENTICATED")

    for bad in (b"{not json", b"[]", b'{"events": 3}', b'"x"'):
        r = await post(env, bad)
        assert (r.status_code, r.json()["error"]["code"]) == (400, "BAD_USER_INPUT"), bad

    # An API key acts for its own project only.
    other = await create_project(gql, owner)
    r = await post(env, {"projectId": other, "events": events(1)})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "NOT_FOUND")

    # A signed-in member names the project; without it the request is refused.
    r = await env.client.post(
        "/v1/usage",
        json={"projectId": env.project_id, "events": events(2, "u")},
        headers={"Authorization": f"Bearer {owner.token}"},
    )
    assert (r.status_code, r.json()["accepted"]) == (200, 2)
    r = await env.client.post(
        "/v1/usage", json={"events": events(1)}, headers={"Authorization": f"Bearer {owner.token}"}
    )
    assert (r.status_code, r.json()["error"]["field"]) == (400, "projectId")
    stranger = await sign_up(gql)
    r = await env.client.post(
        "/v1/usage",
        json={"projectId": env.project_id, "events": events(1)},
        headers={"Authorization": f"Bearer {stranger.token}"},
    )
    assert r.status_code == 404
    assert (await env.client.get("/v1/usage", headers={"X-Api-Key": env.key})).status_code == 405


async def test_ten_thousand_events_per_request_and_no_more(env: Env) -> None:
    r = await post(env, {"events": events(10_000)})
    assert r.status_code == 200 and r.json() == {"accepted": 10_000, "duplicates": 0, "rejected": [], "overage": 0}
    r = await post(env, {"events": events(10_001, "z")})
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "BAD_USER_INPUT" and r.json()["error"]["reason"] == "BATCH_TOO_LARGE"
    assert await stored(env) == 10_000


@pytest.fixture
async def tiny_body(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    svc = Services.build(dataclasses.replace(settings, usage_max_body_bytes=2048))
    transport = httpx.ASGITransport(app=create_app(svc.settings, svc))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        yield c
    await svc.close()


async def test_body_size_limit(env: Env, tiny_body: httpx.AsyncClient) -> None:
    r = await tiny_body.post("/v1/usage", json={"events": events(100)}, headers={"X-Api-Key": env.key})
    assert r.status_code == 413 and r.json()["error"]["reason"] == "BATCH_TOO_LARGE"
    r = await tiny_body.post("/v1/usage", json={"events": events(3)}, headers={"X-Api-Key": env.key})
    assert r.status_code == 200 and r.json()["accepted"] == 3


async def test_concurrent_posts_with_overlapping_keys_over_real_http(env: Env, live_server: LiveServer) -> None:
    # Eight requests at once; keys overlap between them and repeat inside them.
    bodies = []
    for b in range(8):
        keys = [f"k{(b * 700 + i) % 3000}" for i in range(1500)] + [f"k{b}"] * 5
        bodies.append({"events": [{"metricKey": "api_calls", "units": 1, "idempotencyKey": k} for k in keys]})
    async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as c:
        responses = await asyncio.gather(
            *[c.post("/v1/usage", json=body, headers={"X-Api-Key": env.key}) for body in bodies]
        )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    results = [r.json() for r in responses]
    distinct = {e["idempotencyKey"] for body in bodies for e in body["events"]}
    assert sum(r["accepted"] for r in results) == len(distinct) == await stored(env)
    assert sum(r["accepted"] + r["duplicates"] for r in results) == sum(len(b["events"]) for b in bodies)
    rolled = await owner_fetch(
        env.services,
        "SELECT sum(events) AS n FROM usage_rollups WHERE project_id = $1 AND width = 1",
        pid(env.project_id),
    )
    assert rolled[0]["n"] == len(distinct)


async def test_gateway_limit_headers_and_429(settings: Settings) -> None:
    strict = Services.build(dataclasses.replace(settings, rate_limit_burst=4, rate_limit_per_second=1.0))
    try:
        transport = httpx.ASGITransport(app=create_app(strict.settings, strict))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            gql = GQL(c)
            owner = await sign_up(gql)
            p = await create_project(gql, owner)
            await define(gql, owner, p, "api_calls")
            key = await api_key(gql, owner, p, ["usage:write"])
            await limit_project(strict, p, burst=4, per_second=1.0)
            statuses = []
            for n in range(5):
                r = await c.post("/v1/usage", json={"events": events(1, f"g{n}-")}, headers={"X-Api-Key": key})
                statuses.append(r.status_code)
                assert r.headers["RateLimit-Limit"] == "4"
                assert "RateLimit-Remaining" in r.headers and "RateLimit-Reset" in r.headers
            assert statuses == [200, 200, 200, 200, 429]
            assert r.json()["error"]["code"] == "RATE_LIMITED" and int(r.headers["Retry-After"]) >= 1
    finally:
        await strict.close()


async def test_recorded_batches_are_announced_after_commit(env: Env) -> None:
    from ledgerx.domain import topics

    async with env.services.events.subscribe(topics.project_usage(pid(env.project_id))) as sub:
        r = await post(env, {"events": events(7, "bus") + events(2, "bus")})
        assert r.json()["accepted"] == 7
        event = await asyncio.wait_for(sub.__anext__(), 5)
    assert (event["type"], event["count"], event["metricKeys"]) == ("usage.recorded", 7, ["api_calls"])


@pytest.mark.parametrize("units", [" 5", "5 ", "٣", "５", "1e3", "1_0", "NaN", "Infinity", "+5", ".5", ""])
async def test_post_usage_units_as_text_are_plain_ascii_decimals(env: Env, units: str) -> None:
    """The same rule as the GraphQL Decimal scalar: Python's Decimal() would take all of these."""
    r = await post(env, {"events": [{"metricKey": "api_calls", "units": units, "idempotencyKey": "t1"}]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["accepted"] == 0
    assert [(x["index"], x["code"], x.get("field")) for x in out["rejected"]] == [(0, "BAD_USER_INPUT", "units")]
    assert await stored(env) == 0
    ok = await post(env, {"events": [{"metricKey": "api_calls", "units": "2.50", "idempotencyKey": "t2"}]})
    assert ok.json()["accepted"] == 1
