"""GraphQL types of outbound webhooks (DESIGN.md "Outbound webhooks"). A secret appears only in
`WebhookEndpointWithSecret`, returned once by create and rotate."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

import strawberry

from ledgerx import ids
from ledgerx.dataloaders import webhooks as webhook_loaders
from ledgerx.domain.pagination import decode_cursor, page_size
from ledgerx.domain.webhooks.records import AttemptRecord, DeliveryRecord, EndpointRecord
from ledgerx.schema.info import Info
from ledgerx.schema.pagination import Connection, connection


@strawberry.enum
class WebhookDeliveryStatus(enum.Enum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


@strawberry.type(description="One attempt of a delivery: the answer's status code, or why there was none.")
class WebhookDeliveryAttempt:
    attempt: int
    status_code: int | None
    error: str | None
    duration_ms: int
    at: dt.datetime

    @classmethod
    def of(cls, a: AttemptRecord) -> WebhookDeliveryAttempt:
        return cls(attempt=a.attempt, status_code=a.status_code, error=a.error, duration_ms=a.duration_ms, at=a.at)


@strawberry.type(
    description="One event sent (or to be sent) to one endpoint. Every attempt carries the same "
    "`webhook-id` header: the event id."
)
class WebhookDelivery:
    id: strawberry.ID
    endpoint_id: strawberry.ID
    event_id: strawberry.ID
    event_type: str
    status: WebhookDeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: dt.datetime | None = strawberry.field(description="When the next attempt is due (PENDING only).")
    created_at: dt.datetime
    delivered_at: dt.datetime | None
    project_uuid: strawberry.Private[uuid.UUID]
    uuid: strawberry.Private[uuid.UUID]

    @strawberry.field
    async def attempt_log(self, info: Info) -> list[WebhookDeliveryAttempt]:
        found = await webhook_loaders.delivery_attempts(info.context, self.project_uuid).load(self.uuid)
        return [WebhookDeliveryAttempt.of(a) for a in found]

    @classmethod
    def of(cls, d: DeliveryRecord) -> WebhookDelivery:
        return cls(
            id=strawberry.ID(ids.encode("webhook_delivery", d.id)),
            endpoint_id=strawberry.ID(ids.encode("webhook_endpoint", d.endpoint_id)),
            event_id=strawberry.ID(ids.encode("event", d.event_id)),
            event_type=d.event_type,
            status=WebhookDeliveryStatus(d.status),
            attempts=d.attempts,
            last_status_code=d.last_status_code,
            last_error=d.last_error,
            next_attempt_at=d.next_attempt_at,
            created_at=d.created_at,
            delivered_at=d.delivered_at,
            project_uuid=d.project_id,
            uuid=d.id,
        )


@strawberry.type(description="Where a project's events are sent, signed per Standard Webhooks.")
class WebhookEndpoint:
    id: strawberry.ID
    project_id: strawberry.ID
    url: str
    events: list[str] = strawberry.field(description='The event types sent here; ["*"] is every type.')
    enabled: bool
    disabled_reason: str | None
    description: str | None
    failing_since: dt.datetime | None = strawberry.field(
        description="The first failed attempt since the last success; failing long enough disables the endpoint."
    )
    previous_secret_expires_at: dt.datetime | None = strawberry.field(
        description="After a rotation, until when the previous secret still signs (both signatures are sent)."
    )
    created_at: dt.datetime
    updated_at: dt.datetime
    project_uuid: strawberry.Private[uuid.UUID]
    uuid: strawberry.Private[uuid.UUID]

    @strawberry.field
    async def deliveries(
        self, info: Info, first: int | None = 20, after: str | None = None
    ) -> Connection[WebhookDelivery]:
        limit = page_size(first)
        pages = webhook_loaders.endpoint_deliveries(
            info.context, self.project_uuid, limit=limit + 1, before=decode_cursor(after)
        )
        return connection(await pages.load(self.uuid), limit, lambda d: d.id, WebhookDelivery.of)

    @classmethod
    def of(cls, e: EndpointRecord) -> WebhookEndpoint:
        return cls(
            id=strawberry.ID(ids.encode("webhook_endpoint", e.id)),
            project_id=strawberry.ID(ids.encode("project", e.project_id)),
            url=e.url,
            events=list(e.events),
            enabled=e.enabled,
            disabled_reason=e.disabled_reason,
            description=e.description,
            failing_since=e.failing_since,
            previous_secret_expires_at=e.previous_secret_expires_at,
            created_at=e.created_at,
            updated_at=e.updated_at,
            project_uuid=e.project_id,
            uuid=e.id,
        )


@strawberry.type
class WebhookEndpointWithSecret:
    endpoint: WebhookEndpoint
    secret: str = strawberry.field(
        description="`whsec_<base64>`, for the receiver's Standard Webhooks library. Shown only in this response."
    )


@strawberry.input
class CreateWebhookEndpointInput:
    project_id: strawberry.ID
    url: str = strawberry.field(description="http(s); in production it must reach a public address.")
    events: list[str] = strawberry.field(description='Event types, or ["*"] for all.')
    description: str | None = None


@strawberry.input
class UpdateWebhookEndpointInput:
    id: strawberry.ID
    url: str | None = None
    events: list[str] | None = None
    description: str | None = None
    enabled: bool | None = strawberry.field(
        default=None, description="true re-enables a disabled endpoint (and restarts its failure clock)."
    )
