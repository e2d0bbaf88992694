"""Project changes other parts of every instance must hear about: access and plan.

Some answers are cached per instance because they are asked on every request: a member's access
(tenancy/access_cache.py), a project's rate limit (limits.py), its quotas (usage/quotas.py), its
effective plan (payments/service.py) and its entitlement checks (entitlements/checks.py). The domain
function that changes what they derive from calls `access_changed` or `plan_changed` once its
transaction committed (never before: an announcement must not tell of something rolled back). That
forgets the project's entries on this instance at once, and publishes the change on the event bus
(topics.members_changed / topics.plan_changed); every instance runs `follow`, which forgets them
there too. Live streams of the project re-check their access on the same members announcement.

Delivery is at-most-once (Redis pub/sub): each cache's short TTL bounds what a lost announcement
or a change made outside the domain (SQL, an operator script) leaves behind.

The caches register what to call (`forgets_access`, `forgets_plans`) when services are built, so
this module knows none of them and every domain can depend on it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from ledgerx.domain import topics
from ledgerx.domain.events import EventBus, Subscription

log = logging.getLogger("ledgerx.changes")

# Forget what is cached about one project's access.
ForgetAccess = Callable[[uuid.UUID], None]
# Forget what is cached about a project's plan; None: about every project's.
ForgetPlan = Callable[[uuid.UUID | None], None]


class ProjectChanges:
    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self._access: list[ForgetAccess] = []
        self._plans: list[ForgetPlan] = []

    def forgets_access(self, *forget: ForgetAccess) -> None:
        self._access.extend(forget)

    def forgets_plans(self, *forget: ForgetPlan) -> None:
        self._plans.extend(forget)

    # -- announcing (after commit) ----------------------------------------------------------------

    async def access_changed(self, project_id: uuid.UUID, change: str, user_id: uuid.UUID | None = None) -> None:
        """After a change that can narrow access to the project committed (`change`: its audit
        action). Never raises: the change is committed."""
        self._forget_access(project_id)
        await self.bus.publish(*topics.members_changed(project_id, user_id=user_id, change=change))

    async def plan_changed(self, project_id: uuid.UUID | None, change: str) -> None:
        """After a change of what a project's plan allows committed (a subscription, an override,
        a Stripe event); `project_id` None: a plan of the catalog changed, so every project's.
        Never raises: the change is committed."""
        self._forget_plan(project_id)
        await self.bus.publish(*topics.plan_changed(project_id, change=change))

    async def limit_reached(self, project_id: uuid.UUID) -> None:
        """After a commit that brought a usage meter to its limit (usage/quotas.py): the project's
        METERED entitlements stop granting. Announced as a plan change: a limit reached is rare
        (once per meter and period) and one announcement kind keeps one path to every cache."""
        await self.plan_changed(project_id, "usage.limit_reached")

    # -- hearing (every instance) ----------------------------------------------------------------

    async def follow(self, retry_s: float = 1.0) -> None:
        """Forget what other instances announce (runs for the life of the app; reconnects after
        Redis errors, the caches' TTLs covering the gap)."""
        await asyncio.gather(
            self._follow(topics.MEMBERS_PATTERN, True, self._heard_access, retry_s),
            self._follow(topics.PLAN_CHANGES, False, self._heard_plan, retry_s),
        )

    async def _follow(self, topic: str, pattern: bool, heard: Callable[[topics.Event], None], retry_s: float) -> None:
        while True:
            try:
                async with self.bus.subscribe(topic, pattern=pattern) as announcements:
                    await _each(announcements, heard)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("project changes: subscription to %s lost; retrying", topic, exc_info=True)
            await asyncio.sleep(retry_s)

    def _heard_access(self, event: topics.Event) -> None:
        project_id = topics.project_of(event)
        if project_id is not None:
            self._forget_access(project_id)

    def _heard_plan(self, event: topics.Event) -> None:
        project_id = topics.project_of(event)
        if project_id is not None or event.get("projectId") is None:
            self._forget_plan(project_id)

    def _forget_access(self, project_id: uuid.UUID) -> None:
        for forget in self._access:
            forget(project_id)

    def _forget_plan(self, project_id: uuid.UUID | None) -> None:
        for forget in self._plans:
            forget(project_id)


async def _each(announcements: Subscription, heard: Callable[[topics.Event], None]) -> None:
    async for event in announcements:
        heard(event)
