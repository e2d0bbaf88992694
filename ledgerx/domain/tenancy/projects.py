"""Projects: create (the creator becomes OWNER), update, read, list, suspend and reactivate."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from ledgerx.db.engine import Database
from ledgerx.db.models import Project, ProjectMember
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.changes import ProjectChanges
from ledgerx.domain.errors import BadInput, Conflict, NotFound
from ledgerx.domain.records import of
from ledgerx.domain.tenancy.records import ProjectRecord
from ledgerx.ids import encode, uuid7

_EXTERNAL_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")


def _name(name: str) -> str:
    n = name.strip()
    if not 1 <= len(n) <= 200:
        raise BadInput("name must be 1 to 200 characters", field="name")
    return n


def _external_key(key: str | None) -> str | None:
    if key is None:
        return None
    k = key.strip()
    if not _EXTERNAL_KEY.match(k):
        raise BadInput(
            "externalKey must be 1-128 characters of letters, digits and . _ : @ / - (starting with a letter or digit)",
            field="externalKey",
        )
    return k


def snapshot(p: Project) -> dict[str, object]:
    return {"name": p.name, "externalKey": p.external_key, "status": p.status, "suspendedReason": p.suspended_reason}


async def create_project(
    db: Database, actor: Actor, *, name: str, external_key: str | None, test_mode: bool = False
) -> ProjectRecord:
    assert actor.type == "user"
    assert actor.id is not None
    project = Project(
        id=uuid7(),
        name=_name(name),
        external_key=_external_key(external_key),
        status="ACTIVE",
        test_mode=test_mode,
        overrides={},
        created_by=actor.id,
    )
    try:
        async with db.transaction(project_id=project.id, user_id=actor.id) as s:
            s.add(project)
            await s.flush()
            s.add(ProjectMember(id=uuid7(), project_id=project.id, user_id=actor.id, role="OWNER"))
            await audit.record(
                s,
                actor,
                "project.create",
                project_id=project.id,
                target_type="project",
                target_id=encode("project", project.id),
                after=snapshot(project),
            )
    except IntegrityError:
        raise Conflict("a project with this externalKey already exists", field="externalKey") from None
    return of(ProjectRecord, project)


async def update_project(
    db: Database, actor: Actor, project_id: uuid.UUID, *, name: str | None, external_key: str | None
) -> ProjectRecord:
    try:
        async with db.transaction(project_id=project_id) as s:
            p = (await s.execute(select(Project).where(Project.id == project_id).with_for_update())).scalar_one()
            before = snapshot(p)
            if name is not None:
                p.name = _name(name)
            if external_key is not None:
                p.external_key = _external_key(external_key)
            p.updated_at = dt.datetime.now(dt.UTC)
            await s.flush()
            await audit.record(
                s,
                actor,
                "project.update",
                project_id=project_id,
                target_type="project",
                target_id=encode("project", project_id),
                before=before,
                after=snapshot(p),
            )
    except IntegrityError:
        raise Conflict("a project with this externalKey already exists", field="externalKey") from None
    return of(ProjectRecord, p)


async def get_project(db: Database, project_id: uuid.UUID) -> ProjectRecord:
    async with db.transaction(project_id=project_id) as s:
        p = (await s.execute(select(Project).where(Project.id == project_id))).scalar_one_or_none()
    if p is None:
        raise NotFound("project not found")
    return of(ProjectRecord, p)


async def find_by_external_key(db: Database, external_key: str) -> uuid.UUID | None:
    """The explicit system path: the project is what we are looking for. Callers check access."""
    async with db.transaction(system=True) as s:
        return (await s.execute(select(Project.id).where(Project.external_key == external_key))).scalar_one_or_none()


async def list_for_user(
    db: Database, user_id: uuid.UUID, *, limit: int, after: uuid.UUID | None
) -> list[tuple[ProjectRecord, str]]:
    """The user's projects with their role, oldest first; `limit + 1` rows so the caller sees more exist."""
    async with db.transaction(user_id=user_id) as s:
        q = (
            select(Project, ProjectMember.role)
            .join(ProjectMember, (ProjectMember.project_id == Project.id) & (ProjectMember.user_id == user_id))
            .order_by(Project.id)
            .limit(limit + 1)
        )
        if after is not None:
            q = q.where(Project.id > after)
        return [(of(ProjectRecord, p), role) for p, role in (await s.execute(q)).all()]


async def get_many(db: Database, project_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, ProjectRecord]:
    async with db.transaction(project_ids=project_ids) as s:
        rows = (await s.execute(select(Project).where(Project.id.in_(project_ids)))).scalars().all()
    return {p.id: of(ProjectRecord, p) for p in rows}


async def set_suspended(
    db: Database,
    actor: Actor,
    project_id: uuid.UUID,
    *,
    suspended: bool,
    reason: str | None = None,
    changes: ProjectChanges,
) -> ProjectRecord:
    """Platform admin action; audited in the project's log, announced as an access change."""
    if suspended and not (reason and reason.strip()):
        raise BadInput("a reason is required to suspend a project", field="reason")
    async with db.transaction(project_id=project_id) as s:
        p = (await s.execute(select(Project).where(Project.id == project_id).with_for_update())).scalar_one_or_none()
        if p is None:
            raise NotFound("project not found")
        before = snapshot(p)
        now = dt.datetime.now(dt.UTC)
        await s.execute(
            update(Project)
            .where(Project.id == project_id)
            .values(
                status="SUSPENDED" if suspended else "ACTIVE",
                suspended_reason=reason.strip() if suspended and reason else None,
                suspended_at=now if suspended else None,
                updated_at=func.now(),
            )
        )
        await s.refresh(p)
        await audit.record(
            s,
            actor,
            "project.suspend" if suspended else "project.reactivate",
            project_id=project_id,
            target_type="project",
            target_id=encode("project", project_id),
            before=before,
            after=snapshot(p),
        )
    await changes.access_changed(project_id, "project.suspend" if suspended else "project.reactivate")
    return of(ProjectRecord, p)
