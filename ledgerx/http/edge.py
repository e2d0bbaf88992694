"""What every plain HTTP route of the API does at its edge, one way: read the credential
(`Authorization: Bearer …` or `X-Api-Key`), authenticate it, spend one token of the caller's gateway
bucket before any work (the API key's, the user's, or the client address's when unauthenticated),
answer errors as `{"error": {code, message, …}}` with their HTTP status, and put the RateLimit-*
headers on every answer (a refused request is 429 RATE_LIMITED with Retry-After)."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ledgerx import gateway
from ledgerx.context import authenticate
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.errors import AppError, Unauthenticated, Unavailable
from ledgerx.services import Services

log = logging.getLogger("ledgerx.http")

_JSON = "application/json"

# What a route does once the caller was admitted: the principal, or None and why (a route that
# needs one answers the error; one that also takes signed links may go on without).
Handler = Callable[[Principal | None, AppError | None], Awaitable[Response]]


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, media_type=_JSON, headers=headers)


def error_response(exc: AppError, status: int | None = None) -> Response:
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    body.update({k: v for k, v in exc.extensions.items() if k != "code"})
    headers: dict[str, str] = {}
    if exc.code == Unauthenticated.code:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return json_response(status or exc.http_status, {"error": body}, headers)


def credential(request: Request) -> str | None:
    """`Authorization`, else `X-Api-Key` as a Bearer credential (read off the raw header list: the
    edge runs on every request)."""
    authorization: str | None = None
    api_key: str | None = None
    for name, value in request.scope.get("headers") or ():
        if name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
        elif name == b"x-api-key" and api_key is None:
            api_key = value.decode("latin-1")
    if not authorization and api_key:
        return "Bearer " + api_key
    return authorization


async def admitted(svc: Services, request: Request, handle: Handler) -> Response:
    """Authenticate, admit through the gateway, then `handle`; an AppError it raises is answered,
    and so is a database that refused the request (503 UNAVAILABLE, db/outage.py)."""
    try:
        return await _admitted(svc, request, handle)
    except Exception as exc:
        unavailable = Unavailable.of(exc)
        if unavailable is None:
            raise
        log.warning("database unavailable: %s", exc)
        return error_response(unavailable)


async def _admitted(svc: Services, request: Request, handle: Handler) -> Response:
    principal: Principal | None = None
    auth_error: AppError | None = None
    try:
        principal = await authenticate(svc, credential(request))
    except AppError as exc:
        auth_error = exc
    client = request.scope.get("client")  # (host, port); Request.client builds it anew per access
    decision = await gateway.admit(svc, principal, client[0] if client else None)
    if not decision.allowed:
        response = error_response(gateway.rate_limited(decision))
    else:
        try:
            response = await handle(principal, auth_error)
        except AppError as exc:
            response = error_response(exc)
    gateway.apply_headers(response.headers, decision)
    return response
