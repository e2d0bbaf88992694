"""Outbound webhook fields: webhookEndpoints; create/update/delete/rotate endpoints, sendTestWebhook,
redeliverWebhook. Project admins, or API keys with `webhooks:write` (domain/webhooks/policy.py);
an endpoint or delivery of another project is NOT_FOUND, like a made-up id."""

from __future__ import annotations

import uuid

import strawberry

from ledgerx import ids
from ledgerx.domain.pagination import decode_cursor, page_size
from ledgerx.domain.tenancy.authorize import Rule
from ledgerx.domain.webhooks import deliveries, endpoints, policy
from ledgerx.resolvers.guards import authorizer, project_access
from ledgerx.schema.info import Info
from ledgerx.schema.pagination import Connection, connection
from ledgerx.schema.webhooks import (
    CreateWebhookEndpointInput,
    UpdateWebhookEndpointInput,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEndpointWithSecret,
)


async def _endpoint(info: Info, public_id: str, rule: Rule, field: str = "id") -> tuple[uuid.UUID, uuid.UUID]:
    """(project id, endpoint id) of an endpoint the caller may act on; NOT_FOUND otherwise."""
    info.context.require_principal()
    endpoint_id = ids.decode("webhook_endpoint", public_id, field)
    project_id = await endpoints.project_of(info.context.services.db, endpoint_id)
    await authorizer(info).require_for(project_id, rule, what="webhook endpoint", field=field)
    assert project_id is not None
    return project_id, endpoint_id


@strawberry.type
class Query:
    @strawberry.field(description="A project's webhook endpoints, newest first (project admins, webhooks:write).")
    async def webhook_endpoints(
        self, info: Info, project_id: strawberry.ID, first: int | None = 20, after: str | None = None
    ) -> Connection[WebhookEndpoint]:
        limit = page_size(first)
        cursor = decode_cursor(after)
        access = await project_access(info, project_id, policy.READ)
        rows = await endpoints.list_page(info.context.services.db, access.project_id, limit=limit, after=cursor)
        return connection(rows, limit, lambda e: e.id, WebhookEndpoint.of)

    @strawberry.field(description="One webhook endpoint (project admins, webhooks:write).")
    async def webhook_endpoint(self, info: Info, id: strawberry.ID) -> WebhookEndpoint:
        project_id, endpoint_id = await _endpoint(info, id, policy.READ)
        return WebhookEndpoint.of(await endpoints.get(info.context.services.db, project_id, endpoint_id))


@strawberry.type
class Mutation:
    @strawberry.mutation(description="A new endpoint; its signing secret is in this response only.")
    async def create_webhook_endpoint(self, info: Info, input: CreateWebhookEndpointInput) -> WebhookEndpointWithSecret:
        ctx = info.context
        access = await project_access(info, input.project_id, policy.MANAGE)
        issued = await endpoints.create(
            ctx.services.db,
            ctx.actor(),
            access.project_id,
            url=input.url,
            events=input.events,
            description=input.description,
            allow_private=ctx.services.settings.outbound_webhook_allow_private,
        )
        return WebhookEndpointWithSecret(endpoint=WebhookEndpoint.of(issued.endpoint), secret=issued.secret)

    @strawberry.mutation(description="Change an endpoint's URL, event types, description, or enable/disable it.")
    async def update_webhook_endpoint(self, info: Info, input: UpdateWebhookEndpointInput) -> WebhookEndpoint:
        ctx = info.context
        project_id, endpoint_id = await _endpoint(info, input.id, policy.MANAGE)
        changes = endpoints.Changes(
            url=input.url,
            events=tuple(input.events) if input.events is not None else None,
            description=input.description,
            enabled=input.enabled,
        )
        updated = await endpoints.update_endpoint(
            ctx.services.db,
            ctx.actor(),
            project_id,
            endpoint_id,
            changes,
            allow_private=ctx.services.settings.outbound_webhook_allow_private,
        )
        return WebhookEndpoint.of(updated)

    @strawberry.mutation(description="Delete an endpoint: it receives nothing more; pending deliveries fail.")
    async def delete_webhook_endpoint(self, info: Info, id: strawberry.ID) -> bool:
        ctx = info.context
        project_id, endpoint_id = await _endpoint(info, id, policy.MANAGE)
        return await endpoints.delete(ctx.services.db, ctx.actor(), project_id, endpoint_id)

    @strawberry.mutation(
        description="A new signing secret (shown once); the previous one keeps signing beside it for 24 hours."
    )
    async def rotate_webhook_endpoint_secret(self, info: Info, id: strawberry.ID) -> WebhookEndpointWithSecret:
        ctx = info.context
        project_id, endpoint_id = await _endpoint(info, id, policy.MANAGE)
        issued = await endpoints.rotate(ctx.services.db, ctx.actor(), project_id, endpoint_id)
        return WebhookEndpointWithSecret(endpoint=WebhookEndpoint.of(issued.endpoint), secret=issued.secret)

    @strawberry.mutation(description="Send a `webhook.test` event to this endpoint now.")
    async def send_test_webhook(self, info: Info, endpoint_id: strawberry.ID) -> WebhookDelivery:
        ctx = info.context
        project_id, uid = await _endpoint(info, endpoint_id, policy.MANAGE, field="endpointId")
        delivery = await deliveries.send_test(ctx.services.db, ctx.actor(), project_id, uid)
        ctx.services.webhook_delivery.wake()
        return WebhookDelivery.of(delivery)

    @strawberry.mutation(description="Send a delivery's event to its endpoint again (a new delivery, same webhook-id).")
    async def redeliver_webhook(self, info: Info, delivery_id: strawberry.ID) -> WebhookDelivery:
        ctx = info.context
        ctx.require_principal()
        uid = ids.decode("webhook_delivery", delivery_id, "deliveryId")
        project_id = await deliveries.project_of(ctx.services.db, uid)
        await authorizer(info).require_for(project_id, policy.MANAGE, what="webhook delivery", field="deliveryId")
        assert project_id is not None
        delivery = await deliveries.redeliver(ctx.services.db, ctx.actor(), project_id, uid)
        ctx.services.webhook_delivery.wake()
        return WebhookDelivery.of(delivery)
