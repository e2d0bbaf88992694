"""An endpoint's delivery log, test events and redeliveries.

A test event (`webhook.test`) is a real event in the outbox with one delivery to the endpoint it
was asked for, whatever types the endpoint subscribes to. A redelivery is a new delivery of the
same event to the same endpoint: a new `dlv_` id, the same `webhook-id` (the event id), so a
receiver that already handled the event can tell. Both refuse a disabled endpoint (CONFLICT):
enable it first.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import asyncpg

from ledgerx import jsonenc
from ledgerx.db.engine import Database
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import Conflict, NotFound
from ledgerx.domain.webhooks import catalog
from ledgerx.domain.webhooks.records import AttemptRecord, DeliveryRecord
from ledgerx.ids import encode, uuid7

_COLUMNS = """
d.id, d.project_id, d.endpoint_id, d.event_id, o.type AS event_type, d.status, d.attempts,
d.last_status_code, d.last_error,
CASE WHEN d.status = 'PENDING' THEN d.next_attempt_at END AS next_attempt_at,
d.created_at, d.delivered_at
"""
_ONE = f"SELECT {_COLUMNS} FROM webhook_deliveries d JOIN webhook_outbox o ON o.id = d.event_id WHERE d.id = $1"  # noqa: S608
# Each endpoint's newest `$3` deliveries older than `$2` (NULL: from the newest): one statement
# for a whole list of endpoints (the per-request loader asks once for all of them).
_PAGES = f"""
SELECT {_COLUMNS}
  FROM unnest($1::uuid[]) AS ep(id)
  CROSS JOIN LATERAL (
    SELECT * FROM webhook_deliveries x
     WHERE x.endpoint_id = ep.id AND ($2::uuid IS NULL OR x.id < $2)
     ORDER BY x.id DESC LIMIT $3
  ) d
  JOIN webhook_outbox o ON o.id = d.event_id
 ORDER BY d.endpoint_id, d.id DESC
"""  # noqa: S608
_ENDPOINT_STATE = """
SELECT enabled, deleted_at FROM webhook_endpoints WHERE id = $1 AND project_id = $2 FOR SHARE
"""


def record(row: asyncpg.Record) -> DeliveryRecord:
    return DeliveryRecord(**dict(row))


async def project_of(db: Database, delivery_id: uuid.UUID) -> uuid.UUID | None:
    """The project of a delivery (system path; the caller authorizes against it next)."""
    async with db.raw(system=True) as conn:
        found: uuid.UUID | None = await conn.fetchval(
            "SELECT d.project_id FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id"
            " WHERE d.id = $1 AND e.deleted_at IS NULL",
            delivery_id,
        )
    return found


async def get(db: Database, project_id: uuid.UUID, delivery_id: uuid.UUID) -> DeliveryRecord:
    async with db.raw(project_id=project_id) as conn:
        row = await conn.fetchrow(_ONE, delivery_id)
    if row is None:
        raise NotFound("webhook delivery not found", field="id")
    return record(row)


async def pages(
    db: Database, project_id: uuid.UUID, endpoint_ids: Sequence[uuid.UUID], *, limit: int, before: uuid.UUID | None
) -> dict[uuid.UUID, list[DeliveryRecord]]:
    """Each endpoint's deliveries, newest first, `limit` at most (callers ask `limit + 1`)."""
    found: dict[uuid.UUID, list[DeliveryRecord]] = {e: [] for e in endpoint_ids}
    async with db.raw(project_id=project_id) as conn:
        for row in await conn.fetch(_PAGES, list(endpoint_ids), before, limit):
            found[row["endpoint_id"]].append(record(row))
    return found


async def attempts(db: Database, project_id: uuid.UUID, delivery_id: uuid.UUID) -> list[AttemptRecord]:
    """A delivery's attempts, first to last."""
    return (await attempts_of_many(db, project_id, [delivery_id]))[delivery_id]


async def attempts_of_many(
    db: Database, project_id: uuid.UUID, delivery_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[AttemptRecord]]:
    """Each delivery's attempts, first to last (one statement for all of them)."""
    found: dict[uuid.UUID, list[AttemptRecord]] = {d: [] for d in delivery_ids}
    async with db.raw(project_id=project_id) as conn:
        rows = await conn.fetch(
            "SELECT id, delivery_id, attempt, status_code, error, duration_ms, at FROM webhook_delivery_attempts"
            " WHERE delivery_id = ANY($1::uuid[]) ORDER BY delivery_id, attempt, id",
            list(delivery_ids),
        )
    for r in rows:
        found[r["delivery_id"]].append(AttemptRecord(**dict(r)))
    return found


async def _require_enabled(conn: asyncpg.Connection, project_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    state = await conn.fetchrow(_ENDPOINT_STATE, endpoint_id, project_id)
    if state is None or state["deleted_at"] is not None:
        raise NotFound("webhook endpoint not found", field="id")
    if not state["enabled"]:
        raise Conflict("the webhook endpoint is disabled; enable it first", field="id", reason="ENDPOINT_DISABLED")


async def _new_delivery(
    conn: asyncpg.Connection, project_id: uuid.UUID, endpoint_id: uuid.UUID, event_id: uuid.UUID
) -> DeliveryRecord:
    delivery_id = uuid7()
    await conn.execute(
        "INSERT INTO webhook_deliveries (id, project_id, endpoint_id, event_id) VALUES ($1, $2, $3, $4)",
        delivery_id,
        project_id,
        endpoint_id,
        event_id,
    )
    row = await conn.fetchrow(_ONE, delivery_id)
    assert row is not None
    return record(row)


async def send_test(db: Database, actor: Actor, project_id: uuid.UUID, endpoint_id: uuid.UUID) -> DeliveryRecord:
    """A `webhook.test` event delivered to this endpoint only."""
    event_id = uuid7()
    endpoint = encode("webhook_endpoint", endpoint_id)
    data = {"endpointId": endpoint, "message": "A test event sent with sendTestWebhook."}
    async with db.raw(project_id=project_id) as conn:
        await _require_enabled(conn, project_id, endpoint_id)
        await conn.execute(
            "INSERT INTO webhook_outbox (id, project_id, type, payload) VALUES ($1, $2, $3, $4::jsonb)",
            event_id,
            project_id,
            catalog.TEST,
            jsonenc.dumps(data),
        )
        delivery = await _new_delivery(conn, project_id, endpoint_id, event_id)
        await audit.record(
            conn,
            actor,
            "webhook_endpoint.send_test",
            project_id=project_id,
            target_type="webhook_endpoint",
            target_id=endpoint,
            after={"eventId": encode("event", event_id), "deliveryId": encode("webhook_delivery", delivery.id)},
        )
    return delivery


async def redeliver(db: Database, actor: Actor, project_id: uuid.UUID, delivery_id: uuid.UUID) -> DeliveryRecord:
    """The delivery's event again, to the same endpoint, as a new delivery due now."""
    async with db.raw(project_id=project_id) as conn:
        original = await conn.fetchrow(
            "SELECT endpoint_id, event_id FROM webhook_deliveries WHERE id = $1 AND project_id = $2",
            delivery_id,
            project_id,
        )
        if original is None:
            raise NotFound("webhook delivery not found", field="id")
        await _require_enabled(conn, project_id, original["endpoint_id"])
        delivery = await _new_delivery(conn, project_id, original["endpoint_id"], original["event_id"])
        await audit.record(
            conn,
            actor,
            "webhook_delivery.redeliver",
            project_id=project_id,
            target_type="webhook_delivery",
            target_id=encode("webhook_delivery", delivery_id),
            after={"deliveryId": encode("webhook_delivery", delivery.id)},
        )
    return delivery
