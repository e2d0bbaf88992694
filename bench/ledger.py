"""Ledger throughput: debits/s through the GraphQL API against a minimal raw-asyncpg debit loop.

One run, one fresh database (created on the DATABASE_URL server, or the embedded one, and dropped
afterwards unless --keep-db):

- raw baseline: CONCURRENCY asyncio tasks, each on its own asyncpg connection, looping
  BEGIN; SELECT balance … FOR UPDATE; UPDATE; INSERT entry; COMMIT on plain tables;
- API: the same number of keep-alive HTTP clients sending `debitWallet` mutations (a unique
  idempotency key each) to LedgerX process(es) sharing one port, signed in as the project owner. Every API
  debit is a full ledger posting: transaction row, two entries with hash chain, idempotency
  record, audit row, RLS, the credit-limit check.

Both are measured on one hot wallet and spread over WALLETS wallets. Last, the same clients send
`{ __typename }` (same auth and rate limit, no resolver): the most requests/s any one-operation
GraphQL request can reach on this machine, to read the API figures against. Afterwards verifyLedger must
be clean and the transaction count must equal the successful debits.

With --grants-per-wallet N the run ends with the credit grants figure (#15): the ledger core's debits
on wallets funded by one grant against wallets funded by N grants of mixed priorities and expiries
(the draw order has N grants to read and order for every locked wallet), hot and spread, alternating
1 and N; --grants-only runs just that (no API, no raw loop). The N-grant figure must stay >= 0.9x.

The run ends with the goals table of #19 (ratios to the raw single-debit loop measured in the same
run, each with its goal and MET / NOT MET): the ledger core in process on WALLETS wallets; bulk
posting, `POST /v1/transactions` with batches of --bulk-size debits on WALLETS wallets (postings/s;
the same through `post_many` in process is shown beside it); debitWallet over the API on WALLETS
wallets and on one hot wallet. The load average is printed before and after: on a shared machine
the figures move with it.

Every figure also prints where its CPU went, per operation, by process kind (this process: the
load generator, and the ledger core when it runs here; the LedgerX servers; every PostgreSQL and
Redis process on the machine), and the run ends with each goal as a CPU budget: at the goal's rate
the machine's cores allow so many µs per operation, against what this run spent. This process
freezes its startup heap before the figures, as `ledgerx serve` does (ledgerx/heap.py).

With --webhook-endpoint the project first gets an outbound webhook endpoint subscribed to `*`, so
every posting also writes its `transaction.posted` event and delivery in the same statement
(nothing is delivered: no worker runs); the summary counts those events.

    .venv/bin/python bench/ledger.py [--seconds 10] [--concurrency 64] [--wallets 1000] [--workers 2]
                                     [--bulk-size 100] [--bulk-clients 8]
                                     [--webhook-endpoint] [--grants-per-wallet 10] [--grants-only]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._http import Instances, Result, free_port, load_line, metered, request, spawn_instances, wait_ready

DEBIT = "mutation($i: DebitWalletInput!) { debitWallet(input: $i) { id balanceAfter } }"
START_BALANCE = 10**15
# The goals of #19, as ratios to the raw single-debit loop of the same run (the hot-wallet one to
# the raw hot loop): the goals table and the CPU budget both read them.
GOAL_CORE, GOAL_BULK, GOAL_API, GOAL_HOT = 1.5, 3.0, 0.6, 2.0


def ledgerx_app():  # type: ignore[no-untyped-def]
    from ledgerx import logs
    from ledgerx.app import create_app
    from ledgerx.settings import Settings

    logs.configure("WARNING")
    return create_app(Settings.from_env(), settle_heap=True)  # as `ledgerx serve`


# -- load generation with a fresh body per request ----------------------------------------------------


async def _http_worker(
    port: int, make: Callable[[], bytes], deadline: float, lat: list[float], errs: list[int], sample: list[bytes]
) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    try:
        while time.perf_counter() < deadline:
            raw = make()
            t0 = time.perf_counter()
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if status != 200 or b'"errors"' in body:
                errs[0] += 1
                if len(sample) < 3:
                    sample.append(body[:300])
            n += 1
    finally:
        writer.close()
    return n


async def load_api(port: int, make: Callable[[], bytes], *, concurrency: int, seconds: float) -> Result:
    lat: list[float] = []
    errs = [0]
    sample: list[bytes] = []
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    counts = await asyncio.gather(*[_http_worker(port, make, deadline, lat, errs, sample) for _ in range(concurrency)])
    for s in sample:
        print("  sample error:", s.decode(errors="replace"))
    return Result(sum(counts), time.perf_counter() - t0, lat, errs[0])


# -- bulk posting: POST /v1/transactions ---------------------------------------------------------------


def bulk_request(token: str, pick: Callable[[], str], tag: str, size: int) -> Callable[[], bytes]:
    """A `POST /v1/transactions` of `size` DEBITs of 1 (independent), a fresh key each."""
    headers = [("Content-Type", "application/json"), ("Authorization", f"Bearer {token}")]
    counter = iter(range(10**12))

    def make() -> bytes:
        ops = [
            {"kind": "DEBIT", "walletId": pick(), "amount": 1, "idempotencyKey": f"{tag}-{next(counter)}"}
            for _ in range(size)
        ]
        return request("POST", "/v1/transactions", json.dumps({"operations": ops}).encode(), headers)

    return make


async def _bulk_worker(
    port: int, make: Callable[[], bytes], deadline: float, lat: list[float], counts: list[int], sample: list[bytes]
) -> None:
    """Sends batches until the deadline; counts[0] postings recorded, counts[1] refused."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            raw = make()
            t0 = time.perf_counter()
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if status != 200:
                counts[1] += 1
                if len(sample) < 3:
                    sample.append(body[:300])
                continue
            for r in json.loads(body)["results"]:
                if r.get("error") is None:
                    counts[0] += 1
                else:
                    counts[1] += 1
                    if len(sample) < 3:
                        sample.append(json.dumps(r["error"]).encode())
    finally:
        writer.close()


async def load_bulk(port: int, make: Callable[[], bytes], *, clients: int, seconds: float) -> Result:
    """Postings/s recorded through POST /v1/transactions (latencies are per request)."""
    lat: list[float] = []
    counts = [0, 0]
    sample: list[bytes] = []
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    await asyncio.gather(*[_bulk_worker(port, make, deadline, lat, counts, sample) for _ in range(clients)])
    for s in sample:
        print("  sample error:", s.decode(errors="replace"))
    return Result(counts[0], time.perf_counter() - t0, lat, counts[1])


async def load_core_bulk(
    services: object, wallets: list[object], *, clients: int, size: int, seconds: float, tag: str
) -> Result:
    """`post_many` of `size` debits (the call POST /v1/transactions makes) by CLIENTS tasks in process."""
    from ledgerx.domain.actor import Actor
    from ledgerx.domain.errors import AppError
    from ledgerx.domain.ledger import posting
    from ledgerx.services import Services

    assert isinstance(services, Services)
    actor = Actor.system("bench")
    lat: list[float] = []
    counter = iter(range(10**12))
    counts = [0, 0]
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            batch = [
                posting.debit_posting(actor, random.choice(wallets), 1, f"{tag}-{next(counter)}")  # type: ignore[arg-type]
                for _ in range(size)
            ]
            many = await posting.post_many(services.ledger, batch)
            lat.append(time.perf_counter() - t0)
            refused = sum(1 for o in many.outcomes if isinstance(o, AppError))
            counts[0] += len(many.outcomes) - refused
            counts[1] += refused

    t0 = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(clients)])
    return Result(counts[0], time.perf_counter() - t0, lat, counts[1])


def show(result: Result, label: str) -> None:
    """A figure's line, then where its CPU went (per operation, by process kind)."""
    print(result.line(label))
    if result.cpu:
        print(result.cpu_line())


def cpu_budget(rows: list[tuple[str, Result, float]]) -> None:
    """Each goal as CPU: at the goal's rate the machine's cores allow so many µs per operation,
    all processes together (load generator, LedgerX, PostgreSQL, Redis); this run spent so many.
    A goal whose operation costs more than its budget cannot be met on this machine by running
    the same work faster in parallel: the work per operation itself must shrink."""
    cores = os.cpu_count() or 1
    print(f"CPU budget of each goal on this machine ({cores} cores; µs of CPU per operation, every process):")
    for name, result, goal_rate in rows:
        if not result.cpu or not result.requests:
            continue
        spent = sum(result.cpu.values()) / result.requests * 1e6
        budget = cores / goal_rate * 1e6
        server = sum(v for k, v in result.cpu.items() if k != "bench") / result.requests * 1e6
        print(
            f"  {name:<48} goal {goal_rate:>6.0f}/s allows {budget:>4.0f} µs; spent {spent:>4.0f} µs"
            f" ({server:.0f} µs outside the load generator)"
        )


def goals_table(rows: list[tuple[str, float, float | None, str]]) -> None:
    """(figure, ratio to the raw single-debit loop, goal, detail), MET when ratio >= goal."""
    print("goals (#19), ratios to the raw single-debit loop of this run:")
    print(f"  {'figure':<64} {'ratio':>6} {'goal':>6}  {'':<8} detail")
    for name, ratio, goal, detail in rows:
        verdict = "" if goal is None else ("MET" if ratio >= goal else "NOT MET")
        goal_text = "" if goal is None else f"{goal:.1f}x"
        print(f"  {name:<64} {ratio:>5.2f}x {goal_text:>6}  {verdict:<8} {detail}")


# -- the raw baseline ---------------------------------------------------------------------------------

RAW_SCHEMA = """
DROP TABLE IF EXISTS bench_raw_entries, bench_raw_wallets;
CREATE TABLE bench_raw_wallets (id bigint PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE bench_raw_entries (
  id uuid PRIMARY KEY, wallet_id bigint NOT NULL REFERENCES bench_raw_wallets (id),
  amount bigint NOT NULL, balance_after bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
"""


async def _raw_client(
    conns: asyncio.Queue[asyncpg.Connection], pick: Callable[[], int], deadline: float, lat: list[float]
) -> int:
    """One client: take a pooled connection, debit 1 from a wallet, give the connection back."""
    n = 0
    while time.perf_counter() < deadline:
        wid = pick()
        t0 = time.perf_counter()
        conn = await conns.get()
        try:
            async with conn.transaction():
                balance = await conn.fetchval("SELECT balance FROM bench_raw_wallets WHERE id = $1 FOR UPDATE", wid)
                await conn.execute("UPDATE bench_raw_wallets SET balance = balance - 1 WHERE id = $1", wid)
                await conn.execute(
                    "INSERT INTO bench_raw_entries (id, wallet_id, amount, balance_after) VALUES ($1, $2, -1, $3)",
                    uuid.uuid4(),
                    wid,
                    balance - 1,
                )
        finally:
            conns.put_nowait(conn)
        lat.append(time.perf_counter() - t0)
        n += 1
    return n


class RawLoop:
    """The baseline: plain tables, asyncpg with its statement cache, CONCURRENCY clients sharing
    a pool of connections (one per client when the server's max_connections allows it)."""

    def __init__(self, dsn: str, wallets: int, connections: int) -> None:
        self.dsn, self.wallets, self.connections = dsn, wallets, connections
        self.pool: asyncio.Queue[asyncpg.Connection] = asyncio.Queue()
        self.all: list[asyncpg.Connection] = []

    async def __aenter__(self) -> RawLoop:
        admin = await asyncpg.connect(self.dsn)
        try:
            await admin.execute(RAW_SCHEMA)
            rows = [(i, START_BALANCE) for i in range(self.wallets + 1)]
            await admin.executemany("INSERT INTO bench_raw_wallets VALUES ($1, $2)", rows)
        finally:
            await admin.close()
        for _ in range(self.connections):
            conn = await asyncpg.connect(self.dsn)
            self.all.append(conn)
            self.pool.put_nowait(conn)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for conn in self.all:
            await conn.close()

    async def run(self, pick: Callable[[], int], *, concurrency: int, seconds: float) -> Result:
        lat: list[float] = []
        deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()
        counts = await asyncio.gather(*[_raw_client(self.pool, pick, deadline, lat) for _ in range(concurrency)])
        return Result(sum(counts), time.perf_counter() - t0, lat, 0)


# -- the ledger core in-process (no HTTP, GraphQL or auth) ------------------------------------------------


async def load_core(services: object, wallets: list[object], *, concurrency: int, seconds: float, tag: str) -> Result:
    """`debit_wallet` (post_transaction through the batcher) called directly by CONCURRENCY tasks."""
    from ledgerx.domain.actor import Actor
    from ledgerx.domain.ledger import posting
    from ledgerx.services import Services

    assert isinstance(services, Services)
    actor = Actor.system("bench")
    lat: list[float] = []
    counter = iter(range(10**12))
    deadline = time.perf_counter() + seconds

    async def client() -> int:
        n = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            w = wallets[0] if len(wallets) == 1 else random.choice(wallets)
            await posting.debit_wallet(services.ledger, actor, w, 1, f"{tag}-{next(counter)}")  # type: ignore[arg-type]
            lat.append(time.perf_counter() - t0)
            n += 1
        return n

    t0 = time.perf_counter()
    counts = await asyncio.gather(*[client() for _ in range(concurrency)])
    return Result(sum(counts), time.perf_counter() - t0, lat, 0)


async def core_services(url: str, redis_url: str) -> object:
    from ledgerx.services import Services
    from ledgerx.settings import Settings

    return Services.build(
        Settings(database_url=url, redis_url=redis_url, redis_prefix=f"lxbench:{secrets.token_hex(3)}:", db_pool_size=6)
    )


async def wallet_refs(services: object, public_ids: list[str]) -> list[object]:
    from ledgerx import ids
    from ledgerx.services import Services

    assert isinstance(services, Services)
    refs = [await services.ledger.wallet_ref(ids.decode("wallet", w)) for w in public_ids]
    return list(refs)


# -- credit grants: 1 grant per wallet against N ----------------------------------------------------------


async def grant_wallets(services: object, project_id: uuid.UUID, count: int, grants_per_wallet: int) -> list[object]:
    """`count` wallets, each funded with `grants_per_wallet` grants (priorities 0-90, half of them
    expiring in 30-300 days) adding up to START_BALANCE."""
    import datetime as dt

    from ledgerx.domain.actor import Actor
    from ledgerx.domain.ledger import WalletRef, grants, wallets
    from ledgerx.services import Services

    assert isinstance(services, Services)
    actor = Actor.system("bench")
    sem = asyncio.Semaphore(64)
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)

    async def one(i: int) -> object:
        async with sem:
            w = await wallets.create_wallet(services.ledger, actor, project_id, name=f"g{grants_per_wallet}-{i}")
            ref = WalletRef(w.id, w.project_id, w.currency)
            for j in range(grants_per_wallet):
                await grants.grant_credits(
                    services.ledger,
                    actor,
                    ref,
                    START_BALANCE // grants_per_wallet,
                    f"seed-{w.id}-{j}",
                    category="PAID",
                    priority=(j * 37) % 10 * 10,
                    expires_at=soon + dt.timedelta(days=30 * j) if j % 2 else None,
                )
            return ref

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def grants_figures(url: str, redis_url: str, args: argparse.Namespace) -> None:
    from ledgerx.db.engine import asyncpg_dsn
    from ledgerx.ids import uuid7

    n_grants, n, secs = args.grants_per_wallet, args.concurrency, args.seconds
    spread_count = min(args.wallets, 200)
    pid = uuid7()
    conn = await asyncpg.connect(asyncpg_dsn(url))
    await conn.execute("INSERT INTO projects (id, name) VALUES ($1, 'bench grants')", pid)
    await conn.close()
    core = await core_services(url, redis_url)
    try:
        one = await grant_wallets(core, pid, spread_count + 1, 1)
        many = await grant_wallets(core, pid, spread_count + 1, n_grants)
        conn = await asyncpg.connect(asyncpg_dsn(url))
        await conn.execute("ANALYZE")
        await conn.close()
        await load_core(core, one[:1], concurrency=n, seconds=1, tag="gwarm1")
        await load_core(core, many[:1], concurrency=n, seconds=1, tag="gwarmn")
        figures: dict[str, list[Result]] = {"1 hot": [], "N hot": [], "1 spread": [], "N spread": []}
        for rnd in range(args.grant_rounds):
            figures["1 hot"].append(await load_core(core, one[:1], concurrency=n, seconds=secs, tag=f"g1h{rnd}"))
            figures["N hot"].append(await load_core(core, many[:1], concurrency=n, seconds=secs, tag=f"gnh{rnd}"))
            figures["1 spread"].append(await load_core(core, one[1:], concurrency=n, seconds=secs, tag=f"g1s{rnd}"))
            figures["N spread"].append(await load_core(core, many[1:], concurrency=n, seconds=secs, tag=f"gns{rnd}"))
        print(
            f"credit grants: ledger core debits, {n} concurrent clients, {args.grant_rounds} x {secs:.0f} s per figure"
        )
        for name, results in figures.items():
            label = name.replace("N", str(n_grants)).replace("hot", "grant(s)/wallet, 1 hot wallet")
            label = label.replace("spread", f"grant(s)/wallet, {spread_count} wallets")
            total = Result(
                sum(r.requests for r in results),
                sum(r.seconds for r in results),
                [x for r in results for x in r.latencies],
                0,
            )
            print(total.line(label))
        for where in ("hot", "spread"):
            one_rps = sum(r.requests for r in figures[f"1 {where}"]) / sum(r.seconds for r in figures[f"1 {where}"])
            n_rps = sum(r.requests for r in figures[f"N {where}"]) / sum(r.seconds for r in figures[f"N {where}"])
            print(f"ratio {n_grants} grants / 1 grant, {where}: {n_rps / one_rps:.2f} (must be >= 0.90)")
    finally:
        await core.close()  # type: ignore[attr-defined]
    from ledgerx.domain.ledger.verification import verify_ledger
    from ledgerx.services import Services

    check = await core_services(url, redis_url)
    try:
        assert isinstance(check, Services)
        report = await verify_ledger(check.ledger, pid)
        print(f"verifyLedger (grant invariants included) ok={report.ok} entries={report.entries_checked}")
    finally:
        await check.close()  # type: ignore[attr-defined]


# -- the API --------------------------------------------------------------------------------------------


def spawn_workers(port: int, workers: int, env: dict[str, str]) -> Instances:
    """`workers` LedgerX processes on one port, connections spread evenly (bench/_serve.py)."""
    return spawn_instances("bench.ledger:ledgerx_app", port, workers, env)


async def gql(c: object, query: str, variables: dict[str, object], token: str | None = None) -> dict[str, object]:
    import httpx

    assert isinstance(c, httpx.AsyncClient)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = await c.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
    body = r.json()
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    data: dict[str, object] = body["data"]
    return data


async def setup_api(port: int, wallets: int) -> tuple[str, str, str, list[str]]:
    """An owner, a project, one hot wallet and `wallets` others, all funded through the API."""
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        email = f"bench-{secrets.token_hex(4)}@example.com"
        data = await gql(
            c,
            "mutation($i: SignUpInput!) { signUp(input: $i) { accessToken } }",
            {"i": {"email": email, "password": "bench password 123"}},
        )
        token = str(data["signUp"]["accessToken"])  # type: ignore[index]
        data = await gql(
            c,
            "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }",
            {"i": {"name": "bench", "externalKey": f"bench-{secrets.token_hex(4)}"}},
            token,
        )
        pid = str(data["createProject"]["id"])  # type: ignore[index]
        sem = asyncio.Semaphore(32)

        async def make_wallet(i: int) -> str:
            async with sem:
                d = await gql(
                    c,
                    "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }",
                    {"i": {"projectId": pid, "name": f"w{i}"}},
                    token,
                )
                wid = str(d["createWallet"]["id"])  # type: ignore[index]
                await gql(
                    c,
                    "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id } }",
                    {"i": {"walletId": wid, "amount": str(START_BALANCE), "idempotencyKey": f"seed-{i}"}},
                    token,
                )
                return wid

        ids = await asyncio.gather(*(make_wallet(i) for i in range(wallets + 1)))
    return token, pid, ids[0], list(ids[1:])


async def create_endpoint(port: int, token: str, pid: str) -> None:
    """An outbound webhook endpoint of the project subscribed to every event type (never called:
    the bench runs no delivery worker)."""
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
        await gql(
            c,
            "mutation($i: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $i) { secret } }",
            {"i": {"projectId": pid, "url": "http://127.0.0.1:9/bench", "events": ["*"]}},
            token,
        )


def typename_request(token: str) -> Callable[[], bytes]:
    """`{ __typename }` with the same auth and rate limit as a debit: no resolver, no database."""
    headers = [("Content-Type", "application/json"), ("Authorization", f"Bearer {token}")]
    raw = request("POST", "/graphql", json.dumps({"query": "{ __typename }"}).encode(), headers)
    return lambda: raw


def debit_request(token: str, pick: Callable[[], str], tag: str) -> Callable[[], bytes]:
    headers = [("Content-Type", "application/json"), ("Authorization", f"Bearer {token}")]
    counter = iter(range(10**12))

    def make() -> bytes:
        body = json.dumps(
            {
                "query": DEBIT,
                "variables": {"i": {"walletId": pick(), "amount": 1, "idempotencyKey": f"{tag}-{next(counter)}"}},
            }
        ).encode()
        return request("POST", "/graphql", body, headers)

    return make


async def check_after(port: int, token: str, pid: str, dsn: str, expected_debits: int, expected_bulk: int) -> str:
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as c:
        data = await gql(
            c,
            "query($p: ID!) { verifyLedger(projectId: $p) { ok walletsChecked entriesChecked mismatches { kind } } }",
            {"p": pid},
            token,
        )
    report = data["verifyLedger"]
    conn = await asyncpg.connect(dsn)
    try:
        debits = await conn.fetchval(
            "SELECT count(*) FROM ledger_transactions WHERE type = 'DEBIT' AND idempotency_key LIKE 'api-%'"
        )
        bulk = await conn.fetchval(
            "SELECT count(*) FROM ledger_transactions WHERE type = 'DEBIT' AND idempotency_key LIKE 'bulk-%'"
        )
        transactions = await conn.fetchval("SELECT count(*) FROM ledger_transactions")
        hooks = await conn.fetchval("SELECT count(*) FROM webhook_outbox WHERE type = 'transaction.posted'")
    finally:
        await conn.close()
    return (
        f"verifyLedger ok={report['ok']} wallets={report['walletsChecked']} entries={report['entriesChecked']};"  # type: ignore[index]
        f" debit transactions {debits} = successful API debits {expected_debits}: {debits == expected_debits};"
        f" bulk debits {bulk} = postings recorded by POST /v1/transactions {expected_bulk}: {bulk == expected_bulk};"
        f" transaction.posted events {hooks} of {transactions} transactions"
    )


# -- main ----------------------------------------------------------------------------------------------


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--wallets", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2, help="LedgerX processes serving the API (one port)")
    ap.add_argument("--raw-connections", type=int, default=40, help="connections the raw loop's clients share")
    ap.add_argument("--bulk-size", type=int, default=100, help="operations per POST /v1/transactions")
    ap.add_argument("--bulk-clients", type=int, default=8, help="concurrent bulk requests (and post_many tasks)")
    ap.add_argument("--keep-db", action="store_true")
    ap.add_argument("--webhook-endpoint", action="store_true", help="the project has an endpoint subscribed to *")
    ap.add_argument("--grants-per-wallet", type=int, default=0, help="add the 1 vs N credit grants figure")
    ap.add_argument("--grant-rounds", type=int, default=3, help="alternations of the 1 and N grant figures")
    ap.add_argument("--grants-only", action="store_true", help="only the credit grants figure")
    args = ap.parse_args()

    from ledgerx import heap
    from ledgerx.db.engine import asyncpg_dsn
    from ledgerx.db.migrate import upgrade
    from ledgerx.services import resolve_urls
    from ledgerx.settings import Settings

    data_dir = os.environ.get("LEDGERX_DATA_DIR") or tempfile.mkdtemp(prefix="lxbench-")
    os.environ["LEDGERX_DATA_DIR"] = data_dir
    s = resolve_urls(Settings.from_env())
    assert s.database_url and s.redis_url
    name = f"lxbench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(asyncpg_dsn(s.database_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base, _, query = s.database_url.partition("?")
    url = base[: base.rfind("/") + 1] + name + ("?" + query if query else "")
    dsn = asyncpg_dsn(url)
    proc: Instances | None = None
    try:
        await asyncio.to_thread(upgrade, url)
        if args.grants_only:
            await grants_figures(url, s.redis_url, args)
            return
        port = free_port()
        env = {
            "DATABASE_URL": url,
            "REDIS_URL": s.redis_url,
            "LEDGERX_DATA_DIR": data_dir,
            "PYTHONPATH": str(Path(__file__).parent.parent),
            "SCHEDULER_ENABLED": "false",
            "WORKER_ENABLED": "false",
            "DB_POOL_SIZE": "6",
            "LOGIN_LIMIT_PER_EMAIL": "1000",
            "LOGIN_LIMIT_PER_IP": "100000",
            "RATE_LIMIT_BURST": "1000000000",
            "RATE_LIMIT_PER_SECOND": "1000000000",
            "REDIS_PREFIX": f"lxbench:{secrets.token_hex(3)}:",
            "OUTBOUND_WEBHOOK_ALLOW_PRIVATE": "true",
        }
        proc = spawn_workers(port, args.workers, env)
        await wait_ready(port)
        token, pid, hot_wallet, spread_wallets = await setup_api(port, args.wallets)
        if args.webhook_endpoint:
            await create_endpoint(port, token, pid)
        # A database in service has statistics (autovacuum analyzes tables as they grow); this one
        # was created seconds ago and has none, and a plan chosen without them stays cached on
        # the pooled connections (an idempotency lookup by project scan instead of the key index).
        conn = await asyncpg.connect(dsn)
        await conn.execute("ANALYZE")
        await conn.close()
        n, secs = args.concurrency, args.seconds
        hooked = "; one webhook endpoint subscribed to *" if args.webhook_endpoint else ""
        print(f"{os.cpu_count()} cores; {n} concurrent clients; {secs:.0f} s per figure; database {name}{hooked}")
        print(f"before: {load_line()}")
        core = await core_services(url, s.redis_url)
        core_hot_w = await wallet_refs(core, [hot_wallet])
        core_spread_w = await wallet_refs(core, spread_wallets)
        # This process runs the ledger core as a server process would: with its startup heap
        # frozen (ledgerx/heap.py), or the figures would carry this process's full collections.
        heap.settle()
        pids = proc.pids
        async with RawLoop(dsn, args.wallets, min(args.raw_connections, n)) as raw:
            # Warm everything, then alternate the figures so background load drifts hit all alike.
            await raw.run(lambda: 0, concurrency=n, seconds=1)
            await load_core(core, core_hot_w, concurrency=n, seconds=1, tag="warm")
            await load_api(port, debit_request(token, lambda: hot_wallet, "warm"), concurrency=n, seconds=2)
            # Each API process caches wallet lookups (project, currency) like a server in service;
            # cycle through every wallet a few times so the spread figures do not measure cold caches.
            cycle = itertools.cycle(spread_wallets)
            warm_s = max(2.0, 4 * args.wallets / 1000)
            await load_api(
                port, debit_request(token, lambda: next(cycle), "warm-spread"), concurrency=n, seconds=warm_s
            )
            raw_hot = await metered(raw.run(lambda: 0, concurrency=n, seconds=secs), pids)
            core_hot = await metered(load_core(core, core_hot_w, concurrency=n, seconds=secs, tag="core-hot"), pids)
            api_hot = await metered(
                load_api(port, debit_request(token, lambda: hot_wallet, "api-hot"), concurrency=n, seconds=secs), pids
            )
            raw_spread = await metered(
                raw.run(lambda: random.randint(1, args.wallets), concurrency=n, seconds=secs), pids
            )
            core_spread = await metered(
                load_core(core, core_spread_w, concurrency=n, seconds=secs, tag="core-spread"), pids
            )
            pick = lambda: random.choice(spread_wallets)  # noqa: E731
            api_spread = await metered(
                load_api(port, debit_request(token, pick, "api-spread"), concurrency=n, seconds=secs), pids
            )
            bulk_make = bulk_request(token, pick, "bulk", args.bulk_size)
            await load_bulk(port, bulk_request(token, pick, "warm-bulk", args.bulk_size), clients=2, seconds=1)
            api_bulk = await metered(load_bulk(port, bulk_make, clients=args.bulk_clients, seconds=secs), pids)
            core_bulk = await metered(
                load_core_bulk(
                    core, core_spread_w, clients=args.bulk_clients, size=args.bulk_size, seconds=secs, tag="core-bulk"
                ),
                pids,
            )
            # The ceiling of any one-operation request on this machine: the HTTP, auth, rate-limit
            # and GraphQL layers with nothing behind them.
            api_floor = await metered(load_api(port, typename_request(token), concurrency=n, seconds=secs), pids)
        batches = core.ledger.batcher  # type: ignore[attr-defined]
        await core.close()  # type: ignore[attr-defined]
        ok_debits = api_hot.requests - api_hot.errors + api_spread.requests - api_spread.errors
        summary = await check_after(port, token, pid, dsn, ok_debits, api_bulk.requests)

        print(
            f"API: {args.workers} LedgerX process(es) on one port (SO_REUSEPORT); every debit is a full posting (2 entries, hash chain,"
        )
        print("     idempotency record, audit row, RLS, credit-limit check) behind JWT auth and the access check")
        print(f"raw: {raw.connections} connections shared by the {n} clients; lock row, update, insert entry, commit")
        print("core: post_transaction called in this process (no HTTP, GraphQL or auth), same postings as the API")
        show(raw_hot, "raw asyncpg loop, 1 hot wallet")
        show(core_hot, "ledger core, 1 hot wallet")
        show(api_hot, "GraphQL debitWallet, 1 hot wallet")
        show(raw_spread, f"raw asyncpg loop, {args.wallets} wallets")
        show(core_spread, f"ledger core, {args.wallets} wallets")
        show(api_spread, f"GraphQL debitWallet, {args.wallets} wallets")
        show(api_floor, "GraphQL { __typename } (ceiling)")
        bulk_label = f"POST /v1/transactions, {args.bulk_size}/batch, {args.wallets} wallets (postings/s)"
        show(api_bulk, bulk_label)
        show(core_bulk, f"post_many in process, {args.bulk_size}/batch (postings/s)")
        print(
            f"ratio API/raw,  hot wallet: {api_hot.rps / raw_hot.rps:.2f}   {args.wallets} wallets: {api_spread.rps / raw_spread.rps:.2f}"
        )
        print(
            f"ratio core/raw, hot wallet: {core_hot.rps / raw_hot.rps:.2f}   {args.wallets} wallets: {core_spread.rps / raw_spread.rps:.2f}"
        )
        print(f"core batching: {batches.postings} postings in {batches.batches} database transactions")
        print(summary)
        w = args.wallets
        goals_table(
            [
                (f"raw single-debit loop, {w} wallets", 1.0, None, f"{raw_spread.rps:.0f} debits/s"),
                (
                    "raw single-debit loop, 1 hot wallet",
                    raw_hot.rps / raw_spread.rps,
                    None,
                    f"{raw_hot.rps:.0f} debits/s",
                ),
                (
                    f"ledger core in process, {w} wallets",
                    core_spread.rps / raw_spread.rps,
                    GOAL_CORE,
                    f"{core_spread.rps:.0f}/s",
                ),
                (
                    f"bulk POST /v1/transactions, {args.bulk_size}/batch, {w} wallets",
                    api_bulk.rps / raw_spread.rps,
                    GOAL_BULK,
                    f"{api_bulk.rps:.0f} postings/s ({api_bulk.errors} refused)",
                ),
                (
                    f"  (post_many in process, {args.bulk_size}/batch, {w} wallets)",
                    core_bulk.rps / raw_spread.rps,
                    None,
                    f"{core_bulk.rps:.0f} postings/s",
                ),
                (
                    f"GraphQL debitWallet, {w} wallets",
                    api_spread.rps / raw_spread.rps,
                    GOAL_API,
                    f"{api_spread.rps:.0f}/s",
                ),
                (
                    "GraphQL debitWallet, 1 hot wallet (to the raw hot loop)",
                    api_hot.rps / raw_hot.rps,
                    GOAL_HOT,
                    f"{api_hot.rps:.0f}/s",
                ),
            ]
        )
        cpu_budget(
            [
                (f"ledger core in process, {w} wallets", core_spread, GOAL_CORE * raw_spread.rps),
                (f"bulk POST /v1/transactions, {args.bulk_size}/batch", api_bulk, GOAL_BULK * raw_spread.rps),
                (f"GraphQL debitWallet, {w} wallets", api_spread, GOAL_API * raw_spread.rps),
                ("GraphQL debitWallet, 1 hot wallet", api_hot, GOAL_HOT * raw_hot.rps),
            ]
        )
        print(f"after: {load_line()}")
        if args.grants_per_wallet:
            await grants_figures(url, s.redis_url, args)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(20)
        if not args.keep_db:
            admin = await asyncpg.connect(asyncpg_dsn(s.database_url))
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
