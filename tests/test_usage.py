"""Usage metering: metrics, idempotent single and bulk ingestion, partial rejection, concurrency,
isolation between projects, append-only storage, partitions and rollups."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import random

import asyncpg
import pytest

from ledgerx.domain.errors import BadInput, NotFound
from ledgerx.domain.usage import ingest
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, sign_up
from tests.tenancy_helpers import create_project, make_team
from tests.test_usage_helpers import (
    ACTOR,
    BATCH,
    DEFINE,
    RECORD,
    SUMMARY,
    api_key,
    define,
    fast_settings,
    new_metric,
    new_project,
    owner_fetch,
    pid,
)

NOW = dt.datetime.now(dt.UTC)
CONFIG = ingest.IngestConfig()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return fast_settings(settings)


def iso(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


# --- metrics ------------------------------------------------------------------------------------------


async def test_define_metric_validates_conflicts_and_audits(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    p = await create_project(gql, owner)
    m = await define(gql, owner, p, "tokens_processed", unit_price="0.002")
    assert m["id"].startswith("met_")
    assert (m["projectId"], m["key"], m["aggregation"], m["unitPrice"]) == (p, "tokens_processed", "SUM", "0.002")

    again = await gql.error(
        DEFINE,
        {"i": {"projectId": p, "key": "tokens_processed", "name": "x", "aggregation": "COUNT", "unitPrice": 1}},
        token=owner.token,
    )
    assert again["code"] == "CONFLICT" and again["field"] == "key"

    bad = [
        ({"key": "Tokens"}, "key"),
        ({"key": "1abc"}, "key"),
        ({"key": "a-b"}, "key"),
        ({"key": "x" * 65}, "key"),
        ({"unitPrice": "-0.1"}, "unitPrice"),
        ({"unitPrice": "0.0000000000001"}, "unitPrice"),
        ({"name": "  "}, "name"),
        ({"aggregation": "UNIQUE"}, "uniqueProperty"),
        ({"uniqueProperty": "user"}, "uniqueProperty"),
    ]
    for change, field in bad:
        i = {"projectId": p, "key": "ok_key", "name": "n", "aggregation": "SUM", "unitPrice": "1", **change}
        err = await gql.error(DEFINE, {"i": i}, token=owner.token)
        assert (err["code"], err.get("field")) == ("BAD_USER_INPUT", field), (change, err)

    u = await define(gql, owner, p, "active_users", aggregation="UNIQUE", unique_property="user_id")
    assert (u["aggregation"], u["uniqueProperty"], u["unitPrice"]) == ("UNIQUE", "user_id", "0")

    rows = await owner_fetch(
        services,
        "SELECT action, target_id, after FROM audit_log WHERE project_id = $1 AND action = 'usage.metric.define'"
        " ORDER BY id",
        pid(p),
    )
    assert [r["target_id"] for r in rows] == [m["id"], u["id"]]

    listed = await gql.ok(
        "query($p: ID!) { usageMetrics(projectId: $p) { key aggregation } }", {"p": p}, token=owner.token
    )
    assert listed["usageMetrics"] == [
        {"key": "active_users", "aggregation": "UNIQUE"},
        {"key": "tokens_processed", "aggregation": "SUM"},
    ]


async def test_who_may_define_record_and_read(gql: GQL) -> None:
    team = await make_team(gql)
    p = team.project_id
    await define(gql, team.admin, p, "api_calls")
    for role in ("MEMBER", "VIEWER"):
        err = await gql.error(
            DEFINE,
            {"i": {"projectId": p, "key": "other", "name": "x", "aggregation": "SUM", "unitPrice": 0}},
            token=team.by_role(role).token,
        )
        assert err["code"] == "FORBIDDEN", role

    record = {"projectId": p, "metricKey": "api_calls", "units": 1, "idempotencyKey": "m-1"}
    assert not (await gql.ok(RECORD, {"i": record}, token=team.member.token))["recordUsage"]["duplicate"]
    err = await gql.error(RECORD, {"i": {**record, "idempotencyKey": "v-1"}}, token=team.viewer.token)
    assert err["code"] == "FORBIDDEN"

    now = dt.datetime.now(dt.UTC)  # after the event: the module's NOW is from import time, hours before in a long run
    summary = {"projectId": p, "metricKey": "api_calls", "from": iso(now - dt.timedelta(hours=1)), "to": iso(now)}
    data = await gql.ok(SUMMARY, {"i": {**summary, "granularity": "HOUR"}}, token=team.viewer.token)
    assert sum(int(x["events"]) for x in data["usageSummary"]) == 1

    # API keys: usage:write records, usage:read reads, neither defines metrics.
    writer = await api_key(gql, team.owner, p, ["usage:write"])
    reader = await api_key(gql, team.owner, p, ["usage:read"])
    h_w, h_r = {"Authorization": f"Bearer {writer}"}, {"X-Api-Key": reader}
    assert (await gql.ok(RECORD, {"i": {**record, "idempotencyKey": "k-1"}}, headers=h_w))["recordUsage"]
    err = await gql.error(RECORD, {"i": {**record, "idempotencyKey": "k-2"}}, headers=h_r)
    assert (err["code"], err.get("scope")) == ("FORBIDDEN", "usage:write")
    err = await gql.error(SUMMARY, {"i": {**summary, "granularity": "DAY"}}, headers=h_w)
    assert (err["code"], err.get("scope")) == ("FORBIDDEN", "usage:read")
    assert (await gql.ok(SUMMARY, {"i": {**summary, "granularity": "DAY"}}, headers=h_r))["usageSummary"]
    err = await gql.error(
        DEFINE, {"i": {"projectId": p, "key": "k", "name": "k", "aggregation": "SUM", "unitPrice": 0}}, headers=h_w
    )
    assert err["code"] == "FORBIDDEN"


async def test_other_projects_are_not_found(gql: GQL) -> None:
    alice, bob = await sign_up(gql), await sign_up(gql)
    pa, pb = await create_project(gql, alice), await create_project(gql, bob)
    await define(gql, bob, pb, "api_calls")
    await define(gql, alice, pa, "alice_only")
    record = {"projectId": pb, "metricKey": "api_calls", "units": 1, "idempotencyKey": "x"}
    assert (await gql.error(RECORD, {"i": record}, token=alice.token))["code"] == "NOT_FOUND"
    batch = {"projectId": pb, "events": [{"metricKey": "api_calls", "units": 1, "idempotencyKey": "x"}]}
    assert (await gql.error(BATCH, {"i": batch}, token=alice.token))["code"] == "NOT_FOUND"
    summary = {"projectId": pb, "metricKey": "api_calls", "from": iso(NOW), "to": iso(NOW), "granularity": "DAY"}
    assert (await gql.error(SUMMARY, {"i": summary}, token=alice.token))["code"] == "NOT_FOUND"
    q = "query($p: ID!) { usageMetrics(projectId: $p) { key } }"
    assert (await gql.error(q, {"p": pb}, token=alice.token))["code"] == "NOT_FOUND"
    # A metric of another project does not exist here.
    err = await gql.error(RECORD, {"i": {**record, "projectId": pa}}, token=alice.token)
    assert (err["code"], err["field"]) == ("NOT_FOUND", "metricKey")
    # An API key of project A reaches nothing of project B.
    key = await api_key(gql, alice, pa, ["usage:write", "usage:read"])
    assert (await gql.error(RECORD, {"i": record}, headers={"X-Api-Key": key}))["code"] == "NOT_FOUND"


# --- single events ------------------------------------------------------------------------------------


async def test_record_usage_is_idempotent_and_validated(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    p = await create_project(gql, owner)
    await define(gql, owner, p, "api_calls")
    at = NOW - dt.timedelta(hours=2)
    i = {
        "projectId": p,
        "metricKey": "api_calls",
        "units": "2.5",
        "idempotencyKey": "req-1",
        "occurredAt": iso(at),
        "properties": {"path": "/v1/x", "n": 1.5},
    }
    first = (await gql.ok(RECORD, {"i": i}, token=owner.token))["recordUsage"]
    ev = first["event"]
    assert not first["duplicate"] and first["charge"] is None
    assert ev["id"].startswith("evt_") and ev["units"] == "2.5" and ev["metricKey"] == "api_calls"
    assert dt.datetime.fromisoformat(ev["occurredAt"]) == at.replace(microsecond=at.microsecond)
    assert ev["properties"] == {"path": "/v1/x", "n": 1.5}

    again = (await gql.ok(RECORD, {"i": {**i, "units": 2.50}}, token=owner.token))["recordUsage"]
    assert again["duplicate"] and again["event"]["id"] == ev["id"]
    # occurredAt omitted on a retry compares everything else.
    retry = {k: v for k, v in i.items() if k != "occurredAt"}
    assert (await gql.ok(RECORD, {"i": retry}, token=owner.token))["recordUsage"]["event"]["id"] == ev["id"]
    for change in ({"units": 3}, {"properties": {"path": "/other"}}, {"occurredAt": iso(at - dt.timedelta(1))}):
        err = await gql.error(RECORD, {"i": {**i, **change}}, token=owner.token)
        assert (err["code"], err["field"]) == ("IDEMPOTENCY_CONFLICT", "idempotencyKey"), change

    # occurredAt defaults to now.
    now_ev = (await gql.ok(RECORD, {"i": {**retry, "idempotencyKey": "req-2"}}, token=owner.token))["recordUsage"]
    assert abs(dt.datetime.fromisoformat(now_ev["event"]["occurredAt"]) - dt.datetime.now(dt.UTC)).total_seconds() < 30

    now = dt.datetime.now(dt.UTC)  # not the module's NOW: a long suite run must not age these
    cases = [
        ({"metricKey": "nope"}, "NOT_FOUND", "metricKey", None),
        ({"units": "-1"}, "BAD_USER_INPUT", "units", None),
        ({"units": "0.0000000001"}, "BAD_USER_INPUT", "units", None),
        ({"units": "1000000000000000"}, "BAD_USER_INPUT", "units", None),  # "1e15": refused by the scalar
        ({"idempotencyKey": ""}, "BAD_USER_INPUT", "idempotencyKey", None),
        ({"idempotencyKey": "k" * 256}, "BAD_USER_INPUT", "idempotencyKey", None),
        ({"idempotencyKey": "bad\x00key"}, "BAD_USER_INPUT", "idempotencyKey", None),
        ({"occurredAt": iso(now - dt.timedelta(days=36))}, "BAD_USER_INPUT", "occurredAt", "OCCURRED_AT_TOO_OLD"),
        ({"occurredAt": iso(now + dt.timedelta(hours=1))}, "BAD_USER_INPUT", "occurredAt", "OCCURRED_AT_IN_FUTURE"),
        ({"occurredAt": "2026-01-01T00:00:00"}, "BAD_USER_INPUT", "occurredAt", None),
        ({"properties": [1, 2]}, "BAD_USER_INPUT", "properties", None),
        ({"properties": {"big": "x" * 9000}}, "BAD_USER_INPUT", "properties", None),
    ]
    for n, (change, code, field, reason) in enumerate(cases):
        err = await gql.error(RECORD, {"i": {**i, "idempotencyKey": f"bad-{n}", **change}}, token=owner.token)
        assert (err["code"], err.get("field"), err.get("reason")) == (code, field, reason), (change, err)
    # Nothing of the refused events was stored.
    rows = await owner_fetch(services, "SELECT count(*) AS n FROM usage_events WHERE project_id = $1", pid(p))
    assert rows[0]["n"] == 2


async def test_unique_metric_needs_its_property(gql: GQL) -> None:
    owner = await sign_up(gql)
    p = await create_project(gql, owner)
    await define(gql, owner, p, "active_users", aggregation="UNIQUE", unique_property="user")
    i = {"projectId": p, "metricKey": "active_users", "units": 1, "idempotencyKey": "u1"}
    for props in (None, {}, {"user": None}, {"user": {"id": 1}}, {"other": "x"}):
        err = await gql.error(RECORD, {"i": {**i, "properties": props}}, token=owner.token)
        assert (err["code"], err["field"]) == ("BAD_USER_INPUT", "properties"), props
    assert await gql.ok(RECORD, {"i": {**i, "properties": {"user": "alice"}}}, token=owner.token)


# --- bulk -----------------------------------------------------------------------------------------------


async def test_batch_partial_rejection_duplicates_and_retries(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    p = await create_project(gql, owner)
    await define(gql, owner, p, "api_calls")
    await define(gql, owner, p, "seats", aggregation="UNIQUE", unique_property="seat")
    old = iso(NOW - dt.timedelta(days=40))
    events = [
        {"metricKey": "api_calls", "units": 1, "idempotencyKey": "a"},  # 0 ok
        {"metricKey": "missing", "units": 1, "idempotencyKey": "b"},  # 1 NOT_FOUND
        {"metricKey": "api_calls", "units": "-2", "idempotencyKey": "c"},  # 2 bad units
        {"metricKey": "api_calls", "units": 3, "idempotencyKey": "a"},  # 3 duplicate in batch
        {"metricKey": "api_calls", "units": 1, "idempotencyKey": "d", "occurredAt": old},  # 4 too old
        {"metricKey": "seats", "units": 1, "idempotencyKey": "e"},  # 5 no seat property
        {"metricKey": "seats", "units": 1, "idempotencyKey": "f", "properties": {"seat": "s1"}},  # 6 ok
        {"metricKey": "api_calls", "units": "0.25", "idempotencyKey": "g"},  # 7 ok
    ]
    r = (await gql.ok(BATCH, {"i": {"projectId": p, "events": events}}, token=owner.token))["recordUsageBatch"]
    assert (r["accepted"], r["duplicates"]) == (3, 1)
    assert [(x["index"], x["code"], x["field"], x["reason"]) for x in r["rejected"]] == [
        (1, "NOT_FOUND", "metricKey", None),
        (2, "BAD_USER_INPUT", "units", None),
        (4, "BAD_USER_INPUT", "occurredAt", "OCCURRED_AT_TOO_OLD"),
        (5, "BAD_USER_INPUT", "properties", None),
    ]
    assert all(x["message"] for x in r["rejected"])

    # A retry of the whole batch stores nothing new; fixing one event stores just it.
    events[2]["units"] = 2
    r = (await gql.ok(BATCH, {"i": {"projectId": p, "events": events}}, token=owner.token))["recordUsageBatch"]
    assert (r["accepted"], r["duplicates"], len(r["rejected"])) == (1, 4, 3)
    rows = await owner_fetch(
        services, "SELECT idempotency_key, units FROM usage_events WHERE project_id = $1 ORDER BY 1", pid(p)
    )
    assert [(x["idempotency_key"], x["units"]) for x in rows] == [
        ("a", 1),
        ("c", 2),
        ("f", 1),
        ("g", decimal.Decimal("0.25")),
    ]


async def test_concurrent_batches_with_overlapping_keys_store_each_event_once(services: Services) -> None:
    project_id = await new_project(services)
    await new_metric(services, project_id, "api_calls")
    users = await new_metric(services, project_id, "users", "UNIQUE", unique_property="user")
    rng = random.Random(7)
    universe = [f"key-{i}" for i in range(6000)]

    def event(k: str) -> dict[str, object]:
        n = int(k.split("-")[1])
        if n % 3 == 0:  # a third go to a UNIQUE metric (the statement that also writes values)
            return {"metricKey": "users", "units": 1, "idempotencyKey": k, "properties": {"user": f"u{n % 50}"}}
        return {"metricKey": "api_calls", "units": 2, "idempotencyKey": k}

    batches = []
    for _ in range(10):
        keys = rng.sample(universe, 2500) + rng.sample(universe, 100)  # also repeats inside a batch
        rng.shuffle(keys)
        batches.append([event(k) for k in keys])
    # Half the batches are plain (one metric): the optimistic path races the ON CONFLICT one.
    for b in batches[::2]:
        b[:] = [e for e in b if e["metricKey"] == "api_calls"]
    results = await asyncio.gather(*[ingest.record_batch(services.db, project_id, b, CONFIG) for b in batches])

    distinct = set().union(*[{e["idempotencyKey"] for e in b} for b in batches])
    assert sum(r.accepted for r in results) == len(distinct)
    assert sum(r.accepted + r.duplicates for r in results) == sum(len(b) for b in batches)
    assert not any(r.rejected for r in results)
    rows = await owner_fetch(
        services,
        "SELECT (SELECT count(*) FROM usage_events WHERE project_id = $1) AS events,"
        " (SELECT count(DISTINCT idempotency_key) FROM usage_events WHERE project_id = $1) AS keys,"
        " (SELECT count(*) FROM usage_event_keys WHERE project_id = $1) AS key_rows,"
        " (SELECT sum(events) FROM usage_rollups WHERE project_id = $1 AND width = 1) AS rolled,"
        " (SELECT sum(units_sum) FROM usage_rollups WHERE project_id = $1 AND width = 15) AS units",
        project_id,
    )
    r = rows[0]
    assert (r["events"], r["keys"], r["key_rows"], r["rolled"]) == (len(distinct),) * 4
    n_users = sum(1 for k in distinct if int(k.split("-")[1]) % 3 == 0)
    assert r["units"] == 2 * (len(distinct) - n_users) + n_users
    values = await owner_fetch(
        services,
        "SELECT count(DISTINCT value) AS n FROM usage_rollup_values WHERE metric_id = $1",
        users.id,
    )
    assert values[0]["n"] == len({int(k.split("-")[1]) % 50 for k in distinct if int(k.split("-")[1]) % 3 == 0})


async def test_batch_size_limit_and_bad_shapes(services: Services) -> None:
    project_id = await new_project(services)
    await new_metric(services, project_id, "api_calls")
    small = ingest.IngestConfig(max_batch=3)
    ev = {"metricKey": "api_calls", "units": 1, "idempotencyKey": "k"}
    with pytest.raises(BadInput) as e:
        await ingest.record_batch(services.db, project_id, [ev] * 4, small)
    assert e.value.extra["reason"] == "BATCH_TOO_LARGE"
    r = await ingest.record_batch(services.db, project_id, [ev] * 3, small)
    assert (r.accepted, r.duplicates) == (1, 2)
    weird = [
        "not an object",
        {"metricKey": "api_calls", "units": 1, "idempotencyKey": "w", "walletId": "wal_x"},
        {"metricKey": "api_calls", "units": True, "idempotencyKey": "t"},
        {"metricKey": "api_calls", "units": "NaN", "idempotencyKey": "n"},
        {"metricKey": "api_calls", "units": 1, "idempotencyKey": 5},
        {"metricKey": "api_calls", "units": 1, "idempotencyKey": "\ud800"},
        {"metricKey": "api_calls", "units": 1, "idempotencyKey": "p", "properties": {"x": "\ud800"}},
        {"metricKey": "api_calls", "units": 1, "idempotencyKey": "z", "properties": {"x": "\x00"}},
        {"units": 1, "idempotencyKey": "q"},
        {"metricKey": ["api_calls"], "units": 1, "idempotencyKey": "l"},
    ]
    r = await ingest.record_batch(services.db, project_id, weird, ingest.IngestConfig())
    assert r.accepted == 0
    assert [(x.index, x.code, x.field) for x in r.rejected] == [
        (0, "BAD_USER_INPUT", "events"),
        (1, "BAD_USER_INPUT", "walletId"),
        (2, "BAD_USER_INPUT", "units"),
        (3, "BAD_USER_INPUT", "units"),
        (4, "BAD_USER_INPUT", "idempotencyKey"),
        (5, "BAD_USER_INPUT", "idempotencyKey"),
        (6, "BAD_USER_INPUT", "properties"),
        (7, "BAD_USER_INPUT", "properties"),
        (8, "BAD_USER_INPUT", "metricKey"),
        (9, "BAD_USER_INPUT", "metricKey"),
    ]
    with pytest.raises(NotFound):
        await ingest.record_usage(
            services.db,
            services.ledger,
            ACTOR,
            project_id,
            {"metricKey": "x", "units": 1, "idempotencyKey": "k"},
            CONFIG,
        )


# --- storage --------------------------------------------------------------------------------------------


async def test_events_are_append_only_and_isolated_by_rls(services: Services) -> None:
    a, b = await new_project(services), await new_project(services)
    await new_metric(services, a, "api_calls")
    await new_metric(services, b, "api_calls")
    for p in (a, b):
        ev = [{"metricKey": "api_calls", "units": 1, "idempotencyKey": f"k{i}"} for i in range(5)]
        assert (await ingest.record_batch(services.db, p, ev, CONFIG)).accepted == 5

    # The app role sees only the project of its transaction.
    async with services.db.raw(project_id=a) as conn:
        assert await conn.fetchval("SELECT count(*) FROM usage_events") == 5
        assert await conn.fetchval("SELECT count(DISTINCT project_id) FROM usage_event_keys") == 1
        assert await conn.fetchval("SELECT count(*) FROM usage_rollups WHERE project_id = $1", b) == 0
    # ... cannot write rows of another project, nor change or delete events.
    for sql, args in (
        (
            "INSERT INTO usage_events (id, project_id, metric_id, occurred_at, units, idempotency_key)"
            " VALUES (gen_random_uuid(), $1, gen_random_uuid(), now(), 1, 'x')",
            (b,),
        ),
        ("UPDATE usage_events SET units = 0", ()),
        ("DELETE FROM usage_events", ()),
        ("DELETE FROM usage_event_keys", ()),
    ):
        with pytest.raises(asyncpg.PostgresError):
            async with services.db.raw(project_id=a) as conn:
                await conn.execute(sql, *args)
    # Even the owner cannot update, delete or truncate events (triggers), partitions included.
    part = (await owner_fetch(services, "SELECT tableoid::regclass::text AS t FROM usage_events LIMIT 1"))[0]["t"]
    for sql in (
        "UPDATE usage_events SET units = 0",
        "DELETE FROM usage_events",
        "TRUNCATE usage_events",
        f"TRUNCATE {part}",
        f"UPDATE {part} SET units = 0",
    ):
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await owner_fetch(services, sql)


async def test_missing_partitions_are_created_and_old_ones_detached(services: Services) -> None:
    project_id = await new_project(services)
    await new_metric(services, project_id, "api_calls")
    then = dt.datetime(2019, 7, 15, 12, tzinfo=dt.UTC)  # months the migration did not create
    ev = [
        {"metricKey": "api_calls", "units": 1, "idempotencyKey": "p1", "occurredAt": "2019-07-15T11:00:00Z"},
        {"metricKey": "api_calls", "units": 1, "idempotencyKey": "p2", "occurredAt": "2019-06-20T11:00:00Z"},
    ]
    r = await ingest.record_batch(services.db, project_id, ev, CONFIG, now=then)
    assert r.accepted == 2
    where = "SELECT tableoid::regclass::text AS t FROM usage_events WHERE project_id = $1"
    assert {x["t"] for x in await owner_fetch(services, where, project_id)} == {
        "usage_events_p201907",
        "usage_events_p201906",
    }

    # Retention: partitions that end by the cutoff are detached and renamed for archiving, and the
    # idempotency keys of their events are forgotten.
    detached = await owner_fetch(services, "SELECT * FROM ledgerx_usage_detach_partitions('2019-07-01T00:00:00Z')")
    assert [d[0] for d in detached] == ["usage_archive_p201906"]
    keys = await owner_fetch(services, "SELECT idempotency_key FROM usage_event_keys WHERE project_id = $1", project_id)
    assert [k["idempotency_key"] for k in keys] == ["p1"]
    assert (await owner_fetch(services, "SELECT count(*) AS n FROM usage_archive_p201906"))[0]["n"] == 1
    assert [x["t"] for x in await owner_fetch(services, where, project_id)] == ["usage_events_p201907"]
    await owner_fetch(services, "DROP TABLE usage_archive_p201906")

    # A process that still believes the month exists recreates it on demand.
    late = [{"metricKey": "api_calls", "units": 1, "idempotencyKey": "p3", "occurredAt": "2019-06-29T11:00:00Z"}]
    r = await ingest.record_batch(services.db, project_id, late, CONFIG, now=dt.datetime(2019, 7, 2, tzinfo=dt.UTC))
    assert r.accepted == 1
    assert (await owner_fetch(services, "SELECT to_regclass('usage_events_p201906') AS t"))[0]["t"] is not None


async def test_partition_maintenance_helpers(services: Services) -> None:
    from ledgerx.domain.usage import partitions

    await partitions.ensure_ahead(services.db, 2, now=dt.datetime(2029, 11, 20, tzinfo=dt.UTC))
    rows = await owner_fetch(
        services,
        "SELECT relname FROM pg_class WHERE relname IN ('usage_events_p202911', 'usage_events_p202912',"
        " 'usage_events_p203001') ORDER BY relname",
    )
    assert [r["relname"] for r in rows] == ["usage_events_p202911", "usage_events_p202912", "usage_events_p203001"]
    cutoff = partitions.retention_cutoff(13, now=dt.datetime(2027, 2, 10, tzinfo=dt.UTC))
    assert cutoff == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert "2026-01-01T00:00:00+00:00" in partitions.detach_sql(cutoff)
