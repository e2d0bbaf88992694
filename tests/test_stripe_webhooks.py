"""The Stripe webhook route and inbox: signatures (rotation, tolerance, tampering), storing once,
unknown types, the processor (SKIP LOCKED, retries with backoff, attempts, dead letters, the loop
in the app's lifespan), the admin views, and reconciliation."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time

import httpx
import pytest

from ledgerx import cli, ids
from ledgerx.domain.ledger.verification import verify_ledger
from ledgerx.domain.payments import inbox, reconcile
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, LiveServer, sign_up
from tests.fake_stripe import SECRETS, FakeStripe, checkout, create_pack, deliver, sign, stripe_settings
from tests.tenancy_helpers import create_project, make_platform_admin, owner_sql

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe) -> Settings:
    return stripe_settings(settings, fake, webhook_max_attempts=3, webhook_retry_base=0.01, webhook_retry_max=0.05)


async def stored(settings: Settings, event_id: str) -> list[dict[str, object]]:
    rows = await owner_sql(
        settings, "SELECT status, attempts, last_error, type FROM webhook_events WHERE stripe_event_id = $1", event_id
    )
    return [dict(r) for r in rows]


def a_event(fake: FakeStripe, event_type: str = "checkout.session.completed") -> dict[str, object]:
    return fake.event(event_type, {"id": fake.new_id("cs_test"), "object": "checkout.session", "mode": "payment"})


async def post_raw(client: httpx.AsyncClient, payload: str, header: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Stripe-Signature"] = header
    return await client.post("/webhooks/stripe", content=payload, headers=headers)


async def test_refused_deliveries_store_nothing(
    client: httpx.AsyncClient, settings: Settings, fake: FakeStripe
) -> None:
    event = a_event(fake)
    payload = json.dumps(event)
    now = int(time.time())
    cases = {
        "no signature": None,
        "wrong secret": sign(payload, "whsec_someone_else"),
        "stale timestamp": sign(payload, SECRETS[0], now - 301),
        "far future timestamp": sign(payload, SECRETS[0], now + 3600),
        "garbled header": "t=abc,v1=def",
        "no v1 signature": f"t={now},v0=abc",
    }
    for name, header in cases.items():
        r = await post_raw(client, payload, header)
        assert r.status_code == 400, name
    # Signed, then altered: one byte changed after signing.
    header = sign(payload, SECRETS[0])
    tampered = payload.replace('"mode": "payment"', '"mode": "paymenT"')
    assert tampered != payload
    assert (await post_raw(client, tampered, header)).status_code == 400
    # Signed over a re-serialized body (whitespace differs): not the bytes Stripe signed.
    assert (await post_raw(client, json.dumps(event, indent=1), header)).status_code == 400
    # Correctly signed but not an event.
    junk = json.dumps({"hello": "world"})
    assert (await post_raw(client, junk, sign(junk, SECRETS[0]))).status_code == 400
    assert await stored(settings, str(event["id"])) == []

    # Within the tolerance, with the current or the previous secret (rotation): accepted.
    # (`now` read again: a slow run must not push the stamp past the tolerance.)
    ok = await post_raw(client, payload, sign(payload, SECRETS[1], int(time.time()) - 295))
    assert ok.status_code == 200
    assert [r["status"] for r in await stored(settings, str(event["id"]))] == ["PENDING"]
    # Stripe signs with every active secret during a rotation: a header with two v1 values.
    other = a_event(fake)
    body = json.dumps(other)
    both = sign(body, "whsec_retired", now) + "," + sign(body, SECRETS[0], now).split(",")[1]
    assert (await post_raw(client, body, both)).status_code == 200


async def test_unknown_types_are_stored_and_acknowledged(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe
) -> None:
    event = fake.event("customer.tax_id.created", {"id": "txi_1", "object": "tax_id"})
    r = await deliver(client, event)
    assert r.status_code == 200
    await inbox.drain(services.payments)
    (row,) = await stored(settings, str(event["id"]))
    assert row["status"] == "IGNORED"
    admin = await make_platform_admin(gql, settings)
    data = await gql.ok(
        'query { webhookEvents(status: IGNORED, type: "customer.tax_id.created") { edges { node { stripeEventId status result } } } }',
        token=admin.token,
    )
    # Other tests of the shared database may have stored events of this type too.
    (node,) = [e["node"] for e in data["webhookEvents"]["edges"] if e["node"]["stripeEventId"] == event["id"]]
    assert node == {
        "stripeEventId": event["id"],
        "status": "IGNORED",
        "result": "ignored: customer.tax_id.created is not handled",
    }
    # A redelivery is acknowledged as a duplicate.
    again = await deliver(client, event)
    assert again.json() == {"received": True, "duplicate": True}


async def test_webhooks_refused_without_configured_secrets(services: Services, fake: FakeStripe) -> None:
    import dataclasses

    from ledgerx.app import create_app

    bare = dataclasses.replace(services.settings, stripe_webhook_secrets=())
    services.payments.settings = bare
    app = create_app(bare, services)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        r = await deliver(c, a_event(fake))
    assert r.status_code == 400


async def test_failures_retry_with_backoff_and_record_every_attempt(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe
) -> None:
    # A dispute for a charge LedgerX has never seen: not ready, retried, then dead after 3 attempts.
    event = fake.event(
        "charge.dispute.created", {"id": "dp_unknown", "object": "dispute", "charge": "ch_nope", "amount": 100}
    )
    await deliver(client, event)
    (found,) = await owner_sql(settings, "SELECT id FROM webhook_events WHERE stripe_event_id = $1", event["id"])
    done = await inbox.process(services.payments, await inbox.claim_one(services.payments, found["id"]))
    assert (done.status, done.attempts) == ("FAILED", 1)
    assert done.next_attempt_at > done.received_at
    for _ in range(40):
        await inbox.drain(services.payments)
        (row,) = await stored(settings, str(event["id"]))
        if row["status"] == "DEAD":
            break
        await asyncio.sleep(0.02)
    assert (row["status"], row["attempts"]) == ("DEAD", 3)
    attempts = await owner_sql(
        settings,
        "SELECT a.attempt, a.ok, a.error FROM webhook_attempts a JOIN webhook_events e ON e.id = a.event_id"
        " WHERE e.stripe_event_id = $1 ORDER BY a.attempt",
        event["id"],
    )
    assert [(a["attempt"], a["ok"]) for a in attempts] == [(1, False), (2, False), (3, False)]
    assert all("no recorded payment" in a["error"] for a in attempts)
    # Attempts are history: the database refuses to change them.
    with pytest.raises(Exception, match="append-only"):
        await owner_sql(settings, "DELETE FROM webhook_attempts")
    # Dead events stay for a platform admin to look at and replay.
    admin = await make_platform_admin(gql, settings)
    data = await gql.ok(
        "query { webhookEvents(status: DEAD, first: 100) { edges { node { id stripeEventId attempts } } } }",
        token=admin.token,
    )
    # Other tests of the session leave dead events of their own in the shared inbox.
    dead = {e["node"]["stripeEventId"]: e["node"]["attempts"] for e in data["webhookEvents"]["edges"]}
    assert dead.get(event["id"]) == 3


async def test_claims_are_disjoint_and_leases_expire(services: Services, settings: Settings, fake: FakeStripe) -> None:
    await inbox.drain(services.payments)  # the inbox is shared by the session's tests
    for _ in range(6):
        await inbox.store(
            services.payments, fake.event("invoice.voided", {"id": fake.new_id("in"), "object": "invoice"})
        )
    a, b = await asyncio.gather(inbox.claim(services.payments, 3), inbox.claim(services.payments, 3))
    assert len(a) + len(b) == 6
    assert not {r.id for r in a} & {r.id for r in b}
    assert await inbox.claim(services.payments, 10) == []
    # A worker that died holding a lease: another takes the rows over once the lease ran out.
    mine = [r.id for r in a + b]
    await owner_sql(
        settings, "UPDATE webhook_events SET locked_until = now() - interval '1 second' WHERE id = ANY($1)", mine
    )
    retaken = await inbox.claim(services.payments, 100)
    assert {r.id for r in retaken} >= set(mine)
    assert all(r.attempts == 2 for r in retaken if r.id in mine)


async def test_listing_is_for_platform_admins_and_paginates(
    gql: GQL, client: httpx.AsyncClient, settings: Settings, fake: FakeStripe
) -> None:
    for _ in range(3):
        await deliver(client, a_event(fake, "payout.paid"))
    admin = await make_platform_admin(gql, settings)
    user = await sign_up(gql)
    query = 'query($a: String) { webhookEvents(type: "payout.paid", first: 2, after: $a) { edges { node { id } } pageInfo { hasNextPage endCursor } } }'
    err = await gql.error(query, token=user.token)
    assert err["code"] == "FORBIDDEN"
    first = (await gql.ok(query, token=admin.token))["webhookEvents"]
    assert len(first["edges"]) == 2
    assert first["pageInfo"]["hasNextPage"] is True
    second = (await gql.ok(query, {"a": first["pageInfo"]["endCursor"]}, token=admin.token))["webhookEvents"]
    assert len(second["edges"]) == 1
    assert second["pageInfo"]["hasNextPage"] is False
    one = await gql.ok(
        "query($id: ID!) { webhookEvent(id: $id) { type status } }",
        {"id": second["edges"][0]["node"]["id"]},
        token=admin.token,
    )
    assert one["webhookEvent"] == {"type": "payout.paid", "status": "IGNORED"}
    err = await gql.error(
        'mutation { replayWebhookEvent(id: "whe_00000000000000000000000000") { id } }', token=admin.token
    )
    assert err["code"] == "NOT_FOUND"


@pytest.mark.background_loops
async def test_the_processor_runs_in_the_app_lifespan(
    live_server: LiveServer, settings: Settings, fake: FakeStripe
) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as c:
        live = GQL(c)
        admin = await make_platform_admin(live, settings)
        pack = await create_pack(live, admin, credits=700, amount=700)
        owner = await sign_up(live)
        pid = await create_project(live, owner)
        session_id = await checkout(live, owner, pid, creditPackId=pack)
        (event,) = fake.complete_checkout(session_id)
        assert (await deliver(c, event)).status_code == 200
        for _ in range(200):
            rows = await owner_sql(
                settings, "SELECT balance FROM wallets WHERE project_id = $1", ids.decode("project", pid)
            )
            if rows and rows[0]["balance"] == 700:
                break
            await asyncio.sleep(0.02)
        assert [r["balance"] for r in rows] == [700]
        assert (await verify_ledger(live_server.services.ledger, ids.decode("project", pid))).ok


async def test_reconcile_processes_what_was_missed_and_reports_the_rest(
    gql: GQL, client: httpx.AsyncClient, services: Services, settings: Settings, fake: FakeStripe
) -> None:
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    admin = await make_platform_admin(gql, settings)
    pack = await create_pack(gql, admin, credits=300, amount=300)
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    # 1: delivered normally. 2: its webhook never arrived. 3: Stripe has no event for it at all.
    delivered, missed, silent = [await checkout(gql, owner, pid, creditPackId=pack) for _ in range(3)]
    (ev1,) = fake.complete_checkout(delivered)
    await deliver(client, ev1)
    await inbox.drain(services.payments)
    fake.complete_checkout(missed)
    fake.complete_checkout(silent)
    fake.events.pop()  # Stripe lost this one
    stuck = fake.event(
        "charge.dispute.created", {"id": "dp_x", "object": "dispute", "charge": "ch_unknown", "amount": 5}
    )

    report = await reconcile.reconcile(services.payments, since)
    assert report.events_seen == 3
    assert set(report.events_recovered) == {fake.events[1]["id"], stuck["id"]}
    assert report.sessions_checked == 3
    assert report.sessions_recovered == [silent]
    assert [e["id"] for e in report.events_outstanding] == [stuck["id"]]
    assert not report.clean
    rows = await owner_sql(settings, "SELECT balance FROM wallets WHERE project_id = $1", ids.decode("project", pid))
    assert [r["balance"] for r in rows] == [900]
    # Running it again changes nothing, and a late webhook for the silent checkout credits nothing.
    again = await reconcile.reconcile(services.payments, since)
    assert again.events_recovered == []
    assert again.sessions_recovered == []
    late = fake.event("checkout.session.completed", fake._public(fake.get(silent)))
    await deliver(client, late)
    await inbox.drain(services.payments)
    rows = await owner_sql(settings, "SELECT balance FROM wallets WHERE project_id = $1", ids.decode("project", pid))
    assert [r["balance"] for r in rows] == [900]
    assert (await verify_ledger(services.ledger, ids.decode("project", pid))).ok
    assert any("not processed" in line for line in report.lines())


def test_reconcile_since_accepts_durations_and_instants() -> None:
    now = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
    assert cli.parse_since("24h", now) == now - dt.timedelta(hours=24)
    assert cli.parse_since("7d", now) == now - dt.timedelta(days=7)
    assert cli.parse_since("2026-11-01T00:00:00Z", now) == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert cli.parse_since("2026-11-01", now) == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="--since"):
        cli.parse_since("yesterday", now)
