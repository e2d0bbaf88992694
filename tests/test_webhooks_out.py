"""Outbound webhooks, end to end below GraphQL: the outbox, the delivery worker and a real receiver.

Every delivery is checked with the official `standardwebhooks` package (PyPI), unchanged; one test
also checks them with its npm twin when node and npm can install it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from ledgerx import ids
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import Conflict
from ledgerx.domain.webhooks import deliveries, endpoints, outbox
from ledgerx.domain.webhooks.delivery import DeliveryPolicy, DeliveryWorker, DisabledEndpoint
from ledgerx.domain.webhooks.records import IssuedEndpoint
from ledgerx.services import Services
from tests.conftest import free_port
from tests.ledger_helpers import new_project
from tests.tenancy_helpers import owner_sql
from tests.webhooks_out_receiver import Received, Receiver, running_receiver

ACTOR = Actor.system("test")
FAST = DeliveryPolicy(allow_private=True, timeout=2.0, retry_delays=(0.3, 0.6), poll_interval=0.05)


@pytest.fixture
async def receiver(services: Services) -> AsyncIterator[Receiver]:
    # Workers serve every project of the session's database: what other tests leave pending (a dead
    # endpoint's backlog, far retries, test events to nowhere) must not reach this test's workers.
    await owner_sql(services.settings, "UPDATE webhook_deliveries SET status = 'FAILED' WHERE status = 'PENDING'")
    async with running_receiver() as r:
        yield r
    await owner_sql(services.settings, "UPDATE webhook_deliveries SET status = 'FAILED' WHERE status = 'PENDING'")


async def endpoint(
    services: Services, project_id: uuid.UUID, url: str, events: Sequence[str] = ("*",)
) -> IssuedEndpoint:
    return await endpoints.create(services.db, ACTOR, project_id, url=url, events=events, allow_private=True)


async def emit(services: Services, project_id: uuid.UUID, event_type: str = "transaction.posted", **data: Any) -> str:
    async with services.db.transaction(project_id=project_id) as s:
        event_id = await outbox.emit(s, project_id, event_type, data or {"id": "txn_x", "amount": "5"})
    assert event_id is not None
    return ids.encode("event", event_id)


def verify(secret: str, r: Received) -> dict[str, Any]:
    payload: dict[str, Any] = Webhook(secret).verify(r.body, r.headers)
    return payload


async def delivery_rows(services: Services, event_public_id: str) -> list[Any]:
    return await owner_sql(
        services.settings,
        "SELECT * FROM webhook_deliveries WHERE event_id = $1 ORDER BY id",
        ids.decode("event", event_public_id),
    )


async def test_a_delivery_verifies_with_the_official_library(services: Services, receiver: Receiver) -> None:
    pid = await new_project(services)
    issued = await endpoint(services, pid, receiver.url())
    assert issued.secret.startswith("whsec_")
    event_id = await emit(services, pid, id="txn_1", amount="42", walletId="wal_1")

    assert await DeliveryWorker(services.db, FAST).run_once() == 1
    [got] = receiver.of("/ok")
    payload = verify(issued.secret, got)
    assert payload["id"] == event_id == got.headers["webhook-id"]
    assert payload["type"] == "transaction.posted"
    assert payload["projectId"] == ids.encode("project", pid)
    assert payload["data"] == {"id": "txn_1", "amount": "42", "walletId": "wal_1"}
    assert payload["createdAt"]
    # Another secret does not verify it, nor does a changed body.
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 43 + "=").verify(got.body, got.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(issued.secret).verify(got.body.replace(b"42", b"43"), got.headers)

    [row] = await delivery_rows(services, event_id)
    assert (row["status"], row["attempts"], row["last_status_code"]) == ("SUCCEEDED", 1, 200)
    assert row["delivered_at"] is not None
    attempts = await deliveries.attempts(services.db, pid, row["id"])
    assert [(a.attempt, a.status_code, a.error) for a in attempts] == [(1, 200, None)]


async def test_only_subscribed_enabled_endpoints_of_the_project_get_the_event(
    services: Services, receiver: Receiver
) -> None:
    pid, other = await new_project(services), await new_project(services)
    await endpoint(services, pid, receiver.url("/ok"), ["transaction.posted"])
    await endpoint(services, pid, receiver.url("/ok2"), ["invoice.paid"])
    await endpoint(services, other, receiver.url("/ok3"), ["*"])
    disabled = await endpoint(services, pid, receiver.url("/ok4"), ["*"])
    await endpoints.update_endpoint(
        services.db, ACTOR, pid, disabled.endpoint.id, endpoints.Changes(enabled=False), allow_private=True
    )
    await emit(services, pid)
    async with services.db.transaction(project_id=pid) as s:
        assert await outbox.emit(s, pid, "payment.refunded", {"id": "pay_1"}) is None  # nobody wants it
    assert await DeliveryWorker(services.db, FAST).run_once() == 1
    assert [r.path for r in receiver.received] == ["/ok"]


async def test_a_rolled_back_change_sends_nothing(services: Services, receiver: Receiver) -> None:
    pid = await new_project(services)
    await endpoint(services, pid, receiver.url())

    async def change_that_fails() -> None:
        async with services.db.transaction(project_id=pid) as s:
            assert await outbox.emit(s, pid, "transaction.posted", {"id": "txn_gone"}) is not None
            raise RuntimeError("the change fails after emitting")

    with pytest.raises(RuntimeError):
        await change_that_fails()
    rows = await owner_sql(services.settings, "SELECT count(*) AS n FROM webhook_outbox WHERE project_id = $1", pid)
    assert rows[0]["n"] == 0
    assert await DeliveryWorker(services.db, FAST).run_once() == 0
    await asyncio.sleep(0.1)
    assert receiver.received == []


async def test_the_outbox_is_append_only(services: Services, receiver: Receiver) -> None:
    pid = await new_project(services)
    await endpoint(services, pid, receiver.url())
    event_id = ids.decode("event", await emit(services, pid))
    for sql in ("UPDATE webhook_outbox SET type = 'x' WHERE id = $1", "DELETE FROM webhook_outbox WHERE id = $1"):
        with pytest.raises(Exception, match="append-only"):
            await owner_sql(services.settings, sql, event_id)


async def test_during_a_rotation_both_secrets_verify(services: Services, receiver: Receiver) -> None:
    pid = await new_project(services)
    old = await endpoint(services, pid, receiver.url())
    new = await endpoints.rotate(services.db, ACTOR, pid, old.endpoint.id)
    assert new.secret != old.secret and new.endpoint.previous_secret_expires_at is not None
    await emit(services, pid)
    await DeliveryWorker(services.db, FAST).run_once()
    [got] = receiver.received
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    assert verify(old.secret, got) == verify(new.secret, got)

    # Once the overlap is over, only the new secret signs.
    await owner_sql(
        services.settings,
        "UPDATE webhook_endpoints SET previous_secret_expires_at = now() - interval '1 second' WHERE id = $1",
        old.endpoint.id,
    )
    await emit(services, pid)
    await DeliveryWorker(services.db, FAST).run_once()
    latest = receiver.received[-1]
    verify(new.secret, latest)
    with pytest.raises(WebhookVerificationError):
        verify(old.secret, latest)


_NODE_VERIFY = """
const { Webhook } = require(process.argv[1]);
const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const results = cases.map(c => {
  try { return { ok: true, payload: new Webhook(c.secret).verify(c.body, c.headers) }; }
  catch (e) { return { ok: false, error: String(e) }; }
});
process.stdout.write(JSON.stringify(results));
"""
NPM_VERSION = "1.3.0"


def npm_standardwebhooks() -> Path | None:
    """The npm package, installed once into a cache outside the repository (None: cannot)."""
    if not (shutil.which("node") and shutil.which("npm")):
        return None
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ledgerx"
    target = cache / f"standardwebhooks-npm-{NPM_VERSION}"
    package = target / "node_modules" / "standardwebhooks"
    if not (package / "package.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f"standardwebhooks-npm-{NPM_VERSION}.tmp{os.getpid()}"
        done = subprocess.run(
            [
                "npm",
                "install",
                "--prefix",
                str(tmp),
                "--no-audit",
                "--no-fund",
                "--no-save",
                "--silent",
                f"standardwebhooks@{NPM_VERSION}",
            ],
            capture_output=True,
            timeout=180,
            check=False,
        )
        if done.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            return None
        try:
            tmp.rename(target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)  # another run installed it first
    return package if (package / "package.json").exists() else None


async def test_deliveries_verify_with_the_npm_package(services: Services, receiver: Receiver) -> None:
    package = await asyncio.to_thread(npm_standardwebhooks)
    if package is None:
        pytest.skip("node/npm cannot install the npm standardwebhooks package here")
    pid = await new_project(services)
    old = await endpoint(services, pid, receiver.url())
    await emit(services, pid, id="txn_é", note="unicode ✓")
    await DeliveryWorker(services.db, FAST).run_once()
    new = await endpoints.rotate(services.db, ACTOR, pid, old.endpoint.id)
    await emit(services, pid)
    await DeliveryWorker(services.db, FAST).run_once()
    first, second = receiver.received
    cases = [
        {"secret": old.secret, "headers": first.headers, "body": first.body.decode()},
        {"secret": old.secret, "headers": second.headers, "body": second.body.decode()},
        {"secret": new.secret, "headers": second.headers, "body": second.body.decode()},
        {"secret": new.secret, "headers": first.headers, "body": first.body.decode()},  # before the rotation
    ]
    done = await asyncio.to_thread(
        subprocess.run,
        ["node", "-e", _NODE_VERIFY, str(package)],
        input=json.dumps(cases).encode(),
        capture_output=True,
        timeout=60,
        check=True,
    )
    results = json.loads(done.stdout)
    assert [r["ok"] for r in results] == [True, True, True, False], results
    assert results[0]["payload"]["data"] == {"id": "txn_é", "note": "unicode ✓"}


async def test_two_workers_never_send_one_attempt_twice(services: Services, receiver: Receiver) -> None:
    pid = await new_project(services)
    await endpoint(services, pid, receiver.url("/ok"))
    await endpoint(services, pid, receiver.url("/ok2"))
    events = 150
    async with services.db.transaction(project_id=pid) as s:
        for i in range(events):
            await outbox.emit(s, pid, "transaction.posted", {"n": i})
    policy = DeliveryPolicy(allow_private=True, timeout=5.0, batch_size=20, per_endpoint=4, poll_interval=0.02)
    workers = [DeliveryWorker(services.db, policy) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        await receiver.wait_for(2 * events, timeout=30)
        await asyncio.sleep(0.3)  # anything sent twice would arrive now
    finally:
        for w in workers:
            await w.stop()
    sent = Counter((r.path, r.headers["webhook-id"]) for r in receiver.received)
    assert len(sent) == 2 * events
    assert set(sent.values()) == {1}
    rows = await owner_sql(
        services.settings,
        "SELECT status, attempts, count(*) AS n FROM webhook_deliveries WHERE project_id = $1 GROUP BY 1, 2",
        pid,
    )
    assert [(r["status"], r["attempts"], r["n"]) for r in rows] == [("SUCCEEDED", 1, 2 * events)]


async def wait_until(check: Any, timeout: float = 10.0) -> Any:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_retries_back_off_with_the_same_webhook_id(services: Services, receiver: Receiver) -> None:
    pid = await new_project(services)
    issued = await endpoint(services, pid, receiver.url("/flaky/2"))
    event_id = await emit(services, pid)
    worker = DeliveryWorker(services.db, FAST)
    worker.start()
    try:
        got = await receiver.wait_for(3, "/flaky/2")
    finally:
        await worker.stop()
    assert {r.headers["webhook-id"] for r in got} == {event_id}
    for r in got:
        verify(issued.secret, r)  # each attempt signed afresh
    first_gap, second_gap = got[1].at - got[0].at, got[2].at - got[1].at
    # 0.3 s then 0.6 s, each with up to 20 % jitter, plus up to one poll interval.
    assert 0.24 <= first_gap < 0.45, first_gap
    assert 0.48 <= second_gap < 0.85, second_gap
    [row] = await delivery_rows(services, event_id)
    assert (row["status"], row["attempts"], row["last_status_code"], row["last_error"]) == ("SUCCEEDED", 3, 200, None)
    attempts = await deliveries.attempts(services.db, pid, row["id"])
    assert [(a.attempt, a.status_code, a.error) for a in attempts] == [
        (1, 500, "HTTP 500"),
        (2, 500, "HTTP 500"),
        (3, 200, None),
    ]


async def test_after_the_last_retry_the_delivery_fails_and_can_be_redelivered(
    services: Services, receiver: Receiver
) -> None:
    pid = await new_project(services)
    ep = await endpoint(services, pid, receiver.url("/flaky/3"))
    event_id = await emit(services, pid)
    worker = DeliveryWorker(services.db, FAST)
    worker.start()
    try:
        await receiver.wait_for(3)
        [row] = await wait_until(
            lambda: owner_sql(
                services.settings,
                "SELECT * FROM webhook_deliveries WHERE event_id = $1 AND status = 'FAILED'",
                ids.decode("event", event_id),
            )
        )
        assert (row["attempts"], row["last_status_code"]) == (3, 500)
        again = await deliveries.redeliver(services.db, ACTOR, pid, row["id"])
        assert again.id != row["id"] and again.event_id == row["event_id"] and again.status == "PENDING"
        got = await receiver.wait_for(4)
    finally:
        await worker.stop()
    assert {r.headers["webhook-id"] for r in got} == {event_id}  # a redelivery keeps the id
    assert (await deliveries.get(services.db, pid, again.id)).status == "SUCCEEDED"
    # A disabled endpoint gets no test event and no redelivery.
    await endpoints.update_endpoint(
        services.db, ACTOR, pid, ep.endpoint.id, endpoints.Changes(enabled=False), allow_private=True
    )
    with pytest.raises(Conflict):
        await deliveries.redeliver(services.db, ACTOR, pid, row["id"])
    with pytest.raises(Conflict):
        await deliveries.send_test(services.db, ACTOR, pid, ep.endpoint.id)


async def test_a_timeout_and_a_refused_connection_are_failed_attempts(services: Services, receiver: Receiver) -> None:
    pid = await new_project(services)
    await endpoint(services, pid, receiver.url("/slow"))
    await endpoint(services, pid, f"http://127.0.0.1:{free_port()}/nobody")
    event_id = await emit(services, pid)
    policy = DeliveryPolicy(allow_private=True, timeout=0.5, retry_delays=(60,))
    started = time.monotonic()
    assert await DeliveryWorker(services.db, policy).run_once() == 2
    assert time.monotonic() - started < 3  # the timeout bounds the attempt
    rows = await delivery_rows(services, event_id)
    errors = sorted(r["last_error"] for r in rows)
    assert errors[0].startswith("ConnectError"), errors
    assert errors[1].startswith("timed out after 0.5s"), errors
    for r in rows:
        assert (r["status"], r["attempts"], r["last_status_code"]) == ("PENDING", 1, None)
        assert r["next_attempt_at"].timestamp() > time.time() + 40  # retried after the configured delay


async def test_a_dead_endpoint_does_not_delay_the_others(services: Services, receiver: Receiver) -> None:
    pid = await new_project(services)
    await endpoint(services, pid, receiver.url("/slow"), ["invoice.paid"])
    await endpoint(services, pid, receiver.url("/ok"), ["transaction.posted"])
    policy = DeliveryPolicy(
        allow_private=True, timeout=5.0, batch_size=10, per_endpoint=2, max_in_flight=64, poll_interval=0.02
    )
    worker = DeliveryWorker(services.db, policy)
    worker.start()
    try:
        # The dead endpoint's backlog comes first and is larger than a claim.
        async with services.db.transaction(project_id=pid) as s:
            for i in range(40):
                await outbox.emit(s, pid, "invoice.paid", {"n": i})
        await receiver.wait_for(2, "/slow")
        latencies = []
        for i in range(20):
            committed = time.time()
            await emit(services, pid, n=i)
            got = await receiver.wait_for(i + 1, "/ok", timeout=3)
            latencies.append(got[-1].at - committed)
    finally:
        await worker.stop()
    assert max(latencies) < 0.5, latencies
    assert len(receiver.of("/slow")) <= 2  # its lane holds two requests at a time, no more


async def test_an_endpoint_failing_for_the_configured_time_is_disabled(services: Services, receiver: Receiver) -> None:
    pid = await new_project(services)
    dead = await endpoint(services, pid, receiver.url("/fail"))
    alive = await endpoint(services, pid, receiver.url("/ok"))
    told: list[DisabledEndpoint] = []

    async def on_disabled(disabled: Sequence[DisabledEndpoint]) -> None:
        told.extend(disabled)

    policy = DeliveryPolicy(allow_private=True, retry_delays=(0.1,) * 30, disable_after=1.0, poll_interval=0.05)
    worker = DeliveryWorker(services.db, policy, on_disabled=on_disabled)
    await emit(services, pid)
    worker.start()
    try:
        record = await wait_until(
            lambda: _disabled(services, pid, dead.endpoint.id),
            timeout=10,
        )
    finally:
        await worker.stop()
    assert record.disabled_reason.startswith("failing since "), record.disabled_reason
    assert "1s" in record.disabled_reason
    assert [t.endpoint_id for t in told if t.project_id == pid] == [dead.endpoint.id]
    assert (await endpoints.get(services.db, pid, alive.endpoint.id)).enabled
    rows = await owner_sql(
        services.settings,
        "SELECT status, last_error FROM webhook_deliveries WHERE endpoint_id = $1",
        dead.endpoint.id,
    )
    assert [r["status"] for r in rows] == ["FAILED"]
    audit_rows = await owner_sql(
        services.settings,
        "SELECT actor_type, target_id FROM audit_log WHERE action = 'webhook_endpoint.disable' AND project_id = $1",
        pid,
    )
    assert [(a["actor_type"], a["target_id"]) for a in audit_rows] == [
        ("system", ids.encode("webhook_endpoint", dead.endpoint.id))
    ]
    # A success in between ends the streak: enabling again starts the clock afresh.
    again = await endpoints.update_endpoint(
        services.db, ACTOR, pid, dead.endpoint.id, endpoints.Changes(enabled=True), allow_private=True
    )
    assert again.enabled and again.disabled_reason is None and again.failing_since is None


async def _disabled(services: Services, pid: uuid.UUID, endpoint_id: uuid.UUID) -> Any:
    record = await endpoints.get(services.db, pid, endpoint_id)
    return None if record.enabled else record


async def test_a_test_event_goes_to_that_endpoint_only(services: Services, receiver: Receiver) -> None:
    pid = await new_project(services)
    target = await endpoint(services, pid, receiver.url("/ok"), ["invoice.paid"])
    await endpoint(services, pid, receiver.url("/ok2"), ["*"])
    delivery = await deliveries.send_test(services.db, ACTOR, pid, target.endpoint.id)
    assert (delivery.event_type, delivery.status, delivery.attempts) == ("webhook.test", "PENDING", 0)
    await DeliveryWorker(services.db, FAST).run_once()
    [got] = receiver.received
    payload = verify(target.secret, got)
    assert payload["type"] == "webhook.test"
    assert payload["data"]["endpointId"] == ids.encode("webhook_endpoint", target.endpoint.id)
    done = await deliveries.get(services.db, pid, delivery.id)
    assert (done.status, done.attempts, done.last_status_code, done.next_attempt_at) == ("SUCCEEDED", 1, 200, None)


async def test_a_worker_killed_after_the_claim_loses_nothing(services: Services, receiver: Receiver) -> None:
    """A claimed row whose worker died comes back once its lease ends, with the same webhook-id."""
    pid = await new_project(services)
    await endpoint(services, pid, receiver.url())
    event_id = await emit(services, pid)
    rows = await owner_sql(
        services.settings,
        "UPDATE webhook_deliveries SET attempts = 1, next_attempt_at = now() + interval '300 seconds'"
        " WHERE event_id = $1 RETURNING id",
        ids.decode("event", event_id),
    )  # what a claim does; the worker then vanished
    assert await DeliveryWorker(services.db, FAST).run_once() == 0  # leased: nobody else sends it
    await owner_sql(
        services.settings, "UPDATE webhook_deliveries SET next_attempt_at = now() WHERE id = $1", rows[0]["id"]
    )
    assert await DeliveryWorker(services.db, FAST).run_once() == 1
    [got] = receiver.received
    assert got.headers["webhook-id"] == event_id
    [row] = await delivery_rows(services, event_id)
    assert (row["status"], row["attempts"]) == ("SUCCEEDED", 2)
