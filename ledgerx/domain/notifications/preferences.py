"""Which notification kinds a project turned off (`updateNotificationSettings`).

The setting is the whole set of disabled kinds (an empty set turns every kind on again); `notify`
reads it in the same statement that finds the recipients.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ledgerx.db.engine import Database
from ledgerx.db.models import NotificationSettings
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.notifications.kinds import Kind
from ledgerx.domain.notifications.records import SettingsRecord
from ledgerx.ids import encode


def _kinds(values: Iterable[str]) -> tuple[Kind, ...]:
    """Known kinds in declaration order (unknown names are skipped: a kind removed later must not
    make a stored setting unreadable)."""
    names = set(values)
    return tuple(k for k in Kind if k.value in names)


def _record(row: NotificationSettings) -> SettingsRecord:
    return SettingsRecord(row.project_id, _kinds(row.disabled), row.updated_at)


async def update(db: Database, actor: Actor, project_id: uuid.UUID, disabled: Iterable[Kind]) -> SettingsRecord:
    """Turn off exactly the kinds in `disabled` (every other kind on)."""
    wanted = [k.value for k in Kind if k in set(disabled)]
    by = actor.id if actor.type == "user" else None
    async with db.transaction(project_id=project_id) as s:
        before = await s.scalar(
            select(NotificationSettings.disabled).where(NotificationSettings.project_id == project_id).with_for_update()
        )
        stmt = pg_insert(NotificationSettings).values(project_id=project_id, disabled=wanted, updated_by=by)
        upsert = stmt.on_conflict_do_update(
            index_elements=[NotificationSettings.project_id],
            set_={"disabled": wanted, "updated_by": by, "updated_at": stmt.excluded.updated_at},
        ).returning(NotificationSettings)
        saved = _record((await s.execute(upsert.execution_options(populate_existing=True))).scalar_one())
        await audit.record(
            s,
            actor,
            "notification_settings.update",
            project_id=project_id,
            target_type="project",
            target_id=encode("project", project_id),
            before={"disabled": [k.value for k in _kinds(before or [])]},
            after={"disabled": [k.value for k in saved.disabled]},
        )
    return saved


async def get_many(db: Database, project_ids: Sequence[uuid.UUID]) -> Mapping[uuid.UUID, SettingsRecord]:
    """Each project's settings (every kind on for a project that never changed them); one statement."""
    keys = list(dict.fromkeys(project_ids))
    if not keys:
        return {}
    async with db.transaction(project_ids=keys) as s:
        rows = (
            (await s.execute(select(NotificationSettings).where(NotificationSettings.project_id.in_(keys))))
            .scalars()
            .all()
        )
        found = {r.project_id: _record(r) for r in rows}
    return {p: found.get(p) or SettingsRecord(p, (), None) for p in keys}


async def get(db: Database, project_id: uuid.UUID) -> SettingsRecord:
    return (await get_many(db, [project_id]))[project_id]
