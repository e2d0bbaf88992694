"""A second app instance for tests: its own caches, the same database and Redis, following the
project-change announcements as the app's lifespan makes every instance do."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from ledgerx.domain import topics
from ledgerx.services import Services
from ledgerx.settings import Settings


@contextlib.asynccontextmanager
async def following_instance(settings: Settings) -> AsyncIterator[Services]:
    """Yields once the instance hears both kinds of announcement (plan and access changes)."""
    other = Services.build(settings)
    follower = asyncio.create_task(other.changes.follow())
    try:
        deadline = time.monotonic() + 5
        while (
            topics.PLAN_CHANGES not in other.events.active_topics()
            or topics.MEMBERS_PATTERN not in other.events.active_patterns()
        ):
            assert time.monotonic() < deadline, "the second instance never subscribed to project changes"
            await asyncio.sleep(0.01)
        yield other
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await other.close()
