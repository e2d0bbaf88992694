"""Live analytics under load: N websocket subscribers on `liveMetrics` while usage is recorded.

One uvicorn worker serves LedgerX. The benchmark opens `--subscribers` websockets (graphql-transport-ws,
one `liveMetrics` subscription each, all on one project), then records `--rate` usage events per
second through `POST /v1/usage` (an API key, batches every 100 ms) for `--seconds`. Every message a
subscriber receives says when the oldest and the newest event it folds in happened
(`firstEventAt`/`lastEventAt`); the difference to the arrival time is the event-to-subscriber
latency. Prints p50/p99/max of both, messages per subscriber per second, the events recorded,
the server's memory (RSS) and CPU, and how many messages were executed as GraphQL rather than
copied from their snapshot's shared execution (ledgerx/schema/shared_results.py).

If the usage domain does not announce recorded usage on the event bus yet, the benchmark publishes
the announcement itself right after each accepted batch (as the usage domain will after commit),
and says so.

Uses DATABASE_URL / REDIS_URL when set, the embedded servers otherwise.

    .venv/bin/python bench/live.py [--subscribers 1000] [--rate 1000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._http import free_port, spawn, wait_ready

SUBSCRIPTION = """subscription($p: ID!) { liveMetrics(projectId: $p) {
  at sequence events firstEventAt lastEventAt usage { metricKey units events } spendToday totalBalance activeUsers } }"""


def ledgerx_app():  # type: ignore[no-untyped-def]
    from ledgerx import logs
    from ledgerx.app import create_app
    from ledgerx.settings import Settings

    logs.configure("WARNING")
    return create_app(Settings.from_env())


def spawn_server(port: int, env: dict[str, str], workers: int) -> subprocess.Popen[bytes]:
    if workers <= 1:
        return spawn("bench.live:ledgerx_app", port, env)
    cmd = [sys.executable, "-m", "uvicorn", "bench.live:ledgerx_app", "--factory", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    return subprocess.Popen(cmd, env={**os.environ, **env})


def tree(pid: int) -> list[int]:
    """The process and its descendants (uvicorn --workers forks children)."""
    out = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            kids = [int(k) for k in fh.read().split()]
    except OSError:
        kids = []
    for k in kids:
        out += tree(k)
    return out


def rss_mib(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total


def parse_ts(value: str | None) -> float | None:
    if not value:
        return None
    return dt.datetime.fromisoformat(value).timestamp()


class Subscriber:
    def __init__(self) -> None:
        self.messages = 0
        self.events = 0
        self.oldest: list[float] = []  # arrival - firstEventAt, per message (ms)
        self.newest: list[float] = []  # arrival - lastEventAt, per message (ms)
        self.read_wait: list[float] = []  # snapshot read time (`at`) - firstEventAt (ms)
        self.delivery: list[float] = []  # arrival - snapshot read time (ms)
        self.ws: Any = None
        self.task: asyncio.Task[None] | None = None
        self.error: str | None = None

    async def start(self, url: str, token: str, project: str, *, compression: bool) -> None:
        import websockets

        self.ws = await websockets.connect(
            url,
            subprotocols=["graphql-transport-ws"],
            open_timeout=60,
            ping_interval=None,
            compression="deflate" if compression else None,
        )
        await self.ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
        ack = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
        assert ack["type"] == "connection_ack", ack
        await self.ws.send(
            json.dumps(
                {"id": "1", "type": "subscribe", "payload": {"query": SUBSCRIPTION, "variables": {"p": project}}}
            )
        )
        first = json.loads(await asyncio.wait_for(self.ws.recv(), 60))
        assert first["type"] == "next" and first["payload"]["data"]["liveMetrics"]["sequence"] == 1, first
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        import websockets

        try:
            async for raw in self.ws:
                now = time.time()
                msg = json.loads(raw)
                if msg["type"] == "ping":
                    await self.ws.send('{"type":"pong"}')
                    continue
                if msg["type"] != "next" or msg["payload"].get("errors"):
                    self.error = str(msg)[:300]
                    continue
                m = msg["payload"]["data"]["liveMetrics"]
                self.messages += 1
                self.events += m["events"]
                first, last = parse_ts(m["firstEventAt"]), parse_ts(m["lastEventAt"])
                if first is not None and last is not None and self.recording:
                    read_at = parse_ts(m["at"]) or now
                    self.oldest.append((now - first) * 1000)
                    self.newest.append((now - last) * 1000)
                    self.read_wait.append((read_at - first) * 1000)
                    self.delivery.append((now - read_at) * 1000)
        except websockets.ConnectionClosed as e:
            self.error = f"closed: {e}"

    recording = False

    async def close(self) -> None:
        if self.task:
            self.task.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(len(ys) * p))]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--rate", type=int, default=1000, help="usage events per second")
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--interval-ms", type=int, default=250, help="LIVE_INTERVAL_MS of the server")
    ap.add_argument(
        "--direct",
        action="store_true",
        help="record usage straight into usage_events (and announce it) instead of POST /v1/usage",
    )
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (instances on one Redis)")
    ap.add_argument(
        "--no-compression",
        action="store_true",
        help="do not offer permessage-deflate (browsers offer it, so the default does too)",
    )
    args = ap.parse_args()

    import asyncpg
    import httpx
    from redis.asyncio import Redis

    from ledgerx import ids
    from ledgerx.db.engine import asyncpg_dsn
    from ledgerx.db.migrate import upgrade
    from ledgerx.domain import topics
    from ledgerx.services import resolve_urls
    from ledgerx.settings import Settings

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * args.subscribers + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    data_dir = os.environ.get("LEDGERX_DATA_DIR") or tempfile.mkdtemp(prefix="lxbench-")
    os.environ["LEDGERX_DATA_DIR"] = data_dir
    s = resolve_urls(Settings.from_env())
    assert s.database_url and s.redis_url
    upgrade(s.database_url)
    prefix = f"lxbench{os.getpid()}:"
    env = {
        "DATABASE_URL": s.database_url,
        "REDIS_URL": s.redis_url,
        "REDIS_PREFIX": prefix,
        "LEDGERX_DATA_DIR": data_dir,
        "LOGIN_LIMIT_PER_EMAIL": "1000",
        "LOGIN_LIMIT_PER_IP": "100000",
        "RATE_LIMIT_BURST": "100000000",
        "RATE_LIMIT_PER_SECOND": "100000000",
        "WORKER_ENABLED": "false",
        "SCHEDULER_ENABLED": "false",
        "LIVE_INTERVAL_MS": str(args.interval_ms),
        "PYTHONPATH": str(Path(__file__).parent.parent),
    }
    port = free_port()
    proc = spawn_server(port, env, args.workers)
    subs: list[Subscriber] = []
    redis = Redis.from_url(s.redis_url)
    try:
        await wait_ready(port)
        base_rss = rss_mib(proc.pid)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:

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
                    {"i": {"name": "Live bench", "externalKey": f"live-{uuid.uuid4().hex[:8]}"}},
                    token,
                )
            )["createProject"]["id"]
            await gql(
                "mutation($i: DefineMetricInput!) { defineMetric(input: $i) { key } }",
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
            key = (
                await gql(
                    "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }",
                    {"i": {"projectId": project, "name": "bench", "scopes": ["usage:write"]}},
                    token,
                )
            )["createApiKey"]["secret"]
            pid = ids.decode("project", project)

            # Subscribers, 50 connecting at a time.
            t0 = time.perf_counter()
            gate = asyncio.Semaphore(50)
            url = f"ws://127.0.0.1:{port}/graphql"

            async def one() -> Subscriber:
                sub = Subscriber()
                async with gate:
                    await sub.start(url, token, project, compression=not args.no_compression)
                return sub

            subs = list(await asyncio.gather(*[one() for _ in range(args.subscribers)]))
            connect_s = time.perf_counter() - t0
            idle_rss = rss_mib(proc.pid)
            print(f"{len(subs)} subscribers connected and got their first snapshot in {connect_s:.1f}s")

            # Does the usage domain announce recorded usage? Listen while one batch is recorded.
            ps = redis.pubsub()
            await ps.subscribe(prefix + "ev:" + topics.project_usage(pid))
            counter = {"n": 0}

            def batch_body(n: int) -> bytes:
                now = dt.datetime.now(dt.UTC).isoformat()
                events = [
                    {"metricKey": "api_calls", "units": 1, "idempotencyKey": f"b{counter['n']}-{i}", "occurredAt": now}
                    for i in range(n)
                ]
                counter["n"] += 1
                return json.dumps({"events": events}, separators=(",", ":")).encode()

            headers = {"X-Api-Key": key, "Content-Type": "application/json"}
            direct = args.direct
            if not direct:
                r = await c.post("/v1/usage", content=batch_body(1), headers=headers)
                if r.status_code != 200:
                    print(f"POST /v1/usage answered {r.status_code}: recording straight into usage_events instead")
                    direct = True
            announced = False
            if not direct:
                deadline = time.monotonic() + 1.5
                while time.monotonic() < deadline:
                    msg = await ps.get_message(ignore_subscribe_messages=True, timeout=0.2)
                    if msg is not None:
                        announced = True
                        break
            await ps.aclose()
            if direct:
                print("usage recorded straight into usage_events (owner connection); announcements by the benchmark")
            else:
                who = "the usage domain" if announced else "the benchmark (the usage domain does not publish yet)"
                print(f"usage recorded through POST /v1/usage; announcements published by {who}")

            async def announce(n: int) -> None:
                if not announced:
                    t, ev = topics.usage_recorded(pid, count=n)
                    await redis.publish(prefix + "ev:" + t, json.dumps(ev, separators=(",", ":")))

            # Record usage at the rate: a batch every 100 ms.
            ticks = 10
            per_batch = max(1, args.rate // ticks)
            stats: dict[str, Any] = {"batches": 0, "events": 0, "errors": 0, "post_ms": []}
            owner = await asyncpg.connect(asyncpg_dsn(s.database_url)) if direct else None
            metric_id = None
            if owner is not None:
                metric_id = await owner.fetchval("SELECT id FROM usage_metrics WHERE project_id = $1", pid)
            owner_lock = asyncio.Lock()

            async def record_direct(n: int) -> int:
                assert owner is not None
                async with owner_lock:
                    await owner.execute(
                        "INSERT INTO usage_events (id, project_id, metric_id, occurred_at, units, idempotency_key)"
                        " SELECT gen_random_uuid(), $1, $2, now(), 1, $3 || g FROM generate_series(1, $4::int) g",
                        pid,
                        metric_id,
                        f"d{counter['n']}-",
                        n,
                    )
                counter["n"] += 1
                return n

            async def post_one() -> None:
                t = time.perf_counter()
                if direct:
                    accepted = await record_direct(per_batch)
                else:
                    resp = await c.post("/v1/usage", content=batch_body(per_batch), headers=headers)
                    if resp.status_code != 200:
                        stats["errors"] += 1
                        return
                    accepted = int(resp.json()["accepted"])
                stats["post_ms"].append((time.perf_counter() - t) * 1000)
                await announce(accepted)
                stats["batches"] += 1
                stats["events"] += accepted

            warmup = 2.0
            total = warmup + args.seconds
            cpu0 = wall0 = None
            peak_rss = idle_rss
            pending: set[asyncio.Task[None]] = set()
            start = time.perf_counter()
            n = 0
            while True:
                now = time.perf_counter() - start
                if now >= total:
                    break
                if cpu0 is None and now >= warmup:
                    for sub in subs:
                        sub.messages = 0
                        sub.events = 0
                    Subscriber.recording = True
                    cpu0, wall0 = cpu_seconds(proc.pid), time.perf_counter()
                    own0 = resource.getrusage(resource.RUSAGE_SELF)
                    recorded0 = stats["events"]
                task = asyncio.create_task(post_one())
                pending.add(task)
                task.add_done_callback(pending.discard)
                n += 1
                if n % ticks == 0:
                    peak_rss = max(peak_rss, rss_mib(proc.pid))
                await asyncio.sleep(max(0.0, start + n / ticks - time.perf_counter()))
            if pending:
                await asyncio.wait(pending, timeout=30)
            await asyncio.sleep(1.5)  # the last trailing messages
            Subscriber.recording = False
            assert cpu0 is not None and wall0 is not None
            wall = time.perf_counter() - wall0
            cpu = cpu_seconds(proc.pid) - cpu0
            own1 = resource.getrusage(resource.RUSAGE_SELF)
            own = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
            peak_rss = max(peak_rss, rss_mib(proc.pid))
            prom = (await c.get("/metrics")).text
            if owner is not None:
                await owner.close()
            reads = {
                line.split()[0]: float(line.split()[1])
                for line in prom.splitlines()
                if line.startswith("ledgerx_live_snapshot_seconds_")
            }

        oldest = [x for sub in subs for x in sub.oldest]
        newest = [x for sub in subs for x in sub.newest]
        read_wait = [x for sub in subs for x in sub.read_wait]
        delivery = [x for sub in subs for x in sub.delivery]
        messages = sum(sub.messages for sub in subs)
        errors = [sub.error for sub in subs if sub.error]
        measured = args.seconds
        rate = (stats["events"] - recorded0) / measured
        print(
            f"events recorded: {stats['events'] - recorded0} in {measured:.0f}s ({rate:.0f}/s), "
            f"{'insert' if direct else 'POST /v1/usage'} p50 {pct(stats['post_ms'], 0.5):.1f} ms p99 {pct(stats['post_ms'], 0.99):.1f} ms, "
            f"errors {stats['errors']}"
        )
        print(
            f"messages: {messages} ({messages / len(subs) / measured:.2f} per subscriber per second, "
            f"interval {args.interval_ms} ms)"
        )
        print(
            f"latency, oldest event in each message (event -> subscriber): p50 {pct(oldest, 0.5):.0f} ms   "
            f"p99 {pct(oldest, 0.99):.0f} ms   max {max(oldest, default=float('nan')):.0f} ms"
        )
        print(
            f"latency, newest event in each message:                      p50 {pct(newest, 0.5):.0f} ms   "
            f"p99 {pct(newest, 0.99):.0f} ms   max {max(newest, default=float('nan')):.0f} ms"
        )
        print(
            f"of which: oldest event -> snapshot read p50 {pct(read_wait, 0.5):.0f} ms p99 {pct(read_wait, 0.99):.0f} ms;"
            f" snapshot read -> subscriber p50 {pct(delivery, 0.5):.0f} ms p99 {pct(delivery, 0.99):.0f} ms"
        )
        print(
            f"server RSS: {base_rss:.0f} MiB at start, {idle_rss:.0f} MiB with {len(subs)} subscribers, "
            f"{peak_rss:.0f} MiB peak under load; server CPU {cpu / wall * 100:.0f}% of one core "
            f"({cpu / max(messages, 1) * 1e6:.0f} us per message sent, all work included); "
            f"this client {own / wall * 100:.0f}%; machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        shared = {
            how: float(line.split()[1])
            for line in prom.splitlines()
            for how in ("executed", "shared")
            if line.startswith(f'ledgerx_graphql_shared_events_total{{how="{how}"}}')
        }
        if shared.get("shared"):
            total_events = shared["shared"] + shared.get("executed", 0.0)
            print(
                f"GraphQL executions: {shared.get('executed', 0.0):.0f} for {total_events:.0f} messages"
                f" (the others copied a shared execution of their snapshot)"
            )
        else:
            print(
                "GraphQL executions: one per message (no shared rendering: is the schema built with"
                " execution_context_class=SharedResultsExecutor?)"
            )
        count = reads.get("ledgerx_live_snapshot_seconds_count", 0.0)
        if count:
            total_s = reads.get("ledgerx_live_snapshot_seconds_sum", 0.0)
            print(f"snapshot reads: {count:.0f} in the whole run, {total_s / count * 1000:.1f} ms on average")
        if errors:
            print(f"subscriber errors: {len(errors)}, e.g. {errors[0]}")
    finally:
        for sub in subs:
            await sub.close()
        await redis.aclose()
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
