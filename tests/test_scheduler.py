"""The scheduler on live projects: lease, batches, concurrency, crashes, catch-up, isolation.

Each test gets its own database (cloned from a migrated template): the scheduler claims due rules
across every project, so tests must not see each other's rules. Time is an injected clock; nothing
sleeps for schedule time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ledgerx.domain.billing import runner
from ledgerx.domain.billing.service import BillingService
from ledgerx.scheduler import Lease, Scheduler
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.test_billing_helpers import (
    FakeClock,
    balance,
    billing,
    billing_txns,
    isolated_database_url,
    new_project,
    new_rule,
    new_wallet,
    owner_fetch,
    runs_of,
    template_database,
    today_midnight,
    verify,
)

__all__ = ["isolated_database_url", "template_database"]  # fixtures used by name


@pytest.fixture
def database_url(isolated_database_url: str) -> str:
    """Overrides conftest's session database for this module's tests."""
    return isolated_database_url


@pytest.fixture
async def more_services(settings: Settings) -> AsyncIterator[list[Services]]:
    """Two more app instances (their own engines and pools) on the same database."""
    made = [Services.build(settings), Services.build(settings)]
    yield made
    for s in made:
        await s.close()


async def _setup(
    services: Services, svc: BillingService, n_rules: int, *, projects: int = 5, wallets: int = 50, funds: int = 10_000
) -> tuple[list[uuid.UUID], list[Any], list[Any]]:
    pids = [await new_project(services) for _ in range(projects)]
    ws = [await new_wallet(services, pids[i % projects], funds, name=f"w{i}") for i in range(wallets)]
    rs = []
    for i in range(n_rules):
        rs.append(await new_rule(svc, ws[i % wallets], name=f"r{i}", amount=1 + i % 7))
    return pids, ws, rs


async def _check_once(services: Services, pids: list[uuid.UUID], rs: list[Any], periods: int = 1) -> None:
    """Every rule has exactly `periods` runs, all SUCCEEDED, each with its own debit."""
    runs = await owner_fetch(services, "SELECT * FROM billing_runs WHERE project_id = ANY($1::uuid[])", pids)
    assert len(runs) == len(rs) * periods
    assert {r["status"] for r in runs} == {"SUCCEEDED"}
    per_rule: dict[uuid.UUID, int] = {}
    for r in runs:
        per_rule[r["rule_id"]] = per_rule.get(r["rule_id"], 0) + 1
    assert set(per_rule.values()) == {periods}
    assert len(per_rule) == len(rs)
    txns = await billing_txns(services, pids)
    assert len(txns) == len(rs) * periods
    assert {t["idempotency_key"] for t in txns} == {r["idempotency_key"] for r in runs}
    assert {t["id"] for t in txns} == {r["transaction_id"] for r in runs}
    for t, r in zip(
        sorted(txns, key=lambda t: t["idempotency_key"]), sorted(runs, key=lambda r: r["idempotency_key"]), strict=True
    ):
        assert t["amount"] == r["amount"]
        assert t["wallet_id"] == r["wallet_id"]
    for p in pids:
        await verify(services, p)


async def test_a_due_rule_runs_once_with_its_key(services: Services) -> None:
    t0 = today_midnight() + dt.timedelta(hours=12)
    clock = FakeClock(t0)
    svc = billing(services, clock)
    pid = await new_project(services)
    w = await new_wallet(services, pid, 100)
    rule = await new_rule(svc, w, amount=7, timezone="Europe/Berlin", time_of_day="01:30")
    assert rule.next_run_at is not None and rule.next_run_at > t0
    sched = Scheduler(svc, clock=clock, holder="a")
    assert (await sched.tick()).runs == 0  # nothing due yet
    clock.set(rule.next_run_at)
    stats = await sched.tick()
    assert stats.leader and stats.runs == 1
    [run] = await runs_of(services, rule.id)
    assert run["status"] == "SUCCEEDED" and run["amount"] == 7 and run["trigger"] == "SCHEDULE"
    assert run["scheduled_at"] == rule.next_run_at == run["period_end"]
    assert run["period_start"] == t0
    stamp = rule.next_run_at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert run["idempotency_key"] == f"rule:{rule.public_id}:{stamp}"
    [txn] = await billing_txns(services, [pid])
    assert txn["idempotency_key"] == run["idempotency_key"] and txn["id"] == run["transaction_id"]
    assert await balance(services, w) == 93
    assert (await sched.tick()).runs == 0  # the same period never runs twice
    await verify(services, pid)


async def test_three_instances_run_500_due_rules_exactly_once(
    services: Services, more_services: list[Services]
) -> None:
    t0 = today_midnight() + dt.timedelta(hours=1)
    clock = FakeClock(t0)
    svc = billing(services, clock)
    pids, _, rs = await _setup(services, svc, 500)
    clock.advance(days=1)  # every rule is due (daily at 00:00 UTC)
    instances = [
        Scheduler(billing(s, clock, batch_size=25), clock=clock, holder=f"instance-{i}", concurrency=2)
        for i, s in enumerate([services, *more_services])
    ]
    results = await asyncio.gather(*(s.tick() for s in instances))
    assert sum(r.runs for r in results) == 500
    assert sum(1 for r in results if r.leader) == 1  # the lease picked one driver
    await _check_once(services, pids, rs)


async def test_three_instances_racing_without_the_lease_still_charge_once(
    services: Services, more_services: list[Services]
) -> None:
    """The lease only avoids contention: the row locks and the unique run key keep billing exact
    even when every instance claims at once (e.g. clock skew or a paused holder waking up)."""
    t0 = today_midnight() + dt.timedelta(hours=1)
    clock = FakeClock(t0)
    svc = billing(services, clock)
    pids, _, rs = await _setup(services, svc, 500)
    clock.advance(days=1)

    async def drain(s: Services) -> int:
        b = billing(s, clock)
        total = 0
        while True:
            stats = await runner.run_due(b, clock(), limit=20)
            if stats.rules == 0:
                return total
            total += stats.runs

    counts = await asyncio.gather(*(drain(s) for s in [services, *more_services, services, more_services[0]]))
    assert sum(counts) == 500
    assert sum(1 for c in counts if c) >= 2  # they really did share the work
    await _check_once(services, pids, rs)


async def test_killing_the_lease_holder_mid_batch_loses_and_doubles_nothing(
    services: Services, more_services: list[Services]
) -> None:
    t0 = today_midnight() + dt.timedelta(hours=1)
    clock = FakeClock(t0)
    svc = billing(services, clock)
    pids, ws, rs = await _setup(services, svc, 500)
    before = {w.id: await balance(services, w) for w in ws}
    clock.advance(days=1)

    reached = asyncio.Event()
    batches = 0

    async def stall_third_batch(_: list[Any]) -> None:
        nonlocal batches
        batches += 1
        if batches == 3:  # debits posted and runs written, not committed: the process "dies" here
            reached.set()
            await asyncio.Event().wait()

    a = Scheduler(
        billing(services, clock), clock=clock, holder="a", batch_size=50, concurrency=1, hook=stall_third_batch
    )
    b = Scheduler(billing(more_services[0], clock), clock=clock, holder="b", batch_size=50, concurrency=1)
    task = asyncio.create_task(a.tick())
    await asyncio.wait_for(reached.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    done = await owner_fetch(services, "SELECT count(*) AS n FROM billing_runs")
    assert done[0]["n"] == 100  # two batches committed; the third rolled back with its debits
    assert len(await billing_txns(services, pids)) == 100

    # The dead holder's lease still stands: B waits for it to expire.
    assert (await b.tick()).leader is False
    clock.advance(seconds=a.lease.ttl.total_seconds() + 1)
    stats = await b.tick()
    assert stats.leader and stats.runs == 400
    state = await b.lease.current()
    assert state is not None and state.holder == "b" and state.epoch == 2
    await _check_once(services, pids, rs)
    owed: dict[uuid.UUID, int] = {}
    for r in rs:
        owed[r.wallet_id] = owed.get(r.wallet_id, 0) + (r.amount or 0)
    for w in ws:
        assert await balance(services, w) == before[w.id] - owed[w.id]


@pytest.mark.parametrize("policy", ["ALL", "LATEST"])
async def test_catch_up_after_a_three_day_outage(services: Services, policy: str) -> None:
    t0 = today_midnight() + dt.timedelta(hours=1)
    clock = FakeClock(t0)
    svc = billing(services, clock)
    pid = await new_project(services)
    w = await new_wallet(services, pid, 1000)
    daily = await new_rule(svc, w, amount=10, catch_up=policy)
    hourly = await new_rule(svc, w, mode="CRON", cron="30 * * * *", amount=1, catch_up=policy)
    sched = Scheduler(svc, clock=clock, holder="a")
    clock.advance(days=3, hours=0.5)  # down from t0 to t0+3d30m: 3 midnights, 73 half-past hours
    await sched.tick()
    d = await runs_of(services, daily.id)
    h = await runs_of(services, hourly.id)
    assert [r["scheduled_at"] for r in d] == [today_midnight() + dt.timedelta(days=i) for i in (1, 2, 3)]
    assert len(h) == 73
    assert [r["scheduled_at"] for r in h] == [t0 + dt.timedelta(minutes=30, hours=i) for i in range(73)]
    # Periods tile time in order: each begins where the previous ended.
    for runs, start in ((d, t0), (h, t0)):
        for r in runs:
            assert r["period_start"] == start
            start = r["period_end"]
    if policy == "ALL":
        assert {r["status"] for r in d + h} == {"SUCCEEDED"}
        assert await balance(services, w) == 1000 - 30 - 73
    else:
        assert [r["status"] for r in d] == ["SKIPPED", "SKIPPED", "SUCCEEDED"]
        assert [r["status"] for r in h] == ["SKIPPED"] * 72 + ["SUCCEEDED"]
        assert all(r["transaction_id"] is None for r in d[:2] + h[:72])
        assert await balance(services, w) == 1000 - 10 - 1
    ids_ = [r["id"] for r in d + h]
    assert len(set(ids_)) == len(ids_)
    # Back to normal: the next period runs on time, once.
    clock.set(today_midnight() + dt.timedelta(days=4))
    await sched.tick()
    assert len(await runs_of(services, daily.id)) == 4
    await verify(services, pid)


async def test_a_long_catch_up_goes_in_steps(services: Services) -> None:
    """A minute cron after a day's outage: 1440 periods, at most `max_instants_per_pass` per pass."""
    t0 = today_midnight() + dt.timedelta(hours=1)
    clock = FakeClock(t0)
    svc = billing(services, clock, max_instants_per_pass=500)
    pid = await new_project(services)
    w = await new_wallet(services, pid, 10_000)
    rule = await new_rule(svc, w, mode="CRON", cron="* * * * *", amount=1)
    clock.advance(days=1)
    stats = await Scheduler(svc, clock=clock, holder="a").tick()
    assert stats.runs == 1440 and stats.batches == 3
    runs = await runs_of(services, rule.id)
    assert [r["scheduled_at"] for r in runs] == [t0 + dt.timedelta(minutes=i + 1) for i in range(1440)]
    assert await balance(services, w) == 10_000 - 1440


async def test_the_live_scheduler_skips_test_mode_and_paused_rules(services: Services) -> None:
    from ledgerx.domain.billing import rules

    t0 = today_midnight() + dt.timedelta(hours=1)
    clock = FakeClock(t0)
    svc = billing(services, clock)
    live = await new_project(services)
    sandbox = await new_project(services, test_mode=True)
    lw = await new_wallet(services, live, 100)
    sw = await new_wallet(services, sandbox, 100)
    live_rule = await new_rule(svc, lw)
    paused = await new_rule(svc, lw)
    await rules.pause_rule(svc, runner.Actor.system(), live, paused.id)
    sandbox_rule = await new_rule(svc, sw)
    clock.advance(days=30)
    await Scheduler(svc, clock=clock, holder="a").tick()
    assert len(await runs_of(services, live_rule.id)) == 30
    assert await runs_of(services, paused.id) == []
    assert await runs_of(services, sandbox_rule.id) == []


async def test_a_rule_that_breaks_is_isolated_and_retried_later(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    t0 = today_midnight() + dt.timedelta(hours=1)
    clock = FakeClock(t0)
    svc = billing(services, clock)
    pid = await new_project(services)
    w = await new_wallet(services, pid, 1000)
    rs = [await new_rule(svc, w, name=f"r{i}") for i in range(5)]
    poison = rs[2].id
    real = runner.process

    async def flaky(svc_: Any, conn: Any, batch: Any, *a: Any, **kw: Any) -> Any:
        if any(x.id == poison for x in batch):
            raise RuntimeError("boom")
        return await real(svc_, conn, batch, *a, **kw)

    monkeypatch.setattr(runner, "process", flaky)
    clock.advance(days=1)
    stats = await Scheduler(svc, clock=clock, holder="a").tick()
    assert stats.runs == 4 and stats.failed_rules == 1
    [row] = await owner_fetch(services, "SELECT failures, last_error, due_at FROM billing_rules WHERE id = $1", poison)
    assert row["failures"] == 1 and "boom" in row["last_error"] and row["due_at"] > clock()
    assert await runs_of(services, poison) == []  # its period is still owed, not skipped
    monkeypatch.setattr(runner, "process", real)
    clock.advance(minutes=5)
    await Scheduler(svc, clock=clock, holder="a").tick()
    [run] = await runs_of(services, poison)
    assert run["status"] == "SUCCEEDED" and run["scheduled_at"] == today_midnight() + dt.timedelta(days=1)
    [row] = await owner_fetch(services, "SELECT failures, last_error FROM billing_rules WHERE id = $1", poison)
    assert row["failures"] == 0 and row["last_error"] is None


async def test_lease_take_renew_expire_release(services: Services) -> None:
    clock = FakeClock(today_midnight())
    a = Lease(services.db, "t", holder="a", ttl=10, clock=clock)
    b = Lease(services.db, "t", holder="b", ttl=10, clock=clock)
    assert await a.acquire() and a.epoch == 1
    assert not await b.acquire()
    clock.advance(seconds=5)
    assert await a.acquire() and a.epoch == 1  # renewed, same epoch
    clock.advance(seconds=9)
    assert not await b.acquire()  # renewal pushed the expiry
    clock.advance(seconds=2)
    assert not a.held()
    assert await b.acquire() and b.epoch == 2  # taken over after expiry
    assert not await a.acquire()
    await b.release()
    assert await a.acquire() and a.epoch == 3  # released: taken at once


async def test_scheduler_loop_starts_and_stops(services: Services) -> None:
    """The loop runs by itself (real time here, poll interval tiny) and hands the lease over."""
    clock = FakeClock(today_midnight() + dt.timedelta(hours=1))
    svc = billing(services, clock)
    pid = await new_project(services)
    w = await new_wallet(services, pid, 100)
    rule = await new_rule(svc, w)
    clock.advance(days=1)
    sched = Scheduler(svc, clock=clock, holder="loop", poll_interval=0.05)
    sched.start()
    for _ in range(200):
        if await runs_of(services, rule.id):
            break
        await asyncio.sleep(0.02)
    await sched.stop()
    assert len(await runs_of(services, rule.id)) == 1
    state = await sched.lease.current()
    assert state is not None and state.expires_at <= clock()
    assert dataclasses.asdict(sched.total)["runs"] == 1


@pytest.mark.background_loops
async def test_the_app_runs_the_loop_when_enabled_and_the_cli_has_a_scheduler_command(live_server: Any) -> None:
    from ledgerx import cli

    sched = live_server.services.scheduler
    assert sched._task is not None and not sched._task.done()  # started by the lifespan
    for _ in range(100):
        if sched.lease.held():
            break
        await asyncio.sleep(0.02)
    assert sched.lease.held()  # alone on its database, it drives
    parser_help = []
    try:
        cli.main(["scheduler", "--help"])
    except SystemExit as exc:
        parser_help.append(exc.code)
    assert parser_help == [0]
