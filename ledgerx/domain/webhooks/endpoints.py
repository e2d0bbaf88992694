"""A project's webhook endpoints: create (secret shown once), update, delete, rotate, list.

The caller (a resolver) has checked that the actor may manage the project's webhooks
(`policy.MANAGE`); every change writes an audit row in its transaction. The secret is 32 random
bytes kept as they are (HMAC signs with the secret itself); the API shows it once as
`whsec_<base64>`. After `rotate` the previous secret keeps signing, next to the new one, until
`previous_secret_expires_at` (the overlap), so receivers can switch without missing a delivery.

Deleting marks the endpoint (`deleted_at`): it disappears from the API, receives nothing more, and
its pending deliveries fail; the rows stay for the audit trail.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx.db.engine import Database
from ledgerx.db.models import WebhookDelivery, WebhookEndpoint
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import BadInput, NotFound
from ledgerx.domain.webhooks import catalog, signing, ssrf
from ledgerx.domain.webhooks.records import EndpointRecord, IssuedEndpoint
from ledgerx.ids import encode, uuid7

MAX_DESCRIPTION = 500
ROTATION_OVERLAP = dt.timedelta(hours=24)
DISABLED_BY_USER = "disabled through the API"


def _description(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) > MAX_DESCRIPTION:
        raise BadInput(f"description is longer than {MAX_DESCRIPTION} characters", field="description")
    return value or None


def snapshot(e: WebhookEndpoint) -> dict[str, Any]:
    """What the audit log records of an endpoint (never its secret)."""
    return {
        "url": e.url,
        "events": list(e.events),
        "description": e.description,
        "enabled": e.enabled,
        "disabledReason": e.disabled_reason,
    }


async def _audit(s: AsyncSession, actor: Actor, action: str, e: WebhookEndpoint, before: dict[str, Any] | None) -> None:
    await audit.record(
        s,
        actor,
        action,
        project_id=e.project_id,
        target_type="webhook_endpoint",
        target_id=encode("webhook_endpoint", e.id),
        before=before,
        after=None if e.deleted_at is not None else snapshot(e),
    )


async def create(
    db: Database,
    actor: Actor,
    project_id: uuid.UUID,
    *,
    url: str,
    events: Iterable[str],
    description: str | None = None,
    allow_private: bool,
) -> IssuedEndpoint:
    clean_events = catalog.validate(events)
    clean_url = await ssrf.check_url(url, allow_private=allow_private)
    secret = signing.new_secret()
    endpoint = WebhookEndpoint(
        id=uuid7(),
        project_id=project_id,
        url=clean_url,
        events=clean_events,
        description=_description(description),
        enabled=True,
        secret=secret,
        created_by=actor.id if actor.type == "user" else None,
    )
    async with db.transaction(project_id=project_id) as s:
        s.add(endpoint)
        await s.flush()
        await s.refresh(endpoint)  # created_at from the database
        await _audit(s, actor, "webhook_endpoint.create", endpoint, None)
    return IssuedEndpoint(EndpointRecord.of(endpoint), signing.encode_secret(secret))


async def _locked(s: AsyncSession, project_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    found = (
        await s.execute(
            select(WebhookEndpoint)
            .where(
                WebhookEndpoint.id == endpoint_id,
                WebhookEndpoint.project_id == project_id,
                WebhookEndpoint.deleted_at.is_(None),
            )
            .with_for_update()
        )
    ).scalar_one_or_none()
    if found is None:
        raise NotFound("webhook endpoint not found", field="id")
    return found


@dataclasses.dataclass(frozen=True, slots=True)
class Changes:
    """The fields `updateWebhookEndpoint` sets (None: left as it is)."""

    url: str | None = None
    events: tuple[str, ...] | None = None
    description: str | None = None
    enabled: bool | None = None


async def update_endpoint(
    db: Database,
    actor: Actor,
    project_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    changes: Changes,
    *,
    allow_private: bool,
) -> EndpointRecord:
    """Change the given fields. Enabling an endpoint clears why it was disabled and its failure
    streak (it gets the configured time again before being disabled)."""
    clean_events = catalog.validate(changes.events) if changes.events is not None else None
    clean_url = await ssrf.check_url(changes.url, allow_private=allow_private) if changes.url is not None else None
    async with db.transaction(project_id=project_id) as s:
        e = await _locked(s, project_id, endpoint_id)
        before = snapshot(e)
        if clean_url is not None:
            e.url = clean_url
        if clean_events is not None:
            e.events = clean_events
        if changes.description is not None:
            e.description = _description(changes.description)
        if changes.enabled is True and not e.enabled:
            e.enabled, e.disabled_reason, e.failing_since = True, None, None
        elif changes.enabled is False and e.enabled:
            e.enabled, e.disabled_reason = False, DISABLED_BY_USER
        e.updated_at = dt.datetime.now(dt.UTC)
        await s.flush()
        await _audit(s, actor, "webhook_endpoint.update", e, before)
    return EndpointRecord.of(e)


async def delete(db: Database, actor: Actor, project_id: uuid.UUID, endpoint_id: uuid.UUID) -> bool:
    async with db.transaction(project_id=project_id) as s:
        e = await _locked(s, project_id, endpoint_id)
        before = snapshot(e)
        now = dt.datetime.now(dt.UTC)
        e.deleted_at, e.enabled, e.disabled_reason, e.updated_at = now, False, "deleted", now
        await s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == "PENDING")
            .values(status="FAILED", last_error="endpoint deleted")
        )
        await s.flush()
        await _audit(s, actor, "webhook_endpoint.delete", e, before)
    return True


async def rotate(
    db: Database,
    actor: Actor,
    project_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    *,
    overlap: dt.timedelta = ROTATION_OVERLAP,
) -> IssuedEndpoint:
    """A new secret; the current one keeps signing (both signatures sent) for `overlap`. A second
    rotation inside the overlap retires the oldest secret at once (one previous slot)."""
    secret = signing.new_secret()
    async with db.transaction(project_id=project_id) as s:
        e = await _locked(s, project_id, endpoint_id)
        before = snapshot(e)
        now = dt.datetime.now(dt.UTC)
        if overlap > dt.timedelta(0):
            e.previous_secret, e.previous_secret_expires_at = e.secret, now + overlap
        else:
            e.previous_secret, e.previous_secret_expires_at = None, None
        e.secret, e.updated_at = secret, now
        await s.flush()
        await _audit(s, actor, "webhook_endpoint.rotate_secret", e, before)
    return IssuedEndpoint(EndpointRecord.of(e), signing.encode_secret(secret))


async def project_of(db: Database, endpoint_id: uuid.UUID) -> uuid.UUID | None:
    """The project of a (not deleted) endpoint, read on the system path; the caller authorizes
    against it next and answers an outsider exactly as for a made-up id."""
    async with db.raw(system=True) as conn:
        found: uuid.UUID | None = await conn.fetchval(
            "SELECT project_id FROM webhook_endpoints WHERE id = $1 AND deleted_at IS NULL", endpoint_id
        )
    return found


async def get(db: Database, project_id: uuid.UUID, endpoint_id: uuid.UUID) -> EndpointRecord:
    async with db.transaction(project_id=project_id) as s:
        found = (
            await s.execute(
                select(WebhookEndpoint).where(
                    WebhookEndpoint.id == endpoint_id,
                    WebhookEndpoint.project_id == project_id,
                    WebhookEndpoint.deleted_at.is_(None),
                )
            )
        ).scalar_one_or_none()
    if found is None:
        raise NotFound("webhook endpoint not found", field="id")
    return EndpointRecord.of(found)


async def list_page(
    db: Database, project_id: uuid.UUID, *, limit: int, after: uuid.UUID | None
) -> list[EndpointRecord]:
    """The project's endpoints, newest first; `limit + 1` rows so callers see more exist."""
    async with db.transaction(project_id=project_id) as s:
        q = (
            select(WebhookEndpoint)
            .where(WebhookEndpoint.project_id == project_id, WebhookEndpoint.deleted_at.is_(None))
            .order_by(WebhookEndpoint.id.desc())
            .limit(limit + 1)
        )
        if after is not None:
            q = q.where(WebhookEndpoint.id < after)
        return [EndpointRecord.of(e) for e in (await s.execute(q)).scalars()]
