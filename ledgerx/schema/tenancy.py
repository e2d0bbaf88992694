"""GraphQL types of tenancy: projects, members, roles, the audit log."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, cast

import strawberry
from strawberry.scalars import JSON

from ledgerx import ids
from ledgerx.dataloaders import tenancy as loaders
from ledgerx.domain.audit import EntryRecord
from ledgerx.domain.tenancy.records import MemberRecord, ProjectRecord
from ledgerx.schema import notifications
from ledgerx.schema.identity import UserType
from ledgerx.schema.info import Info
from ledgerx.schema.notifications import BillingDetails, NotificationSettings


@strawberry.enum
class Role(enum.Enum):
    OWNER = "OWNER"
    ADMIN = "ADMIN"
    MEMBER = "MEMBER"
    VIEWER = "VIEWER"


@strawberry.enum
class ProjectStatus(enum.Enum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"


@strawberry.type(name="Member")
class MemberType:
    id: strawberry.ID
    role: Role
    joined_at: dt.datetime
    user_uuid: strawberry.Private[Any]

    @strawberry.field
    async def user(self, info: Info) -> UserType:
        u = await loaders.users(info.context).load(self.user_uuid)
        assert u is not None  # membership rows reference users (FK, cascade)
        return UserType.of(u)

    @classmethod
    def of(cls, m: MemberRecord) -> MemberType:
        return cls(
            id=strawberry.ID(ids.encode("member", m.id)), role=Role(m.role), joined_at=m.created_at, user_uuid=m.user_id
        )


@strawberry.type(name="Project")
class ProjectType:
    id: strawberry.ID
    name: str
    external_key: str | None
    status: ProjectStatus
    suspended_reason: str | None
    test_mode: bool
    created_at: dt.datetime
    viewer_role: Role | None = strawberry.field(description="The caller's role here (null for API keys and admins).")
    uuid: strawberry.Private[Any] = None

    @strawberry.field
    async def members(self, info: Info) -> list[MemberType]:
        return [MemberType.of(m) for m in await loaders.members_by_project(info.context).load(self.uuid)]

    # Guarded on their own (notifications.policy.READ: members, or API keys with billing:read).
    @strawberry.field
    async def billing_details(self, info: Info) -> BillingDetails | None:
        return await notifications.project_billing_details(info, self.uuid)

    @strawberry.field
    async def notification_settings(self, info: Info) -> NotificationSettings | None:
        return await notifications.project_notification_settings(info, self.uuid)

    @classmethod
    def of(cls, p: ProjectRecord, role: str | None = None) -> ProjectType:
        return cls(
            id=strawberry.ID(ids.encode("project", p.id)),
            name=p.name,
            external_key=p.external_key,
            status=ProjectStatus(p.status),
            suspended_reason=p.suspended_reason,
            test_mode=p.test_mode,
            created_at=p.created_at,
            viewer_role=Role(role) if role else None,
            uuid=p.id,
        )


@strawberry.type(name="AuditEntry")
class AuditEntryType:
    id: strawberry.ID
    action: str
    actor_type: str
    actor_id: str | None
    target_type: str | None
    target_id: str | None
    before: JSON | None
    after: JSON | None
    request_id: str | None
    ip: str | None
    at: dt.datetime

    @classmethod
    def of(cls, a: EntryRecord) -> AuditEntryType:
        actor_kind = {"user": "user", "api_key": "api_key"}.get(a.actor_type)
        return cls(
            id=strawberry.ID(ids.encode("audit", a.id)),
            action=a.action,
            actor_type=a.actor_type.upper(),
            actor_id=ids.encode(actor_kind, a.actor_id) if actor_kind and a.actor_id else None,
            target_type=a.target_type,
            target_id=a.target_id,
            before=cast(JSON, a.before),
            after=cast(JSON, a.after),
            request_id=a.request_id,
            ip=a.ip,
            at=a.at,
        )


@strawberry.input
class CreateProjectInput:
    name: str
    external_key: str | None = None
    test_mode: bool = strawberry.field(default=False, description="A sandbox project with its own test clock.")


@strawberry.input
class UpdateProjectInput:
    project_id: strawberry.ID
    name: str | None = None
    external_key: str | None = None


@strawberry.input
class AddMemberInput:
    project_id: strawberry.ID
    email: str
    role: Role


@strawberry.input
class UpdateMemberRoleInput:
    project_id: strawberry.ID
    user_id: strawberry.ID
    role: Role


@strawberry.input
class RemoveMemberInput:
    project_id: strawberry.ID
    user_id: strawberry.ID


@strawberry.input
class TransferOwnershipInput:
    project_id: strawberry.ID
    user_id: strawberry.ID


@strawberry.input
class SuspendProjectInput:
    project_id: strawberry.ID
    reason: str
