"""Shared rendering of live messages: one execution per snapshot and document, each subscriber's own
`sequence`/`initial`/`events`/`firstEventAt`/`lastEventAt`, and results identical to executing
every message (ledgerx/schema/shared_results.py).

The subscriptions here run on a small schema whose one subscription yields `LiveMetrics` messages
from a queue the test fills, so the feed, the database and the websocket are out of the way."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import strawberry
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionResult

from ledgerx.domain.analytics.hub import Update
from ledgerx.domain.analytics.live import MetricRate, ProjectLive, WalletBalance
from ledgerx.graphql_schema import build_schema
from ledgerx.schema.analytics import PER_SUBSCRIBER, LiveMetrics
from ledgerx.schema.scalars import SCALAR_MAP
from ledgerx.schema.shared_results import SharedResults, SharedResultsExecutor
from tests.test_live_support import LIVE_METRICS

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@strawberry.type
class Query:
    ok: bool = True


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def live_metrics(
        self, info: strawberry.Info[dict[str, Any], None], project_id: strawberry.ID
    ) -> AsyncGenerator[LiveMetrics, None]:
        queue: asyncio.Queue[Update[ProjectLive] | None] = info.context["queue"]
        while (u := await queue.get()) is not None:
            yield LiveMetrics.of(u)


def schema(*, shared: bool) -> strawberry.Schema:
    return strawberry.Schema(
        query=Query,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        execution_context_class=SharedResultsExecutor if shared else None,
    )


SHARED = schema(shared=True)
PLAIN = schema(shared=False)


def snapshot(units: int, *, balance: int = 990) -> ProjectLive:
    return ProjectLive(
        project_id=uuid.UUID(int=7),
        currency="CREDITS",
        at=T0 + dt.timedelta(seconds=units),
        usage=(MetricRate("api_calls", "API calls", decimal.Decimal(units), units),),
        spend_today=10,
        credits_added_today=1000,
        total_balance=balance,
        wallet_count=1,
        wallets=(WalletBalance(uuid.UUID(int=9), "main", balance),),
        active_users=1,
        active_api_keys=0,
    )


class Subscriber:
    def __init__(self, s: strawberry.Schema, query: str, variables: dict[str, Any]) -> None:
        self.queue: asyncio.Queue[Update[ProjectLive] | None] = asyncio.Queue()
        self.schema, self.query, self.variables = s, query, variables
        self.stream: AsyncIterator[Any] | None = None

    async def next(self, u: Update[ProjectLive]) -> dict[str, Any]:
        if self.stream is None:
            self.stream = aiter(await self.schema.subscribe(self.query, self.variables, {"queue": self.queue}))
        self.queue.put_nowait(u)
        result = await asyncio.wait_for(anext(self.stream), 5)
        assert isinstance(result, ExecutionResult)
        assert not result.errors, result.errors
        assert result.data is not None
        return result.data

    async def close(self) -> None:
        self.queue.put_nowait(None)
        if self.stream is not None:
            async for _ in self.stream:
                pass


def update(snap: ProjectLive, sequence: int, events: int, first: dt.datetime | None = None) -> Update[ProjectLive]:
    return Update(snap, sequence, events, first, first + dt.timedelta(milliseconds=events) if first else None)


async def test_subscribers_of_one_snapshot_share_one_execution_and_keep_their_own_fields() -> None:
    variables = {"p": "prj_x"}
    shared = [Subscriber(SHARED, LIVE_METRICS, variables) for _ in range(3)]
    plain = [Subscriber(PLAIN, LIVE_METRICS, variables) for _ in range(3)]
    snap = snapshot(5)
    # Three subscribers at different points of their streams, one with no events yet (nulls).
    updates = [update(snap, 1, 0), update(snap, 7, 3, T0), update(snap, 2, 40, T0 - dt.timedelta(seconds=1))]
    got = [await s.next(u) for s, u in zip(shared, updates, strict=True)]
    want = [await s.next(u) for s, u in zip(plain, updates, strict=True)]
    assert got == want  # exactly what executing every message gives, key order included
    assert [list(g["liveMetrics"]) for g in got] == [list(w["liveMetrics"]) for w in want]
    mine = [g["liveMetrics"] for g in got]
    assert [m["sequence"] for m in mine] == [1, 7, 2]
    assert [m["initial"] for m in mine] == [True, False, False]
    assert [m["events"] for m in mine] == [0, 3, 40]
    assert mine[0]["firstEventAt"] is None
    assert mine[1]["firstEventAt"] == T0.isoformat()
    assert mine[2]["lastEventAt"] == (T0 - dt.timedelta(seconds=1) + dt.timedelta(milliseconds=40)).isoformat()
    assert mine[1]["usage"] == [{"metricKey": "api_calls", "name": "API calls", "units": "5", "events": 5}]
    # One execution for the snapshot; the other two were answered from its template.
    cache = LiveMetrics.of(updates[0]).shared_results
    assert isinstance(cache, SharedResults)
    assert (cache.renders, cache.shared) == (1, 2)

    # The next snapshot is rendered afresh (no figure of the previous one survives).
    nxt = snapshot(8, balance=500)
    got = [await s.next(update(nxt, 9, 1, T0)) for s in shared]
    assert {g["liveMetrics"]["totalBalance"] for g in got} == {"500"}
    assert {g["liveMetrics"]["usage"][0]["units"] for g in got} == {"8"}
    assert [g["liveMetrics"]["sequence"] for g in got] == [9, 9, 9]
    for s in shared + plain:
        await s.close()


FRAGMENTS = """
subscription($p: ID!, $more: Boolean!) {
  liveMetrics(projectId: $p) {
    __typename
    seq: sequence
    again: sequence
    ...Stream @include(if: $more)
    usage { metricKey n: events }
    totalBalance
  }
}
fragment Stream on LiveMetrics { first: firstEventAt events initial }
"""


async def test_aliases_fragments_and_directives_follow_each_subscribers_variables() -> None:
    snap = snapshot(3)
    for more in (True, False):
        variables = {"p": "prj_x", "more": more}
        shared = [Subscriber(SHARED, FRAGMENTS, variables) for _ in range(2)]
        plain = [Subscriber(PLAIN, FRAGMENTS, variables) for _ in range(2)]
        updates = [update(snap, 4, 2, T0), update(snap, 11, 6, T0 + dt.timedelta(seconds=2))]
        got = [await s.next(u) for s, u in zip(shared, updates, strict=True)]
        want = [await s.next(u) for s, u in zip(plain, updates, strict=True)]
        assert got == want
        assert got[1]["liveMetrics"]["seq"] == got[1]["liveMetrics"]["again"] == 11
        assert ("first" in got[1]["liveMetrics"]) is more
        for s in shared + plain:
            await s.close()
    # Two variable sets on one snapshot: two templates, each used by its own subscribers.
    cache = LiveMetrics.of(update(snap, 1, 0)).shared_results
    assert cache is not None
    assert (cache.renders, cache.shared) == (2, 2)


async def test_per_subscriber_fields_are_the_streams_own() -> None:
    # Everything else a LiveMetrics message carries comes from the snapshot alone.
    gql_type = SHARED._schema.type_map["LiveMetrics"]
    fields = {f.extensions["strawberry-definition"].python_name for f in gql_type.fields.values()}
    assert fields >= PER_SUBSCRIBER
    assert fields - PER_SUBSCRIBER == {
        "project_id",
        "currency",
        "at",
        "usage",
        "spend_today",
        "credits_added_today",
        "total_balance",
        "wallet_count",
        "wallets",
        "active_users",
        "active_api_keys",
    }


async def test_long_subscriptions_do_not_accumulate_per_event_memos() -> None:
    # graphql-core's per-event executors share their subscription executor's sub-field memo, which
    # gained entries on every event. A new snapshot per event: every event is executed.
    parents: list[Any] = []

    class Spy(SharedResultsExecutor):
        def build_per_event_executor(self, payload: Any) -> Any:
            parents.append(self)
            return super().build_per_event_executor(payload)

    s = strawberry.Schema(
        query=Query,
        subscription=Subscription,
        config=StrawberryConfig(scalar_map=SCALAR_MAP),
        execution_context_class=Spy,
    )
    sub = Subscriber(s, LIVE_METRICS, {"p": "prj_x"})
    for i in range(50):
        data = await sub.next(update(snapshot(i), i + 1, 1, T0))  # a new snapshot each time
        assert data["liveMetrics"]["sequence"] == i + 1
    memo = getattr(parents[0], "_relevant_sub_fields", {})
    assert len(memo) <= 2
    await sub.close()


def test_the_app_schema_renders_live_messages_once_per_snapshot() -> None:
    # The wiring: ledgerx.graphql_schema.build_schema passes execution_context_class=SharedResultsExecutor.
    assert build_schema().execution_context_class is SharedResultsExecutor, (
        "build_schema() must pass execution_context_class=SharedResultsExecutor to the Schema"
    )
