"""GraphQL overhead: an authenticated `me` query through LedgerX against a bare Starlette JSON route.

Both servers are one uvicorn worker on this machine, loaded by the same client with the same
concurrency. Prints requests/s, p50/p99 for each and the ratio. Uses DATABASE_URL / REDIS_URL
when set, the embedded servers otherwise.

    .venv/bin/python bench/graphql_overhead.py [--seconds 10] [--concurrency 32] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._http import free_port, load, load_line, request, spawn, spawn_instances, wait_ready


def bare_app():  # type: ignore[no-untyped-def]
    """The baseline: the same framework and server with no GraphQL, auth or database."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def me(_):  # type: ignore[no-untyped-def]
        return JSONResponse({"data": {"me": {"id": "usr_x", "email": "bench@example.com"}}})

    async def healthz(_):  # type: ignore[no-untyped-def]
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/me", me, methods=["GET", "POST"]), Route("/healthz", healthz)])


def ledgerx_app():  # type: ignore[no-untyped-def]
    from ledgerx import logs
    from ledgerx.app import create_app
    from ledgerx.settings import Settings

    logs.configure("WARNING")
    return create_app(Settings.from_env(), settle_heap=True)  # as `ledgerx serve`


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn processes per server on one port (SO_REUSEPORT, as `ledgerx serve --workers N` behind a balancer)",
    )
    ap.add_argument(
        "--server",
        choices=["uvicorn", "granian", "both"],
        default="uvicorn",
        help="the ASGI server under LedgerX; both: each in the same run (the bare route stays on uvicorn)",
    )
    args = ap.parse_args()

    from ledgerx.db.migrate import upgrade
    from ledgerx.services import resolve_urls
    from ledgerx.settings import Settings

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
        "RATE_LIMIT_PER_SECOND": "10000000",
        "PYTHONPATH": str(Path(__file__).parent.parent),
    }

    servers = ["uvicorn", "granian"] if args.server == "both" else [args.server]
    lx_ports = {name: free_port() for name in servers}
    bare_port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    for name, port in lx_ports.items():
        if args.workers > 1 and name == "uvicorn":
            procs += spawn_instances("bench.graphql_overhead:ledgerx_app", port, args.workers, env).procs
        else:
            procs.append(spawn("bench.graphql_overhead:ledgerx_app", port, env, server=name))
    if args.workers > 1:
        procs += spawn_instances("bench.graphql_overhead:bare_app", bare_port, args.workers, env).procs
    else:
        procs.append(spawn("bench.graphql_overhead:bare_app", bare_port, env))
    try:
        for port in lx_ports.values():
            await wait_ready(port)
        await wait_ready(bare_port)
        import httpx

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{next(iter(lx_ports.values()))}") as c:
            email = f"bench-{os.getpid()}@example.com"
            r = await c.post(
                "/graphql",
                json={
                    "query": "mutation($i: SignUpInput!) { signUp(input: $i) { accessToken } }",
                    "variables": {"i": {"email": email, "password": "bench password 123"}},
                },
            )
            token = r.json()["data"]["signUp"]["accessToken"]
        body = json.dumps({"query": "{ me { id email } }"}).encode()
        headers = [("Content-Type", "application/json"), ("Authorization", f"Bearer {token}")]
        gql_req = request("POST", "/graphql", body, headers)
        bare_req = request("POST", "/me", body, headers)

        # Warm every server (JIT-free Python still warms caches, pools and connections).
        for port in lx_ports.values():
            await load("127.0.0.1", port, gql_req, concurrency=args.concurrency, seconds=2)
        await load("127.0.0.1", bare_port, bare_req, concurrency=args.concurrency, seconds=2)
        results = {
            name: await load("127.0.0.1", port, gql_req, concurrency=args.concurrency, seconds=args.seconds)
            for name, port in lx_ports.items()
        }
        bare = await load("127.0.0.1", bare_port, bare_req, concurrency=args.concurrency, seconds=args.seconds)
        print(
            f"concurrency {args.concurrency}, {args.seconds:.0f} s each, {args.workers} worker(s) per server,"
            f" {os.cpu_count()} cores; {load_line()}"
        )
        for name, gql in results.items():
            print(gql.line(f"graphql `me` on {name} (JWT + DB read)"))
        print(bare.line("bare starlette JSON route (uvicorn)"))
        for name, gql in results.items():
            goal = "MET" if gql.rps >= 2000 and gql.pct(0.99) < 50 else "NOT MET"
            print(
                f"{name}: ratio graphql/bare {gql.rps / bare.rps:.3f} (p99 {gql.pct(0.99) / bare.pct(0.99):.1f}x);"
                f" goal >= 2,000 req/s and p99 < 50 ms: {goal}"
            )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


if __name__ == "__main__":
    asyncio.run(main())
