"""Platform-admin operations: suspension (plan overrides and webhook replay join later)."""

from __future__ import annotations

import strawberry

from ledgerx import ids
from ledgerx.domain.tenancy import projects
from ledgerx.resolvers.guards import require_platform_admin
from ledgerx.schema.info import Info
from ledgerx.schema.tenancy import ProjectType, SuspendProjectInput


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Platform admins: block every mutation of a project's members and keys.")
    async def suspend_project(self, info: Info, input: SuspendProjectInput) -> ProjectType:
        await require_platform_admin(info)
        pid = ids.decode("project", input.project_id, "projectId")
        services = info.context.services
        p = await projects.set_suspended(
            services.db, info.context.actor(), pid, suspended=True, reason=input.reason, changes=services.changes
        )
        return ProjectType.of(p)

    @strawberry.mutation(description="Platform admins: lift a suspension.")
    async def reactivate_project(self, info: Info, id: strawberry.ID) -> ProjectType:
        await require_platform_admin(info)
        pid = ids.decode("project", id, "id")
        services = info.context.services
        p = await projects.set_suspended(
            services.db, info.context.actor(), pid, suspended=False, changes=services.changes
        )
        return ProjectType.of(p)
