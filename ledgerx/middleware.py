"""Pure ASGI middleware: request ids, security headers, request metrics and the request log; CORS
for the requests that need it.

Pure ASGI (not BaseHTTPMiddleware) so websockets pass through and responses are not buffered.
Each request is logged once, as JSON, when it ends (a websocket when it closes); uvicorn's own
access log stays off.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledgerx import metrics
from ledgerx.dashboard import ASSETS as DASHBOARD_ASSETS
from ledgerx.logs import request_id_var, request_info_var

access_log = logging.getLogger("ledgerx.access")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
HSTS = "max-age=63072000; includeSubDomains"
# Encoded once: every response gets them (unless it set its own), appended to the raw header list
# (MutableHeaders' setdefault scans the list once per header).
_SECURITY_RAW = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]
_HSTS_RAW = (b"strict-transport-security", HSTS.encode("latin-1"))


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming_id = b""
        cross_origin = False
        for name, value in scope.get("headers") or ():
            if name == b"x-request-id":
                incoming_id = value
            elif name == b"origin":
                cross_origin = True
        incoming = incoming_id.decode("latin-1")
        rid = incoming if incoming and _SAFE_ID.match(incoming) else os.urandom(16).hex()  # a uuid4's hex length
        token = request_id_var.set(rid)
        info: dict[str, Any] = {}
        info_token = request_info_var.set(info)
        https = scope.get("scheme") in ("https", "wss")
        route = scope.get("path", "")
        if route not in _KNOWN_ROUTES:
            if route.startswith("/v1/entitlements/"):
                route = _ENTITLEMENT_ROUTE
            elif route.startswith("/dashboard/console/"):
                route = _CONSOLE_ROUTE
            else:
                route = "other"
        started = time.perf_counter()
        status = 0
        close_code: int | None = None

        async def send_wrapper(message: Message) -> None:
            nonlocal status, close_code
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                raw = list(message.get("headers") or ())
                present = {name for name, _ in raw}
                if b"x-request-id" in present:
                    raw = [(n, v) for n, v in raw if n != b"x-request-id"]
                raw.append((b"x-request-id", rid.encode("latin-1")))
                raw.extend(h for h in _SECURITY_RAW if h[0] not in present)
                if https and _HSTS_RAW[0] not in present:
                    raw.append(_HSTS_RAW)
                if not cross_origin:  # CrossOrigin let it skip CORS, which would have added this
                    raw.append(_VARY_ORIGIN)
                message["headers"] = raw
            elif kind == "websocket.accept":
                status = 101
            elif kind == "websocket.close":
                close_code = message.get("code", 1000)
                status = status or 403  # closed before accepting: the handshake was refused
            await send(message)

        async def receive_wrapper() -> Message:
            nonlocal close_code
            message = await receive()
            if message["type"] == "websocket.disconnect" and close_code is None:
                close_code = message.get("code", 1005)
            return message

        try:
            await self.app(scope, receive_wrapper if scope["type"] == "websocket" else receive, send_wrapper)
        except BaseException:
            status = status or 500  # what uvicorn answers for an exception before the response started
            raise
        finally:
            elapsed = time.perf_counter() - started
            _log_request(scope, status, elapsed, info, close_code)
            request_info_var.reset(info_token)
            request_id_var.reset(token)
            if scope["type"] == "http":
                _counted(route, status).inc()
                _timed(route).observe(elapsed)


# The metrics' labelled children, looked up once (labels() costs a lock and a tuple per request).
@functools.cache
def _counted(route: str, status: int) -> Any:
    return metrics.HTTP_REQUESTS.labels(route, str(status))


@functools.cache
def _timed(route: str) -> Any:
    return metrics.HTTP_LATENCY.labels(route)


def _log_request(scope: Scope, status: int, elapsed: float, info: dict[str, Any], close_code: int | None) -> None:
    """One JSON line per request (the formatter adds the request id). The path without its query
    string: a GET /graphql carries variables there, and they may hold secrets."""
    level = logging.WARNING if status >= 500 else logging.INFO
    if not access_log.isEnabledFor(level):  # LOG_LEVEL=WARNING turns the request log off
        return
    fields: dict[str, Any] = {
        "method": scope.get("method", "GET") if scope["type"] == "http" else "WS",
        "path": scope.get("path", ""),
        "status": status,
        "duration_ms": round(elapsed * 1000, 2),
    }
    client = scope.get("client")
    if client:
        fields["client"] = client[0]
    names: list[str] = info.get("names", [])
    if scope["type"] == "http":
        if names:
            fields["operation"] = names[0]
    else:
        fields["close_code"] = close_code
        fields["operations"] = info.get("count", 0)
        if names:
            fields["operation_names"] = names
    access_log.log(level, "request" if scope["type"] == "http" else "websocket", extra=fields)


_ENTITLEMENT_ROUTE = "/v1/entitlements/{featureKey}"  # one label, whatever the feature
_CONSOLE_ROUTE = "/dashboard/console/{path}"  # the console's modules, one label
_KNOWN_ROUTES = {
    "/graphql",
    "/healthz",
    "/readyz",
    "/metrics",
    "/.well-known/jwks.json",
    "/webhooks/stripe",
    "/v1/usage",
    "/v1/transactions",
    "/v1/entitlements",
    "/dashboard",
    # The console's assets and the icon browsers ask for on their own, so they are told apart
    # from unknown paths, whose label is "other".
    *(f"/dashboard/{name}" for name in DASHBOARD_ASSETS),
    "/favicon.ico",
}


class CrossOrigin:
    """Starlette's CORS for the requests that carry an `Origin` (browsers); the rest (backends,
    SDKs, curl) skip it (CORS cost every request a header parse and a send wrapper). RequestContext,
    outside it, gives those the `Vary: Origin` CORS would have added, so a shared cache never serves
    their answer to a browser."""

    def __init__(self, app: ASGIApp, /, **options: Any) -> None:
        self.app = app
        self.cors = CORSMiddleware(app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or any(name == b"origin" for name, _ in scope.get("headers") or ()):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


_VARY_ORIGIN = (b"vary", b"Origin")
