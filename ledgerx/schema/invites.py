"""GraphQL types of invitations. The token never appears in any of them: it travels only by mail."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

import strawberry

from ledgerx import ids
from ledgerx.dataloaders import tenancy as loaders
from ledgerx.domain.tenancy import invites as domain
from ledgerx.domain.tenancy.records import InviteRecord
from ledgerx.schema.identity import UserType
from ledgerx.schema.info import Info
from ledgerx.schema.tenancy import MemberType, ProjectType, Role


@strawberry.enum
class InviteStatus(enum.Enum):
    PENDING = "PENDING"
    ACCEPTED = "ACCEPTED"
    REVOKED = "REVOKED"
    EXPIRED = "EXPIRED"


async def _user(info: Info, user_id: uuid.UUID | None) -> UserType | None:
    if user_id is None:
        return None
    u = await loaders.users(info.context).load(user_id)
    return UserType.of(u) if u is not None else None


@strawberry.type(name="Invite")
class InviteType:
    id: strawberry.ID
    project_id: strawberry.ID
    email: str
    role: Role
    status: InviteStatus
    resend_count: int
    created_at: dt.datetime
    expires_at: dt.datetime
    last_sent_at: dt.datetime | None
    accepted_at: dt.datetime | None
    revoked_at: dt.datetime | None
    invited_by_uuid: strawberry.Private[Any] = None
    accepted_by_uuid: strawberry.Private[Any] = None

    @strawberry.field
    async def invited_by(self, info: Info) -> UserType | None:
        return await _user(info, self.invited_by_uuid)

    @strawberry.field
    async def accepted_by(self, info: Info) -> UserType | None:
        return await _user(info, self.accepted_by_uuid)

    @classmethod
    def of(cls, inv: InviteRecord, now: dt.datetime) -> InviteType:
        return cls(
            id=strawberry.ID(ids.encode("invite", inv.id)),
            project_id=strawberry.ID(ids.encode("project", inv.project_id)),
            email=inv.email,
            role=Role(inv.role),
            status=InviteStatus(domain.status(inv, now)),
            resend_count=inv.resend_count,
            created_at=inv.created_at,
            expires_at=inv.expires_at,
            last_sent_at=inv.last_sent_at,
            accepted_at=inv.accepted_at,
            revoked_at=inv.revoked_at,
            invited_by_uuid=inv.invited_by,
            accepted_by_uuid=inv.accepted_by,
        )


@strawberry.type
class InvitePreview:
    """What the holder of an invitation link sees before signing in; nothing else is told."""

    project_name: str
    role: Role
    inviter_name: str | None
    expires_at: dt.datetime

    @classmethod
    def of(cls, p: domain.InvitePreview) -> InvitePreview:
        return cls(project_name=p.project_name, role=Role(p.role), inviter_name=p.inviter_name, expires_at=p.expires_at)


@strawberry.type
class AcceptInvitePayload:
    invite: InviteType
    member: MemberType
    project_uuid: strawberry.Private[Any] = None

    @strawberry.field
    async def project(self, info: Info) -> ProjectType:
        p = await loaders.projects_by_id(info.context).load(self.project_uuid)
        assert p is not None  # the caller is a member now, so the project is visible
        return ProjectType.of(p, self.member.role.value)


@strawberry.input
class CreateInviteInput:
    project_id: strawberry.ID
    email: str
    role: Role
