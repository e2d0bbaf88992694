"""The README's examples, extracted and run in order against a live server.

An example is an HTML comment `<!-- example … -->` followed by an optional ```json block (the
variables) and a ```graphql or ```sh block. The comment may say:
- `saves NAME=root.path …`: after an operation whose answer has `root`, keep that value as NAME;
- `as NAME`: send the block with `Authorization: Bearer $NAME` instead of `$TOKEN`;
- `not run: reason`: not sent (it needs a mailed token, Google, …) but validated against the schema.
`$NAME` in a block is replaced by the saved value (in a shell block NAME is an environment
variable). Each operation of a GraphQL block is one request; subscriptions go over the websocket
and their first message is read. Any error fails the test, naming the README line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import graphql
import httpx
import pytest
import websockets

from ledgerx.graphql_schema import build_schema
from ledgerx.settings import Settings
from tests.conftest import LiveServer
from tests.fake_stripe import FakeStripe, stripe_settings

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

EXAMPLE = re.compile(
    r"<!-- example(?P<args>[^>]*?)-->\n"
    r"(?:```json\n(?P<variables>.*?)```\n)?"
    r"```(?P<lang>graphql|sh)\n(?P<body>.*?)```",
    re.S,
)
PLACEHOLDER = re.compile(r"\$([A-Z][A-Z0-9_]*)\b")

# What a new user looks for: each of these root fields must appear in a README example that runs.
MUST_RUN = {
    "signUp", "logIn", "refreshSession", "logOut", "me", "createProject", "projects", "createInvite",
    "createApiKey", "rotateApiKey", "revokeApiKey", "auditLog", "createWallet", "creditWallet", "debitWallet",
    "transferCredits", "refundTransaction", "wallet", "verifyLedger", "defineMetric", "recordUsage",
    "recordUsageBatch", "chargeUsage", "usageSummary", "createBillingRule", "runBillingRule", "billingRule",
    "previewBillingRule", "advanceTestClock", "createCreditPack", "createPlan", "plans", "creditPacks",
    "createCheckoutSession", "subscription", "effectivePlan", "projectAnalytics", "revenueAnalytics",
    "liveMetrics",
}  # fmt: skip
# Root fields that appear in no example at all, and why (anything else missing fails the test).
NOT_SHOWN = {
    "version": "a constant",
    "apiKeyScopes": "the scopes are listed in prose",
    "resendInvite": "a 60 s cool-down after createInvite",
    "webhookEvent": "like webhookEvents",
    "archivePlan": "like archiveCreditPack",
    "heartbeat": "a liveness ping for dashboards",
}


@dataclasses.dataclass
class Example:
    line: int
    lang: str
    body: str
    variables: str | None
    saves: list[tuple[str, str]]
    auth: str
    not_run: str | None


def examples(text: str | None = None) -> list[Example]:
    text = README.read_text(encoding="utf-8") if text is None else text
    out = []
    for m in EXAMPLE.finditer(text):
        args = m["args"].strip()
        not_run = None
        if args.startswith("not run:"):
            not_run = args.removeprefix("not run:").strip()
            args = ""
        auth = "TOKEN"
        if a := re.search(r"\bas ([A-Z][A-Z0-9_]*)", args):
            auth = a[1]
        saves: list[tuple[str, str]] = []
        if s := re.search(r"\bsaves ((?:[A-Z][A-Z0-9_]*=[\w.]+\s*)+)", args):
            saves = [tuple(item.split("=", 1)) for item in s[1].split()]  # type: ignore[misc]
        line = text.count("\n", 0, m.start("body")) + 1
        out.append(Example(line, m["lang"], m["body"], m["variables"], saves, auth, not_run))
    return out


def substitute(text: str, saved: dict[str, Any], line: int) -> str:
    def one(m: re.Match[str]) -> str:
        assert m[1] in saved, f"README line {line}: ${m[1]} is not saved by an earlier example"
        return str(saved[m[1]])

    return PLACEHOLDER.sub(one, text)


def root_fields(body: str) -> set[str]:
    doc = graphql.parse(body)
    return {
        sel.name.value
        for d in doc.definitions
        if isinstance(d, graphql.OperationDefinitionNode)
        for sel in d.selection_set.selections
        if isinstance(sel, graphql.FieldNode)
    }


def test_every_graphql_block_of_the_readme_is_an_example() -> None:
    text = README.read_text(encoding="utf-8")
    blocks = len(re.findall(r"^```graphql$", text, re.M))
    found = [e for e in examples(text) if e.lang == "graphql"]
    assert blocks == len(found), "a ```graphql block without an <!-- example --> comment would never be checked"
    run = [e for e in examples(text) if not e.not_run]
    assert len(run) >= 15


def test_the_readme_shows_every_operation() -> None:
    schema = build_schema()._schema
    every = {
        name
        for root in (schema.query_type, schema.mutation_type, schema.subscription_type)
        if root is not None
        for name in root.fields
    }
    shown: set[str] = set()
    ran: set[str] = set()
    for e in examples():
        if e.lang == "graphql":
            fields = root_fields(e.body)
            shown |= fields
            if not e.not_run:
                ran |= fields
    assert not MUST_RUN - ran, f"no running README example for {sorted(MUST_RUN - ran)}"
    missing = every - shown - set(NOT_SHOWN)
    assert not missing, f"operations with no README example: {sorted(missing)}"
    assert "/v1/usage" in "".join(e.body for e in examples() if e.lang == "sh" and not e.not_run)


def test_examples_that_do_not_run_still_match_the_schema() -> None:
    schema = build_schema()._schema
    for e in examples():
        if e.lang == "graphql" and e.not_run:
            for op in graphql.parse(e.body).definitions:
                errors = graphql.validate(schema, graphql.DocumentNode(definitions=(op,)))
                assert not errors, f"README line {e.line}: {errors}"


def test_the_readme_links_only_what_a_clone_holds() -> None:
    text = README.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        path = (ROOT / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"README links {target}, outside the repository"
        assert path.exists(), f"README links {target}, which a clone does not have"


# -- running them ----------------------------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings, fake: FakeStripe) -> Settings:
    # `ledgerx create-admin` changes the database behind the API's back: no remembered access.
    return stripe_settings(settings, fake, access_cache_ttl=0.0)


def _save(example: Example, data: dict[str, Any], saved: dict[str, Any]) -> None:
    for name, path in example.saves:
        first, *rest = path.split(".")
        if first not in data:
            continue
        value: Any = data[first]
        for part in rest:
            value = value[part]
        assert value is not None, f"README line {example.line}: {path} is null"
        saved[name] = value


async def _subscribe(url: str, token: str | None, query: str, line: int) -> dict[str, Any]:
    async with websockets.connect(url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")]) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "connection_ack"
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
        msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert msg["type"] == "next", f"README line {line}: {msg}"
        await ws.send(json.dumps({"id": "1", "type": "complete"}))
        payload: dict[str, Any] = msg["payload"]
        return payload


async def _run_graphql(example: Example, saved: dict[str, Any], client: httpx.AsyncClient, live: LiveServer) -> int:
    sent = 0
    for op in graphql.parse(example.body).definitions:
        assert isinstance(op, graphql.OperationDefinitionNode)
        # Substituted per operation: an operation may use what the one before it saved.
        query = substitute(graphql.print_ast(op), saved, example.line)
        variables = json.loads(substitute(example.variables, saved, example.line)) if example.variables else {}
        token = saved.get(example.auth)
        assert example.auth == "TOKEN" or token, f"README line {example.line}: nothing saved as {example.auth}"
        if op.operation == graphql.OperationType.SUBSCRIPTION:
            answer = await _subscribe(live.ws_url, token, query, example.line)
        else:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = await client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
            assert r.status_code == 200, f"README line {example.line}: HTTP {r.status_code} {r.text[:500]}"
            answer = r.json()
        if answer.get("errors"):
            pytest.fail(f"README line {example.line}: {query}\n-> {answer['errors']}", pytrace=False)
        _save(example, answer["data"], saved)
        sent += 1
    return sent


async def _run_sh(example: Example, saved: dict[str, Any], live: LiveServer, settings: Settings) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERX_")}
    env.update({k: str(v) for k, v in saved.items()})
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        LEDGERX_URL=live.url,
        DATABASE_URL=str(settings.database_url),
        REDIS_URL=str(settings.redis_url),
        REDIS_PREFIX=settings.redis_prefix,
        LEDGERX_DATA_DIR=str(settings.data_dir),
    )
    proc = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", example.body, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, f"README line {example.line}: exit {proc.returncode}\n{out.decode()[-2000:]}"


async def test_readme_examples_run_in_order(live_server: LiveServer, settings: Settings) -> None:
    saved: dict[str, Any] = {}
    requests = 0
    async with httpx.AsyncClient(base_url=live_server.url, timeout=60) as client:
        for example in examples():
            if example.not_run:
                continue
            if example.lang == "sh":
                await _run_sh(example, saved, live_server, settings)
                requests += 1
            else:
                requests += await _run_graphql(example, saved, client, live_server)
    assert requests >= 60
