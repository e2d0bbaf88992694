"""`/dashboard`: the live dashboard page (plain HTML, CSS and JavaScript from ledgerx/static).

No build step and nothing from a CDN. The page is served with a strict Content-Security-Policy:
scripts and styles only from this origin (no inline script or style), network access only to this
origin (fetch for queries and mutations, the GraphQL websocket for subscriptions), no framing.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


@functools.cache
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def content_security_policy(request: Request) -> str:
    """'self' covers same-origin websockets in current browsers; the explicit ws(s) source is for
    older ones (only a well-formed Host header is echoed)."""
    connect = "'self'"
    host = request.headers.get("host", "")
    if _HOST.match(host):
        connect += f" ws://{host} wss://{host}"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def _headers(request: Request, cache: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": content_security_policy(request),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": cache,
    }


async def dashboard_page(request: Request) -> Response:
    return Response(
        _read("dashboard.html"), media_type="text/html; charset=utf-8", headers=_headers(request, "no-store")
    )


async def dashboard_asset(request: Request) -> Response:
    name = str(request.path_params.get("name", ""))
    media_type = ASSETS.get(name)
    if media_type is None:
        return PlainTextResponse("not found", status_code=404)
    return Response(_read(name), media_type=media_type, headers=_headers(request, "no-cache"))


def routes() -> list[Route]:
    return [
        Route("/dashboard", dashboard_page, methods=["GET"]),
        Route("/dashboard/{name}", dashboard_asset, methods=["GET"]),
    ]
