"""Projects, members and the audit log."""

from __future__ import annotations

import strawberry

from ledgerx import ids
from ledgerx.domain import audit
from ledgerx.domain.errors import NotFound
from ledgerx.domain.pagination import decode_cursor, page_size
from ledgerx.domain.tenancy import members, projects
from ledgerx.domain.tenancy.access import Need
from ledgerx.resolvers.guards import access_by_uuid, project_access
from ledgerx.schema.info import Info
from ledgerx.schema.pagination import Connection, connection
from ledgerx.schema.tenancy import (
    AddMemberInput,
    AuditEntryType,
    CreateProjectInput,
    MemberType,
    ProjectType,
    RemoveMemberInput,
    TransferOwnershipInput,
    UpdateMemberRoleInput,
    UpdateProjectInput,
)


@strawberry.type
class Query:
    @strawberry.field
    async def project(self, info: Info, id: strawberry.ID) -> ProjectType:
        access = await project_access(info, id, Need.MEMBER, write=False, field="id")
        return ProjectType.of(await projects.get_project(info.context.services.db, access.project_id), access.role)

    @strawberry.field(description="The caller's projects, oldest first (an API key sees its own project).")
    async def projects(self, info: Info, first: int | None = 20, after: str | None = None) -> Connection[ProjectType]:
        ctx = info.context
        principal = ctx.require_principal()
        limit = page_size(first)
        cursor = decode_cursor(after)
        if principal.kind == "api_key":
            assert principal.project_id is not None
            access = await access_by_uuid(info, principal.project_id, Need.MEMBER, write=False)
            p = await projects.get_project(ctx.services.db, access.project_id)
            rows = [(p, None)] if cursor is None or p.id > cursor else []
            return connection(rows, limit, lambda r: r[0].id, lambda r: ProjectType.of(r[0], r[1]))
        assert principal.user_id is not None
        found = await projects.list_for_user(ctx.services.db, principal.user_id, limit=limit, after=cursor)
        return connection(found, limit, lambda r: r[0].id, lambda r: ProjectType.of(r[0], r[1]))

    @strawberry.field
    async def project_by_external_key(self, info: Info, external_key: str) -> ProjectType:
        info.context.require_principal()
        project_id = await projects.find_by_external_key(info.context.services.db, external_key)
        if project_id is None:
            raise NotFound("project not found")
        access = await access_by_uuid(info, project_id, Need.MEMBER, write=False)
        return ProjectType.of(await projects.get_project(info.context.services.db, project_id), access.role)

    @strawberry.field(description="The project's audit log, newest first (project admins).")
    async def audit_log(
        self, info: Info, project_id: strawberry.ID, first: int | None = 50, after: str | None = None
    ) -> Connection[AuditEntryType]:
        access = await project_access(info, project_id, Need.ADMIN, write=False)
        limit = page_size(first)
        rows = await audit.list_entries(
            info.context.services.reads, access.project_id, limit=limit, before=decode_cursor(after)
        )
        return connection(rows, limit, lambda a: a.id, AuditEntryType.of)


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Create a project; the caller becomes its OWNER.")
    async def create_project(self, info: Info, input: CreateProjectInput) -> ProjectType:
        ctx = info.context
        ctx.require_user()
        p = await projects.create_project(
            ctx.services.db, ctx.actor(), name=input.name, external_key=input.external_key, test_mode=input.test_mode
        )
        return ProjectType.of(p, "OWNER")

    @strawberry.mutation
    async def update_project(self, info: Info, input: UpdateProjectInput) -> ProjectType:
        access = await project_access(info, input.project_id, Need.ADMIN, write=True)
        p = await projects.update_project(
            info.context.services.db,
            info.context.actor(),
            access.project_id,
            name=input.name,
            external_key=input.external_key,
        )
        return ProjectType.of(p, access.role)

    @strawberry.mutation(
        description=(
            "Add the account of a verified email address. Any other address gets an invitation instead: the"
            " answer is then the error INVITATION_SENT with extensions.inviteId (nothing was added yet)."
        )
    )
    async def add_member(self, info: Info, input: AddMemberInput) -> MemberType:
        access = await project_access(info, input.project_id, Need.ADMIN, write=True)
        services = info.context.services
        m = await members.add_member(
            services.db,
            info.context.actor(),
            access.project_id,
            services.invites,
            email=input.email,
            role=input.role.value,
        )
        return MemberType.of(m)

    @strawberry.mutation
    async def update_member_role(self, info: Info, input: UpdateMemberRoleInput) -> MemberType:
        access = await project_access(info, input.project_id, Need.ADMIN, write=True)
        user_id = ids.decode("user", input.user_id, "userId")
        services = info.context.services
        m = await members.update_role(
            services.db,
            info.context.actor(),
            access,
            access.project_id,
            user_id,
            input.role.value,
            changes=services.changes,
        )
        return MemberType.of(m)

    @strawberry.mutation(description="Remove a member; any member may remove themselves (leave).")
    async def remove_member(self, info: Info, input: RemoveMemberInput) -> bool:
        access = await project_access(info, input.project_id, Need.MEMBER, write=True)
        user_id = ids.decode("user", input.user_id, "userId")
        services = info.context.services
        await members.remove_member(
            services.db, info.context.actor(), access, access.project_id, user_id, changes=services.changes
        )
        return True

    @strawberry.mutation(description="The owner hands the project to another member and becomes ADMIN.")
    async def transfer_ownership(self, info: Info, input: TransferOwnershipInput) -> ProjectType:
        access = await project_access(info, input.project_id, Need.OWNER, write=True)
        ctx = info.context
        await members.transfer_ownership(
            ctx.services.db,
            ctx.actor(),
            access.project_id,
            ids.decode("user", input.user_id, "userId"),
            changes=ctx.services.changes,
        )
        return ProjectType.of(await projects.get_project(ctx.services.db, access.project_id), "ADMIN")
