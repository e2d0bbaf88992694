"""Members and roles. Exactly one OWNER at all times: it changes only through `transfer_ownership`.

`add_member` adds only accounts whose address is verified. Any other address (no account, or an
account nobody proved holds the address: someone may have signed up with a colleague's address
before the colleague did) gets an invitation instead, mailed to the address, and the call answers
INVITATION_SENT with the invitation's id; unknown and unverified addresses get the same answer,
so addMember does not tell whether an address has an account.

A member whose role drops below ADMIN, or who leaves or is removed, loses the right to invite:
their open invitations are revoked in the same transaction (invites.revoke_issued_by).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx.db.engine import Database
from ledgerx.db.models import Invite, ProjectMember, User
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.auth.records import UserRecord
from ledgerx.domain.auth.service import normalize_email
from ledgerx.domain.changes import ProjectChanges
from ledgerx.domain.errors import BadInput, Conflict, Forbidden, InvitationSent, NotFound
from ledgerx.domain.records import of
from ledgerx.domain.tenancy.access import RANK, Access
from ledgerx.domain.tenancy.invites import InviteService, revoke_issued_by
from ledgerx.domain.tenancy.records import MemberRecord
from ledgerx.ids import encode, uuid7

ASSIGNABLE = ("ADMIN", "MEMBER", "VIEWER")


def _assignable(role: str) -> str:
    if role not in ASSIGNABLE:
        raise BadInput("role must be ADMIN, MEMBER or VIEWER (ownership moves with transferOwnership)", field="role")
    return role


def _target(user_id: uuid.UUID) -> str:
    return encode("user", user_id)


async def add_member(
    db: Database, actor: Actor, project_id: uuid.UUID, invites: InviteService, *, email: str, role: str
) -> MemberRecord:
    """Add a verified account; otherwise mail an invitation and raise InvitationSent (after commit)."""
    role = _assignable(role)
    address = normalize_email(email)
    member: ProjectMember | None = None
    invite: Invite | None = None
    created = False
    try:
        async with db.transaction(project_id=project_id) as s:
            row = (
                await s.execute(select(User.id, User.email_verified).where(func.lower(User.email) == address))
            ).first()
            if row is not None:
                existing = (
                    await s.execute(
                        select(ProjectMember.id).where(
                            ProjectMember.project_id == project_id, ProjectMember.user_id == row.id
                        )
                    )
                ).scalar()
                if existing is not None:
                    raise Conflict("this user is already a member of the project", field="email")
            if row is not None and row.email_verified:
                member = ProjectMember(id=uuid7(), project_id=project_id, user_id=row.id, role=role)
                s.add(member)
                await s.flush()
                await audit.record(
                    s,
                    actor,
                    "member.add",
                    project_id=project_id,
                    target_type="user",
                    target_id=_target(row.id),
                    after={"role": role},
                )
            else:
                invite, created = await invites.invite_in(s, actor, project_id, address, role)
    except IntegrityError:
        # A concurrent addMember (the membership) or invitation (the open-invitation index) won.
        raise Conflict("this address was added or invited concurrently; reload the members", field="email") from None
    if member is not None:
        return of(MemberRecord, member)
    assert invite is not None
    if created:
        invites.mailer.kick()
    raise InvitationSent(
        "no verified account has this address, so nothing was added: an invitation was mailed to it"
        " instead; it joins the project when its owner accepts"
        if created
        else "no verified account has this address, so nothing was added: an invitation to it is already"
        " open (resendInvite mails a new link)",
        field="email",
        inviteId=encode("invite", invite.id),
        inviteCreated=created,
    )


async def _locked_member(s: AsyncSession, project_id: uuid.UUID, user_id: uuid.UUID) -> ProjectMember:
    m = (
        await s.execute(
            select(ProjectMember)
            .where(ProjectMember.project_id == project_id, ProjectMember.user_id == user_id)
            .with_for_update()
        )
    ).scalar_one_or_none()
    if m is None:
        raise NotFound("no such member in this project", field="userId")
    return m


async def update_role(
    db: Database,
    actor: Actor,
    access: Access,
    project_id: uuid.UUID,
    user_id: uuid.UUID,
    role: str,
    *,
    changes: ProjectChanges,
) -> MemberRecord:
    role = _assignable(role)
    async with db.transaction(project_id=project_id) as s:
        m = await _locked_member(s, project_id, user_id)
        if m.role == "OWNER":
            raise Conflict("the owner's role changes only by transferring ownership", field="userId")
        if access.role == "ADMIN" and m.role == "ADMIN" and m.user_id != actor.id:
            raise Forbidden("only the owner can change another admin's role")
        before = m.role
        m.role = role
        m.updated_at = dt.datetime.now(dt.UTC)
        await s.flush()
        await audit.record(
            s,
            actor,
            "member.update_role",
            project_id=project_id,
            target_type="user",
            target_id=_target(user_id),
            before={"role": before},
            after={"role": role},
        )
        await revoke_issued_by(s, actor, project_id, user_id, role_after=role)
    await changes.access_changed(project_id, "member.update_role", user_id)
    return of(MemberRecord, m)


async def remove_member(
    db: Database,
    actor: Actor,
    access: Access,
    project_id: uuid.UUID,
    user_id: uuid.UUID,
    *,
    changes: ProjectChanges,
) -> None:
    """Admins remove others (an admin removes another admin only as owner); anyone may leave."""
    leaving = actor.type == "user" and actor.id == user_id
    async with db.transaction(project_id=project_id) as s:
        m = await _locked_member(s, project_id, user_id)
        if m.role == "OWNER":
            raise Conflict("the owner cannot be removed; transfer ownership first", field="userId")
        if not leaving and not access.is_platform_admin:
            if access.role is None or RANK[access.role] < RANK["ADMIN"]:
                raise Forbidden("only project admins can remove other members")
            if m.role == "ADMIN" and access.role != "OWNER":
                raise Forbidden("only the owner can remove an admin")
        await s.execute(delete(ProjectMember).where(ProjectMember.id == m.id))
        await audit.record(
            s,
            actor,
            "member.leave" if leaving else "member.remove",
            project_id=project_id,
            target_type="user",
            target_id=_target(user_id),
            before={"role": m.role},
        )
        await revoke_issued_by(s, actor, project_id, user_id, role_after=None)
    await changes.access_changed(project_id, "member.remove", user_id)


async def transfer_ownership(
    db: Database, actor: Actor, project_id: uuid.UUID, new_owner: uuid.UUID, *, changes: ProjectChanges
) -> None:
    """The owner hands the project to another member and becomes ADMIN, in one transaction."""
    assert actor.id is not None
    async with db.transaction(project_id=project_id) as s:
        # Lock both rows in id order so two concurrent transfers cannot deadlock.
        rows = (
            (
                await s.execute(
                    select(ProjectMember)
                    .where(ProjectMember.project_id == project_id, ProjectMember.user_id.in_([actor.id, new_owner]))
                    .order_by(ProjectMember.id)
                    .with_for_update()
                )
            )
            .scalars()
            .all()
        )
        by_user = {m.user_id: m for m in rows}
        current = by_user.get(actor.id)
        if current is None or current.role != "OWNER":
            raise Forbidden("only the owner can transfer ownership")
        target = by_user.get(new_owner)
        if target is None:
            raise NotFound("the new owner must already be a member", field="userId")
        if target.user_id == current.user_id:
            raise BadInput("you already own this project", field="userId")
        now = dt.datetime.now(dt.UTC)
        # Demote first: the one-owner unique index is checked per statement.
        current.role, current.updated_at = "ADMIN", now
        await s.flush()
        previous = target.role
        target.role, target.updated_at = "OWNER", now
        try:
            await s.flush()
        except IntegrityError:
            raise Conflict("ownership changed concurrently; retry") from None
        await audit.record(
            s,
            actor,
            "project.transfer_ownership",
            project_id=project_id,
            target_type="user",
            target_id=_target(new_owner),
            before={"owner": _target(actor.id), "newOwnerRole": previous},
            after={"owner": _target(new_owner), "previousOwnerRole": "ADMIN"},
        )
        # The previous owner stays ADMIN and may still invite, so this revokes nothing today; it
        # keeps transfers on the one rule should the role they land in ever change.
        await revoke_issued_by(s, actor, project_id, actor.id, role_after=current.role)
    await changes.access_changed(project_id, "project.transfer_ownership")


async def get_member(db: Database, project_id: uuid.UUID, user_id: uuid.UUID) -> MemberRecord:
    async with db.transaction(project_id=project_id) as s:
        m = (
            await s.execute(
                select(ProjectMember).where(ProjectMember.project_id == project_id, ProjectMember.user_id == user_id)
            )
        ).scalar_one_or_none()
    if m is None:
        raise NotFound("no such member in this project", field="userId")
    return of(MemberRecord, m)


async def members_of(db: Database, project_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[MemberRecord]]:
    """All members of several projects in one query (the members DataLoader)."""
    out: dict[uuid.UUID, list[MemberRecord]] = {p: [] for p in project_ids}
    async with db.transaction(project_ids=project_ids) as s:
        rows = (
            (
                await s.execute(
                    select(ProjectMember).where(ProjectMember.project_id.in_(project_ids)).order_by(ProjectMember.id)
                )
            )
            .scalars()
            .all()
        )
    for m in rows:
        out[m.project_id].append(of(MemberRecord, m))
    return out


async def users_by_id(db: Database, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, UserRecord]:
    async with db.read() as s:
        rows = (await s.execute(select(User).where(User.id.in_(user_ids)))).scalars().all()
    return {u.id: of(UserRecord, u) for u in rows}
