"""The TypeScript SDK (sdk/typescript, `@ledgerx/client`) against a real LedgerX.

The SDK's own suite (`node --test`, sdk/typescript/test/*.test.mjs) runs against the `live_server`
of this test: it prepares a project on a plan (entitlements `sso` and `monthly_calls`), an API key
with every scope, the owner's access token and a second, rate-limited project, and passes them in
the environment. Also: the README's quick start runs as written, the generated code matches what
`npm run generate` makes from schema.graphql and sdk/operations, `tsc --noEmit` (strict) passes,
and the SDK's version is the server's.

Needs node (20+) and npm; without them these tests skip and say so. `npm ci` runs when
sdk/typescript/node_modules is missing or older than package-lock.json (it needs the npm registry
or a warm cache). Node runs through asyncio subprocesses: the server shares this event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import filecmp
import json
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ledgerx
from ledgerx.services import Services
from tests.conftest import GQL, LiveServer, sign_up
from tests.tenancy_helpers import create_project, make_platform_admin

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "sdk" / "typescript"
README = SDK / "README.md"
TIMINGS: dict[str, float] = {}

ALL_SCOPES = [
    "project:read",
    "usage:read",
    "usage:write",
    "wallets:read",
    "wallets:write",
    "billing:read",
    "billing:write",
    "webhooks:write",
    "entitlements:read",
]

CREATE_API_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }"
DEFINE = "mutation($i: DefineMetricInput!) { defineMetric(input: $i) { key } }"
CREATE_PLAN = "mutation($i: CreatePlanInput!) { createPlan(input: $i) { id } }"
OVERRIDE_PLAN = "mutation($i: OverridePlanInput!) { overridePlan(input: $i) { source } }"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed: the TypeScript SDK's tests need node 20+ and npm")
    return path


async def run(*cmd: str, env: dict[str, str] | None = None, limit_s: float = 600) -> tuple[int, str]:
    """Run a command in sdk/typescript without blocking the event loop; its exit code and output."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=SDK,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # node --test's own children too
        out, _ = await proc.communicate()
        return -1, out.decode(errors="replace") + f"\n[timed out after {limit_s} s]"
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """One `npm ci` and build at a time (other test sessions may share this checkout)."""
    path = Path(tempfile.gettempdir()) / f"ledgerx-sdk-ts-{abs(hash(str(SDK)))}.lock"
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _needs_install() -> bool:
    stamp = SDK / "node_modules" / ".package-lock.json"
    return not stamp.exists() or stamp.stat().st_mtime < (SDK / "package-lock.json").stat().st_mtime


@pytest.fixture(scope="session")
async def sdk() -> Path:
    """sdk/typescript with its dependencies installed (npm ci when needed) and built (dist/)."""
    node = _tool("node")
    npm = _tool("npm")
    code, version = await run(node, "--version")
    major = re.match(r"v(\d+)", version.strip())
    if code != 0 or major is None or int(major.group(1)) < 20:
        pytest.skip(f"the TypeScript SDK needs node 20+, found {version.strip()!r}")
    lock = _install_lock()
    await asyncio.to_thread(lock.__enter__)
    try:
        if _needs_install():
            started = time.monotonic()
            code, out = await run(npm, "ci", "--no-audit", "--no-fund", limit_s=900)
            TIMINGS["npm ci"] = time.monotonic() - started
            assert code == 0, f"npm ci failed (it needs the npm registry or a warm cache):\n{out[-4000:]}"
        started = time.monotonic()
        code, out = await run(npm, "run", "build")
        TIMINGS["build"] = time.monotonic() - started
        assert code == 0, f"npm run build failed:\n{out[-4000:]}"
    finally:
        lock.__exit__(None, None, None)
    return SDK


async def _api_key(gql: GQL, token: str, project_id: str) -> str:
    i = {"projectId": project_id, "name": "sdk-ts", "scopes": ALL_SCOPES}
    return str((await gql.ok(CREATE_API_KEY, {"i": i}, token=token))["createApiKey"]["secret"])


async def _prepare(gql: GQL, services: Services, live: LiveServer) -> dict[str, str]:
    """A project on a plan with entitlements, an API key with every scope, the owner's token, and a
    second project whose API key may make 3 requests per second (for 429s and Retry-After)."""
    admin = await make_platform_admin(gql, services.settings)
    owner = await sign_up(gql)
    project = await create_project(gql, owner, "SDK TS")
    metric = {"projectId": project, "key": "api_calls", "name": "API calls", "aggregation": "SUM", "unitPrice": "1"}
    await gql.ok(DEFINE, {"i": metric}, token=owner.token)
    plan = {
        "name": f"sdk-ts-{os.urandom(4).hex()}",
        "tier": "PRO",
        "interval": "MONTH",
        "price": {"amount": 1000, "currency": "USD"},
        "entitlements": [
            {"featureKey": "sso", "type": "BOOLEAN"},
            {"featureKey": "monthly_calls", "type": "METERED", "metricKey": "api_calls", "limit": "1000000"},
        ],
    }
    plan_id = (await gql.ok(CREATE_PLAN, {"i": plan}, token=admin.token))["createPlan"]["id"]
    await gql.ok(OVERRIDE_PLAN, {"i": {"projectId": project, "planId": plan_id}}, token=admin.token)
    throttled = await create_project(gql, owner, "SDK TS throttled")
    await gql.ok(DEFINE, {"i": {**metric, "projectId": throttled}}, token=owner.token)
    limit = {"projectId": throttled, "rateLimit": {"burst": 3, "perSecond": 3}}
    await gql.ok(OVERRIDE_PLAN, {"i": limit}, token=admin.token)
    return {
        "LEDGERX_URL": live.url,
        "LEDGERX_API_KEY": await _api_key(gql, owner.token, project),
        "LEDGERX_PROJECT_ID": project,
        "LEDGERX_ACCESS_TOKEN": owner.token,
        "LEDGERX_THROTTLED_API_KEY": await _api_key(gql, owner.token, throttled),
        "LEDGERX_METRIC": "api_calls",
    }


def _tap_counts(out: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(r"^# (tests|suites|pass|fail|cancelled|skipped|todo) (\d+)$", out, re.M)}


def _declared_tests() -> int:
    return sum(len(re.findall(r"^\s*test\(", p.read_text(), re.M)) for p in (SDK / "test").glob("*.test.mjs"))


@pytest.mark.background_loops  # the webhook delivery worker sends to the suite's receiver
async def test_the_sdk_suite_passes_against_a_live_server(
    sdk: Path, gql: GQL, services: Services, live_server: LiveServer
) -> None:
    env = await _prepare(gql, services, live_server)
    started = time.monotonic()
    code, out = await run(
        _tool("node"),
        "--test",
        "--test-reporter=tap",
        "--test-concurrency=1",
        *sorted(str(p.relative_to(SDK)) for p in (SDK / "test").glob("*.test.mjs")),
        env=env,
        limit_s=600,
    )
    TIMINGS["node --test"] = time.monotonic() - started
    counts = _tap_counts(out)
    failures = "\n".join(line for line in out.splitlines() if line.startswith("not ok") or "error:" in line)
    assert code == 0, f"node --test failed ({counts}):\n{failures}\n---\n{out[-12000:]}"
    declared = _declared_tests()
    assert declared >= 20, declared
    assert counts.get("pass") == declared, (counts, declared)
    assert counts.get("fail") == 0 and counts.get("skipped") == 0 and counts.get("todo") == 0, counts
    assert counts.get("cancelled") == 0, counts
    print(f"\nTypeScript SDK: {counts}; timings (s): { {k: round(v, 1) for k, v in TIMINGS.items()} }")


def quick_start() -> str:
    """The README's quick start: its first ```js block."""
    match = re.search(r"^```(?:js|javascript|ts|typescript)\n(.*?)^```", README.read_text(), re.S | re.M)
    assert match, "sdk/typescript/README.md has no ```js quick start"
    return match.group(1)


def test_the_quick_start_is_at_most_ten_lines() -> None:
    code = [line for line in quick_start().splitlines() if line.strip() and not line.strip().startswith("//")]
    assert 3 <= len(code) <= 10, code


async def test_the_readme_quick_start_runs(
    sdk: Path, gql: GQL, services: Services, live_server: LiveServer, tmp_path: Path
) -> None:
    env = await _prepare(gql, services, live_server)
    # A project of the reader's own: the package is installed under its name (a link to sdk/).
    modules = tmp_path / "node_modules" / "@ledgerx"
    modules.mkdir(parents=True)
    (modules / "client").symlink_to(sdk, target_is_directory=True)
    script = tmp_path / "quickstart.mjs"
    script.write_text(quick_start())
    proc = await asyncio.create_subprocess_exec(
        _tool("node"),
        str(script),
        cwd=tmp_path,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == ["750", "INSUFFICIENT_FUNDS"], (out.decode(), err.decode())
    # What it did is in the books: the wallet it made holds 750 after the debit it printed.
    me = await gql.ok(
        "query($p: ID!) { wallets(projectId: $p) { nodes { name balance } } }",
        {"p": env["LEDGERX_PROJECT_ID"]},
        headers={"Authorization": f"Bearer {env['LEDGERX_API_KEY']}"},
    )
    assert [w["balance"] for w in me["wallets"]["nodes"] if w["name"] == "Ada"] == ["750"]


async def test_generated_code_matches_the_schema_and_operations(sdk: Path, tmp_path: Path) -> None:
    """`npm run generate` into a temporary directory makes exactly the committed src/generated/."""
    out = tmp_path / "generated"
    code, log = await run(_tool("npm"), "run", "generate", env={"LEDGERX_CODEGEN_OUT": str(out)}, limit_s=300)
    assert code == 0, log[-4000:]
    committed = SDK / "src" / "generated"
    names = sorted(p.name for p in committed.iterdir())
    assert names == sorted(p.name for p in out.iterdir()) == ["graphql.ts", "operations.ts"], names
    drifted = [n for n in names if not filecmp.cmp(committed / n, out / n, shallow=False)]
    assert not drifted, (
        f"sdk/typescript/src/generated/{drifted} differ from what schema.graphql and sdk/operations generate: "
        "run `make sdk` (npm run generate in sdk/typescript) and commit the result"
    )


async def test_the_sdk_typechecks_strictly(sdk: Path) -> None:
    config = json.loads((sdk / "tsconfig.json").read_text())
    assert config["compilerOptions"]["strict"] is True
    code, out = await run(_tool("npm"), "run", "typecheck", limit_s=300)
    assert code == 0, out[-6000:]


def test_the_sdk_version_follows_the_server() -> None:
    package: dict[str, Any] = json.loads((SDK / "package.json").read_text())
    assert package["name"] == "@ledgerx/client"
    assert package["version"] == ledgerx.__version__
    assert f'VERSION = "{ledgerx.__version__}"' in (SDK / "src" / "version.ts").read_text()
    lock: dict[str, Any] = json.loads((SDK / "package-lock.json").read_text())
    assert lock["version"] == ledgerx.__version__
