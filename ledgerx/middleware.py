"""Pure ASGI middleware: request ids, security headers and request metrics.

Pure ASGI (not BaseHTTPMiddleware) so websockets pass through and responses are not buffered.
"""

from __future__ import annotations

import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ledgerx import metrics
from ledgerx.logs import request_id_var

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
HSTS = "max-age=63072000; includeSubDomains"


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        https = scope.get("scheme") in ("https", "wss")
        route = scope.get("path", "")
        route = route if route in _KNOWN_ROUTES else "other"
        started = time.perf_counter()
        status = 0

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                h = MutableHeaders(scope=message)
                h["X-Request-Id"] = rid
                for k, v in SECURITY_HEADERS.items():
                    h.setdefault(k, v)
                if https:
                    h.setdefault("Strict-Transport-Security", HSTS)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            request_id_var.reset(token)
            if scope["type"] == "http":
                metrics.HTTP_REQUESTS.labels(route, str(status)).inc()
                metrics.HTTP_LATENCY.labels(route).observe(time.perf_counter() - started)


_KNOWN_ROUTES = {
    "/graphql",
    "/healthz",
    "/readyz",
    "/metrics",
    "/.well-known/jwks.json",
    "/webhooks/stripe",
    "/v1/usage",
    "/dashboard",
}
