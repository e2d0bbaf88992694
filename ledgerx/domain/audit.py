"""The audit log: one row per state change, written in the caller's transaction."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx.db.models import AuditLog
from ledgerx.domain.actor import Actor
from ledgerx.ids import uuid7


async def record(
    session: AsyncSession,
    actor: Actor,
    action: str,
    *,
    project_id: uuid.UUID | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> None:
    await session.execute(
        insert(AuditLog).values(
            id=uuid7(),
            project_id=project_id,
            actor_type=actor.type,
            actor_id=actor.id,
            action=action,
            target_type=target_type,
            target_id=target_id,
            before=before,
            after=after,
            request_id=actor.meta.request_id,
            ip=actor.meta.ip,
        )
    )
