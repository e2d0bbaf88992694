"""systemHealth: platform admins see the database, Redis, the scheduler and every backlog."""

from __future__ import annotations

import datetime as dt
import json
import secrets
from typing import Any

from ledgerx import ids
from ledgerx.ids import uuid7
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, sign_up
from tests.tenancy_helpers import create_project, make_platform_admin, owner_sql
from tests.test_billing_helpers import new_project, new_rule, new_wallet

HEALTH = """
query {
  systemHealth {
    status checkedAt version
    database { status latencyMs detail }
    replica { status latencyMs detail }
    redis { status latencyMs detail }
    scheduler { status enabledHere leader leaderIsThisInstance leaseEpoch leaseExpiresAt dueRules lagSeconds detail }
    webhookInbox { status depth oldestAgeSeconds dead detail }
    outboundDeliveries { status depth oldestAgeSeconds dead detail }
    mailOutbox { status depth oldestAgeSeconds dead detail }
  }
}
"""


async def _health(gql: GQL, token: str) -> dict[str, Any]:
    data: dict[str, Any] = (await gql.ok(HEALTH, token=token))["systemHealth"]
    return data


async def test_system_health_is_for_platform_admins(gql: GQL) -> None:
    assert (await gql.error(HEALTH))["code"] == "UNAUTHENTICATED"
    owner = await sign_up(gql)
    await create_project(gql, owner)  # owning a project does not make one a platform admin
    err = await gql.error(HEALTH, token=owner.token)
    assert err["code"] == "FORBIDDEN", err


async def test_dependencies(gql: GQL, settings: Settings) -> None:
    admin = await make_platform_admin(gql, settings)
    h = await _health(gql, admin.token)
    assert h["database"]["status"] == "OK"
    assert h["database"]["latencyMs"] >= 0
    assert h["redis"]["status"] == "OK"
    assert h["redis"]["latencyMs"] >= 0
    assert h["replica"] == {"status": "NOT_CONFIGURED", "latencyMs": None, "detail": h["replica"]["detail"]}
    assert "replica" in h["replica"]["detail"]
    assert h["outboundDeliveries"]["status"] in ("OK", "DEGRADED")  # other tests' deliveries may wait
    assert h["version"]
    assert dt.datetime.fromisoformat(h["checkedAt"]).tzinfo is not None


async def test_webhook_inbox_and_mail_outbox_backlogs(gql: GQL, settings: Settings) -> None:
    admin = await make_platform_admin(gql, settings)
    before = await _health(gql, admin.token)
    hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    # Two Stripe events waiting (one new, one an hour old), one given up on, one done.
    for status, received in (("PENDING", hour_ago), ("FAILED", dt.datetime.now(dt.UTC)), ("DEAD", hour_ago)):
        await _webhook_event(settings, status, received)
    await _webhook_event(settings, "PROCESSED", hour_ago)
    # Two mails waiting (one two hours old), one past the attempt limit, one sent.
    two_hours_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    for attempts, created, sent in (
        (0, two_hours_ago, None),
        (3, dt.datetime.now(dt.UTC), None),
        (settings.mail_max_attempts, two_hours_ago, None),
        (1, two_hours_ago, dt.datetime.now(dt.UTC)),
    ):
        await owner_sql(
            settings,
            "INSERT INTO mail_outbox (id, to_addr, subject, body_text, kind, created_at, attempts, sent_at)"
            " VALUES ($1, 'x@example.com', 's', 'b', 'test', $2, $3, $4)",
            uuid7(),
            created,
            attempts,
            sent,
        )
    after = await _health(gql, admin.token)

    inbox = after["webhookInbox"]
    assert inbox["depth"] == before["webhookInbox"]["depth"] + 2
    assert inbox["dead"] == before["webhookInbox"]["dead"] + 1
    assert inbox["oldestAgeSeconds"] >= 3600
    assert inbox["status"] == "DEGRADED"  # an event has waited longer than 15 minutes
    mail = after["mailOutbox"]
    assert mail["depth"] == before["mailOutbox"]["depth"] + 2
    assert mail["dead"] == before["mailOutbox"]["dead"] + 1
    assert mail["oldestAgeSeconds"] >= 7200
    assert mail["status"] == "NOT_CONFIGURED"  # no SMTP_URL in the tests: the mail cannot leave
    assert after["status"] in ("DEGRADED", "DOWN") and after["database"]["status"] == "OK"
    assert after["status"] == "DEGRADED"

    # Processing the events empties the inbox backlog.
    await owner_sql(
        settings, "UPDATE webhook_events SET status = 'PROCESSED' WHERE status IN ('PENDING', 'FAILED', 'PROCESSING')"
    )
    assert (await _health(gql, admin.token))["webhookInbox"]["depth"] == 0


async def test_scheduler_leader_and_lag(gql: GQL, settings: Settings, services: Services) -> None:
    admin = await make_platform_admin(gql, settings)
    lease = services.scheduler.lease
    # This instance holds the lease (as its scheduler loop would), for a short while.
    await owner_sql(
        settings,
        "INSERT INTO scheduler_leases (name, holder, epoch, acquired_at, renewed_at, expires_at)"
        " VALUES ($1, $2, 7, now(), now(), now() + interval '30 seconds')"
        " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, epoch = 7, renewed_at = now(),"
        " expires_at = excluded.expires_at",
        lease.name,
        lease.holder,
    )
    wallet = await new_wallet(services, await new_project(services), 1000)
    rule = await new_rule(services.billing, wallet)
    try:
        h = (await _health(gql, admin.token))["scheduler"]
        assert h["leader"] == lease.holder
        assert h["leaderIsThisInstance"] is True
        assert h["leaseEpoch"] == 7
        assert h["enabledHere"] is False  # the tests run no background loops

        # A rule due ten minutes ago and not run: the scheduler lags.
        await owner_sql(
            settings, "UPDATE billing_rules SET due_at = now() - interval '10 minutes' WHERE id = $1", rule.id
        )
        h = (await _health(gql, admin.token))["scheduler"]
        assert h["dueRules"] >= 1
        assert h["lagSeconds"] >= 600
        assert h["status"] == "DEGRADED"

        # Nobody holds the lease: reported as such.
        await owner_sql(settings, "UPDATE scheduler_leases SET expires_at = now() WHERE name = $1", lease.name)
        h = (await _health(gql, admin.token))["scheduler"]
        assert h["leader"] is None
        assert h["leaderIsThisInstance"] is False
        assert h["status"] == "DEGRADED"
        assert "lease" in h["detail"]
    finally:
        # Leave no due rule and no live lease behind for the scheduler tests.
        await owner_sql(
            settings,
            "UPDATE billing_rules SET status = 'PAUSED', paused_reason = 'test' WHERE id = $1",
            rule.id,
        )
        await owner_sql(settings, "UPDATE scheduler_leases SET expires_at = now() WHERE name = $1", lease.name)


async def _webhook_event(settings: Settings, status: str, received_at: dt.datetime) -> None:
    await owner_sql(
        settings,
        "INSERT INTO webhook_events (id, stripe_event_id, type, created, payload, status, received_at)"
        " VALUES ($1, $2, 'test.event', now(), $3::jsonb, $4, $5)",
        uuid7(),
        f"evt_{secrets.token_hex(8)}",
        json.dumps({"id": "evt"}),
        status,
        received_at,
    )


async def test_outbound_delivery_backlog(gql: GQL, settings: Settings) -> None:
    """Deliveries waiting (retries included) and how late the most overdue one is."""
    admin = await make_platform_admin(gql, settings)
    before = (await _health(gql, admin.token))["outboundDeliveries"]
    pid = await create_project(gql, admin)
    project = ids.decode("project", pid)
    endpoint, event = uuid7(), uuid7()
    await owner_sql(
        settings,
        "INSERT INTO webhook_endpoints (id, project_id, url, secret, events) VALUES ($1, $2, 'https://example.com/h', 's', '{*}')",
        endpoint,
        project,
    )
    await owner_sql(
        settings,
        "INSERT INTO webhook_outbox (id, project_id, type, payload) VALUES ($1, $2, 'test.ping', '{}'::jsonb)",
        event,
        project,
    )
    for due in (dt.timedelta(hours=1), -dt.timedelta(hours=1)):  # one overdue for an hour, one not due yet
        await owner_sql(
            settings,
            "INSERT INTO webhook_deliveries (id, project_id, endpoint_id, event_id, next_attempt_at)"
            " VALUES ($1, $2, $3, $4, now() - $5::interval)",
            uuid7(),
            project,
            endpoint,
            event,
            due,
        )
    after = (await _health(gql, admin.token))["outboundDeliveries"]
    assert after["depth"] >= before["depth"] + 2
    assert after["oldestAgeSeconds"] >= 3600
    assert after["status"] == "DEGRADED"
    assert "older than" in after["detail"]
