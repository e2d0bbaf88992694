"""GET /metrics: pools, backlogs, per-operation latency, process metrics, route labels, access."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import secrets
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ledgerx import metrics
from ledgerx.app import create_app
from ledgerx.ids import uuid7
from ledgerx.services import Services
from ledgerx.settings import Settings, SettingsError
from tests.tenancy_helpers import owner_sql

TOKEN = "metrics-" + "x" * 24


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Small pools, so a test can fill one: orm 2 (+2 overflow), raw 2.
    return dataclasses.replace(settings, db_pool_size=2)


@pytest.fixture(autouse=True)
def _fresh_backlogs(monkeypatch: pytest.MonkeyPatch) -> None:
    # Backlogs are read at most every BACKLOG_TTL seconds per process; these tests read each time.
    monkeypatch.setattr(metrics, "BACKLOG_TTL", 0.0, raising=False)


async def scrape(client: httpx.AsyncClient, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = await client.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_process_metrics_are_exported(client: httpx.AsyncClient) -> None:
    s = await scrape(client)
    assert (value(s, "process_resident_memory_bytes") or 0) > 0
    assert (value(s, "process_cpu_seconds_total") or 0) > 0
    assert (value(s, "process_open_fds") or 0) > 0
    assert any(name == "python_info" for name, _ in s)
    assert any(name == "python_gc_collections_total" for name, _ in s)


async def test_pool_gauges_show_connections_in_use_and_waiters(client: httpx.AsyncClient, services: Services) -> None:
    release = asyncio.Event()
    held = 0

    async def hold_orm() -> None:
        nonlocal held
        async with services.db.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")
            held += 1
            await release.wait()

    async def hold_raw() -> None:
        async with services.db.raw() as conn:
            await conn.execute("SELECT 1")
            await release.wait()

    # The orm pool opens 4 at most (2 + 2 overflow): 4 are lent out, 2 more tasks wait.
    tasks = [asyncio.create_task(hold_orm()) for _ in range(6)] + [asyncio.create_task(hold_raw())]
    try:
        for _ in range(200):
            if held == 4:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        s = await scrape(client)
        assert value(s, "ledgerx_db_pool_size", pool="orm") == 4
        assert value(s, "ledgerx_db_pool_in_use", pool="orm") == 4
        assert value(s, "ledgerx_db_pool_waiting", pool="orm") == 2
        assert value(s, "ledgerx_db_pool_connections", pool="orm") == 4
        assert value(s, "ledgerx_db_pool_size", pool="raw") == 2
        assert value(s, "ledgerx_db_pool_in_use", pool="raw") == 1
        assert value(s, "ledgerx_db_pool_waiting", pool="raw") == 0
    finally:
        release.set()
        await asyncio.gather(*tasks)
    s = await scrape(client)
    assert value(s, "ledgerx_db_pool_in_use", pool="orm") == 0
    assert value(s, "ledgerx_db_pool_waiting", pool="orm") == 0


async def test_backlog_gauges(client: httpx.AsyncClient, settings: Settings) -> None:
    before = await scrape(client)
    hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    await owner_sql(
        settings,
        "INSERT INTO webhook_events (id, stripe_event_id, type, created, payload, status, received_at)"
        " VALUES ($1, $2, 'test.event', now(), $3::jsonb, 'PENDING', $4)",
        uuid7(),
        f"evt_{secrets.token_hex(8)}",
        json.dumps({"id": "evt"}),
        hour_ago,
    )
    await owner_sql(
        settings,
        "INSERT INTO mail_outbox (id, to_addr, subject, body_text, kind, created_at)"
        " VALUES ($1, 'x@example.com', 's', 'b', 'test', $2)",
        uuid7(),
        hour_ago,
    )
    after = await scrape(client)
    for name in ("ledgerx_webhook_inbox_depth", "ledgerx_mail_outbox_backlog"):
        assert value(after, name) == (value(before, name) or 0) + 1, name
    assert (value(after, "ledgerx_webhook_inbox_oldest_age_seconds") or 0) >= 3600
    assert (value(after, "ledgerx_mail_outbox_oldest_age_seconds") or 0) >= 3600
    assert value(after, "ledgerx_scheduler_lag_seconds") is not None
    await owner_sql(settings, "UPDATE webhook_events SET status = 'PROCESSED' WHERE status = 'PENDING'")
    assert value(await scrape(client), "ledgerx_webhook_inbox_depth") == 0


async def test_operation_latency_by_name_with_bounded_labels(client: httpx.AsyncClient) -> None:
    async def post(query: str, operation: str | None = None) -> None:
        body: dict[str, object] = {"query": query}
        if operation is not None:
            body["operationName"] = operation
        r = await client.post("/graphql", json=body)
        assert r.status_code in (200, 400), r.text

    def count(s: dict[tuple[str, tuple[tuple[str, str], ...]], float], op: str) -> float:
        return value(s, "ledgerx_graphql_operation_seconds_count", operation=op) or 0

    before = await scrape(client)
    await post("query DashboardVersion { version }")
    await post("query DashboardVersion { version }")
    await post("{ version }")
    await post("query A { version } query B { version }", "NotInTheDocument")
    after = await scrape(client)
    assert count(after, "DashboardVersion") == count(before, "DashboardVersion") + 2
    assert count(after, "anonymous") == count(before, "anonymous") + 1
    assert count(after, "NotInTheDocument") == 0  # a name the document lacks is never a label

    # A client inventing names cannot grow the series without bound: past the cap they are "other".
    for _ in range(metrics.MAX_OPERATION_LABELS + 20):
        await post(f"query Made{secrets.token_hex(6)} {{ version }}")
    final = await scrape(client)
    labels = {dict(k[1])["operation"] for k in final if k[0] == "ledgerx_graphql_operation_seconds_count"}
    assert len(labels) <= metrics.MAX_OPERATION_LABELS + 2
    assert count(final, "other") >= count(after, "other") + 20
    assert count(final, "DashboardVersion") == count(after, "DashboardVersion")  # known names keep theirs
    await post("query DashboardVersion { version }")
    assert count(await scrape(client), "DashboardVersion") == count(after, "DashboardVersion") + 1


async def test_dashboard_assets_and_favicon_have_route_labels(client: httpx.AsyncClient) -> None:
    before = await scrape(client)
    assert (await client.get("/dashboard/console/app.js")).status_code == 200
    assert (await client.get("/dashboard/console/pages/wallets.js")).status_code == 200
    assert (await client.get("/dashboard/dashboard.css")).status_code == 200
    favicon = (await client.get("/favicon.ico")).status_code
    assert favicon == 200
    after = await scrape(client)

    def n(s: dict[tuple[str, tuple[tuple[str, str], ...]], float], route: str, status: str) -> float:
        return value(s, "ledgerx_http_requests_total", route=route, status=status) or 0

    console = "/dashboard/console/{path}"
    assert n(after, console, "200") == n(before, console, "200") + 2
    assert n(after, "/dashboard/dashboard.css", "200") == n(before, "/dashboard/dashboard.css", "200") + 1
    assert n(after, "/favicon.ico", str(favicon)) == n(before, "/favicon.ico", str(favicon)) + 1


@contextlib.asynccontextmanager
async def app_client(services: Services, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(settings, services), client=("203.0.113.9", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def test_metrics_token_guards_the_route(services: Services, settings: Settings) -> None:
    async with app_client(services, dataclasses.replace(settings, metrics_token=TOKEN)) as c:
        r = await c.get("/metrics")
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "ledgerx_" not in r.text
        assert (
            await c.get("/metrics", headers={"Authorization": "Bearer wrong-token-of-some-length"})
        ).status_code == 401
        assert (await c.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})).status_code == 401
        ok = await c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert "ledgerx_db_pool_in_use" in ok.text


async def test_metrics_are_off_in_production_without_a_token(services: Services, settings: Settings) -> None:
    prod = dataclasses.replace(settings, env="production", metrics_token=None)
    async with app_client(services, prod) as c:
        r = await c.get("/metrics")
        assert r.status_code == 404
        assert "ledgerx_" not in r.text
    async with app_client(services, dataclasses.replace(prod, metrics_token=TOKEN)) as c:
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200


def test_metrics_token_setting() -> None:
    assert Settings.from_env({"METRICS_TOKEN": TOKEN}).metrics_token == TOKEN
    assert Settings.from_env({}).metrics_token is None
    for bad in ("short", "has a space in it ......", "ünïcödé-token-0123456789"):
        with pytest.raises(SettingsError, match="METRICS_TOKEN"):
            Settings.from_env({"METRICS_TOKEN": bad})
