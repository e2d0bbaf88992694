"""The strawberry ASGI view: context, websocket authentication, GET and content-type rules."""

from __future__ import annotations

import contextvars
import datetime as dt
from collections.abc import Mapping
from typing import Any

import strawberry
from cross_web import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.types import HTTPMethod
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types.unset import UNSET, UnsetType

from ledgerx import gateway, jsonenc
from ledgerx.context import Context, authenticate
from ledgerx.domain.actor import RequestMeta
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.errors import AppError
from ledgerx.logs import request_id_var
from ledgerx.services import Services

_GRAPHQL_RESPONSE = "application/graphql-response+json"
_wants_graphql_response: contextvars.ContextVar[bool] = contextvars.ContextVar("wants_gql_resp", default=False)


def _client_ip(conn: Request | WebSocket) -> str | None:
    return conn.client.host if conn.client else None


class GraphQLView(GraphQL[Context, None]):
    def __init__(self, services: Services, schema: strawberry.Schema) -> None:
        s = services.settings
        super().__init__(
            schema,
            graphql_ide=None if s.production else "graphiql",
            allow_queries_via_get=True,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
            connection_init_wait_timeout=dt.timedelta(seconds=10),
            max_subscriptions_per_connection=50,
            keep_alive=True,
            keep_alive_interval=15,
            allowed_origins=tuple(o for o in s.cors_origins),
        )
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            accept = dict(scope.get("headers") or []).get(b"accept", b"").decode("latin-1")
            _wants_graphql_response.set(_GRAPHQL_RESPONSE in accept)
            try:
                await super().__call__(scope, receive, send)
            except HTTPException as e:  # pragma: no cover - the parent already maps these
                await PlainTextResponse(e.reason, status_code=e.status_code)(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    async def execute_single(self, request: Request, request_adapter: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_single(request, request_adapter, *args, **kwargs)
        except HTTPException as e:
            method: HTTPMethod = request_adapter.method
            if method == "GET" and "mutation" in e.reason.lower():
                # GraphQL over HTTP: only queries over GET; say which method would work.
                raise _MethodNotAllowed() from e
            raise

    async def run(self, request: Request | WebSocket, context: Any = UNSET, root_value: Any = UNSET) -> Any:
        decision = None
        if isinstance(request, Request):
            # Authenticate once, then spend one token of the caller's bucket before any work.
            principal, auth_error = await authenticate_http(self.services, request)
            request.state.lx_auth = (principal, auth_error)
            decision = await gateway.admit(self.services, principal, _client_ip(request))
            if not decision.allowed:
                return gateway.refused(decision)
        try:
            response = await super().run(request, context, root_value)
        except _MethodNotAllowed:
            response = PlainTextResponse(
                "mutations and subscriptions are not allowed over GET; use POST",
                status_code=405,
                headers={"Allow": "POST"},
            )
        if decision is not None and isinstance(response, Response):
            gateway.apply_headers(response.headers, decision)
        return response

    def encode_json(self, data: object) -> str:
        # Every response and websocket message goes through here (a str: websocket frames must be text).
        return jsonenc.dumps(data)

    def create_response(self, response_data: Any, sub_response: Response) -> Response:
        response = super().create_response(response_data, sub_response)
        if _wants_graphql_response.get():
            response.headers["content-type"] = _GRAPHQL_RESPONSE
        return response

    async def get_context(self, request: Request | WebSocket, response: Response | WebSocket) -> Context:
        meta = RequestMeta(
            request_id=request_id_var.get(),
            ip=_client_ip(request),
            user_agent=request.headers.get("user-agent"),
        )
        ctx = Context(
            services=self.services,
            request=request,
            response=response if isinstance(response, Response) else None,
            meta=meta,
        )
        if isinstance(request, Request):
            ctx.principal, ctx.auth_error = getattr(request.state, "lx_auth", None) or await authenticate_http(
                self.services, request
            )
        return ctx

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """Authenticate from `connection_init`: {"authorization": "Bearer …"}; refuse without it."""
        params: Mapping[str, Any] = context.connection_params or {}
        credential = params.get("authorization") or params.get("Authorization")
        if not credential and params.get("apiKey"):
            credential = "Bearer " + str(params["apiKey"])
        if not isinstance(credential, str) or not credential:
            raise ConnectionRejectionError(
                {"code": "UNAUTHENTICATED", "message": "connection_init needs authorization"}
            )
        try:
            context.principal = await authenticate(self.services, credential)
        except AppError as exc:
            raise ConnectionRejectionError({"code": exc.code, "message": exc.message}) from None
        unset: UnsetType = UNSET
        return unset


async def authenticate_http(services: Services, request: Request) -> tuple[Principal | None, AppError | None]:
    """`Authorization: Bearer …` or `X-Api-Key`; (None, None) when the request carries neither."""
    credential = request.headers.get("authorization")
    if not credential and request.headers.get("x-api-key"):
        credential = "Bearer " + request.headers["x-api-key"]
    if not credential:
        return None, None
    try:
        return await authenticate(services, credential), None
    except AppError as exc:
        return None, exc


class _MethodNotAllowed(Exception):
    pass
