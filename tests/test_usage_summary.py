"""usageSummary: every aggregation and granularity against a reference computed from the raw
events in Python (zoneinfo), in several time zones, across DST changes; read from rollups only."""

from __future__ import annotations

import datetime as dt
import random
import zoneinfo
from collections import defaultdict
from decimal import Decimal
from typing import Any

import pytest

from ledgerx.domain.usage import ingest, summary
from ledgerx.domain.usage.types import Granularity, MetricRecord
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, sign_up
from tests.tenancy_helpers import create_project
from tests.test_usage_helpers import SUMMARY, define, fast_settings, new_metric, new_project, owner_fetch, pid

UTC = dt.UTC
CONFIG = ingest.IngestConfig()


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return fast_settings(settings)


def t(s: str) -> dt.datetime:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))


# --- the reference ------------------------------------------------------------------------------------


def floor(x: dt.datetime, g: Granularity, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    if g is Granularity.MINUTE:
        return x.astimezone(UTC).replace(second=0, microsecond=0)
    loc = x.astimezone(tz)  # sets `fold` for the repeated hour of a fall-back
    if g is Granularity.HOUR:
        b = loc.replace(minute=0, second=0, microsecond=0)
    elif g is Granularity.DAY:
        b = dt.datetime(loc.year, loc.month, loc.day, tzinfo=tz)
    else:
        b = dt.datetime(loc.year, loc.month, 1, tzinfo=tz)
    return b.astimezone(UTC)


def step(b: dt.datetime, g: Granularity, tz: zoneinfo.ZoneInfo) -> dt.datetime:
    if g is Granularity.MINUTE:
        return b + dt.timedelta(minutes=1)
    if g is Granularity.HOUR:
        return b + dt.timedelta(hours=1)  # absolute hours: 25 of them on a fall-back day
    loc = b.astimezone(tz)
    if g is Granularity.DAY:
        d = loc.date() + dt.timedelta(days=1)
        return dt.datetime(d.year, d.month, d.day, tzinfo=tz).astimezone(UTC)
    y, m = (loc.year + 1, 1) if loc.month == 12 else (loc.year, loc.month + 1)
    return dt.datetime(y, m, 1, tzinfo=tz).astimezone(UTC)


Event = tuple[dt.datetime, Decimal, str]


def reference(
    events: list[Event], agg: str, g: Granularity, tz: zoneinfo.ZoneInfo, start: dt.datetime, end: dt.datetime
) -> list[tuple[dt.datetime, Decimal, int]]:
    buckets: list[dt.datetime] = []
    b = floor(start, g, tz)
    while b < end:
        buckets.append(b)
        b = step(b, g, tz)
    last_end = step(buckets[-1], g, tz)
    groups: dict[dt.datetime, list[Event]] = defaultdict(list)
    for e in events:
        if buckets[0] <= e[0] < last_end:
            groups[floor(e[0], g, tz)].append(e)
    out = []
    for b in buckets:
        es = groups.get(b, [])
        if agg == "SUM":
            units = sum((e[1] for e in es), Decimal(0))
        elif agg == "COUNT":
            units = Decimal(len(es))
        elif agg == "MAX":
            units = max((e[1] for e in es), default=Decimal(0))
        else:
            units = Decimal(len({e[2] for e in es}))
        out.append((b, units, len(es)))
    return out


# --- the data -------------------------------------------------------------------------------------------

# Around DST changes: New York (spring 2024-03-10 07:00Z, fall 2024-11-03 06:00Z), Berlin (spring
# 2024-03-31 01:00Z, fall 2024-10-27 01:00Z), Lord Howe (30-minute DST, 2024-10-06), and a month end.
CLUSTERS = [
    ("2024-03-08T12:00:00Z", "2024-03-12T12:00:00Z"),
    ("2024-03-29T12:00:00Z", "2024-04-02T12:00:00Z"),
    ("2024-10-04T00:00:00Z", "2024-10-08T00:00:00Z"),
    ("2024-10-25T12:00:00Z", "2024-10-29T12:00:00Z"),
    ("2024-11-01T12:00:00Z", "2024-11-05T12:00:00Z"),
]
ZONES = ["UTC", "America/New_York", "Europe/Berlin", "Asia/Kathmandu", "Australia/Lord_Howe"]
AGGS = ["SUM", "COUNT", "MAX", "UNIQUE"]


async def load(services: Services) -> tuple[dict[str, MetricRecord], dict[str, list[Event]]]:
    project_id = await new_project(services)
    metrics = {
        "SUM": await new_metric(services, project_id, "tokens", "SUM"),
        "COUNT": await new_metric(services, project_id, "requests", "COUNT"),
        "MAX": await new_metric(services, project_id, "peak", "MAX"),
        "UNIQUE": await new_metric(services, project_id, "users", "UNIQUE", unique_property="user"),
    }
    rng = random.Random(20241103)
    events: dict[str, list[Event]] = {a: [] for a in AGGS}
    n = 0
    for lo, hi in CLUSTERS:
        start, end = t(lo), t(hi)
        span = int((end - start).total_seconds())
        batch = []
        for _ in range(1500):
            at = start + dt.timedelta(seconds=rng.randrange(span), microseconds=rng.randrange(1_000_000))
            agg = rng.choice(AGGS)
            units = Decimal(rng.randrange(0, 100_000)) / 1000
            user = f"user-{rng.randrange(40)}"
            n += 1
            ev: dict[str, Any] = {
                "metricKey": metrics[agg].key,
                "units": str(units),
                "idempotencyKey": f"e{n}",
                "occurredAt": at.isoformat(),
            }
            if agg == "UNIQUE":
                ev["properties"] = {"user": user}
            batch.append(ev)
            events[agg].append((at, units, user))
        r = await ingest.record_batch(services.db, project_id, batch, CONFIG, now=end + dt.timedelta(minutes=1))
        assert (r.accepted, r.rejected) == (1500, ())
    return metrics, events


async def test_every_aggregation_granularity_and_zone_matches_the_raw_events(services: Services) -> None:
    metrics, events = await load(services)
    windows = {
        # MINUTE: a few hours across New York's fall-back hour (02:00 EDT -> 01:00 EST).
        Granularity.MINUTE: (t("2024-11-03T04:37:30Z"), t("2024-11-03T07:10:00Z")),
        Granularity.HOUR: (t("2024-10-26T03:20:00Z"), t("2024-11-05T00:00:00Z")),
        Granularity.DAY: (t("2024-03-08T00:00:00Z"), t("2024-11-06T00:00:00Z")),
        Granularity.MONTH: (t("2024-02-15T00:00:00Z"), t("2024-12-01T00:00:00Z")),
    }
    checked = 0
    for zone_name in ZONES:
        tz = zoneinfo.ZoneInfo(zone_name)
        for g, (start, end) in windows.items():
            for agg in AGGS:
                got = await summary.usage_summary(
                    services.db, metrics[agg], start=start, end=end, granularity=g, timezone=zone_name
                )
                want = reference(events[agg], agg, g, tz, start, end)
                assert [(p.bucket.astimezone(UTC), p.units, p.events) for p in got] == want, (zone_name, g, agg)
                assert all(p.bucket.tzinfo == tz for p in got)
                checked += len(got)
    assert checked > 10_000


async def test_summaries_read_rollups_not_events(services: Services) -> None:
    metrics, events = await load(services)
    m = metrics["SUM"]
    # Remove the raw events' visibility: summaries must not change (they never read usage_events).
    start, end = t("2024-03-01T00:00:00Z"), t("2024-12-01T00:00:00Z")
    before = await summary.usage_summary(services.db, m, start=start, end=end, granularity="MONTH")
    await owner_fetch(services, "ALTER TABLE usage_events DISABLE ROW LEVEL SECURITY")
    await owner_fetch(services, "ALTER POLICY usage_events_tenant ON usage_events USING (false)")
    await owner_fetch(services, "ALTER TABLE usage_events ENABLE ROW LEVEL SECURITY")
    try:
        after = await summary.usage_summary(services.db, m, start=start, end=end, granularity="MONTH")
    finally:
        from ledgerx.db import rls

        await owner_fetch(services, f"ALTER POLICY usage_events_tenant ON usage_events USING ({rls.tenant_match()})")
    assert before == after and sum(p.events for p in after) == len(events["SUM"])


async def test_dst_days_are_23_and_25_hours_over_graphql(gql: GQL, services: Services) -> None:
    owner = await sign_up(gql)
    p = await create_project(gql, owner)
    await define(gql, owner, p, "api_calls")
    evs = [
        # New York, 2024-11-03 (25 h: 04:00Z to 05:00Z next day).
        ("2024-11-03T04:30:00Z", 1),  # 00:30 EDT Nov 3
        ("2024-11-03T05:30:00Z", 2),  # 01:30 EDT
        ("2024-11-03T06:30:00Z", 4),  # 01:30 EST (the repeated hour)
        ("2024-11-04T04:30:00Z", 8),  # 23:30 EST Nov 3
        ("2024-11-04T05:30:00Z", 16),  # 00:30 EST Nov 4
        # Berlin, 2024-03-31 (23 h: 23:00Z Mar 30 to 22:00Z Mar 31).
        ("2024-03-30T23:30:00Z", 32),  # 00:30 CET Mar 31
        ("2024-03-31T21:30:00Z", 64),  # 23:30 CEST Mar 31
        ("2024-03-31T22:30:00Z", 128),  # 00:30 CEST Apr 1
    ]
    for n, (at, units) in enumerate(evs):
        now = t(at) + dt.timedelta(minutes=1)
        ev = [{"metricKey": "api_calls", "units": units, "idempotencyKey": f"d{n}", "occurredAt": at}]
        assert (await ingest.record_batch(services.db, pid(p), ev, CONFIG, now=now)).accepted == 1

    async def points(frm: str, to: str, g: str, tz: str) -> list[tuple[str, str, str]]:
        i = {"projectId": p, "metricKey": "api_calls", "from": frm, "to": to, "granularity": g, "timezone": tz}
        data = await gql.ok(SUMMARY, {"i": i}, token=owner.token)
        return [(x["bucket"], x["units"], x["events"]) for x in data["usageSummary"]]

    ny = await points("2024-11-02T12:00:00Z", "2024-11-05T00:00:00Z", "DAY", "America/New_York")
    assert ny == [
        ("2024-11-02T00:00:00-04:00", "0", "0"),
        ("2024-11-03T00:00:00-04:00", "15", "4"),
        ("2024-11-04T00:00:00-05:00", "16", "1"),
    ]
    hours = await points("2024-11-03T04:00:00Z", "2024-11-04T05:00:00Z", "HOUR", "America/New_York")
    assert len(hours) == 25
    assert hours[1:3] == [("2024-11-03T01:00:00-04:00", "2", "1"), ("2024-11-03T01:00:00-05:00", "4", "1")]
    berlin = await points("2024-03-30T12:00:00Z", "2024-04-01T12:00:00Z", "DAY", "Europe/Berlin")
    assert berlin == [
        ("2024-03-30T00:00:00+01:00", "0", "0"),
        ("2024-03-31T00:00:00+01:00", "96", "2"),
        ("2024-04-01T00:00:00+02:00", "128", "1"),
    ]
    b_hours = await points("2024-03-30T23:00:00Z", "2024-03-31T22:00:00Z", "HOUR", "Europe/Berlin")
    assert len(b_hours) == 23
    utc = await points("2024-03-30T00:00:00Z", "2024-04-02T00:00:00Z", "DAY", "UTC")
    assert [x[1] for x in utc] == ["32", "192", "0"]  # 23:30Z | 21:30Z + 22:30Z | nothing
    month = await points("2024-03-15T00:00:00Z", "2024-11-15T00:00:00Z", "MONTH", "Europe/Berlin")
    assert month[0] == ("2024-03-01T00:00:00+01:00", "96", "2")
    assert month[1] == ("2024-04-01T00:00:00+02:00", "128", "1")
    assert month[-1] == ("2024-11-01T00:00:00+01:00", "31", "5")
    default_zone = await gql.ok(
        SUMMARY,
        {
            "i": {
                "projectId": p,
                "metricKey": "api_calls",
                "from": "2024-11-03T00:00:00Z",
                "to": "2024-11-04T00:00:00Z",
                "granularity": "DAY",
            }
        },
        token=owner.token,
    )
    assert default_zone["usageSummary"] == [{"bucket": "2024-11-03T00:00:00+00:00", "units": "7", "events": "3"}]


async def test_summary_input_errors(gql: GQL) -> None:
    owner = await sign_up(gql)
    p = await create_project(gql, owner)
    await define(gql, owner, p, "api_calls")
    base = {"projectId": p, "metricKey": "api_calls", "from": "2024-01-01T00:00:00Z", "to": "2024-01-02T00:00:00Z"}
    cases = [
        ({"granularity": "DAY", "timezone": "Mars/Olympus"}, "BAD_USER_INPUT", "timezone"),
        ({"granularity": "DAY", "to": "2024-01-01T00:00:00Z"}, "BAD_USER_INPUT", "to"),
        ({"granularity": "MINUTE", "to": "2024-02-01T00:00:00Z"}, "BAD_USER_INPUT", "to"),
        ({"granularity": "DAY", "metricKey": "nope"}, "NOT_FOUND", "metricKey"),
    ]
    for change, code, field in cases:
        err = await gql.error(SUMMARY, {"i": {**base, **change}}, token=owner.token)
        assert (err["code"], err.get("field")) == (code, field), change
    # The largest allowed MINUTE range is fine.
    ok = await gql.ok(
        SUMMARY, {"i": {**base, "granularity": "MINUTE", "to": "2024-01-07T22:40:00Z"}}, token=owner.token
    )
    assert len(ok["usageSummary"]) == 10_000
