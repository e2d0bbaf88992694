"""What the webhooks domain hands out: frozen records (never a secret, never an ORM row)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from ledgerx.db.models import WebhookEndpoint
from ledgerx.domain.records import of


@dataclasses.dataclass(frozen=True, slots=True)
class EndpointRecord:
    id: uuid.UUID
    project_id: uuid.UUID
    url: str
    events: tuple[str, ...]
    description: str | None
    enabled: bool
    disabled_reason: str | None
    failing_since: dt.datetime | None
    # Until when the secret before the last rotation still signs (None: no previous secret).
    previous_secret_expires_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, e: WebhookEndpoint) -> EndpointRecord:
        previous = e.previous_secret_expires_at if e.previous_secret is not None else None
        return of(cls, e, events=tuple(e.events), previous_secret_expires_at=previous)


@dataclasses.dataclass(frozen=True, slots=True)
class IssuedEndpoint:
    """An endpoint and its new secret (`whsec_…`), shown in this answer only."""

    endpoint: EndpointRecord
    secret: str


@dataclasses.dataclass(frozen=True, slots=True)
class DeliveryRecord:
    id: uuid.UUID
    project_id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    status: str  # PENDING | SUCCEEDED | FAILED
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: dt.datetime | None  # None once the delivery is settled
    created_at: dt.datetime
    delivered_at: dt.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptRecord:
    id: uuid.UUID
    delivery_id: uuid.UUID
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int
    at: dt.datetime
