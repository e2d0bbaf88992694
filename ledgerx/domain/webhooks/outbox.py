"""The transactional outbox: `emit` writes an event, and one delivery per endpoint that wants it,
in the caller's database transaction.

So an event exists exactly when the change it describes commits: a rolled-back change sends
nothing, and a crash after the commit loses nothing (the delivery worker finds the rows). A project
with no enabled endpoint subscribed to the type gets no row at all (nothing would ever read it).

The event's `data` uses the field names of the GraphQL type it describes; the body a receiver gets
is `{"id": "evt_…", "type": …, "createdAt": …, "projectId": "prj_…", "data": {…}}` (delivery.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import jsonenc
from ledgerx.db.engine import driver
from ledgerx.domain.webhooks import catalog
from ledgerx.ids import uuid7

# One round trip. A delivery's id is derived from its event's UUIDv7 (same time prefix, so it sorts
# by creation like every id) and a hash of (event, endpoint) for the random part (variant bits 10).
_EMIT = """
WITH eps AS (
  SELECT id FROM webhook_endpoints
   WHERE project_id = $2 AND enabled AND deleted_at IS NULL AND events && ARRAY[$3::text, '*']
), ev AS (
  INSERT INTO webhook_outbox (id, project_id, type, payload)
  SELECT $1, $2, $3, $4::jsonb WHERE EXISTS (SELECT 1 FROM eps)
  RETURNING id
)
INSERT INTO webhook_deliveries (id, project_id, endpoint_id, event_id)
SELECT (left(ev.id::text, 19) || '8' || substr(m.h, 1, 3) || '-' || substr(m.h, 4, 12))::uuid, $2, eps.id, ev.id
  FROM eps CROSS JOIN ev CROSS JOIN LATERAL (SELECT md5(ev.id::text || eps.id::text) AS h) m
RETURNING id
"""


async def connection(tx: AsyncSession | asyncpg.Connection) -> asyncpg.Connection:
    return await driver(tx) if isinstance(tx, AsyncSession) else tx


async def emit(
    tx: AsyncSession | asyncpg.Connection, project_id: uuid.UUID, event_type: str, data: Mapping[str, Any]
) -> uuid.UUID | None:
    """Queue `event_type` with `data` for the project's endpoints, in `tx`'s transaction (an ORM
    session or an asyncpg connection scoped to the project, or the system path). Returns the
    event id, or None when no endpoint wants the type."""
    catalog.check_type(event_type)
    event_id = uuid7()
    conn = await connection(tx)
    rows = await conn.fetch(_EMIT, event_id, project_id, event_type, jsonenc.dumps(dict(data)))
    return event_id if rows else None
