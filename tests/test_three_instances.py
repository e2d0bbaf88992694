"""Three app instances on one database and one Redis behave as one (issue #19).

Each test starts three real instances: its own `Services` (pools, caches, limiter leases, event
bus) and its own uvicorn server on its own port, with the app's lifespan (the project-change
follower, and where marked `background_loops` the billing scheduler and the webhook delivery
worker). They share the test's database and one Redis prefix. Shown, against one instance's
behaviour:

- rate limits: one token bucket per caller, not one per instance;
- quotas: a METERED limit reached through different instances refuses past N in total, and the
  entitlement check of every instance flips promptly (inside the checks' cache TTL);
- the scheduler lease: one driver at a time, each due rule charged once; a crashed holder's lease
  expires and another instance drives the next due rules;
- outbound webhooks: every event delivered exactly once by three delivery workers;
- live subscriptions: a subscriber on A sees transactions posted through B and C, once, in order.

The module has a database of its own per test (cloned from a migrated template), as the scheduler
and the delivery workers claim work across every project of their database.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from standardwebhooks.webhooks import Webhook

from ledgerx import ids
from ledgerx.app import create_app
from ledgerx.domain import topics
from ledgerx.domain.entitlements.checks import TTL_SECONDS
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, free_port, sign_up
from tests.tenancy_helpers import create_project
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
    template_database,
    today_midnight,
    verify,
)
from tests.test_ledger_api import CREDIT, DEBIT, key
from tests.test_ledger_api import new_wallet as create_wallet
from tests.test_ledger_subscriptions import TXN_POSTED, WALLET_UPDATED
from tests.test_live_support import WsClient
from tests.test_quotas import RECORD, _event, _project_with_quota
from tests.webhooks_out_receiver import running_receiver

__all__ = ["isolated_database_url", "template_database"]  # fixtures used by name

# Inside the entitlement checks' TTL: a cached answer that flips this fast was told to.
PROMPTLY = 3.0
assert PROMPTLY < TTL_SECONDS
ME = {"query": "{ me { id } }"}


@pytest.fixture
def database_url(isolated_database_url: str) -> str:
    """A database of this test's own: the loops claim due work across all its projects."""
    return isolated_database_url


# -- three instances -----------------------------------------------------------------------------


@dataclasses.dataclass
class Instance:
    name: str
    services: Services
    url: str
    ws_url: str
    http: httpx.AsyncClient
    server: uvicorn.Server
    task: asyncio.Task[None]

    @property
    def gql(self) -> GQL:
        return GQL(self.http)

    async def stop(self) -> None:
        if self.task.done():
            return
        await self.http.aclose()
        self.server.should_exit = True
        await self.task
        await self.services.close()


async def until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    """Poll `check` until it holds (asserting it does within `within` seconds); how long it took."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < within, what
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def _start(name: str, settings: Settings) -> Instance:
    services = Services.build(settings)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, services),
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name=f"instance-{name}")
    url = f"http://127.0.0.1:{port}"
    return Instance(
        name, services, url, f"ws://127.0.0.1:{port}/graphql", httpx.AsyncClient(base_url=url), server, task
    )


@contextlib.asynccontextmanager
async def three_instances(settings: Settings) -> AsyncIterator[list[Instance]]:
    """Three instances serving, each following the project-change announcements (its lifespan's
    follower subscribed), as production runs them."""
    # Each instance may hold 2 x db_pool_size ORM connections (pool and overflow) and db_pool_size
    # raw ones: three of them must fit the server's max_connections (100 here, which other test
    # sessions share) with room to spare, as a deployment sizes its pools to its database.
    settings = dataclasses.replace(settings, db_pool_size=5)
    made: list[Instance] = []
    try:
        for name in ("a", "b", "c"):
            made.append(await _start(name, settings))

        async def serving() -> bool:
            assert not any(i.task.done() for i in made), "an instance's server exited while starting"
            return all(
                i.server.started
                and topics.PLAN_CHANGES in i.services.events.active_topics()
                and topics.MEMBERS_PATTERN in i.services.events.active_patterns()
                for i in made
            )

        await until(serving, 15, "the three instances did not start serving and following announcements")
        yield made
    finally:
        for i in made:
            await i.stop()


# -- rate limits ---------------------------------------------------------------------------------


async def test_a_rate_limit_is_one_bucket_across_three_instances(settings: Settings) -> None:
    # A burst of 10 that refills one token per 100 s: nothing refills during the test.
    s = dataclasses.replace(settings, rate_limit_burst=10, rate_limit_per_second=0.01)
    async with three_instances(s) as instances:
        user = await sign_up(instances[0].gql)  # anonymous: its own (large) limit
        auth = {"Authorization": f"Bearer {user.token}"}
        seen: list[tuple[str, int, str | None, str | None]] = []
        for n in range(30):
            inst = instances[n % 3]
            r = await inst.http.post("/graphql", json=ME, headers=auth)
            code = r.json()["errors"][0]["extensions"]["code"] if r.status_code == 429 else None
            seen.append((inst.name, r.status_code, r.headers.get("retry-after"), code))
        assert [status for _, status, _, _ in seen] == [200] * 10 + [429] * 20, seen
        # Each instance refused with RATE_LIMITED and a Retry-After no later than the next token.
        for name in ("a", "b", "c"):
            refused = [(retry, code) for who, status, retry, code in seen if who == name and status == 429]
            assert refused, f"instance {name} never refused"
            for retry, code in refused:
                assert code == "RATE_LIMITED"
                assert retry is not None and 1 <= int(retry) <= 101, retry

        # Concurrently too: another caller's 30 requests at once over the three admit exactly 10.
        other = await sign_up(instances[1].gql)
        headers = {"Authorization": f"Bearer {other.token}"}
        responses = await asyncio.gather(
            *(instances[n % 3].http.post("/graphql", json=ME, headers=headers) for n in range(30))
        )
        statuses = Counter(r.status_code for r in responses)
        assert statuses == {200: 10, 429: 20}, statuses
        assert all("retry-after" in r.headers for r in responses if r.status_code == 429)


# -- quotas and entitlement checks -------------------------------------------------------------


async def test_a_quota_reached_through_three_instances_refuses_past_it_and_every_check_flips(
    settings: Settings,
) -> None:
    quota = 20
    async with three_instances(settings) as instances:
        token, pid = await _project_with_quota(instances[0].gql, settings, quota=quota)

        async def check(inst: Instance) -> dict[str, Any]:
            r = await inst.http.get(
                "/v1/entitlements/api_calls", params={"projectId": pid}, headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body

        # Every instance answers (and caches) the open quota first.
        for inst in instances:
            e = await check(inst)
            assert (e["type"], e["hasAccess"], e["limit"], float(e["usage"])) == ("METERED", True, str(quota), 0), e

        # Three times the quota in 1-unit events, all at once, round-robin over the instances.
        bodies = await asyncio.gather(
            *(instances[n % 3].gql(RECORD, {"i": _event(pid, "1")}, token=token) for n in range(3 * quota))
        )
        accepted = [n for n, b in enumerate(bodies) if not b.get("errors")]
        refused = Counter(b["errors"][0]["extensions"]["code"] for b in bodies if b.get("errors"))
        assert len(accepted) == quota, f"{len(accepted)} events accepted against a quota of {quota}"
        assert refused == {"QUOTA_EXCEEDED": 2 * quota}, refused
        stored = await owner_fetch(
            instances[0].services,
            "SELECT count(*) AS n, coalesce(sum(units), 0) AS u FROM usage_events WHERE project_id = $1",
            ids.decode("project", pid),
        )
        assert (stored[0]["n"], int(stored[0]["u"])) == (quota, quota)

        # Every instance's check flips, well before its cached answer would have expired.
        for inst in instances:

            async def flipped(inst: Instance = inst) -> bool:
                e = await check(inst)
                return (e["hasAccess"], float(e["usage"]), float(e["remaining"])) == (False, quota, 0)

            await until(flipped, PROMPTLY, f"instance {inst.name} kept granting api_calls past its limit")
        # And each instance refuses the next event (never N+k).
        for inst in instances:
            err = await inst.gql.error(RECORD, {"i": _event(pid, "1")}, token=token)
            assert (err["code"], err["quota"]) == ("QUOTA_EXCEEDED", quota), err
        stored = await owner_fetch(
            instances[0].services,
            "SELECT count(*) AS n FROM usage_events WHERE project_id = $1",
            ids.decode("project", pid),
        )
        assert stored[0]["n"] == quota


# -- the scheduler lease -------------------------------------------------------------------------


async def _due_rules(
    services: Services, rules: int, *, projects: int = 3
) -> tuple[list[uuid.UUID], list[Any], list[Any]]:
    """`rules` daily rules over `projects` projects, made an hour before today's midnight (by an
    injected clock), so each owes exactly one period, today's midnight, which is past: due now."""
    clock = FakeClock(today_midnight() - dt.timedelta(hours=1))
    svc = billing(services, clock)
    pids = [await new_project(services) for _ in range(projects)]
    wallets = [await new_wallet(services, pids[n % projects], 1_000, name=f"w{n}") for n in range(2 * projects)]
    made = [await new_rule(svc, wallets[n % len(wallets)], name=f"r{n}", amount=1 + n % 5) for n in range(rules)]
    return pids, wallets, made


async def _runs(services: Services, rules: list[Any]) -> list[Any]:
    return await owner_fetch(
        services,
        "SELECT rule_id, status, amount FROM billing_runs WHERE rule_id = ANY($1::uuid[])",
        [r.id for r in rules],
    )


async def _charged_once(services: Services, pids: list[uuid.UUID], wallets: list[Any], rules: list[Any]) -> None:
    """Each rule has exactly one run, SUCCEEDED, and one BILLING debit (its period's key); each
    wallet paid exactly what its rules owe."""
    runs = await _runs(services, rules)
    assert Counter(r["rule_id"] for r in runs) == dict.fromkeys([r.id for r in rules], 1), "a rule ran twice or never"
    assert {r["status"] for r in runs} == {"SUCCEEDED"}
    debits = await billing_txns(services, pids)
    assert Counter(t["idempotency_key"].split(":")[1] for t in debits) == dict.fromkeys(
        [r.public_id for r in rules], 1
    ), "a rule was debited twice or never"
    owed: dict[uuid.UUID, int] = {}
    for r in rules:
        owed[r.wallet_id] = owed.get(r.wallet_id, 0) + r.amount
    for w in wallets:
        assert await balance(services, w) == 1_000 - owed.get(w.id, 0)


@pytest.mark.background_loops
async def test_the_scheduler_lease_gives_one_driver_and_a_crashed_holders_rules_run_once_elsewhere(
    settings: Settings,
) -> None:
    s = dataclasses.replace(settings, scheduler_lease_ttl=4, scheduler_poll_interval=0.2)
    async with three_instances(s) as instances:
        overlaps: list[list[str]] = []
        ever_held: set[str] = set()
        stop = asyncio.Event()

        async def watch_the_lease() -> None:
            while not stop.is_set():
                holding = [i.name for i in instances if i.services.scheduler.lease.held()]
                ever_held.update(holding)
                if len(holding) > 1:
                    overlaps.append(holding)
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch_the_lease())
        try:
            first_pids, first_wallets, first = await _due_rules(instances[0].services, 30)

            async def first_ran() -> bool:
                return len(await _runs(instances[0].services, first)) >= len(first)

            await until(first_ran, 20, "the scheduler did not run the due rules")

            async def one_holder() -> bool:
                return sum(i.services.scheduler.lease.held() for i in instances) == 1

            await until(one_holder, 10, "no single instance holds the scheduler lease")
            [holder] = [i for i in instances if i.services.scheduler.lease.held()]
            state = await holder.services.scheduler.lease.current()
            assert state is not None and state.holder == holder.services.scheduler.holder
            epoch = state.epoch

            async def counted() -> bool:  # a tick adds its runs to the totals as it ends
                return sum(i.services.scheduler.total.runs for i in instances) >= len(first)

            await until(counted, 10, "the schedulers' totals never counted the runs")
            totals = {i.name: i.services.scheduler.total.runs for i in instances}
            assert sum(totals.values()) == len(first), totals
            assert {n for n, runs in totals.items() if runs} <= ever_held, (totals, ever_held)
            await _charged_once(instances[0].services, first_pids, first_wallets, first)

            # The holder's scheduler dies without a word (no release): its lease must run out first.
            dead = holder.services.scheduler
            assert dead._task is not None
            dead._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dead._task
            dead._task = None  # stop() at shutdown must not await the cancelled task
            dead_total = dead.total.runs
            survivors = [i for i in instances if i is not holder]

            second_pids, second_wallets, second = await _due_rules(survivors[0].services, 12)

            async def second_ran() -> bool:
                return len(await _runs(survivors[0].services, second)) >= len(second)

            await until(second_ran, 25, "no other instance took the lease over and ran the next due rules")

            async def counted_again() -> bool:
                return sum(i.services.scheduler.total.runs for i in survivors) >= len(second) + sum(
                    totals[i.name] for i in survivors
                )

            await until(counted_again, 10, "the survivors' totals never counted the runs")
            assert dead.total.runs == dead_total  # the dead one did nothing more
            state = await survivors[0].services.scheduler.lease.current()
            assert state is not None
            assert state.holder in {i.services.scheduler.holder for i in survivors}
            assert state.epoch > epoch  # the lease changed hands (a fencing epoch per handover)
            assert sum(i.services.scheduler.total.runs for i in survivors) == len(second) + sum(
                totals[i.name] for i in survivors
            )
            await _charged_once(survivors[0].services, second_pids, second_wallets, second)
            await _charged_once(survivors[0].services, first_pids, first_wallets, first)  # nothing more on the first
            for p in first_pids + second_pids:
                await verify(survivors[0].services, p)
        finally:
            stop.set()
            await watcher
        assert overlaps == [], f"instances held the lease at once: {overlaps[:5]}"


# -- outbound webhooks ---------------------------------------------------------------------------

CREATE_ENDPOINT = """mutation($i: CreateWebhookEndpointInput!) { createWebhookEndpoint(input: $i) {
  secret endpoint { id } } }"""


@pytest.mark.background_loops
async def test_three_delivery_workers_deliver_each_event_exactly_once(settings: Settings) -> None:
    events = 60
    async with running_receiver() as receiver, three_instances(settings) as instances:
        gql = instances[0].gql
        owner = await sign_up(gql)
        pid = await create_project(gql, owner)
        made = await gql.ok(
            CREATE_ENDPOINT,
            {"i": {"projectId": pid, "url": receiver.url("/ok"), "events": ["transaction.posted"]}},
            token=owner.token,
        )
        secret = made["createWebhookEndpoint"]["secret"]
        wid = await create_wallet(gql, owner.token, pid)

        async def post(n: int) -> str:
            data = await instances[n % 3].gql.ok(
                CREDIT, {"i": {"walletId": wid, "amount": 1 + n, "idempotencyKey": key()}}, token=owner.token
            )
            return str(data["creditWallet"]["id"])

        txns = await asyncio.gather(*(post(n) for n in range(events)))
        project = ids.decode("project", pid)
        outbox = await owner_fetch(
            instances[0].services, "SELECT id FROM webhook_outbox WHERE project_id = $1", project
        )
        assert len(outbox) == events
        event_ids = {ids.encode("event", r["id"]) for r in outbox}

        async def all_delivered() -> bool:
            rows = await owner_fetch(
                instances[0].services, "SELECT status FROM webhook_deliveries WHERE project_id = $1", project
            )
            return len(rows) == events and all(r["status"] == "SUCCEEDED" for r in rows)

        await until(all_delivered, 30, "not every event was delivered")
        await receiver.wait_for(events, "/ok", timeout=5)

        got = receiver.of("/ok")
        by_id = Counter(r.headers["webhook-id"] for r in got)
        assert by_id == dict.fromkeys(event_ids, 1), "an event was delivered twice, or never"
        payloads = [Webhook(secret).verify(r.body, r.headers) for r in got]
        assert Counter(p["data"]["id"] for p in payloads) == dict.fromkeys(txns, 1)
        attempts = await owner_fetch(
            instances[0].services,
            "SELECT d.attempts, count(a.*) AS logged FROM webhook_deliveries d"
            " LEFT JOIN webhook_delivery_attempts a ON a.delivery_id = d.id WHERE d.project_id = $1 GROUP BY d.id",
            project,
        )
        assert Counter((r["attempts"], r["logged"]) for r in attempts) == {(1, 1): events}


# -- live subscriptions --------------------------------------------------------------------------


async def test_a_subscriber_on_one_instance_sees_transactions_posted_through_the_others_once_in_order(
    settings: Settings,
) -> None:
    async with three_instances(settings) as instances:
        a, b, c = instances
        owner = await sign_up(a.gql)
        pid = await create_project(a.gql, owner)
        wid = await create_wallet(a.gql, owner.token, pid)
        before = set(a.services.events.active_topics())
        ws = await WsClient.connect(a.ws_url, owner.token)
        try:
            posted_op = await ws.subscribe(TXN_POSTED, {"p": pid})
            wallet_op = await ws.subscribe(WALLET_UPDATED, {"w": wid})

            async def subscribed() -> bool:
                return len(set(a.services.events.active_topics()) - before) >= 2

            await until(subscribed, 10, "the subscriptions on A did not become active")

            # Alternately through B and C: credits, and every third a debit; then one through A.
            sent: list[tuple[str, str, int]] = []
            posted_at: list[float] = []  # when each mutation's answer came back
            for n in range(12):
                via = (b, c)[n % 2]
                if n % 3 == 2:
                    d = await via.gql.ok(
                        DEBIT, {"i": {"walletId": wid, "amount": 1, "idempotencyKey": key()}}, token=owner.token
                    )
                    sent.append((d["debitWallet"]["id"], "DEBIT", 1))
                    posted_at.append(time.time())
                else:
                    d = await via.gql.ok(
                        CREDIT, {"i": {"walletId": wid, "amount": 10 + n, "idempotencyKey": key()}}, token=owner.token
                    )
                    sent.append((d["creditWallet"]["id"], "CREDIT", 10 + n))
                    posted_at.append(time.time())
            # B's and C's transactions arrive on A (read before A posts anything itself).
            posted = [await ws.next_data(posted_op, "transactionPosted") for _ in sent]
            updates = [await ws.next_data(wallet_op, "walletUpdated") for _ in sent]

            # Then one through A: the next message of each stream is that one, so nothing before
            # it was repeated.
            last = await a.gql.ok(
                CREDIT, {"i": {"walletId": wid, "amount": 5, "idempotencyKey": key()}}, token=owner.token
            )
            sent.append((last["creditWallet"]["id"], "CREDIT", 5))
            posted_at.append(time.time())
            posted.append(await ws.next_data(posted_op, "transactionPosted"))
            updates.append(await ws.next_data(wallet_op, "walletUpdated"))
        finally:
            await ws.close()
    assert [(p["id"], p["type"], p["amount"], p["walletId"]) for p in posted] == [
        (t, kind, str(amount), wid) for t, kind, amount in sent
    ]
    assert [u["transaction"]["id"] for u in updates] == [t for t, _, _ in sent]
    running = 0
    expected_balances = []
    for _, kind, amount in sent:
        running += amount if kind == "CREDIT" else -amount
        expected_balances.append(str(running))
    assert [u["wallet"]["balance"] for u in updates] == expected_balances
    # Promptly: the streams re-read the database on their own only after 10 s (transactions) or
    # 30 s (wallets) of quiet; arrivals this fast were woken by the posting instance's message
    # (through Redis: B and C announce, A hears).
    late = [
        (n, round(m["_received"] - at, 2))
        for n, at in enumerate(posted_at)
        for m in (posted[n], updates[n])
        if m["_received"] - at > PROMPTLY
    ]
    assert late == [], f"messages arrived late (index, seconds after the post): {late}"
