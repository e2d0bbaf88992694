"""The strawberry ASGI view: context, websocket authentication, GET and content-type rules.

Request bodies are read through ledgerx/http/jsonbody.py (capped at GRAPHQL_MAX_BODY, bounded
nesting); a body that cannot be used is a JSON error with `BAD_USER_INPUT`, 400 or 413. With
`Accept: application/graphql-response+json`, a request error (the document does not parse or
validate, variables do not coerce: nothing was executed) is a 400 without a `data` entry, as the
GraphQL-over-HTTP specification says; with `application/json` it stays a 200.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
from collections.abc import Mapping
from typing import Any

import strawberry
from cross_web import HTTPException, StarletteRequestAdapter
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.http.parse_content_type import parse_content_type
from strawberry.http.types import HTTPMethod
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL
from strawberry.types import ExecutionResult
from strawberry.types.unset import UNSET, UnsetType

from ledgerx import gateway, jsonenc
from ledgerx.context import Context, authenticate, authenticate_now
from ledgerx.domain.actor import RequestMeta
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.errors import AppError, Unavailable
from ledgerx.http import jsonbody
from ledgerx.logs import request_id_var
from ledgerx.services import Services
from ledgerx.ws import TransportWSHandler

log = logging.getLogger("ledgerx.graphql")

_GRAPHQL_RESPONSE = "application/graphql-response+json"
_wants_graphql_response: contextvars.ContextVar[bool] = contextvars.ContextVar("wants_gql_resp", default=False)


def _client_ip(conn: Request | WebSocket) -> str | None:
    return conn.client.host if conn.client else None


class _CappedBodyAdapter(StarletteRequestAdapter):
    """Strawberry reads the body through its request adapter: this one stops at `max_body`."""

    max_body = 1024 * 1024  # each view sets its own (GraphQLView.__init__)

    def __init__(self, request: Request) -> None:
        super().__init__(request)
        self.starlette_request = request

    async def get_body(self) -> bytes:
        return await jsonbody.read_body(self.starlette_request, self.max_body)


class GraphQLView(GraphQL[Context, None]):
    # graphql-transport-ws: each operation authorized as it arrives, the socket closed when its
    # credential dies, server pings (ledgerx/ws.py).
    graphql_transport_ws_handler_class = TransportWSHandler

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

        class Adapter(_CappedBodyAdapter):
            max_body = s.graphql_max_body

        self.request_adapter_class = Adapter

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
            try:
                principal, auth_error = await authenticate_http(self.services, request)
            except Exception as exc:  # an API key is looked up in the database
                unavailable = Unavailable.of(exc)
                if unavailable is None:
                    raise
                log.warning("database unavailable: %s", exc)
                return _error_response(unavailable)
            decision = await gateway.admit(self.services, principal, _client_ip(request))
            if decision.flagged:
                # The token verifies but its session was revoked (read by the same Redis call).
                principal, auth_error = None, gateway.session_revoked()
            request.state.lx_auth = (principal, auth_error)
            if not decision.allowed:
                refused = _error_response(gateway.rate_limited(decision))
                gateway.apply_headers(refused.headers, decision)
                return refused
        try:
            response = await super().run(request, context, root_value)
        except jsonbody.BodyError as exc:
            response = _body_error(exc)
        except _MethodNotAllowed:
            response = PlainTextResponse(
                "mutations and subscriptions are not allowed over GET; use POST",
                status_code=405,
                headers={"Allow": "POST"},
            )
        if decision is not None and isinstance(response, Response):
            gateway.apply_headers(response.headers, decision)
        return response

    async def parse_http_body(self, request_adapter: Any) -> GraphQLRequestData | list[GraphQLRequestData]:
        content_type, _ = parse_content_type(request_adapter.content_type or "")
        if request_adapter.method != "POST" or "application/json" not in content_type:
            return await super().parse_http_body(request_adapter)
        data = self.parse_json(await request_adapter.get_body())
        # Strawberry's own checks, as JSON errors; and a body that is not an object (null, a
        # string, a list: batches are not enabled) is refused here instead of failing inside it.
        if not isinstance(data, dict):
            raise jsonbody.BodyError(400, 'the body must be one JSON object: {"query": "…", "variables": {…}}')
        for key, kinds, expected in (
            ("query", (str,), "a string"),
            ("operationName", (str,), "a string"),
            ("variables", (dict,), "an object"),
            ("extensions", (dict,), "an object"),
        ):
            if data.get(key) is not None and not isinstance(data[key], kinds):
                raise jsonbody.BodyError(400, f"`{key}` must be {expected} or null", (key,))
        return GraphQLRequestData(
            query=data.get("query"),
            variables=data.get("variables"),
            operation_name=data.get("operationName"),
            extensions=data.get("extensions"),
            protocol="http",
        )

    def parse_json(self, data: str | bytes) -> Any:
        # HTTP bodies and GET's `variables`/`extensions`: bounded nesting, errors as JSON 400s.
        # Strings are checked for NUL and lone surrogates later, as GraphQL variables
        # (schema/pipeline.py), for HTTP and websockets alike.
        return jsonbody.loads(data, check_text=False)

    def decode_json(self, data: str | bytes) -> object:
        # Websocket messages: the same nesting bound; strawberry closes the socket (4400) on
        # a message that does not decode.
        try:
            return jsonbody.loads(data, check_text=False)
        except jsonbody.BodyError as exc:
            raise json.JSONDecodeError(exc.message, data if isinstance(data, str) else "", 0) from None

    async def process_result(self, request: Request, result: ExecutionResult) -> GraphQLHTTPResponse:
        response = await super().process_result(request, result)
        if _wants_graphql_response.get() and _is_request_error(result):
            del response["data"]  # "the server SHOULD NOT include a data entry" (create_response: 400)
        return response

    def encode_json(self, data: object) -> str:
        # Every response and websocket message goes through here (a str: websocket frames must be text).
        return jsonenc.dumps(data)

    def create_response(self, response_data: Any, sub_response: Response) -> Response:
        response = super().create_response(response_data, sub_response)
        if _wants_graphql_response.get():
            response.headers["content-type"] = _GRAPHQL_RESPONSE
            if isinstance(response_data, dict) and "data" not in response_data:
                response.status_code = 400  # a request error (process_result)
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
            context.principal = await authenticate_now(self.services, credential)
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


def _is_request_error(result: ExecutionResult) -> bool:
    """Nothing was executed: the document did not parse or validate, or the variables did not
    coerce. Such errors have no path; a field error always has one, even when data is null."""
    return result.data is None and bool(result.errors) and all(e.path is None for e in result.errors or ())


def _error_response(exc: AppError) -> Response:
    """An error before execution (a refused rate limit, a database refusing to authenticate),
    GraphQL-shaped so clients handle it like any other, with its HTTP status and Retry-After."""
    body = {"data": None, "errors": [{"message": exc.message, "extensions": exc.extensions}]}
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return Response(jsonenc.dumps(body), status_code=exc.http_status, media_type="application/json", headers=headers)


def _body_error(exc: jsonbody.BodyError) -> Response:
    extensions: dict[str, object] = {"code": "BAD_USER_INPUT"}
    if exc.field:
        extensions["field"] = exc.field
    media_type = _GRAPHQL_RESPONSE if _wants_graphql_response.get() else "application/json"
    body = {"errors": [{"message": exc.message, "extensions": extensions}]}
    return Response(jsonenc.dumps(body), status_code=exc.status, media_type=media_type)
