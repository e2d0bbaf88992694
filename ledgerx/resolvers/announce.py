"""After-commit announcements resolvers make for changes other instances must hear about at once."""

from __future__ import annotations

import uuid

from ledgerx.domain.analytics import topics
from ledgerx.schema.info import Info


async def access_changed(info: Info, project_id: uuid.UUID, change: str, user_id: uuid.UUID | None = None) -> None:
    """Live streams of the project re-check their access now, on every instance (Redis pub/sub),
    instead of at their next periodic re-check, and this instance forgets the access it cached
    for the project (domain/tenancy/access_cache.py). Publishing never raises."""
    info.context.services.access_cache.forget_project(project_id)
    await info.context.services.events.publish(*topics.members_changed(project_id, user_id=user_id, change=change))
