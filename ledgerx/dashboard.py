"""`/dashboard`: the operator console (plain HTML, CSS and ES modules from ledgerx/static).

No build step and nothing from a CDN. Every file is served with a strict Content-Security-Policy:
scripts and styles only from this origin (no inline script or style), network access only to this
origin (fetch for queries and mutations, the GraphQL websocket for subscriptions), no framing.

Routes:
- `GET /dashboard`: the single page (`static/dashboard.html`).
- `GET /dashboard/{name}`: the page's stylesheet and icon (a fixed list).
- `GET /dashboard/console/{path}`: the console's modules, `static/console/**` with a whitelisted
  extension (.js, .css, .svg); each path segment is a plain name, so nothing outside that folder
  (and no dotfile) can be named.
- `GET /favicon.ico`: the icon browsers ask for by themselves.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

STATIC = Path(__file__).resolve().parent / "static"
CONSOLE = STATIC / "console"
ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
    "favicon.ico": "image/x-icon",
}
CONSOLE_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}$")
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


@functools.cache
def _read(path: Path) -> bytes:
    return path.read_bytes()


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


def _not_found() -> Response:
    return PlainTextResponse("not found", status_code=404)


def console_file(relative: str) -> tuple[Path, str] | None:
    """The file under static/console/ that `relative` names and its content type, or None.

    Only `seg/seg/name.ext` with plain segments (no `..`, no leading dot, no backslash or
    percent-decoded separator surprises) and a whitelisted extension; the resolved path must
    still be inside the folder (symlinks included)."""
    parts = relative.split("/")
    if not parts or len(parts) > 4 or not all(_SEGMENT.match(p) and ".." not in p for p in parts):
        return None
    media_type = CONSOLE_TYPES.get(Path(parts[-1]).suffix)
    if media_type is None:
        return None
    root = CONSOLE.resolve()
    path = root.joinpath(*parts).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path, media_type


async def dashboard_page(request: Request) -> Response:
    return Response(
        _read(STATIC / "dashboard.html"),
        media_type="text/html; charset=utf-8",
        headers=_headers(request, "no-store"),
    )


async def dashboard_asset(request: Request) -> Response:
    name = str(request.path_params.get("name", ""))
    media_type = ASSETS.get(name)
    if media_type is None:
        return _not_found()
    return Response(_read(STATIC / name), media_type=media_type, headers=_headers(request, "no-cache"))


async def console_asset(request: Request) -> Response:
    found = console_file(str(request.path_params.get("path", "")))
    if found is None:
        return _not_found()
    path, media_type = found
    return Response(_read(path), media_type=media_type, headers=_headers(request, "no-cache"))


async def favicon(request: Request) -> Response:
    return Response(
        _read(STATIC / "favicon.ico"), media_type="image/x-icon", headers=_headers(request, "public, max-age=86400")
    )


def routes() -> list[Route]:
    return [
        Route("/dashboard", dashboard_page, methods=["GET"]),
        Route("/dashboard/console/{path:path}", console_asset, methods=["GET"]),
        Route("/dashboard/{name}", dashboard_asset, methods=["GET"]),
        Route("/favicon.ico", favicon, methods=["GET"]),
    ]
