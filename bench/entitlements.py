"""Entitlement checks: `GET /v1/entitlements/{featureKey}` with an API key (scope `entitlements:read`)
against a bare Starlette route returning a constant JSON answer of the same shape, and the
in-process check cache (`Services.entitlements`, domain/entitlements/checks.py).

1. HTTP: LedgerX and the bare app are each served by the same number of uvicorn processes
   (bench/_serve.py, one SO_REUSEPORT socket per process) and loaded by the same keep-alive client
   (bench/_http.py) with the same concurrency, after a warm-up (the first request of each instance
   fills its check cache). Prints requests/s, p50/p99 for both and the ratio LedgerX/bare.
2. In process: `check(project_id, key)` and the sync `cached(project_id, key)` timed one call at a
   time once the cache is filled: p50/p99 in microseconds.
3. Where a request's time goes: each step the route takes (API key authentication, gateway
   admission, the Authorizer's access load, the check), called in process the way the route calls
   it, one at a time: wall and CPU microseconds per call, and its PostgreSQL statements and Redis
   commands; then the whole route and the bare route as ASGI apps (no server, no socket).

The project is on a plan with entitlements `sso` (BOOLEAN) and `api_calls` (METERED, limit 1,000,000
a month), set by a platform admin (createPlan, overridePlan). Uses DATABASE_URL / REDIS_URL when
set, the embedded servers otherwise.

    .venv/bin/python bench/entitlements.py [--seconds 10] [--concurrency 32] [--instances 1] [--calls 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import httpx
from sqlalchemy import event
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message

from bench._http import free_port, load, request, spawn_instances, wait_ready
from ledgerx import gateway, ids, logs
from ledgerx.app import create_app
from ledgerx.context import authenticate
from ledgerx.db.engine import asyncpg_dsn
from ledgerx.db.migrate import upgrade
from ledgerx.domain.entitlements import policy
from ledgerx.domain.tenancy.authorize import Authorizer
from ledgerx.services import Services, resolve_urls
from ledgerx.settings import Settings

FEATURE = "sso"
# What LedgerX answers for a BOOLEAN feature, so both servers send bodies of the same size.
BARE_ANSWER = {
    "featureKey": FEATURE,
    "type": "BOOLEAN",
    "hasAccess": True,
    "limit": None,
    "usage": None,
    "remaining": None,
    "config": None,
    "resetsAt": None,
}
ENTITLEMENTS = [
    {"featureKey": "sso", "type": "BOOLEAN"},
    {"featureKey": "api_calls", "type": "METERED", "metricKey": "api_calls", "limit": "1000000"},
]


def bare_app() -> Starlette:
    """The baseline: the same framework and server, one route answering a constant JSON body."""

    async def entitlement(_: Request) -> Response:
        return JSONResponse(BARE_ANSWER)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[Route("/v1/entitlements/{featureKey}", entitlement, methods=["GET"]), Route("/healthz", healthz)]
    )


def ledgerx_app() -> Starlette:
    logs.configure("WARNING")
    return create_app(Settings.from_env(), settle_heap=True)  # as `ledgerx serve`


# --- seeding -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    project_id: uuid.UUID
    api_key: str


class Gql:
    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.token: str | None = None

    async def __call__(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        r = await self.client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
        body = r.json()
        if body.get("errors"):
            raise RuntimeError(body["errors"])
        data: dict[str, Any] = body["data"]
        return data


async def seed(port: int, database_url: str) -> Seeded:
    """A platform admin who owns a project on a plan with entitlements, and an API key of it."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        gql = Gql(c)
        email = f"bench-ent-{os.getpid()}-{int(time.time())}@example.com"
        gql.token = (
            await gql(
                "mutation($i: SignUpInput!) { signUp(input: $i) { accessToken } }",
                {"i": {"email": email, "password": "bench password 123", "name": "Bench"}},
            )
        )["signUp"]["accessToken"]
        # Platform admins are made in SQL (as the tests do); the flag is read per request.
        owner = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await owner.execute("UPDATE users SET is_platform_admin = true WHERE email = $1", email)
        finally:
            await owner.close()
        project = (
            await gql(
                "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }",
                {"i": {"name": "Entitlements bench", "externalKey": f"bench-{uuid.uuid4().hex[:8]}"}},
            )
        )["createProject"]["id"]
        await gql(
            "mutation($i: DefineMetricInput!) { defineMetric(input: $i) { id } }",
            {
                "i": {
                    "projectId": project,
                    "key": "api_calls",
                    "name": "API calls",
                    "aggregation": "SUM",
                    "unitPrice": "0",
                }
            },
        )
        plan = (
            await gql(
                "mutation($i: CreatePlanInput!) { createPlan(input: $i) { id } }",
                {
                    "i": {
                        "name": f"Bench entitlements {uuid.uuid4().hex[:6]}",
                        "tier": "FREE",
                        "interval": "MONTH",
                        "price": {"amount": "0", "currency": "USD"},
                        "entitlements": ENTITLEMENTS,
                    }
                },
            )
        )["createPlan"]["id"]
        await gql(
            "mutation($i: OverridePlanInput!) { overridePlan(input: $i) { source } }",
            {"i": {"projectId": project, "planId": plan, "reason": "entitlements bench"}},
        )
        key = (
            await gql(
                "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }",
                {"i": {"projectId": project, "name": "bench", "scopes": ["entitlements:read"]}},
            )
        )["createApiKey"]["secret"]
        for feature in ("sso", "api_calls"):
            r = await c.get(f"/v1/entitlements/{feature}", headers={"X-Api-Key": key})
            print(f"GET /v1/entitlements/{feature}: {r.status_code} {r.text}")
    return Seeded(ids.decode("project", project), key)


# --- timing helpers ----------------------------------------------------------------------------


def pct(xs: list[float], p: float) -> float:
    """The p-quantile of a sorted list."""
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def micros_line(name: str, ns: list[int]) -> str:
    us = sorted(n / 1000 for n in ns)
    return (
        f"{name:<44} p50 {pct(us, 0.50):8.2f} µs   p99 {pct(us, 0.99):8.2f} µs"
        f"   p99.9 {pct(us, 0.999):8.2f} µs   max {us[-1]:9.1f} µs   ({len(us)} calls)"
    )


async def time_async(call: Callable[[], Awaitable[object]], n: int) -> list[int]:
    clock = time.perf_counter_ns
    out = [0] * n
    for i in range(n):
        t0 = clock()
        await call()
        out[i] = clock() - t0
    return out


def time_sync(call: Callable[[], object], n: int) -> list[int]:
    clock = time.perf_counter_ns
    out = [0] * n
    for i in range(n):
        t0 = clock()
        call()
        out[i] = clock() - t0
    return out


async def nothing() -> None:
    return None


async def in_process_checks(svc: Services, project_id: uuid.UUID, calls: int) -> None:
    checks = svc.entitlements
    for key in ("sso", "api_calls"):
        await checks.check(project_id, key)  # fills the project's entry
    await time_async(lambda: checks.check(project_id, FEATURE), 10_000)
    print(f"in-process check cache ({calls} calls each, after the fill; timer included):")
    print(micros_line("timer floor (await of a no-op coroutine)", await time_async(nothing, calls)))
    print(
        micros_line(
            "await check(project, 'sso')  BOOLEAN", await time_async(lambda: checks.check(project_id, "sso"), calls)
        )
    )
    print(
        micros_line(
            "await check(project, 'api_calls')  METERED",
            await time_async(lambda: checks.check(project_id, "api_calls"), calls),
        )
    )
    print(
        micros_line(
            "await check(project, 'nope')  unknown",
            await time_async(lambda: checks.check(project_id, "nope"), calls),
        )
    )
    print(micros_line("cached(project, 'sso')  sync", time_sync(lambda: checks.cached(project_id, "sso"), calls)))


# --- where the time goes -----------------------------------------------------------------------

_COUNTED = ("execute", "executemany", "fetch", "fetchrow", "fetchval")


class RoundTrips:
    """Counts database statements (asyncpg calls on any connection, SQLAlchemy cursor executions)
    and Redis commands while active. Each asyncpg call and Redis command is one round trip; the
    wrappers are removed on exit."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.pg = 0
        self.orm = 0
        self.redis = 0
        self.statements: dict[str, int] = {}

    def reset(self) -> None:
        self.pg = self.orm = self.redis = 0
        self.statements.clear()

    def _pg(self, original: Callable[..., Any]) -> Callable[..., Any]:
        async def counted(conn: Any, query: str, *args: Any, **kwargs: Any) -> Any:
            self.pg += 1
            head = " ".join(str(query).split())[:70]
            self.statements[head] = self.statements.get(head, 0) + 1
            return await original(conn, query, *args, **kwargs)

        return counted

    def _orm(self, *_: Any) -> None:
        self.orm += 1

    @contextlib.contextmanager
    def active(self) -> Iterator[RoundTrips]:
        originals = {name: getattr(asyncpg.Connection, name) for name in _COUNTED}
        redis_call: Callable[..., Awaitable[Any]] = self.svc.redis.execute_command

        async def redis_counted(*args: Any, **kwargs: Any) -> Any:
            self.redis += 1
            return await redis_call(*args, **kwargs)

        for name, original in originals.items():
            setattr(asyncpg.Connection, name, self._pg(original))
        # An instance attribute: the rate-limit script calls through the client it was registered on.
        self.svc.redis.execute_command = redis_counted  # type: ignore[method-assign]
        event.listen(self.svc.db.engine.sync_engine, "before_cursor_execute", self._orm)
        try:
            yield self
        finally:
            event.remove(self.svc.db.engine.sync_engine, "before_cursor_execute", self._orm)
            del self.svc.redis.execute_command
            for name, original in originals.items():
                setattr(asyncpg.Connection, name, original)


async def step(trips: RoundTrips, name: str, call: Callable[[], Awaitable[object]], n: int) -> float:
    """One step timed `n` times in a row: wall µs p50/p99, CPU µs per call (this process only,
    not PostgreSQL's or Redis's), and round trips per call. Returns the CPU µs per call."""
    await time_async(call, max(n // 10, 20))
    trips.reset()
    cpu0 = time.process_time_ns()
    ns = await time_async(call, n)
    cpu = (time.process_time_ns() - cpu0) / n / 1000
    us = sorted(x / 1000 for x in ns)
    print(
        f"  {name:<40} p50 {pct(us, 0.5):8.1f} µs   p99 {pct(us, 0.99):8.1f} µs   cpu {cpu:7.1f} µs/call"
        f"   pg {trips.pg / n:4.1f}  orm {trips.orm / n:4.1f}  redis {trips.redis / n:4.1f}"
    )
    return cpu


def forget_and_check(svc: Services, project_id: uuid.UUID) -> Callable[[], Awaitable[object]]:
    """A check that misses: what each instance pays when an entry ends (TTL, a change)."""

    async def call() -> object:
        svc.entitlements.forget(project_id)
        return await svc.entitlements.check(project_id, FEATURE)

    return call


def asgi_get(app: ASGIApp, path: str, headers: list[tuple[bytes, bytes]]) -> Callable[[], Awaitable[int]]:
    """One GET through an ASGI app with no server: the app's own cost. Returns the status."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def call() -> int:
        status = 0

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])

        await app(dict(scope), receive, send)
        if status != 200:
            raise RuntimeError(f"{path} answered {status}")
        return status

    return call


async def profile(svc: Services, seeded: Seeded, n: int) -> None:
    project_id, credential = seeded.project_id, "Bearer " + seeded.api_key
    principal = await authenticate(svc, credential)
    trips = RoundTrips(svc)
    lx = create_app(svc.settings, services=svc)  # ready services: no lifespan needed
    key_header = [(b"x-api-key", seeded.api_key.encode())]
    print(f"where a request's time goes (in process, one call at a time, {n} calls per step, cache filled):")
    with trips.active():
        steps = [
            await step(trips, "authenticate (API key lookup)", lambda: authenticate(svc, credential), n),
            await step(
                trips, "gateway.admit (limit + token bucket)", lambda: gateway.admit(svc, principal, "127.0.0.1"), n
            ),
            await step(
                trips,
                "Authorizer.require (access load)",
                lambda: Authorizer(svc.db, svc.access_cache, principal).require(project_id, policy.READ),
                n,
            ),
            await step(trips, "entitlements.check (cached)", lambda: svc.entitlements.check(project_id, FEATURE), n),
        ]
        route = await step(
            trips, "whole route, ASGI (no server)", asgi_get(lx, f"/v1/entitlements/{FEATURE}", key_header), n
        )
        await step(trips, "bare route, ASGI (no server)", asgi_get(bare_app(), f"/v1/entitlements/{FEATURE}", []), n)
        print(
            f"  {'rest of the route (middleware, routing, JSON)':<40} cpu {route - sum(steps):7.1f} µs/call"
            " (whole route minus the steps above)"
        )
        await step(trips, "entitlements.check (miss: fill)", forget_and_check(svc, project_id), max(n // 10, 50))
        trips.reset()
        await asgi_get(lx, f"/v1/entitlements/{FEATURE}", key_header)()
        print("  statements of one request:")
        for sql, count in trips.statements.items():
            print(f"    {count} x {sql}")
        print(f"    redis commands: {trips.redis}")


# --- main --------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def services(settings: Settings) -> AsyncIterator[Services]:
    svc = Services.build(settings)
    try:
        yield svc
    finally:
        await svc.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--instances", type=int, default=1, help="server processes per app (one uvicorn worker each)")
    ap.add_argument("--calls", type=int, default=200_000, help="in-process check calls per measurement")
    ap.add_argument("--profile-calls", type=int, default=2000, help="calls per step of the time breakdown")
    args = ap.parse_args()

    data_dir = os.environ.get("LEDGERX_DATA_DIR") or tempfile.mkdtemp(prefix="lxbench-")
    os.environ["LEDGERX_DATA_DIR"] = data_dir
    s = resolve_urls(Settings.from_env())
    assert s.database_url and s.redis_url
    upgrade(s.database_url)
    env = {
        "DATABASE_URL": s.database_url,
        "REDIS_URL": s.redis_url,
        "LEDGERX_DATA_DIR": data_dir,
        "LOGIN_LIMIT_PER_EMAIL": "1000",
        "LOGIN_LIMIT_PER_IP": "100000",
        # The limiter still runs on every request; its bucket is just large enough not to refuse.
        "RATE_LIMIT_BURST": "100000000",
        "RATE_LIMIT_PER_SECOND": "100000000",
        "WORKER_ENABLED": "false",
        "SCHEDULER_ENABLED": "false",
        "PYTHONPATH": str(Path(__file__).parent.parent),
    }
    lx_port, bare_port = free_port(), free_port()
    servers = [
        spawn_instances("bench.entitlements:ledgerx_app", lx_port, args.instances, env),
        spawn_instances("bench.entitlements:bare_app", bare_port, args.instances, env),
    ]
    try:
        await wait_ready(lx_port)
        await wait_ready(bare_port)
        seeded = await seed(lx_port, s.database_url)
        path = f"/v1/entitlements/{FEATURE}"
        lx_req = request("GET", path, headers=[("X-Api-Key", seeded.api_key)])
        bare_req = request("GET", path)

        # Warm both: every instance's first request fills its check cache (and pools, statements).
        await load("127.0.0.1", lx_port, lx_req, concurrency=args.concurrency, seconds=2)
        await load("127.0.0.1", bare_port, bare_req, concurrency=args.concurrency, seconds=2)
        lx = await load("127.0.0.1", lx_port, lx_req, concurrency=args.concurrency, seconds=args.seconds)
        bare = await load("127.0.0.1", bare_port, bare_req, concurrency=args.concurrency, seconds=args.seconds)
        print(
            f"concurrency {args.concurrency}, {args.seconds:.0f} s each, {args.instances} uvicorn process(es) per"
            f" server, {os.cpu_count()} cores"
        )
        print(lx.line(f"GET {path} (API key)"))
        print(bare.line("bare starlette JSON route"))
        print(f"ratio ledgerx/bare: {lx.rps / bare.rps:.3f}  (p99 {lx.pct(0.99) / bare.pct(0.99):.1f}x)  goal >= 0.5")
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(10)

    # The in-process parts run with the servers stopped, so they have the cores to themselves.
    os.environ.update(env)
    async with services(resolve_urls(Settings.from_env())) as svc:
        await in_process_checks(svc, seeded.project_id, args.calls)
        await profile(svc, seeded, args.profile_calls)


if __name__ == "__main__":
    asyncio.run(main())
