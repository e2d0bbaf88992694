"""Bulk usage ingestion: `POST /v1/usage` (batches of 1,000 events, idempotency keys on) against a
raw asyncpg `INSERT ... ON CONFLICT DO NOTHING` of the same rows into the same table.

One uvicorn worker serves LedgerX; a few concurrent keep-alive clients post batches of new events
(every key unique, so every event is stored) for a fixed time. Then the same number of asyncpg
connections insert the same kind of rows (1,000 per statement, one transaction each) straight into
`usage_events` for the same time. Prints events/s for both and the ratio. A third line, for
reference, is the raw idempotent insert (keys table + events in one statement, no rollups, no
HTTP, no validation), i.e. the floor of what any idempotent write into this schema costs.

Uses DATABASE_URL / REDIS_URL when set, the embedded servers otherwise.

    .venv/bin/python bench/ingest.py [--seconds 10] [--concurrency 4] [--batch 1000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._http import free_port, spawn, wait_ready

PLACEHOLDER = b"PPPPPPPPPPPP"  # replaced per request by a unique 12-character prefix


def ledgerx_app():  # type: ignore[no-untyped-def]
    from ledgerx import logs
    from ledgerx.app import create_app
    from ledgerx.settings import Settings

    logs.configure("WARNING")
    return create_app(Settings.from_env(), settle_heap=True)  # as `ledgerx serve`


def template(batch: int, occurred_at: str) -> bytes:
    events = [
        {
            "metricKey": "api_calls",
            "units": 1 + i % 3,
            "idempotencyKey": f"{PLACEHOLDER.decode()}-{i:06d}",
            "occurredAt": occurred_at,
        }
        for i in range(batch)
    ]
    return json.dumps({"events": events}, separators=(",", ":")).encode()


class Prefixes:
    """Unique 12-character key prefixes: a 4-character tag (run and client) and a counter."""

    def __init__(self, tag: str) -> None:
        assert len(tag) == 4
        self.tag = tag
        self.n = 0

    def next(self) -> bytes:
        self.n += 1
        return f"{self.tag}{self.n:08d}".encode()


async def _post_worker(
    port: int, headers: bytes, body: bytes, prefixes: Prefixes, deadline: float, expect: bytes, stats: dict[str, Any]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            payload = body.replace(PLACEHOLDER, prefixes.next())
            t0 = time.perf_counter()
            writer.write(headers + payload)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            answer = await reader.readexactly(length)
            stats["latencies"].append(time.perf_counter() - t0)
            if status == 200 and expect in answer:
                stats["requests"] += 1
            else:
                stats["errors"] += 1
                if stats["errors"] <= 3:
                    print(f"  unexpected answer {status}: {answer[:300]!r}", file=sys.stderr)
    finally:
        writer.close()


async def load_api(
    port: int, key: str, batch: int, occurred_at: str, concurrency: int, seconds: float
) -> dict[str, Any]:
    body = template(batch, occurred_at)
    headers = (
        f"POST /v1/usage HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nX-Api-Key: {key}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    expect = f'"accepted":{batch},'.encode()
    stats: dict[str, Any] = {"requests": 0, "errors": 0, "latencies": []}
    run = uuid.uuid4().hex[:3]
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    await asyncio.gather(
        *[_post_worker(port, headers, body, Prefixes(f"{run}{c}"), deadline, expect, stats) for c in range(concurrency)]
    )
    stats["seconds"] = time.perf_counter() - t0
    stats["events"] = stats["requests"] * batch
    return stats


# The raw baselines send the rows the way the API path does (one delimited text per column, split
# by PostgreSQL), the cheapest way asyncpg has to ship 1,000 rows in one statement.
_ROWS = """
  SELECT * FROM unnest(string_to_array($3, ',')::uuid[], string_to_array($4, ',')::int8[],
                       string_to_array($5, ',')::numeric[], string_to_array($6, ','))
    AS x(id, micros, u, k)
"""
RAW_EVENTS = f"""
INSERT INTO usage_events (id, project_id, metric_id, occurred_at, units, idempotency_key)
SELECT x.id, $1, $2, TIMESTAMPTZ 'epoch' + x.micros * interval '1 microsecond', x.u, x.k FROM ({_ROWS}) x
ON CONFLICT DO NOTHING
"""
RAW_IDEMPOTENT = f"""
WITH x AS MATERIALIZED (
  SELECT x.id, TIMESTAMPTZ 'epoch' + x.micros * interval '1 microsecond' AS t, x.u, x.k FROM ({_ROWS}) x
), fresh AS (
  INSERT INTO usage_event_keys (project_id, idempotency_key, event_id, occurred_at)
  SELECT $1, k, id, t FROM x ON CONFLICT DO NOTHING RETURNING event_id
)
INSERT INTO usage_events (id, project_id, metric_id, occurred_at, units, idempotency_key)
SELECT x.id, $1, $2, x.t, x.u, x.k FROM x WHERE x.id IN (SELECT event_id FROM fresh)
"""


async def load_raw(
    dsn: str,
    sql: str,
    project_id: uuid.UUID,
    metric_id: uuid.UUID,
    batch: int,
    occurred: dt.datetime,
    concurrency: int,
    seconds: float,
    tag: str,
) -> dict[str, Any]:
    import asyncpg

    from ledgerx.domain.usage.store import event_ids

    stats: dict[str, Any] = {"requests": 0, "errors": 0, "latencies": []}
    conns = [await asyncpg.connect(dsn) for _ in range(concurrency)]
    micros = int((occurred - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) / dt.timedelta(microseconds=1))
    times = ",".join([str(micros)] * batch)
    units = ",".join(str(1 + i % 3) for i in range(batch))

    async def worker(conn: Any, c: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            keys = ",".join(f"{tag}{c}-{n}-{i:06d}" for i in range(batch))
            t0 = time.perf_counter()
            await conn.execute(sql, project_id, metric_id, event_ids(batch), times, units, keys)
            stats["latencies"].append(time.perf_counter() - t0)
            stats["requests"] += 1

    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    try:
        await asyncio.gather(*[worker(conn, c) for c, conn in enumerate(conns)])
    finally:
        for conn in conns:
            await conn.close()
    stats["seconds"] = time.perf_counter() - t0
    stats["events"] = stats["requests"] * batch
    return stats


def line(name: str, s: dict[str, Any]) -> str:
    lat = sorted(s["latencies"])

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(len(lat) * p))] * 1000 if lat else float("nan")

    rate = s["events"] / s["seconds"]
    return (
        f"{name:<46} {rate:>9.0f} events/s   batch p50 {pct(0.5):6.1f} ms   p99 {pct(0.99):6.1f} ms"
        f"   errors {s['errors']}"
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=1, help="repeat the three measurements, alternating")
    args = ap.parse_args()

    import httpx

    from ledgerx import ids
    from ledgerx.db.engine import asyncpg_dsn
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
        # The gateway's request limits would cap the benchmark, not measure it.
        "RATE_LIMIT_BURST": "100000000",
        "RATE_LIMIT_PER_SECOND": "100000000",
        "WORKER_ENABLED": "false",
        "SCHEDULER_ENABLED": "false",
        "PYTHONPATH": str(Path(__file__).parent.parent),
    }
    port = free_port()
    proc = spawn("bench.ingest:ledgerx_app", port, env)
    try:
        await wait_ready(port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:

            async def gql(query: str, variables: dict[str, Any], token: str | None = None) -> dict[str, Any]:
                h = {"Authorization": f"Bearer {token}"} if token else {}
                r = await c.post("/graphql", json={"query": query, "variables": variables}, headers=h)
                body = r.json()
                if body.get("errors"):
                    raise RuntimeError(body["errors"])
                data: dict[str, Any] = body["data"]
                return data

            email = f"bench-{os.getpid()}-{int(time.time())}@example.com"
            token = (
                await gql(
                    "mutation($i: SignUpInput!) { signUp(input: $i) { accessToken } }",
                    {"i": {"email": email, "password": "bench password 123", "name": "Bench"}},
                )
            )["signUp"]["accessToken"]
            project = (
                await gql(
                    "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }",
                    {"i": {"name": "Ingest bench", "externalKey": f"bench-{uuid.uuid4().hex[:8]}"}},
                    token,
                )
            )["createProject"]["id"]
            metric = (
                await gql(
                    "mutation($i: DefineMetricInput!) { defineMetric(input: $i) { id } }",
                    {
                        "i": {
                            "projectId": project,
                            "key": "api_calls",
                            "name": "API calls",
                            "aggregation": "SUM",
                            "unitPrice": "0.002",
                        }
                    },
                    token,
                )
            )["defineMetric"]["id"]
            key = (
                await gql(
                    "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }",
                    {"i": {"projectId": project, "name": "bench", "scopes": ["usage:write"]}},
                    token,
                )
            )["createApiKey"]["secret"]

        occurred = dt.datetime.now(dt.UTC).replace(microsecond=0)
        occurred_iso = occurred.isoformat().replace("+00:00", "Z")
        dsn = asyncpg_dsn(s.database_url)
        project_id, metric_id = ids.decode("project", project), ids.decode("metric", metric)

        # Warm up both paths (pools, prepared statements, caches, partitions).
        await load_api(port, key, args.batch, occurred_iso, args.concurrency, 2)
        await load_raw(dsn, RAW_EVENTS, project_id, metric_id, args.batch, occurred, args.concurrency, 1, "w")
        print(
            f"batches of {args.batch} events, {args.concurrency} concurrent clients, {args.seconds:.0f} s per"
            f" measurement, {args.rounds} round(s), one uvicorn worker, {os.cpu_count()} cores"
        )
        ratios: list[tuple[float, float]] = []
        for n in range(args.rounds):
            # API and raw alternate within each round, so background load hits both alike.
            api = await load_api(port, key, args.batch, occurred_iso, args.concurrency, args.seconds)
            raw = await load_raw(
                dsn, RAW_EVENTS, project_id, metric_id, args.batch, occurred, args.concurrency, args.seconds, f"r{n}"
            )
            idem = await load_raw(
                dsn,
                RAW_IDEMPOTENT,
                project_id,
                metric_id,
                args.batch,
                occurred,
                args.concurrency,
                args.seconds,
                f"i{n}",
            )
            if args.rounds > 1:
                print(f"round {n + 1}")
            print(line("POST /v1/usage (auth, validation, dedupe, rollups)", api))
            print(line("raw asyncpg INSERT .. ON CONFLICT DO NOTHING", raw))
            print(line("raw asyncpg idempotent insert (keys + events)", idem))
            api_rate = api["events"] / api["seconds"]
            r1 = api_rate / (raw["events"] / raw["seconds"])
            r2 = api_rate / (idem["events"] / idem["seconds"])
            ratios.append((r1, r2))
            print(f"ratio API/raw: {r1:.3f}   API/raw idempotent: {r2:.3f}")
        if args.rounds > 1:
            print(
                f"median ratio API/raw: {statistics.median(r[0] for r in ratios):.3f}"
                f"   API/raw idempotent: {statistics.median(r[1] for r in ratios):.3f}"
            )
        await ratelimit_latency(s.redis_url, concurrency=1)
        await ratelimit_latency(s.redis_url, concurrency=16)
    finally:
        proc.terminate()
        proc.wait(10)


async def ratelimit_latency(redis_url: str, n: int = 5000, concurrency: int = 16) -> None:
    """The gateway's token-bucket check (one Lua call in Redis) as the app runs it."""
    from ledgerx.domain.ratelimit import Limit, RateLimiter
    from ledgerx.services import make_redis

    redis = make_redis(redis_url)
    limiter = RateLimiter(redis, prefix=f"bench:{os.getpid()}:")
    limit = Limit(1_000_000, 100_000.0)
    lat: list[float] = []

    async def worker(w: int) -> None:
        for i in range(n // concurrency):
            t0 = time.perf_counter()
            await limiter.hit(f"key{(w * 7 + i) % 64}", limit)
            lat.append(time.perf_counter() - t0)

    try:
        await asyncio.gather(*[worker(w) for w in range(concurrency)])
    finally:
        await redis.aclose()
    lat.sort()
    p50, p99 = lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000
    print(f"rate-limit check (Lua token bucket, {concurrency} concurrent): p50 {p50:.3f} ms   p99 {p99:.3f} ms")


if __name__ == "__main__":
    asyncio.run(main())
