"""Invitations: createInvite, resendInvite, revokeInvite, acceptInvite, peekInvite, invites."""

from __future__ import annotations

import uuid

import strawberry

from ledgerx import ids
from ledgerx.domain.errors import NotFound
from ledgerx.domain.pagination import decode_cursor, page_size
from ledgerx.domain.tenancy.access import Access, Need
from ledgerx.resolvers.guards import access_by_uuid, project_access
from ledgerx.schema.info import Info
from ledgerx.schema.invites import AcceptInvitePayload, CreateInviteInput, InvitePreview, InviteType
from ledgerx.schema.pagination import Connection, connection
from ledgerx.schema.tenancy import MemberType


async def _invite_access(info: Info, invite_id: str) -> tuple[Access, uuid.UUID]:
    """Admin access to the invitation's project; another project's invitation reads as NOT_FOUND."""
    invite_uuid = ids.decode("invite", invite_id, "id")
    info.context.require_principal()
    project_id = await info.context.services.invites.project_of(invite_uuid)
    try:
        access = await access_by_uuid(info, project_id, Need.ADMIN, write=True)
    except NotFound:
        raise NotFound("invitation not found", field="id") from None
    return access, invite_uuid


@strawberry.type
class Query:
    @strawberry.field(description="What an invitation link offers (no sign-in needed): project, role, inviter, expiry.")
    async def peek_invite(self, info: Info, token: str) -> InvitePreview:
        return InvitePreview.of(await info.context.services.invites.peek(token))

    @strawberry.field(description="A project's invitations, newest first (project admins).")
    async def invites(
        self, info: Info, project_id: strawberry.ID, first: int | None = 20, after: str | None = None
    ) -> Connection[InviteType]:
        access = await project_access(info, project_id, Need.ADMIN, write=False)
        limit = page_size(first)
        svc = info.context.services.invites
        rows = await svc.list_page(access.project_id, limit=limit, before=decode_cursor(after))
        now = svc.clock()
        return connection(rows, limit, lambda r: r.id, lambda r: InviteType.of(r, now))


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Invite an email address into a project (project admins); mails the link.")
    async def create_invite(self, info: Info, input: CreateInviteInput) -> InviteType:
        access = await project_access(info, input.project_id, Need.ADMIN, write=True)
        svc = info.context.services.invites
        inv = await svc.create(info.context.actor(), access.project_id, email=input.email, role=input.role.value)
        return InviteType.of(inv, svc.clock())

    @strawberry.mutation(description="Mail a new link (the previous one stops working); limited by a cool-down.")
    async def resend_invite(self, info: Info, id: strawberry.ID) -> InviteType:
        access, invite_id = await _invite_access(info, id)
        svc = info.context.services.invites
        inv = await svc.resend(info.context.actor(), access.project_id, invite_id)
        return InviteType.of(inv, svc.clock())

    @strawberry.mutation(description="Withdraw an invitation (project admins); its link stops working.")
    async def revoke_invite(self, info: Info, id: strawberry.ID) -> InviteType:
        access, invite_id = await _invite_access(info, id)
        svc = info.context.services.invites
        inv = await svc.revoke(info.context.actor(), access.project_id, invite_id)
        return InviteType.of(inv, svc.clock())

    @strawberry.mutation(description="Join the project as the signed-in user the invitation was sent to.")
    async def accept_invite(self, info: Info, token: str) -> AcceptInvitePayload:
        ctx = info.context
        ctx.require_user()
        svc = ctx.services.invites
        done = await svc.accept(ctx.actor(), token)
        return AcceptInvitePayload(
            invite=InviteType.of(done.invite, svc.clock()),
            member=MemberType.of(done.member),
            project_uuid=done.member.project_id,
        )
