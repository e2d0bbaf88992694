"""POST /v1/usage: bulk usage ingestion with an API key (scope `usage:write`).

Authorized exactly as recordUsageBatch is: the usage domain's RECORD rule (domain/usage/policy.py)
through the same `Authorizer` (domain/tenancy/authorize.py), so the instance's access cache, and
its invalidation when access changes, apply to both.

Request: `Authorization: Bearer lx_…` (or `X-Api-Key: lx_…`) and a JSON body
    {"events": [{"metricKey": "api_calls", "units": 1, "idempotencyKey": "…",
                 "occurredAt": "2026-01-01T12:00:00Z", "properties": {…}}, …]}
with at most `USAGE_MAX_BATCH` (10,000) events. A signed-in user (Bearer access token) may post
too, naming the project with "projectId" in the body; an API key acts for its own project.

Response 200: the shape of recordUsageBatch, {"accepted": n, "duplicates": n, "rejected":
[{"index", "code", "message", "field"?, "reason"?}]}: bad events are rejected alone, the rest stored.
Errors: {"error": {"code", "message", …}} with 400 (bad body: BAD_USER_INPUT), 401
(UNAUTHENTICATED), 403 (FORBIDDEN: no `usage:write`; PROJECT_SUSPENDED), 404 (NOT_FOUND: a project
the caller cannot reach), 413 (BAD_USER_INPUT, reason BATCH_TOO_LARGE: too many events or bytes),
429 (RATE_LIMITED, Retry-After: the gateway's token bucket, one token per request).
"""

from __future__ import annotations

import decimal
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ledgerx import ids
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.errors import AppError, BadInput, NotFound, Unauthenticated
from ledgerx.domain.tenancy.authorize import Authorizer, check_key_scope
from ledgerx.domain.usage import ingest, policy, validate
from ledgerx.http import edge, jsonbody
from ledgerx.http.edge import error_response, json_response
from ledgerx.services import Services

log = logging.getLogger("ledgerx.http.usage")


def _too_large(message: str) -> Response:
    return error_response(BadInput(message, field="events", reason=validate.BATCH_TOO_LARGE), 413)


async def _project(services: Services, principal: Principal, payload: dict[str, Any]) -> uuid.UUID:
    """The project the events are for, once the caller may record usage in it."""
    named = payload.get("projectId")
    if principal.kind == "api_key":
        assert principal.project_id is not None
        project_id = principal.project_id
        if named is not None and (
            not isinstance(named, str) or ids.decode("project", named, "projectId") != project_id
        ):
            raise NotFound("project not found", field="projectId")
    else:
        if not isinstance(named, str):
            raise BadInput("projectId is required when signed in as a user", field="projectId")
        project_id = ids.decode("project", named, "projectId")
    authorizer = Authorizer(services.db, services.access_cache, principal)
    return (await authorizer.require(project_id, policy.RECORD)).project_id


def usage_endpoint(services: Callable[[], Services]) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint; `services` returns the app's services (they exist once it started).

    Like /graphql, every request spends one token of the caller's gateway bucket before any work
    (http/edge.py); an unauthenticated one is then refused.
    """

    async def ingest_usage(request: Request) -> Response:
        svc = services()

        async def handle(principal: Principal | None, auth_error: AppError | None) -> Response:
            if principal is None:
                return error_response(auth_error or Unauthenticated("missing credentials"))
            return await _ingest(svc, principal, request)

        return await edge.admitted(svc, request, handle)

    return ingest_usage


async def _ingest(svc: Services, principal: Principal, request: Request) -> Response:
    settings = svc.settings
    try:
        # Refuse a key without the scope before reading (up to USAGE_MAX_BODY_BYTES of) a body
        # that will not be used.
        check_key_scope(principal, policy.RECORD)
        # The edge's shared reader (http/jsonbody.py, as /graphql): capped, bounded nesting, and
        # no string PostgreSQL cannot store (NUL, lone surrogates) gets past it.
        try:
            raw = await jsonbody.read_body(request, settings.usage_max_body_bytes)
            payload = jsonbody.loads(raw, parse_float=decimal.Decimal)
        except ClientDisconnect:
            return Response(status_code=400)
        except jsonbody.BodyError as exc:
            if exc.status == 413:
                return _too_large(f"{exc.message}; split the batch")
            raise BadInput(f'{exc.message} (expected {{"events": [...]}})', field=exc.field or "events") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("events"), list):
            raise BadInput("the body must be a JSON object with an events list", field="events")
        project_id = await _project(svc, principal, payload)
        events = payload["events"]
        if len(events) > settings.usage_max_batch:
            return _too_large(f"at most {settings.usage_max_batch} events per request (got {len(events)})")
        result = await ingest.record_batch(
            svc.db, project_id, events, ingest.IngestConfig.of(settings), bus=svc.events, quotas=svc.quotas
        )
    except AppError as exc:
        return error_response(exc)
    return json_response(200, result.to_json())
