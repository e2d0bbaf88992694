"""The audit log: one row per state change, written in the caller's transaction."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx.db.engine import Database
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


async def list_entries(db: Database, project_id: uuid.UUID, *, limit: int, before: uuid.UUID | None) -> list[AuditLog]:
    """A project's audit log, newest first; `limit + 1` rows so the caller knows more exist."""
    async with db.transaction(project_id=project_id) as s:
        q = select(AuditLog).where(AuditLog.project_id == project_id).order_by(AuditLog.id.desc()).limit(limit + 1)
        if before is not None:
            q = q.where(AuditLog.id < before)
        return list((await s.execute(q)).scalars().all())
