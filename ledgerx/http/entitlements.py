"""GET /v1/entitlements and GET /v1/entitlements/{featureKey}: entitlement checks for an API key
(scope `entitlements:read`) or a signed-in member (naming the project with `?projectId=`).

Authorized as the GraphQL `entitlement` field is (domain/entitlements/policy.py, through the same
`Authorizer`), answered from the instance's check cache (domain/entitlements/checks.py), at the
one HTTP edge every plain route has (http/edge.py: credential, gateway admission, error answers).

Response 200: one entitlement {"featureKey", "type", "hasAccess", "limit", "usage", "remaining",
"config", "resetsAt"} (numbers as decimal strings, like GraphQL's BigInt and Decimal), or
{"entitlements": [...]} by feature key. A feature the plan does not name answers hasAccess false.
Errors: {"error": {"code", "message", …}} with 400 (BAD_USER_INPUT: a malformed projectId), 401,
403 (FORBIDDEN: no `entitlements:read`; PROJECT_SUSPENDED), 404 (a project the caller cannot
reach), 429 (RATE_LIMITED).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ledgerx import ids
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.entitlements import policy
from ledgerx.domain.errors import AppError, BadInput, NotFound, Unauthenticated
from ledgerx.domain.tenancy.authorize import Authorizer
from ledgerx.http import edge
from ledgerx.http.edge import error_response, json_response
from ledgerx.services import Services


async def _project(svc: Services, principal: Principal, request: Request) -> uuid.UUID:
    """The project checked: an API key's own (a `projectId` naming another is NOT_FOUND), or the
    one a user names; once the caller may read its entitlements."""
    named = request.query_params.get("projectId") if request.scope.get("query_string") else None
    if principal.kind == "api_key":
        assert principal.project_id is not None
        project_id = principal.project_id
        if named is not None and ids.decode("project", named, "projectId") != project_id:
            raise NotFound("project not found", field="projectId")
    else:
        if named is None:
            raise BadInput("projectId is required when signed in as a user", field="projectId")
        project_id = ids.decode("project", named, "projectId")
    return (await Authorizer(svc.db, svc.access_cache, principal).require(project_id, policy.READ)).project_id


class EntitlementEndpoint:
    """Both routes, as a plain ASGI app (Starlette routes an object that is not a function to it
    as is): the check is the API's hottest path, and Starlette's request/response adapter around
    a function endpoint cost it a tenth of its time. Errors are answered by the edge; anything
    unexpected still reaches the app's error middleware."""

    def __init__(self, services: Callable[[], Services]) -> None:
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.answer(Request(scope, receive))
        await response(scope, receive, send)

    async def answer(self, request: Request) -> Response:
        svc = self.services()
        feature_key = request.path_params.get("featureKey")

        async def handle(principal: Principal | None, auth_error: AppError | None) -> Response:
            if principal is None:
                return error_response(auth_error or Unauthenticated("missing credentials"))
            project_id = await _project(svc, principal, request)
            if feature_key is None:
                found = await svc.entitlements.all(project_id)
                return json_response(200, {"entitlements": [e.to_json() for e in found]})
            body = await svc.entitlements.check_body(project_id, feature_key)
            return Response(body, status_code=200, media_type="application/json")

        return await edge.admitted(svc, request, handle)
