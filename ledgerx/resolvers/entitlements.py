"""Entitlement fields: entitlement, entitlements (members, API keys with `entitlements:read`) and
overrideEntitlement (platform admins). Checks are answered from the instance's cache
(domain/entitlements/checks.py)."""

from __future__ import annotations

import strawberry

from ledgerx import ids
from ledgerx.domain.entitlements import overrides, policy
from ledgerx.domain.tenancy import projects
from ledgerx.resolvers.guards import project_access, require_platform_admin
from ledgerx.schema.entitlements import EntitlementType, OverrideEntitlementInput
from ledgerx.schema.info import Info


@strawberry.type
class Query:
    @strawberry.field(description="What the project may use of one feature now (unknown features: no access).")
    async def entitlement(self, info: Info, project_id: strawberry.ID, feature_key: str) -> EntitlementType:
        access = await project_access(info, project_id, policy.READ)
        return EntitlementType.of(await info.context.services.entitlements.check(access.project_id, feature_key))

    @strawberry.field(description="Every feature the project's plan and overrides name, by key.")
    async def entitlements(self, info: Info, project_id: strawberry.ID) -> list[EntitlementType]:
        access = await project_access(info, project_id, policy.READ)
        return [EntitlementType.of(e) for e in await info.context.services.entitlements.all(access.project_id)]


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description="Platform admins: override one feature of a project (enabled, limit, config) until expiresAt;"
        " with none of them, clear the override."
    )
    async def override_entitlement(self, info: Info, input: OverrideEntitlementInput) -> EntitlementType:
        await require_platform_admin(info)
        project_id = ids.decode("project", input.project_id, "projectId")
        svc = info.context.services
        await projects.get_project(svc.db, project_id)
        change = overrides.Change(
            enabled=input.enabled,
            limit=int(input.limit) if input.limit is not None else None,
            config=input.config,
            expires_at=input.expires_at,
        )
        await overrides.override_entitlement(svc.payments, info.context.actor(), project_id, input.feature_key, change)
        return EntitlementType.of(await svc.entitlements.check(project_id, input.feature_key))
