"""The transactional outbox: `emit` writes an event, and one delivery per endpoint that wants it,
in the caller's database transaction; `emit_many` a `Batch` of events in one statement, and `ctes`
folds that statement into a caller's own (the ledger's batch write).

So an event exists exactly when the change it describes commits: a rolled-back change sends
nothing, and a crash after the commit loses nothing (the delivery worker finds the rows). A project
with no enabled endpoint subscribed to the type gets no row at all (nothing would ever read it).

The event's `data` uses the field names of the GraphQL type it describes; the body a receiver gets
is `{"id": "evt_…", "type": …, "createdAt": …, "projectId": "prj_…", "data": {…}}` (delivery.py).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx import jsonenc
from ledgerx.db.engine import driver
from ledgerx.domain.webhooks import catalog
from ledgerx.ids import uuid7


def ctes(first: int) -> str:
    """The WITH items that write a batch of events (`Batch.args()`, parameters $first..$first+3)
    and one delivery per enabled endpoint of the event's project subscribed to its type; for
    `emit_many`, or folded into a larger statement (the ledger's batch write) so that events cost
    no round trip of their own. An empty batch reads nothing.

    A delivery's id is derived from its event's UUIDv7 (same time prefix, so it sorts by creation
    like every id) and a hash of (event, endpoint) for the random part (variant bits 10)."""
    a, b, c, d = first, first + 1, first + 2, first + 3
    return f"""wh_in AS (
  SELECT * FROM unnest(${a}::uuid[], ${b}::uuid[], ${c}::text[], ${d}::text[]) AS x(id, project_id, type, payload)
), wh_eps AS (
  SELECT id, project_id, events FROM webhook_endpoints
   WHERE project_id IN (SELECT project_id FROM wh_in) AND enabled AND deleted_at IS NULL
), wh_ev AS (
  INSERT INTO webhook_outbox (id, project_id, type, payload)
  SELECT x.id, x.project_id, x.type, x.payload::jsonb FROM wh_in x
   WHERE EXISTS (SELECT 1 FROM wh_eps p WHERE p.project_id = x.project_id AND p.events && ARRAY[x.type, '*'])
  RETURNING id, project_id, type
), wh_dl AS (
  INSERT INTO webhook_deliveries (id, project_id, endpoint_id, event_id)
  SELECT (left(ev.id::text, 19) || '8' || substr(m.h, 1, 3) || '-' || substr(m.h, 4, 12))::uuid, ev.project_id,
         p.id, ev.id
    FROM wh_ev ev JOIN wh_eps p ON p.project_id = ev.project_id AND p.events && ARRAY[ev.type, '*']
   CROSS JOIN LATERAL (SELECT md5(ev.id::text || p.id::text) AS h) m
  RETURNING event_id
)"""  # noqa: S608 (only parameter numbers are interpolated)


_EMIT_MANY = f"WITH {ctes(1)}\nSELECT DISTINCT event_id FROM wh_dl"


@dataclasses.dataclass(slots=True)
class Batch:
    """Events to write together, in order; `args()` are the parameters of `ctes`."""

    ids: list[uuid.UUID] = dataclasses.field(default_factory=list)
    projects: list[uuid.UUID] = dataclasses.field(default_factory=list)
    types: list[str] = dataclasses.field(default_factory=list)
    payloads: list[str] = dataclasses.field(default_factory=list)

    def add(self, project_id: uuid.UUID, event_type: str, data: Mapping[str, Any]) -> uuid.UUID:
        event_id = uuid7()
        self.ids.append(event_id)
        self.projects.append(project_id)
        self.types.append(catalog.check_type(event_type))
        self.payloads.append(jsonenc.dumps(dict(data)))
        return event_id

    def __len__(self) -> int:
        return len(self.ids)

    def args(self) -> list[list[Any]]:
        return [self.ids, self.projects, self.types, self.payloads]


def wants(subscribed: Iterable[str] | None, event_type: str) -> bool:
    """Whether endpoints subscribed to `subscribed` (their types together) want `event_type`:
    lets a hot path skip building `data` that nobody would receive."""
    return subscribed is not None and any(t in (event_type, catalog.ALL) for t in subscribed)


async def connection(tx: AsyncSession | asyncpg.Connection) -> asyncpg.Connection:
    return await driver(tx) if isinstance(tx, AsyncSession) else tx


async def emit_many(tx: AsyncSession | asyncpg.Connection, batch: Batch) -> set[uuid.UUID]:
    """Queue every event of `batch` for its project's endpoints, in `tx`'s transaction, in one
    statement (none for an empty batch). Returns the ids of the events some endpoint wanted."""
    if not batch:
        return set()
    conn = await connection(tx)
    return {r["event_id"] for r in await conn.fetch(_EMIT_MANY, *batch.args())}


async def emit(
    tx: AsyncSession | asyncpg.Connection, project_id: uuid.UUID, event_type: str, data: Mapping[str, Any]
) -> uuid.UUID | None:
    """Queue `event_type` with `data` for the project's endpoints, in `tx`'s transaction (an ORM
    session or an asyncpg connection scoped to the project, or the system path). Returns the
    event id, or None when no endpoint wants the type."""
    batch = Batch()
    event_id = batch.add(project_id, event_type, data)
    return event_id if event_id in await emit_many(tx, batch) else None
