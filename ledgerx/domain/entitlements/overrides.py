"""overrideEntitlement: a platform admin's override of one feature of one project.

Its non-null fields (`enabled`, `limit`, `config`) replace the plan's until `expiresAt` (none:
until cleared); giving none of them clears the override. The feature's shape (type, metric,
period) is taken from the project's current plan, else from any plan of the catalog that defines
the key, and kept with the override, so a project whose plan lacks the feature (a beta flag, a
custom deal) still gets it, and a later plan change does not reshape it. A feature no plan defines
can be granted as BOOLEAN (`enabled`) or CONFIG (`config`); a limit needs a METERED definition (the
metric it counts). Audited; announced after the commit to every instance (checks and meters).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

from sqlalchemy import delete, select

from ledgerx import ids
from ledgerx.db.models import EntitlementOverride, Plan
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.entitlements import features
from ledgerx.domain.entitlements.features import Feature
from ledgerx.domain.errors import BadInput
from ledgerx.domain.payments import subscriptions
from ledgerx.domain.payments.service import PaymentsService


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    enabled: bool | None = None
    limit: int | None = None
    config: Any = None
    expires_at: dt.datetime | None = None

    @property
    def clears(self) -> bool:
        return self.enabled is None and self.limit is None and self.config is None


async def _shape(svc: PaymentsService, project_id: uuid.UUID, key: str, change: Change) -> Feature:
    """The feature as the project's plan, else the catalog, defines it; else what the change grants."""
    state = await subscriptions.load_state(svc, project_id)
    # The project's features without its per-feature overrides: its plan's and its plan override's.
    own = subscriptions.effective_plan_at(dataclasses.replace(state, feature_overrides=()), svc.now()).features
    found = own.get(key)
    if found is not None:
        return found
    async with svc.db.transaction(system=True) as s:
        for p in (await s.execute(select(Plan).order_by(Plan.archived_at.is_not(None), Plan.id))).scalars():
            found = features.of_plan(p.entitlements, p.monthly_quotas).get(key)
            if found is not None:
                return found
    if change.limit is not None:
        raise BadInput(f"no plan defines a METERED feature {key!r}: a limit needs the metric it counts", field="limit")
    return Feature(key, "CONFIG" if change.config is not None else "BOOLEAN", True)


def _check(shape: Feature, change: Change, now: dt.datetime) -> None:
    if change.limit is not None:
        features.limit(change.limit, "limit")
        if shape.type != "METERED":
            raise BadInput(f"{shape.feature_key!r} is a {shape.type} feature: it takes no limit", field="limit")
    if change.config is not None:
        features.config(change.config, "config")
        if shape.type != "CONFIG":
            raise BadInput(f"{shape.feature_key!r} is a {shape.type} feature: it takes no config", field="config")
    if change.enabled is not None and not isinstance(change.enabled, bool):
        raise BadInput("enabled must be true or false", field="enabled")
    if change.expires_at is not None:
        if change.expires_at.tzinfo is None:
            raise BadInput("expiresAt needs a time zone", field="expiresAt")
        if change.expires_at <= now:
            raise BadInput("expiresAt must be in the future", field="expiresAt")


def _json(row: EntitlementOverride | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "featureKey": row.feature_key,
        "type": row.type,
        "enabled": row.enabled,
        "limit": str(row.limit) if row.limit is not None else None,
        "config": row.config,
        "expiresAt": row.expires_at.isoformat() if row.expires_at is not None else None,
    }


async def override_entitlement(
    svc: PaymentsService, actor: Actor, project_id: uuid.UUID, feature_key: Any, change: Change
) -> None:
    """Set (or, with no enabled, limit or config, clear) the project's override of a feature."""
    key = features.feature_key(feature_key)
    shape: Feature | None = None
    if not change.clears:
        shape = await _shape(svc, project_id, key, change)
        _check(shape, change, svc.now())
    async with svc.db.transaction(project_id=project_id) as s:
        existing = await s.get(EntitlementOverride, (project_id, key), with_for_update=True)
        before = _json(existing)
        row: EntitlementOverride | None = None
        if shape is None:
            await s.execute(
                delete(EntitlementOverride).where(
                    EntitlementOverride.project_id == project_id, EntitlementOverride.feature_key == key
                )
            )
        else:
            row = existing or EntitlementOverride(project_id=project_id, feature_key=key)
            if existing is None:
                s.add(row)
            row.type, row.metric_key, row.period = shape.type, shape.metric_key, shape.period
            row.enabled, row.limit, row.config = change.enabled, change.limit, change.config
            row.expires_at = change.expires_at
            row.updated_at = svc.now()
        action = "entitlement.override" if row is not None else "entitlement.override_clear"
        await audit.record(
            s,
            actor,
            action,
            project_id=project_id,
            target_type="project",
            target_id=ids.encode("project", project_id),
            before=before,
            after=_json(row),
        )
    await svc.changes.plan_changed(project_id, action)
