"""Scheduler throughput and lag: how long 10,000 rules due at the same instant take to execute.

One run, one fresh database (created on the DATABASE_URL server, or the embedded one, and dropped
afterwards unless --keep-db). Setup: PROJECTS projects, WALLETS funded wallets, RULES daily rules
(all due at the next UTC midnight), made through the domain functions the API calls.

The scheduler runs as in production (the lease, batches claimed with FOR UPDATE SKIP LOCKED, one
transaction per batch posting every debit through the ledger) on an injected clock: real time
shifted so the due instant comes two seconds after the loop starts, so the loop really waits for
it. Figures:

- execution: from the due instant until the last run of the wave committed;
- lag per run: from its due instant to its run's end (p50/p99/max);
- the same for the next day's wave with three instances sharing the work through the lease;
- a light wave (100 rules due at one instant): the loop's own delay, as it sleeps until due;
- checks: exactly one run and one debit per rule and period, verifyLedger clean.

    .venv/bin/python bench/scheduler.py [--rules 10000] [--wallets 1000] [--batch 500] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

UTC = dt.UTC


class ShiftedClock:
    """Real time plus an offset: the scheduler lives in the future, at the real pace."""

    def __init__(self) -> None:
        self.offset = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(UTC) + self.offset


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def setup(services, dsn: str, n_projects: int, n_wallets: int, n_rules: int):  # type: ignore[no-untyped-def]
    from ledgerx.domain.actor import Actor
    from ledgerx.domain.billing import rules, validation
    from ledgerx.domain.ledger import WalletRef, posting
    from ledgerx.domain.ledger.wallets import create_wallet
    from ledgerx.ids import uuid7

    actor = Actor.system("bench")
    conn = await asyncpg.connect(dsn)  # the owner: project rows are made directly
    pids = [uuid7() for _ in range(n_projects)]
    await conn.executemany("INSERT INTO projects (id, name) VALUES ($1, 'bench')", [(p,) for p in pids])
    await conn.close()
    sem = asyncio.Semaphore(16)

    async def wallet(i: int) -> WalletRef:
        async with sem:
            w = await create_wallet(services.ledger, actor, pids[i % n_projects], name=f"w{i}")
            ref = WalletRef(w.id, w.project_id, w.currency)
            await posting.credit_wallet(services.ledger, actor, ref, 10**12, f"fund-{i}")
            return ref

    wallets = await asyncio.gather(*(wallet(i) for i in range(n_wallets)))

    async def rule(i: int) -> None:
        w = wallets[i % n_wallets]
        async with sem:
            await rules.create_rule(
                services.billing,
                actor,
                project_id=w.project_id,
                wallet_id=w.id,
                currency=w.currency,
                fields=validation.RuleFields(name=f"r{i}", mode="DAILY_FLAT", amount=1 + i % 100),
            )

    await asyncio.gather(*(rule(i) for i in range(n_rules)))
    return pids


async def light_rules(services, dsn: str, n: int) -> int:  # type: ignore[no-untyped-def]
    """`n` rules due daily at 00:30 UTC, on the first wallets of the bench."""
    from ledgerx.domain.actor import Actor
    from ledgerx.domain.billing import rules, validation

    conn = await asyncpg.connect(dsn)
    wallets = await conn.fetch("SELECT id, project_id, currency FROM wallets ORDER BY id LIMIT $1", n)
    await conn.close()
    for i, w in enumerate(wallets):
        await rules.create_rule(
            services.billing,
            Actor.system("bench"),
            project_id=w["project_id"],
            wallet_id=w["id"],
            currency=w["currency"],
            fields=validation.RuleFields(name=f"light{i}", mode="CRON", cron="30 0 * * *", amount=1),
        )
    return len(wallets)


async def wave(
    instances,
    clock: ShiftedClock,
    due: dt.datetime,
    n_rules: int,
    dsn: str,  # type: ignore[no-untyped-def]
) -> tuple[float, list[float]]:
    """Start the loops two seconds before `due` (scheduler time); wait until every rule ran."""
    clock.offset = due - dt.datetime.now(UTC) - dt.timedelta(seconds=2)
    for s in instances:
        s.start()
    start_runs = sum(s.total.runs for s in instances)
    finished_at = None
    while True:
        await asyncio.sleep(0.005)
        if sum(s.total.runs for s in instances) - start_runs >= n_rules:
            finished_at = clock()
            break
    for s in instances:
        await s.stop()
    execution = (finished_at - due).total_seconds()
    conn = await asyncpg.connect(dsn)
    rows = await conn.fetch(
        "SELECT extract(epoch FROM finished_at - scheduled_at) AS lag FROM billing_runs WHERE scheduled_at = $1", due
    )
    await conn.close()
    offset = clock.offset.total_seconds()
    return execution, [float(r["lag"]) + offset for r in rows]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rules", type=int, default=10_000)
    ap.add_argument("--wallets", type=int, default=1000)
    ap.add_argument("--projects", type=int, default=20)
    ap.add_argument("--batch", type=int, default=500, help="rules per scheduler transaction")
    ap.add_argument("--workers", type=int, default=2, help="batches in flight per instance")
    ap.add_argument("--light", type=int, default=100, help="rules of the light-load wave")
    ap.add_argument("--keep-db", action="store_true")
    args = ap.parse_args()

    from ledgerx import logs
    from ledgerx.db.engine import asyncpg_dsn
    from ledgerx.db.migrate import upgrade
    from ledgerx.domain.billing.service import BillingPolicy, BillingService
    from ledgerx.domain.ledger.verification import verify_ledger
    from ledgerx.scheduler import Scheduler
    from ledgerx.services import Services, resolve_urls
    from ledgerx.settings import Settings

    logs.configure("WARNING")
    data_dir = os.environ.get("LEDGERX_DATA_DIR") or tempfile.mkdtemp(prefix="lxbench-")
    os.environ["LEDGERX_DATA_DIR"] = data_dir
    base_settings = resolve_urls(Settings.from_env())
    assert base_settings.database_url and base_settings.redis_url
    name = f"lxbench_sched_{os.getpid()}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(asyncpg_dsn(base_settings.database_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base, _, query = base_settings.database_url.partition("?")
    url = base[: base.rfind("/") + 1] + name + ("?" + query if query else "")
    dsn = asyncpg_dsn(url)
    settings = Settings(
        database_url=url,
        redis_url=base_settings.redis_url,
        data_dir=Path(data_dir),
        redis_prefix=f"lxbench:{secrets.token_hex(3)}:",
        db_pool_size=8,
    )
    services = [Services.build(settings) for _ in range(3)]
    try:
        await asyncio.to_thread(upgrade, url)
        clock = ShiftedClock()
        for s in services:
            s.billing = BillingService(s.db, s.ledger, policy=BillingPolicy(batch_size=args.batch), clock=clock)
        print(
            f"{os.cpu_count()} cores; {args.rules} daily rules on {args.wallets} wallets in {args.projects} projects;"
            f" batches of {args.batch}, {args.workers} in flight per instance; database {name}"
        )
        t0 = time.perf_counter()
        pids = await setup(services[0], dsn, args.projects, args.wallets, args.rules)
        print(f"setup (rules made through the domain): {time.perf_counter() - t0:.1f} s")

        today = dt.datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        results = []
        for day, n_instances in ((1, 1), (2, 3)):
            due = today + dt.timedelta(days=day)
            instances = [
                Scheduler(
                    s.billing, clock=clock, holder=f"bench-{day}-{i}", concurrency=args.workers, poll_interval=1.0
                )
                for i, s in enumerate(services[:n_instances])
            ]
            execution, lags = await wave(instances, clock, due, args.rules, dsn)
            leaders = sum(1 for s in instances if s.total.runs)
            results.append((n_instances, leaders, execution, lags))

        # Light load: a few rules due at one instant, to show the loop's own delay (it sleeps until due).
        light = await light_rules(services[0], dsn, args.light)
        due = today + dt.timedelta(days=2, minutes=30)
        instances = [Scheduler(services[0].billing, clock=clock, holder="bench-light", concurrency=args.workers)]
        light_exec, light_lags = await wave(instances, clock, due, light, dsn)

        conn = await asyncpg.connect(dsn)
        runs = await conn.fetchval("SELECT count(*) FROM billing_runs WHERE status = 'SUCCEEDED'")
        distinct = await conn.fetchval("SELECT count(DISTINCT (rule_id, scheduled_at)) FROM billing_runs")
        debits = await conn.fetchval("SELECT count(*) FROM ledger_transactions WHERE kind = 'BILLING'")
        await conn.close()
        ok = True
        for p in pids:
            report = await verify_ledger(services[0].ledger, p)
            ok = ok and report.ok

        for n_instances, leaders, execution, lags in results:
            print(
                f"{args.rules} due rules, {n_instances} instance(s) ({leaders} drove): executed in {execution:.2f} s"
                f" ({args.rules / execution:,.0f} runs/s); lag due -> run finished: p50 {pct(lags, 50) * 1000:.0f} ms,"
                f" p99 {pct(lags, 99) * 1000:.0f} ms, max {max(lags) * 1000:.0f} ms, mean {statistics.fmean(lags) * 1000:.0f} ms"
            )
        print(
            f"{light} due rules (light load): executed in {light_exec * 1000:.0f} ms; lag p50"
            f" {pct(light_lags, 50) * 1000:.0f} ms, p99 {pct(light_lags, 99) * 1000:.0f} ms"
        )
        expected = 2 * args.rules + light
        print(
            f"checks: {runs} succeeded runs, {distinct} distinct (rule, period), {debits} debits (expected {expected}"
            f" each); verifyLedger {'clean' if ok else 'MISMATCHES'} on {len(pids)} projects"
        )
        if not (runs == distinct == debits == expected and ok):
            raise SystemExit("check failed")
    finally:
        for s in services:
            await s.close()
        if not args.keep_db:
            admin = await asyncpg.connect(asyncpg_dsn(base_settings.database_url))
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
