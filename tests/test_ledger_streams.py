"""walletUpdated and transactionPosted from a cursor: replay, then live, every transaction exactly
once and in order, through Redis cuts, lost messages, reconnects and concurrent posters.

Subscribers are real websocket clients of real app instances; Redis is cut for real (a TCP proxy
between an instance and Redis); the expected order is read from the database as its owner.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from ledgerx import ids
from ledgerx.db.migrate import upgrade
from ledgerx.domain import events, topics
from ledgerx.domain.ledger import Kind, Leg, Posting, SystemAccount, WalletRef, posting, wallet_feed
from ledgerx.domain.ledger.feed import START, ProjectReader, read_page
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, LiveServer, SignedIn, sign_up
from tests.ledger_helpers import ACTOR, legacy_ledger, new_project
from tests.ledger_helpers import new_wallet as ledger_wallet
from tests.tcp_proxy import CuttableProxy
from tests.tenancy_helpers import create_project, owner_sql
from tests.test_ledger_api import key, new_wallet
from tests.test_live_support import WsClient, app_instance

WALLET_UPDATED = """
subscription($w: ID!, $a: ID) { walletUpdated(walletId: $w, after: $a) {
  cursor lowBalance wallet { id balance } transaction { id cursor amount balanceAfter } } }
"""
TXN_POSTED = """
subscription($p: ID!, $a: ID) { transactionPosted(projectId: $p, after: $a) { id cursor amount walletId } }
"""

# Long enough for a loaded machine; the streams deliver in milliseconds when all is well.
WAIT = 60.0


@dataclasses.dataclass
class Setup:
    owner: SignedIn
    project: str  # public ids
    wallet: str
    project_uuid: uuid.UUID
    ref: WalletRef
    start: str  # the funding credit: a cursor before everything the test posts


async def setup(gql: GQL, services: Services, *, funds: int = 100_000) -> Setup:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    wid = await new_wallet(gql, owner.token, pid)
    ref = await services.ledger.wallet_ref(ids.decode("wallet", wid))
    assert ref is not None
    funded = await posting.credit_wallet(services.ledger, ACTOR, ref, funds, key())
    return Setup(owner, pid, wid, ref.project_id, ref, ids.encode("transaction", funded.transaction.id))


async def debit(services: Services, ref: WalletRef, amount: int = 1) -> str:
    posted = await posting.debit_wallet(services.ledger, ACTOR, ref, amount, key())
    return ids.encode("transaction", posted.transaction.id)


async def debits(services: Services, ref: WalletRef, n: int, *, parallel: int = 20) -> list[str]:
    """`n` debits, `parallel` at a time; their ids in the wallet's order (by the wallet's seq)."""
    out: list[tuple[int, str]] = []
    sem = asyncio.Semaphore(parallel)

    async def one() -> None:
        async with sem:
            posted = await posting.debit_wallet(services.ledger, ACTOR, ref, 1, key())
        seq = next(e.seq for e in posted.transaction.entries if e.wallet_id == ref.id)
        assert seq is not None
        out.append((seq, ids.encode("transaction", posted.transaction.id)))

    await asyncio.gather(*(one() for _ in range(n)))
    return [t for _, t in sorted(out)]


async def wallet_order(settings: Settings, ref: WalletRef) -> list[str]:
    rows = await owner_sql(
        settings, "SELECT transaction_id FROM ledger_entries WHERE wallet_id = $1 ORDER BY seq", ref.id
    )
    return [ids.encode("transaction", r["transaction_id"]) for r in rows]


async def project_order(settings: Settings, project_uuid: uuid.UUID) -> list[str]:
    """The project's transactions in stream order, as the database's owner sees them."""
    rows = await owner_sql(
        settings, "SELECT id FROM ledger_transactions WHERE project_id = $1 ORDER BY commit_xid, id", project_uuid
    )
    return [ids.encode("transaction", r["id"]) for r in rows]


def after(order: Sequence[str], cursor: str) -> list[str]:
    return list(order[order.index(cursor) + 1 :])


async def take(ws: WsClient, op: str, field: str, n: int, wait: float = WAIT) -> list[str]:
    """The next `n` transactions of a stream, as ids; each message's cursor is its transaction's id."""
    got: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while len(got) < n:
        left = deadline - loop.time()
        if left <= 0:
            raise AssertionError(f"{field}: {len(got)} of {n} messages after {wait}s")
        data = await ws.next_data(op, field, left)
        txn = data["transaction"] if field == "walletUpdated" else data
        assert data["cursor"] == txn["cursor"] == txn["id"], data
        got.append(txn["id"])
    return got


async def quiet(ws: WsClient, *ops: str, wait: float = 0.3) -> None:
    """Nothing more arrives on `ops` (no duplicate, no stray message)."""
    await asyncio.sleep(wait)
    for op in ops:
        assert ws.pending(op) == [], ws.pending(op)


async def wait_topic(services: Services, topic: str) -> None:
    for _ in range(500):
        if topic in services.events.active_topics():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{topic} never became active")


async def subscribe_both(ws: WsClient, services: Services, s: Setup, cursor: str | None) -> tuple[str, str]:
    w = await ws.subscribe(WALLET_UPDATED, {"w": s.wallet, "a": cursor})
    p = await ws.subscribe(TXN_POSTED, {"p": s.project, "a": cursor})
    await wait_topic(services, topics.wallet(s.ref.id))
    await wait_topic(services, topics.project_transactions(s.project_uuid))
    return w, p


# -- (1) replay after a cursor, then live ------------------------------------------------------------


async def test_replay_after_a_cursor_then_live_in_order_once_each(
    live_server: LiveServer, gql: GQL, services: Services
) -> None:
    s = await setup(gql, services)
    early = [await debit(services, s.ref) for _ in range(6)]
    cursor = early[1]
    ws = await WsClient.connect(live_server.ws_url, s.owner.token)
    try:
        w, p = await subscribe_both(ws, services, s, cursor)
        assert await take(ws, w, "walletUpdated", 4) == early[2:]
        assert await take(ws, p, "transactionPosted", 4) == early[2:]
        live = [await debit(services, s.ref) for _ in range(3)]
        live += await debits(services, s.ref, 30)
        assert await take(ws, w, "walletUpdated", 33) == live
        assert await take(ws, p, "transactionPosted", 33) == after(
            await project_order(live_server.services.settings, s.project_uuid), early[-1]
        )
        await quiet(ws, w, p)
    finally:
        await ws.close()
    assert (await wallet_order(services.settings, s.ref))[1:] == early + live  # after the setup's credit


async def test_without_after_the_streams_start_now(live_server: LiveServer, gql: GQL, services: Services) -> None:
    """Nothing committed before the subscription; from the first transaction it delivers, every
    later one, in order. (When a subscription is "now" is up to the server: debits keep coming
    until the streams show one.)"""
    s = await setup(gql, services)
    old = await debits(services, s.ref, 5)
    ws = await WsClient.connect(live_server.ws_url, s.owner.token)
    try:
        w, p = await subscribe_both(ws, services, s, None)
        posted: list[str] = []
        while not ws.messages[w].qsize() or not ws.messages[p].qsize():
            assert len(posted) < 100, "the streams never started"
            posted.append(await debit(services, s.ref))
            await asyncio.sleep(0.05)
        posted += await debits(services, s.ref, 10)
        got_w = await take(ws, w, "walletUpdated", 1)
        got_w += await take(ws, w, "walletUpdated", len(posted) - posted.index(got_w[0]) - 1)
        order = await project_order(services.settings, s.project_uuid)
        got_p = await take(ws, p, "transactionPosted", 1)
        got_p += await take(ws, p, "transactionPosted", len(order) - order.index(got_p[0]) - 1)
        await quiet(ws, w, p)
    finally:
        await ws.close()
    assert got_w == posted[posted.index(got_w[0]) :]  # `posted` is in the wallet's order
    assert got_p == order[order.index(got_p[0]) :]
    assert not set(old) & (set(got_w) | set(got_p))


# -- (2) a Redis cut in the middle of a stream ------------------------------------------------------


@pytest.fixture
async def cut_instance(settings: Settings, redis_url: str) -> AsyncIterator[tuple[LiveServer, CuttableProxy]]:
    """A second app instance whose Redis goes through a proxy the test can cut."""
    proxy = CuttableProxy(redis_url)
    await proxy.start()
    try:
        async with app_instance(dataclasses.replace(settings, redis_url=proxy.url)) as server:
            yield server, proxy
    finally:
        await proxy.cut()


async def test_a_redis_cut_mid_stream_loses_nothing_and_the_client_does_not_reconnect(
    cut_instance: tuple[LiveServer, CuttableProxy],
    gql: GQL,
    services: Services,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The subscriber's instance loses Redis while ~200 debits commit (announced on Redis by
    another instance, so the subscriber's instance misses them). When it reconnects, both
    streams fill the hole from the database: every debit once, in order, on the same socket.
    No debit follows the restore before the check, so only the reconnect signal can have
    triggered the fill (the idle re-checks are pushed out of the test's reach)."""
    monkeypatch.setattr(wallet_feed, "IDLE_RECHECK_S", 600.0)
    monkeypatch.setattr(ProjectReader, "IDLE_RECHECK_S", 600.0)
    server, proxy = cut_instance
    s = await setup(gql, services)
    start = await debit(services, s.ref)
    ws = await WsClient.connect(server.ws_url, s.owner.token)
    try:
        w, p = await subscribe_both(ws, server.services, s, start)
        before = await debits(services, s.ref, 10)
        assert await take(ws, w, "walletUpdated", 10) == before
        assert await take(ws, p, "transactionPosted", 10) == after(
            await project_order(services.settings, s.project_uuid), start
        )

        disconnects = server.services.events.disconnects
        await proxy.cut()
        during = await debits(services, s.ref, 200)
        await asyncio.sleep(0.5)
        assert server.services.events.disconnects > disconnects  # the instance did lose Redis
        assert ws.pending(w) == [] and ws.pending(p) == []  # nothing reached it meanwhile
        await proxy.restore()

        assert await take(ws, w, "walletUpdated", 200) == during
        order = await project_order(services.settings, s.project_uuid)
        assert await take(ws, p, "transactionPosted", 200) == after(order, before[-1])
        # Live again, on the same socket and operations.
        later = await debits(services, s.ref, 5)
        assert await take(ws, w, "walletUpdated", 5) == later
        order = await project_order(services.settings, s.project_uuid)
        assert await take(ws, p, "transactionPosted", 5) == after(order, during[-1])
        await quiet(ws, w, p)
        assert ws.closed is None
    finally:
        await ws.close()


# -- (3) reconnecting with the last cursor ----------------------------------------------------------


async def test_a_client_that_reconnects_with_its_last_cursor_gets_exactly_what_it_missed(
    live_server: LiveServer, gql: GQL, services: Services
) -> None:
    s = await setup(gql, services)
    start = await debit(services, s.ref)
    ws = await WsClient.connect(live_server.ws_url, s.owner.token)
    try:
        w, p = await subscribe_both(ws, services, s, start)
        seen = await debits(services, s.ref, 7)
        assert await take(ws, w, "walletUpdated", 7) == seen
        got_p = await take(ws, p, "transactionPosted", 7)
    finally:
        await ws.close()
    missed = await debits(services, s.ref, 25)
    ws = await WsClient.connect(live_server.ws_url, s.owner.token)
    try:
        w = await ws.subscribe(WALLET_UPDATED, {"w": s.wallet, "a": seen[-1]})
        p = await ws.subscribe(TXN_POSTED, {"p": s.project, "a": got_p[-1]})
        assert await take(ws, w, "walletUpdated", 25) == missed
        order = await project_order(services.settings, s.project_uuid)
        assert await take(ws, p, "transactionPosted", 25) == after(order, got_p[-1])
        await wait_topic(services, topics.wallet(s.ref.id))
        then = await debit(services, s.ref)
        assert await take(ws, w, "walletUpdated", 1) == [then]
        assert await take(ws, p, "transactionPosted", 1) == [then]
        await quiet(ws, w, p)
    finally:
        await ws.close()


# -- (4) a lost live message ------------------------------------------------------------------------


async def test_a_lost_live_message_is_filled_from_the_database(
    live_server: LiveServer, gql: GQL, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The announcement of one debit never reaches Redis; the next debit's message shows the hole
    in the wallet's sequence (and wakes the project's reader), and the lost one comes first."""
    monkeypatch.setattr(wallet_feed, "IDLE_RECHECK_S", 600.0)
    monkeypatch.setattr(ProjectReader, "IDLE_RECHECK_S", 600.0)
    s = await setup(gql, services)
    ws = await WsClient.connect(live_server.ws_url, s.owner.token)
    try:
        w, p = await subscribe_both(ws, services, s, s.start)
        first = await debit(services, s.ref)
        assert await take(ws, w, "walletUpdated", 1) == [first]
        assert await take(ws, p, "transactionPosted", 1) == [first]

        bus = services.events
        real = bus.publish_many
        lost: list[str] = []

        async def drop_all(batch: Sequence[tuple[str, events.Event]]) -> None:
            lost.extend(t for t, _ in batch)

        monkeypatch.setattr(bus, "publish_many", drop_all)
        dropped = await debit(services, s.ref)
        for _ in range(100):
            if lost:
                break
            await asyncio.sleep(0.01)
        monkeypatch.setattr(bus, "publish_many", real)
        assert topics.wallet(s.ref.id) in lost
        await quiet(ws, w, p)  # nothing told the subscriber yet

        last = await debit(services, s.ref)
        assert await take(ws, w, "walletUpdated", 2) == [dropped, last]
        assert await take(ws, p, "transactionPosted", 2) == [dropped, last]
        await quiet(ws, w, p)
    finally:
        await ws.close()


async def test_a_quiet_stream_finds_a_lost_message_by_itself(
    live_server: LiveServer, gql: GQL, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publisher whose message never reached Redis leaves no hole until the next message; the
    idle re-check finds it even when no other transaction follows."""
    monkeypatch.setattr(wallet_feed, "IDLE_RECHECK_S", 0.3)
    monkeypatch.setattr(ProjectReader, "IDLE_RECHECK_S", 0.3)
    s = await setup(gql, services)
    ws = await WsClient.connect(live_server.ws_url, s.owner.token)
    try:
        w, p = await subscribe_both(ws, services, s, s.start)

        async def drop_all(batch: Sequence[tuple[str, events.Event]]) -> None:
            return None

        with monkeypatch.context() as m:
            m.setattr(services.events, "publish_many", drop_all)
            dropped = await debit(services, s.ref)
        assert await take(ws, w, "walletUpdated", 1, wait=10) == [dropped]
        assert await take(ws, p, "transactionPosted", 1, wait=10) == [dropped]
        await quiet(ws, w, p, wait=1.0)
    finally:
        await ws.close()


def test_an_overflowing_gap_aware_subscription_says_so() -> None:
    """A slow gap-aware subscriber whose queue overflows gets GAP (then the newest events); a
    plain one only loses the oldest, as before."""

    async def run() -> tuple[list[Any], list[Any]]:
        aware = events.Subscription("t", 2, gaps=True)
        plain = events.Subscription("t", 2)
        for i in range(4):
            aware.offer({"n": i})
            plain.offer({"n": i})
        got = [await anext(aware) for _ in range(3)], [await anext(plain) for _ in range(2)]
        await aware.close()
        await plain.close()
        return got

    aware, plain = asyncio.run(run())
    assert aware[0] is events.GAP and aware[1:] == [{"n": 2}, {"n": 3}]
    assert plain == [{"n": 2}, {"n": 3}]


# -- (5) bad cursors --------------------------------------------------------------------------------


async def first_error(ws: WsClient, op: str) -> dict[str, Any]:
    msg = await ws.recv(op)
    assert msg["type"] in ("error", "next"), msg
    errors = msg["payload"] if msg["type"] == "error" else msg["payload"]["errors"]
    assert errors and not (msg["payload"].get("data") if msg["type"] == "next" else None), msg
    return {"message": errors[0]["message"], **(errors[0].get("extensions") or {})}


async def test_bad_cursors_are_bad_user_input_and_reveal_nothing(
    live_server: LiveServer, gql: GQL, services: Services
) -> None:
    s = await setup(gql, services)
    other_wallet = await new_wallet(gql, s.owner.token, s.project)
    other_ref = await services.ledger.wallet_ref(ids.decode("wallet", other_wallet))
    assert other_ref is not None
    other_wallets_txn = ids.encode(
        "transaction", (await posting.credit_wallet(services.ledger, ACTOR, other_ref, 5, key())).transaction.id
    )
    stranger = await setup(gql, services)
    strangers_txn = await debit(services, stranger.ref)
    unknown = ids.encode("transaction", uuid.uuid4())

    ws = await WsClient.connect(live_server.ws_url, s.owner.token)
    try:
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        cases = {
            "malformed": "txn_nope",
            "wrong kind": s.wallet,
            "unknown": unknown,
            "other project": strangers_txn,
        }
        for name, cursor in cases.items():
            for field, query, variables in (
                ("walletUpdated", WALLET_UPDATED, {"w": s.wallet, "a": cursor}),
                ("transactionPosted", TXN_POSTED, {"p": s.project, "a": cursor}),
            ):
                op = await ws.subscribe(query, variables)
                seen[(name, field)] = await first_error(ws, op)
        op = await ws.subscribe(WALLET_UPDATED, {"w": s.wallet, "a": other_wallets_txn})
        seen[("other wallet", "walletUpdated")] = await first_error(ws, op)
    finally:
        await ws.close()

    for case, err in seen.items():
        assert err.get("code") == "BAD_USER_INPUT", (case, err)
        assert err.get("field") == "after", (case, err)
        assert "transaction" in err["message"]
    # Another tenant's transaction is answered exactly like one that does not exist.
    for field in ("walletUpdated", "transactionPosted"):
        assert seen[("other project", field)] == seen[("unknown", field)]
    assert seen[("other wallet", "walletUpdated")] == seen[("unknown", "walletUpdated")]


# -- (6) concurrent posters: one total order --------------------------------------------------------


async def test_concurrent_posters_on_many_wallets_make_one_total_order(
    live_server: LiveServer,
    gql: GQL,
    services: Services,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """300 postings on 12 wallets at once. Three subscribers on one instance (one shared reader,
    small follower queues so they fall behind and catch up on their own), one that joins late
    from the same cursor, and one on another instance: all see the database's (commit_xid, id)
    order, every transaction once."""
    monkeypatch.setattr(ProjectReader, "FOLLOW_QUEUE", 5)
    s = await setup(gql, services, funds=10)
    refs = [s.ref]
    for _ in range(11):
        wid = await new_wallet(gql, s.owner.token, s.project)
        ref = await services.ledger.wallet_ref(ids.decode("wallet", wid))
        assert ref is not None
        refs.append(ref)
    start = (await project_order(settings, s.project_uuid))[-1]
    total = 300

    async with app_instance(settings) as other:
        clients = [await WsClient.connect(live_server.ws_url, s.owner.token) for _ in range(3)]
        remote = await WsClient.connect(other.ws_url, s.owner.token)
        late = await WsClient.connect(live_server.ws_url, s.owner.token)
        try:
            ops = [await c.subscribe(TXN_POSTED, {"p": s.project, "a": start}) for c in clients]
            remote_op = await remote.subscribe(TXN_POSTED, {"p": s.project, "a": start})
            await wait_topic(services, topics.project_transactions(s.project_uuid))
            await wait_topic(other.services, topics.project_transactions(s.project_uuid))
            sem = asyncio.Semaphore(40)

            async def post(i: int) -> None:
                async with sem:
                    await posting.credit_wallet(services.ledger, ACTOR, refs[i % len(refs)], 1 + i % 7, key())

            posters = asyncio.gather(*(post(i) for i in range(total)))
            await asyncio.sleep(0.2)
            late_op = await late.subscribe(TXN_POSTED, {"p": s.project, "a": start})
            await posters
            streams = [take(c, op, "transactionPosted", total) for c, op in zip(clients, ops, strict=True)]
            streams.append(take(remote, remote_op, "transactionPosted", total))
            streams.append(take(late, late_op, "transactionPosted", total))
            got = await asyncio.gather(*streams)
            assert len(services.ledger.feeds.readers) == 1  # the instance's subscribers share one reader
            await quiet(clients[0], ops[0])
            await quiet(late, late_op)
        finally:
            for c in [*clients, remote, late]:
                await c.close()
    # The last subscriber gone, the reader and its bus subscription are gone too.
    for _ in range(250):
        if not services.ledger.feeds.readers:
            break
        await asyncio.sleep(0.02)
    assert services.ledger.feeds.readers == {}
    assert topics.project_transactions(s.project_uuid) not in services.events.active_topics()

    expected = after(await project_order(settings, s.project_uuid), start)
    assert len(expected) == total and len(set(expected)) == total
    for stream in got:
        assert stream == expected


# -- a writer that commits late with an older position ----------------------------------------------


async def test_a_transaction_that_commits_late_with_an_older_position_comes_first(
    live_server: LiveServer, gql: GQL, services: Services
) -> None:
    """A database transaction takes its id, then writes a ledger transaction and stays open while
    newer ones commit. The project stream holds the newer ones back (they are above the horizon)
    until it commits, then gives it first: the (commit_xid, id) order, nothing skipped."""
    s = await setup(gql, services)
    wid = await new_wallet(gql, s.owner.token, s.project)
    held_ref = await services.ledger.wallet_ref(ids.decode("wallet", wid))
    assert held_ref is not None
    await posting.credit_wallet(services.ledger, ACTOR, held_ref, 10, key())
    ws = await WsClient.connect(live_server.ws_url, s.owner.token)
    try:
        p = await ws.subscribe(TXN_POSTED, {"p": s.project, "a": s.start})
        assert len(await take(ws, p, "transactionPosted", 1)) == 1  # the held wallet's credit
        held = Posting(
            project_id=s.project_uuid,
            wallet_id=held_ref.id,
            kind=Kind.ADJUSTMENT,
            currency=held_ref.currency,
            legs=(Leg(-1, wallet_id=held_ref.id), Leg(1, system=SystemAccount.ADJUSTMENTS)),
            idempotency_key=key(),
            actor=ACTOR,
        )
        async with services.db.raw(project_id=s.project_uuid) as conn:
            await conn.execute("SELECT pg_current_xact_id()")  # its id is older than the debits' below
            many = await posting.post_many(services.ledger, [held], conn=conn)
            newer = [await debit(services, s.ref) for _ in range(3)]
            await asyncio.sleep(0.5)
            assert ws.pending(p) == []  # committed, but an older writer may still add before them
        services.ledger.publish(many.events)
        outcome = many.outcomes[0]
        assert not isinstance(outcome, Exception)
        first = ids.encode("transaction", outcome.transaction.id)
        assert await take(ws, p, "transactionPosted", 4) == [first, *newer]
        await quiet(ws, p)
    finally:
        await ws.close()
    order = await project_order(services.settings, s.project_uuid)
    assert order[-4:] == [first, *newer]


# -- migration 0009 on existing data ----------------------------------------------------------------


async def test_migration_0009_keeps_existing_ledgers_verified_and_streamable(
    scratch_database: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Transactions written before 0009 get commit_xid 0 (no row rewritten: the append-only
    triggers would refuse an UPDATE); the ledger still verifies, and the project stream replays
    them first, in id order, then the new ones."""
    await asyncio.to_thread(upgrade, scratch_database, "0008_outbound_webhooks")
    scratch = dataclasses.replace(settings, database_url=scratch_database)
    legacy_ledger(monkeypatch)  # the ledger of that schema: no credit grants yet
    old_svc = Services.build(scratch)
    try:
        pid = await new_project(old_svc)
        ref = await ledger_wallet(old_svc, pid)
        await posting.credit_wallet(old_svc.ledger, ACTOR, ref, 100, key())
        for _ in range(4):
            await posting.debit_wallet(old_svc.ledger, ACTOR, ref, 3, key())
    finally:
        await old_svc.close()
    monkeypatch.undo()

    await asyncio.to_thread(upgrade, scratch_database)
    svc = Services.build(scratch)
    try:
        report = await verify_ledger(svc.ledger, pid)
        assert report.ok and report.transactions_checked == 5, report
        await posting.debit_wallet(svc.ledger, ACTOR, ref, 1, key())
        assert (await verify_ledger(svc.ledger, pid)).ok
        # The new debit is replayed once the horizon passed it (another writer in the cluster may
        # hold it back a moment).
        replay, pending = await read_page(svc.db, pid, START)
        for _ in range(300):
            if not pending:
                break
            await asyncio.sleep(0.1)
            replay, pending = await read_page(svc.db, pid, START)
    finally:
        await svc.close()
    rows = await owner_sql(
        scratch, "SELECT id, commit_xid::text::bigint AS x FROM ledger_transactions ORDER BY commit_xid, id"
    )
    assert [r["x"] for r in rows[:5]] == [0] * 5 and rows[5]["x"] > 0
    assert [r["id"] for r in rows[:5]] == sorted(r["id"] for r in rows[:5])
    assert [i.transaction.id for i in replay] == [r["id"] for r in rows]
