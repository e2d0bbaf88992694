"""Invitations: invite an email address into a project with a role; the invitee accepts by token.

Rules:
- Project admins invite with ADMIN, MEMBER or VIEWER (ownership moves only by transfer). An
  address that already belongs to a member is a CONFLICT, and so is a second open invitation for
  the same address (resend the open one instead); an expired one is closed and replaced.
- The token is random (`secrets.token_urlsafe(32)`), stored only as its SHA-256, and shown only in
  the mailed link. `resendInvite` issues a new token (the old one dies at once), restarts the
  expiry, counts resends and is refused (RATE_LIMITED with retryAfter) within a cool-down.
- `peekInvite` needs no sign-in and tells only the project's name, the role, the inviter's name
  and the expiry. Unknown, expired, revoked and accepted tokens all read as NOT_FOUND.
- `acceptInvite` takes a signed-in user whose email matches the invitation (case-insensitively;
  otherwise FORBIDDEN). It is single use even under concurrent accepts (the row is locked), adds
  the membership in the same transaction, and is a CONFLICT for someone who is already a member.
  The token reached only the invited mailbox, so accepting also marks that address verified.
- An invitation lives only as long as its inviter may invite there: when the inviter's role
  drops below ADMIN or they leave or are removed, their open invitations are revoked in the same
  transaction (`revoke_issued_by`, called by the member changes). Platform admins keep theirs.
- `addMember` for an address without a verified account sends an invitation through `invite_in`
  (inside addMember's transaction), or reports the one already open.
- Token lookups (peek, accept) run on the explicit system path, since the project is not known
  before the token is; every change writes an audit row in its own transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import math
import secrets
import uuid
from collections.abc import Callable

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx.db.engine import Database
from ledgerx.db.models import Invite, Project, ProjectMember, User
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.auth.service import normalize_email
from ledgerx.domain.auth.verification import mark_verified
from ledgerx.domain.errors import BadInput, Conflict, Forbidden, NotFound, ProjectSuspended, RateLimited
from ledgerx.domain.mail import Mailer, instant
from ledgerx.domain.records import of
from ledgerx.domain.tenancy.records import InviteRecord, MemberRecord
from ledgerx.ids import encode, uuid7

ASSIGNABLE = ("ADMIN", "MEMBER", "VIEWER")
# The roles that may invite (and add members); an invitation dies when its inviter leaves them.
CAN_INVITE = ("OWNER", "ADMIN")
TOKEN_BYTES = 32
_MAX_TOKEN_LEN = 128  # token_urlsafe(32) is 43 characters; anything much longer is not ours

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def status(invite: Invite | InviteRecord, now: dt.datetime) -> str:
    if invite.accepted_at is not None:
        return "ACCEPTED"
    if invite.revoked_at is not None:
        return "REVOKED"
    if invite.expires_at <= now:
        return "EXPIRED"
    return "PENDING"


def snapshot(invite: Invite) -> dict[str, object]:
    return {
        "email": invite.email,
        "role": invite.role,
        "expiresAt": invite.expires_at.isoformat(),
        "resendCount": invite.resend_count,
    }


async def revoke_issued_by(
    s: AsyncSession, actor: Actor, project_id: uuid.UUID, inviter: uuid.UUID, *, role_after: str | None
) -> list[uuid.UUID]:
    """In the transaction that changes `inviter`'s membership: revoke their open invitations
    when the new role (None: no longer a member) may not invite. Returns the revoked ids."""
    if role_after in CAN_INVITE:
        return []
    if (await s.execute(select(User.is_platform_admin).where(User.id == inviter))).scalar():
        return []  # platform admins invite anywhere, member or not
    now = utcnow()
    rows = (
        await s.execute(
            update(Invite)
            .where(
                Invite.project_id == project_id,
                Invite.invited_by == inviter,
                Invite.accepted_at.is_(None),
                Invite.revoked_at.is_(None),
            )
            .values(revoked_at=now)
            .returning(Invite.id, Invite.expires_at)
            .execution_options(synchronize_session=False)
        )
    ).all()
    for invite_id, expires_at in rows:
        await audit.record(
            s,
            actor,
            "invite.revoke",
            project_id=project_id,
            target_type="invite",
            target_id=encode("invite", invite_id),
            before={"status": "PENDING" if expires_at > now else "EXPIRED"},
            after={"status": "REVOKED", "reason": "inviter_lost_access"},
        )
    return [r[0] for r in rows]


@dataclasses.dataclass(frozen=True, slots=True)
class InvitePreview:
    """What an anonymous holder of a token may learn (and nothing more)."""

    project_name: str
    role: str
    inviter_name: str | None
    expires_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Accepted:
    invite: InviteRecord
    member: MemberRecord


class InviteService:
    def __init__(
        self,
        db: Database,
        mailer: Mailer,
        *,
        ttl: int,
        resend_cooldown: int,
        public_url: str | None,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.mailer = mailer
        self.ttl = dt.timedelta(seconds=ttl)
        self.resend_cooldown = dt.timedelta(seconds=resend_cooldown)
        self.public_url = (public_url or "http://127.0.0.1:8000").rstrip("/")
        # Injectable so tests pin instants (expiry, cool-down) without sleeping.
        self.clock = clock

    def link(self, token: str) -> str:
        return f"{self.public_url}/invite?token={token}"

    # -- admin side ----------------------------------------------------------------------------

    async def project_of(self, invite_id: uuid.UUID) -> uuid.UUID:
        """The project an invitation belongs to, so the caller's access to it can be checked.

        A read on the system path (the caller's projects are not known here); the resolver turns
        "no access to that project" into NOT_FOUND as well, so ids do not leak across projects.
        """
        async with self.db.transaction(system=True) as s:
            project_id = (await s.execute(select(Invite.project_id).where(Invite.id == invite_id))).scalar()
        if project_id is None:
            raise NotFound("invitation not found", field="id")
        return project_id

    async def get(self, project_id: uuid.UUID, invite_id: uuid.UUID) -> InviteRecord:
        async with self.db.transaction(project_id=project_id) as s:
            inv = (
                await s.execute(select(Invite).where(Invite.id == invite_id, Invite.project_id == project_id))
            ).scalar_one_or_none()
        if inv is None:
            raise NotFound("invitation not found", field="id")
        return of(InviteRecord, inv)

    async def list_page(self, project_id: uuid.UUID, *, limit: int, before: uuid.UUID | None) -> list[InviteRecord]:
        """A project's invitations, newest first; `limit + 1` rows so the caller knows more exist."""
        async with self.db.transaction(project_id=project_id) as s:
            q = select(Invite).where(Invite.project_id == project_id).order_by(Invite.id.desc()).limit(limit + 1)
            if before is not None:
                q = q.where(Invite.id < before)
            return [of(InviteRecord, i) for i in (await s.execute(q)).scalars()]

    async def create(self, actor: Actor, project_id: uuid.UUID, *, email: str, role: str) -> InviteRecord:
        if role not in ASSIGNABLE:
            raise BadInput(
                "role must be ADMIN, MEMBER or VIEWER (ownership moves with transferOwnership)", field="role"
            )
        address = normalize_email(email)
        try:
            async with self.db.transaction(project_id=project_id) as s:
                await self._refuse_member(s, project_id, address)
                superseded = await self._close_expired_open(s, project_id, address, self.clock())
                invite = await self._insert(s, actor, project_id, address, role, superseded=superseded)
        except IntegrityError:
            # Only the open-invitation index can refuse this insert: a concurrent create won.
            raise Conflict("an open invitation for this email already exists; resend it", field="email") from None
        self.mailer.kick()
        return of(InviteRecord, invite)

    async def invite_in(
        self, s: AsyncSession, actor: Actor, project_id: uuid.UUID, address: str, role: str
    ) -> tuple[Invite, bool]:
        """Inside the caller's project transaction: the open invitation of `address` if one is
        pending (False), else a new one, mailed (True). The caller checked membership, and calls
        `self.mailer.kick()` after commit."""
        now = self.clock()
        try:
            superseded = await self._close_expired_open(s, project_id, address, now)
        except Conflict:
            pending = (
                await s.execute(
                    select(Invite).where(
                        Invite.project_id == project_id,
                        func.lower(Invite.email) == address,
                        Invite.accepted_at.is_(None),
                        Invite.revoked_at.is_(None),
                    )
                )
            ).scalar_one()
            return pending, False
        return await self._insert(s, actor, project_id, address, role, superseded=superseded), True

    async def _insert(
        self,
        s: AsyncSession,
        actor: Actor,
        project_id: uuid.UUID,
        address: str,
        role: str,
        *,
        superseded: uuid.UUID | None,
    ) -> Invite:
        now = self.clock()
        token = secrets.token_urlsafe(TOKEN_BYTES)
        invite = Invite(
            id=uuid7(),
            project_id=project_id,
            email=address,
            role=role,
            token_hash=hash_token(token),
            invited_by=actor.id if actor.type == "user" else None,
            created_at=now,
            expires_at=now + self.ttl,
            last_sent_at=now,
            resend_count=0,
        )
        s.add(invite)
        await s.flush()
        await self._mail(s, invite, token)
        await audit.record(
            s,
            actor,
            "invite.create",
            project_id=project_id,
            target_type="invite",
            target_id=encode("invite", invite.id),
            before={"supersededInvite": encode("invite", superseded)} if superseded else None,
            after=snapshot(invite),
        )
        return invite

    async def resend(self, actor: Actor, project_id: uuid.UUID, invite_id: uuid.UUID) -> InviteRecord:
        now = self.clock()
        token = secrets.token_urlsafe(TOKEN_BYTES)
        async with self.db.transaction(project_id=project_id) as s:
            inv = await self._locked(s, project_id, invite_id)
            if inv.accepted_at is not None:
                raise Conflict("this invitation was already accepted", field="id")
            if inv.revoked_at is not None:
                raise Conflict("this invitation was revoked; create a new one", field="id")
            await self._refuse_member(s, project_id, inv.email)
            if inv.last_sent_at is not None:
                wait = (inv.last_sent_at + self.resend_cooldown - now).total_seconds()
                if wait > 0:
                    raise RateLimited(
                        f"this invitation was sent moments ago; resend it in {math.ceil(wait)}s",
                        retry_after=max(1, math.ceil(wait)),
                    )
            before = snapshot(inv)
            inv.token_hash = hash_token(token)  # the old token dies with this commit
            inv.resend_count += 1
            inv.last_sent_at = now
            inv.expires_at = now + self.ttl
            await s.flush()
            await self._mail(s, inv, token)
            await audit.record(
                s,
                actor,
                "invite.resend",
                project_id=project_id,
                target_type="invite",
                target_id=encode("invite", inv.id),
                before=before,
                after=snapshot(inv),
            )
        self.mailer.kick()
        return of(InviteRecord, inv)

    async def revoke(self, actor: Actor, project_id: uuid.UUID, invite_id: uuid.UUID) -> InviteRecord:
        async with self.db.transaction(project_id=project_id) as s:
            inv = await self._locked(s, project_id, invite_id)
            if inv.accepted_at is not None:
                raise Conflict("this invitation was already accepted; remove the member instead", field="id")
            if inv.revoked_at is not None:
                return of(InviteRecord, inv)  # already revoked: nothing changes, nothing to audit
            inv.revoked_at = self.clock()
            await s.flush()
            await audit.record(
                s,
                actor,
                "invite.revoke",
                project_id=project_id,
                target_type="invite",
                target_id=encode("invite", inv.id),
                before={"status": "PENDING" if inv.expires_at > inv.revoked_at else "EXPIRED"},
                after={"status": "REVOKED"},
            )
        return of(InviteRecord, inv)

    # -- invitee side (by token) ---------------------------------------------------------------

    async def peek(self, token: str) -> InvitePreview:
        if not token or len(token) > _MAX_TOKEN_LEN:
            raise NotFound("invitation not found or no longer valid")
        async with self.db.transaction(system=True) as s:
            row = (
                await s.execute(
                    select(Invite, Project.name, User.name)
                    .join(Project, Project.id == Invite.project_id)
                    .outerjoin(User, User.id == Invite.invited_by)
                    .where(Invite.token_hash == hash_token(token))
                )
            ).first()
        if row is None or status(row[0], self.clock()) != "PENDING":
            raise NotFound("invitation not found or no longer valid")
        inv, project_name, inviter_name = row
        return InvitePreview(project_name, inv.role, inviter_name or None, inv.expires_at)

    async def accept(self, actor: Actor, token: str) -> Accepted:
        if actor.type != "user" or actor.id is None:
            raise Forbidden("sign in as the invited user to accept")
        if not token or len(token) > _MAX_TOKEN_LEN:
            raise NotFound("invitation not found or no longer valid")
        user_id = actor.id
        try:
            async with self.db.transaction(system=True) as s:
                # The row lock makes the token single use: a concurrent accept waits here and then
                # sees the invitation accepted.
                inv = (
                    await s.execute(select(Invite).where(Invite.token_hash == hash_token(token)).with_for_update())
                ).scalar_one_or_none()
                now = self.clock()
                if inv is None or status(inv, now) != "PENDING":
                    raise NotFound("invitation not found or no longer valid")
                user_email = (await s.execute(select(User.email).where(User.id == user_id))).scalar()
                if user_email is None or user_email.strip().lower() != inv.email.lower():
                    raise Forbidden("this invitation was sent to another email address; sign in with that one")
                project_status = (await s.execute(select(Project.status).where(Project.id == inv.project_id))).scalar()
                if project_status == "SUSPENDED":
                    raise ProjectSuspended("project is suspended")
                existing = (
                    await s.execute(
                        select(ProjectMember.id).where(
                            ProjectMember.project_id == inv.project_id, ProjectMember.user_id == user_id
                        )
                    )
                ).scalar()
                if existing is not None:
                    raise Conflict("you are already a member of this project")
                member = ProjectMember(
                    id=uuid7(),
                    project_id=inv.project_id,
                    user_id=user_id,
                    role=inv.role,
                    created_at=now,
                    updated_at=now,
                )
                s.add(member)
                inv.accepted_at = now
                inv.accepted_by = user_id
                await s.flush()
                # The token reached only the invited mailbox: its holder holds the address.
                newly_verified = await mark_verified(s, user_id, now)
                await audit.record(
                    s,
                    actor,
                    "invite.accept",
                    project_id=inv.project_id,
                    target_type="invite",
                    target_id=encode("invite", inv.id),
                    before={"status": "PENDING"},
                    after={"status": "ACCEPTED", "userId": encode("user", user_id), "role": inv.role},
                )
                if newly_verified:
                    await audit.record(
                        s,
                        actor,
                        "user.email_verified",
                        target_type="user",
                        target_id=encode("user", user_id),
                        after={"email": inv.email, "method": "invite"},
                    )
        except IntegrityError:
            # The membership appeared concurrently (addMember or another invitation).
            raise Conflict("you are already a member of this project") from None
        return Accepted(of(InviteRecord, inv), of(MemberRecord, member))

    # -- helpers -------------------------------------------------------------------------------

    async def _locked(self, s: AsyncSession, project_id: uuid.UUID, invite_id: uuid.UUID) -> Invite:
        inv = (
            await s.execute(
                select(Invite).where(Invite.id == invite_id, Invite.project_id == project_id).with_for_update()
            )
        ).scalar_one_or_none()
        if inv is None:
            raise NotFound("invitation not found", field="id")
        return inv

    async def _refuse_member(self, s: AsyncSession, project_id: uuid.UUID, address: str) -> None:
        member = (
            await s.execute(
                select(ProjectMember.id)
                .join(User, User.id == ProjectMember.user_id)
                .where(ProjectMember.project_id == project_id, func.lower(User.email) == address.lower())
            )
        ).scalar()
        if member is not None:
            raise Conflict("this email already belongs to a member of the project", field="email")

    async def _close_expired_open(
        self, s: AsyncSession, project_id: uuid.UUID, address: str, now: dt.datetime
    ) -> uuid.UUID | None:
        """An open invitation for the address blocks a new one, unless it expired (then it is closed)."""
        open_inv = (
            await s.execute(
                select(Invite)
                .where(
                    Invite.project_id == project_id,
                    func.lower(Invite.email) == address,
                    Invite.accepted_at.is_(None),
                    Invite.revoked_at.is_(None),
                )
                .with_for_update()
            )
        ).scalar_one_or_none()
        if open_inv is None:
            return None
        if open_inv.expires_at > now:
            raise Conflict(
                "an open invitation for this email already exists; resend it",
                field="email",
                inviteId=encode("invite", open_inv.id),
            )
        open_inv.revoked_at = now
        await s.flush()
        return open_inv.id

    async def _mail(self, s: AsyncSession, inv: Invite, token: str) -> None:
        row = (
            await s.execute(
                select(Project.name, User.name)
                .select_from(Project)
                .outerjoin(User, User.id == inv.invited_by)
                .where(Project.id == inv.project_id)
            )
        ).first()
        project_name = row[0] if row else "a project"
        inviter = (row[1] if row else None) or "A project admin"
        expires = instant(inv.expires_at)
        body = (
            f"{inviter} invited you to join the project {project_name} on LedgerX as {inv.role.lower()}.\n"
            "\n"
            f"Accept the invitation:\n{self.link(token)}\n"
            "\n"
            f"The link works once and expires on {expires}. Sign in (or sign up) with {inv.email} to accept.\n"
            "If you did not expect this invitation, you can ignore this mail.\n"
        )
        await self.mailer.enqueue(
            s,
            to=inv.email,
            subject=f"You're invited to join {project_name} on LedgerX",
            body=body,
            kind="invite",
            project_id=inv.project_id,
        )
