"""`/dashboard`, the operator console: its files are served with a strict CSP and nothing else is
(no path traversal, whitelisted types), `/favicon.ico` exists, and the Overview page (the live
dashboard of old) follows a project's numbers in headless Chromium (tests/browser.py).

The console's other pages are driven in tests/test_console.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from graphql import parse, validate

from ledgerx.dashboard import CONSOLE, STATIC, console_file
from ledgerx.graphql_schema import build_schema
from ledgerx.schema.cost import document_cost
from ledgerx.settings import Settings
from tests.browser import chromium, console_problems, console_sign_in
from tests.conftest import GQL, LiveServer, sign_up
from tests.test_live_support import live_project, live_settings, record_usage


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return live_settings(settings)


def _strict(r: httpx.Response) -> None:
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self';" in csp
    assert "style-src 'self';" in csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_the_page_loads_only_same_origin_modules_under_a_strict_policy(client: httpx.AsyncClient) -> None:
    r = await client.get("/dashboard")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    _strict(r)
    assert "connect-src 'self' ws://testserver wss://testserver" in r.headers["content-security-policy"]
    html = r.text
    assert '<script type="module" src="/dashboard/console/app.js"></script>' in html
    # No inline script, style or handler, nothing from another origin.
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []
    assert "<style" not in html and " style=" not in html
    assert re.findall(r"\son[a-z]+=", html) == []
    assert "http://" not in html and "https://" not in html
    # The landmarks and the regions the shell fills.
    for needle in ('<header id="header"', '<nav id="nav"', '<main id="main"', 'id="page"', 'id="signin-form"'):
        assert needle in html
    # Every input of the page's own form has a label.
    for input_id in re.findall(r'<input id="([^"]+)"', html):
        assert f'<label for="{input_id}">' in html
    # A forged Host header is not echoed into the policy.
    odd = await client.get("/dashboard", headers={"host": "evil.example; script-src *"})
    assert "evil" not in odd.headers["content-security-policy"]


async def test_every_module_import_resolves_to_a_served_module(client: httpx.AsyncClient) -> None:
    """Walk the import graph from app.js as the browser would: each module is served as
    JavaScript with the same headers, and each relative import names a file that is served."""
    seen: set[str] = set()
    todo = ["/dashboard/console/app.js"]
    while todo:
        url = todo.pop()
        if url in seen:
            continue
        seen.add(url)
        r = await client.get(url)
        assert r.status_code == 200, url
        assert r.headers["content-type"] == "text/javascript; charset=utf-8", url
        _strict(r)
        for spec in re.findall(
            r"""(?:^|\n)\s*(?:import|export)\b[^'"\n;]*?from\s*["']([^"']+)["']""", r.text
        ) + re.findall(r"""import\(\s*["']([^"']+)["']\s*\)""", r.text):
            assert spec.startswith("./") or spec.startswith("../"), (url, spec)  # nothing from elsewhere
            todo.append(str(Path(url).parent.joinpath(spec)).replace("\\", "/"))
            todo[-1] = re.sub(r"/[^/]+/\.\./", "/", todo[-1].replace("/./", "/"))
    names = {u.rsplit("/console/", 1)[1] for u in seen}
    assert {"app.js", "api.js", "ui.js", "pages/index.js", "admin/index.js"} <= names
    # Every tenant page module on disk is reachable from the entry point.
    for path in (CONSOLE / "pages").glob("*.js"):
        assert f"pages/{path.name}" in names, path.name


async def test_only_whitelisted_files_inside_the_console_folder_are_served(client: httpx.AsyncClient) -> None:
    css = await client.get("/dashboard/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    _strict(css)
    svg = await client.get("/dashboard/favicon.svg")
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml"
    assert svg.content.startswith(b"<svg")
    for bad in (
        "/dashboard/dashboard.js",  # the old script is gone
        "/dashboard/nope.js",
        "/dashboard/..%2Fdashboard.py",
        "/dashboard/console/nope.js",
        "/dashboard/console/../dashboard.py",
        "/dashboard/console/..%2F..%2Fdashboard.py",
        "/dashboard/console/%2e%2e/%2e%2e/dashboard.py",
        "/dashboard/console/pages/..%2F..%2F..%2Fsettings.py",
        "/dashboard/console/pages",
        "/dashboard/console/",
        "/dashboard/console/app.py",
        "/dashboard/console/app.js.map",
        "/dashboard/console/.app.js",
        "/dashboard/console/pages\\..\\app.js",
        "/dashboard/console//etc/passwd.js",
    ):
        r = await client.get(bad)
        assert r.status_code == 404, bad
        assert b"import" not in r.content and b"Settings" not in r.content, bad
    # The resolver itself, below the router's own normalization.
    assert console_file("app.js") == (CONSOLE.resolve() / "app.js", "text/javascript; charset=utf-8")
    for bad in ("../dashboard.py", "pages/../../dashboard.py", "/etc/passwd.js", "pages/..", "", "a/b/c/d/e.js"):
        assert console_file(bad) is None, bad


_CONST = re.compile(r"""\bconst\s+([A-Z][A-Z0-9_]*)\s*=\s*(`[^`]*`|"[^"\n]*")""")
_DOCUMENT = re.compile(r"`\s*((?:query|mutation|subscription)\b[^`]*)`")


def _expand(text: str, consts: dict[str, str], depth: int = 0) -> str:
    if depth > 5:
        return text
    return re.sub(r"\$\{([A-Z][A-Z0-9_]*)\}", lambda m: _expand(consts[m.group(1)], consts, depth + 1), text)


def console_documents() -> list[tuple[str, str]]:
    """Every GraphQL document in the console's modules (tenant and admin pages), with the
    `${NAME}` pieces they share (field lists) filled in from the same file's constants."""
    out = []
    for path in sorted(CONSOLE.rglob("*.js")):
        source = path.read_text()
        consts = {name: value[1:-1] for name, value in _CONST.findall(source)}
        for found in _DOCUMENT.finditer(source):
            out.append((f"{path.relative_to(CONSOLE)}", _expand(found.group(1), consts)))
    return out


def test_every_console_query_is_valid_and_under_the_cost_limit() -> None:
    """What a page sends is valid against the schema and within the API's cost limit (fields
    times page sizes), or the page would only show an error."""
    schema = build_schema()._schema
    limit = Settings().graphql_max_cost
    documents = console_documents()
    files = {f for f, _ in documents}
    assert {"api.js", "pages/overview.js", "pages/rules.js", "pages/runs.js", "pages/webhooks.js"} <= files, files
    assert len(documents) >= 40
    for where, text in documents:
        assert "${" not in text, (where, text)
        document = parse(text)
        assert validate(schema, document) == [], (where, text)
        assert document_cost(schema, document) <= limit, (where, document_cost(schema, document), text)


async def test_favicon_ico_is_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/favicon.ico")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/x-icon"
    assert r.content[:4] == b"\x00\x00\x01\x00"  # an ICO header
    assert r.content == (STATIC / "favicon.ico").read_bytes()


def _value(element_id: str) -> str:
    return f"document.getElementById({json.dumps(element_id)}).dataset.value"


async def test_overview_follows_the_live_numbers_with_one_axis_per_metric(gql: GQL, live_server: LiveServer) -> None:
    owner = await sign_up(gql)
    p = await live_project(gql, owner, credit=100000, metrics=("api_calls", "tokens"))
    async with chromium() as page:
        await console_sign_in(page, live_server.url, owner.email, owner.password)
        # One project: it is picked and the Overview is the landing page.
        assert await page.eval("location.hash") == "#/overview"
        assert await page.eval("document.getElementById('project-picker').value") == p.project_id
        await page.wait_for("document.getElementById('status').dataset.state === 'live'")
        await page.wait_for(f"{_value('total-balance')} === '100000'")
        assert await page.eval(_value("spend-today")) == "0"
        assert await page.eval(_value("usage-events")) == "0"
        assert await page.eval("document.getElementById('total-balance').textContent") == "100,000"
        assert await page.eval("document.querySelectorAll('#metrics-table tbody tr').length") == 2
        assert await page.eval("document.title") == "Overview · LedgerX console"

        # Usage recorded through the API: the numbers and the charts move.
        await record_usage(gql, owner.token, p.project_id, 3, wallet_id=p.wallet_id)
        await page.wait_for(f"{_value('spend-today')} === '3'")
        await record_usage(gql, owner.token, p.project_id, 4000, wallet_id=p.wallet_id, metric="tokens")
        await page.wait_for(f"{_value('usage-units')} === '4003'")
        assert await page.eval(_value("total-balance")) == "95997"
        # Tokens and API calls do not share a y-axis: each metric has its own chart and scale, so
        # 3 calls are not a flat line under 4,000 tokens.
        charts = await page.eval(
            """[...document.querySelectorAll('#usage-charts canvas')].map((c) =>
                 [c.dataset.metric, c.dataset.last, c.dataset.ymax])"""
        )
        assert sorted(charts) == [["api_calls", "3", "5"], ["tokens", "4000", "5000"]]
        assert (
            await page.eval(
                "document.querySelector('#metrics-table tr[data-metric=\"tokens\"]').cells[2].dataset.value"
            )
            == "4000"
        )
        assert await page.eval("document.getElementById('balance-chart').dataset.bars") == "1"
        assert int(await page.eval(_value("message-count"))) >= 3
        assert console_problems(page) == []
