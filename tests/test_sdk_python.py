"""The Python SDK (sdk/python, `ledgerx_client`) against a live LedgerX (issue #18).

The server runs in this test's event loop (`live_server`), so the blocking client is called
through `asyncio.to_thread`. Faults are injected only on the client's side of the wire (an httpx
transport that loses a real answer); everything else is the real server, database and Redis.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import re
import secrets
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import ledgerx_client
import pytest
from graphql import build_schema, concat_ast, parse, validate
from ledgerx_client import (
    AsyncLedgerX,
    BadUserInputError,
    ForbiddenError,
    IdempotencyConflictError,
    InsufficientFundsError,
    LedgerX,
    LedgerXError,
    NetworkError,
    NotFoundError,
    RetryEvent,
    RetryPolicy,
    UnauthenticatedError,
    WebhookVerificationError,
    verify_webhook,
)
from standardwebhooks.webhooks import Webhook

import ledgerx
from ledgerx import ids
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, LiveServer, sign_up
from tests.tenancy_helpers import create_project, owner_sql
from tests.webhooks_out_receiver import Receiver, running_receiver

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "sdk" / "python"
OPERATIONS = ROOT / "sdk" / "operations"
VENV_BIN = Path(sys.executable).parent
KEY_SCOPES = [
    "wallets:read",
    "wallets:write",
    "usage:read",
    "usage:write",
    "billing:read",
    "billing:write",
    "entitlements:read",
    "webhooks:write",
    "project:read",
]
CREATE_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { secret } }"
FAST = RetryPolicy(max_attempts=4, backoff=0.01, max_backoff=0.05)


class Tenant:
    """A signed-up owner, their project and an API key of it (all scopes above)."""

    def __init__(self, server: LiveServer, token: str, project_id: str, api_key: str) -> None:
        self.server = server
        self.token = token
        self.project_id = project_id
        self.api_key = api_key

    def client(self, **kw: Any) -> LedgerX:
        kw.setdefault("retry", FAST)
        return LedgerX(self.server.url, api_key=self.api_key, **kw)

    def async_client(self, **kw: Any) -> AsyncLedgerX:
        kw.setdefault("retry", FAST)
        return AsyncLedgerX(self.server.url, api_key=self.api_key, **kw)

    def admin(self) -> AsyncLedgerX:
        """The owner, signed in (operations API keys may not do: metrics, grants, invoices)."""
        return AsyncLedgerX(self.server.url, access_token=self.token, retry=FAST)


async def new_tenant(gql: GQL, server: LiveServer, rate_limit: tuple[int, float] | None = None) -> Tenant:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    if rate_limit is not None:  # before the key's first request, so no instance has cached the limit
        burst, per_second = rate_limit
        await owner_sql(
            server.services.settings,
            "UPDATE projects SET overrides = coalesce(overrides, '{}'::jsonb) || $2::jsonb WHERE id = $1",
            ids.decode("project", pid, "projectId"),
            json.dumps({"rateLimit": {"burst": burst, "perSecond": per_second}}),
        )
    made = await gql.ok(CREATE_KEY, {"i": {"projectId": pid, "name": "sdk", "scopes": KEY_SCOPES}}, token=owner.token)
    return Tenant(server, owner.token, pid, made["createApiKey"]["secret"])


@pytest.fixture
def usage_max_batch() -> int | None:
    """The server's USAGE_MAX_BATCH for a test that parametrizes it (else the default)."""
    return None


@pytest.fixture
def settings(settings: Settings, usage_max_batch: int | None) -> Settings:
    return settings if usage_max_batch is None else dataclasses.replace(settings, usage_max_batch=usage_max_batch)


@pytest.fixture
async def tenant(gql: GQL, live_server: LiveServer) -> Tenant:
    return await new_tenant(gql, live_server)


def quick_start() -> str:
    readme = (SDK / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    return blocks[0]


# -- generation, documents, versions, types ------------------------------------------------------


def test_every_document_validates_against_the_schema() -> None:
    schema = build_schema((ROOT / "schema.graphql").read_text())
    files = sorted(OPERATIONS.glob("*.graphql"))
    document = concat_ast([parse(p.read_text()) for p in files])
    assert validate(schema, document) == []
    names = {
        d.name.value
        for d in document.definitions
        if getattr(d, "operation", None) is not None and d.name is not None  # type: ignore[attr-defined]
    }
    # the areas a backend needs, each with its operations
    for needed in (
        "CreateWallet",
        "DebitWallet",
        "CreditWallet",
        "TransferCredits",
        "RefundTransaction",
        "RecordUsageBatch",
        "CreateBillingRule",
        "PreviewBillingRule",
        "PauseBillingRule",
        "GrantCredits",
        "Entitlement",
        "Invoices",
        "CreateWebhookEndpoint",
        "WalletUpdated",
        "TransactionPosted",
    ):
        assert needed in names, needed
    assert {p.stem for p in files} >= {
        "wallets",
        "transactions",
        "usage",
        "billing",
        "grants",
        "entitlements",
        "invoices",
        "webhooks",
        "subscriptions",
    }


def test_generated_code_matches_a_fresh_generation(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SDK / "generate.py"), "--out", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    committed = SDK / "ledgerx_client" / "_generated"
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.py")}
    assert set(fresh) == {p.name for p in committed.glob("*.py")}
    for name, text in fresh.items():
        assert (committed / name).read_text() == text, (
            f"{name} drifted from schema.graphql/sdk/operations: run .venv/bin/python sdk/python/generate.py"
        )


def test_generation_fails_on_a_document_the_schema_does_not_have(tmp_path: Path) -> None:
    ops = tmp_path / "ops"
    ops.mkdir()
    (ops / "bad.graphql").write_text("query Nope { wallet(id: 1) { noSuchField } }")
    done = subprocess.run(
        [sys.executable, str(SDK / "generate.py"), "--out", str(tmp_path / "out"), "--operations", str(ops)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and "noSuchField" in done.stderr


def test_the_version_follows_the_server() -> None:
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    sdk = tomllib.loads((SDK / "pyproject.toml").read_text())["project"]["version"]
    assert server == sdk == ledgerx_client.__version__ == ledgerx.__version__


async def test_mypy_strict_passes_on_the_package_and_the_quick_start_and_catches_misuse(tmp_path: Path) -> None:
    (tmp_path / "quick_start.py").write_text(quick_start())
    (tmp_path / "typed_use.py").write_text(
        "import contextlib\n"
        "from ledgerx_client import AsyncLedgerX, IngestResult, verify_webhook\n"
        "from ledgerx_client.types import TransactionFields\n\n"
        "async def follow(client: AsyncLedgerX, project_id: str) -> list[TransactionFields]:\n"
        "    seen: list[TransactionFields] = []\n"
        "    async with contextlib.aclosing(client.transaction_posted(project_id)) as txs:\n"
        "        async for tx in txs:\n"
        "            seen.append(tx)\n"
        "    return seen\n\n"
        "async def ingest(client: AsyncLedgerX) -> IngestResult:\n"
        '    return await client.usage.ingest([{"metricKey": "calls", "units": 1}], batch_size=10)\n\n'
        "def check(secret: str, body: bytes, headers: dict[str, str]) -> object:\n"
        "    return verify_webhook(secret, body, headers)\n"
    )
    (tmp_path / "misuse.py").write_text(
        "from ledgerx_client import LedgerX\n\n"
        "def f(client: LedgerX) -> int:\n"
        '    tx = client.debit_wallet(wallet_id="w", amount=1)\n'
        '    return tx["balanceAfter"]\n\n'
        "def g(client: LedgerX) -> object:\n"
        '    return client.debit_wallet(wallet_id="w", amount=1.5)["nope"]\n'
    )

    async def mypy(*paths: Path) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "mypy"),
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            *map(str, paths),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode()

    code, out = await mypy(SDK / "ledgerx_client", tmp_path / "quick_start.py", tmp_path / "typed_use.py")
    assert code == 0, out
    code, out = await mypy(tmp_path / "misuse.py")
    assert code != 0
    assert 'Incompatible return value type (got "str", expected "int")' in out, out  # amounts are exact strings
    assert 'has no key "nope"' in out, out
    assert 'Argument "amount"' in out, out  # a float is no amount


# -- the quick start, live -----------------------------------------------------------------------


async def test_the_readme_quick_start_runs(tenant: Tenant) -> None:
    code = quick_start()
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        env={**os.environ, "LEDGERX_URL": tenant.server.url, "LEDGERX_API_KEY": tenant.api_key},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "750"


# -- wallets and transactions --------------------------------------------------------------------


async def test_wallets_and_transactions_with_the_blocking_client(tenant: Tenant) -> None:
    def run() -> None:
        with tenant.client() as client:
            wallet = client.create_wallet(project_id=tenant.project_id, name="main")
            assert (wallet["balance"], wallet["currency"]) == ("0", "CREDITS")
            credit = client.credit_wallet(wallet_id=wallet["id"], amount=1000, reason="top up")
            assert (credit["type"], credit["balanceAfter"]) == ("CREDIT", "1000")
            assert len(credit["idempotencyKey"]) == 36  # a uuid4 was made up

            debit = client.debit_wallet(wallet_id=wallet["id"], amount="300", idempotency_key="order-1")
            again = client.debit_wallet(wallet_id=wallet["id"], amount="300", idempotency_key="order-1")
            assert again["id"] == debit["id"] and debit["balanceAfter"] == "700"
            assert client.wallet(wallet["id"])["balance"] == "700"  # the replay moved nothing

            with pytest.raises(IdempotencyConflictError) as conflict:
                client.debit_wallet(wallet_id=wallet["id"], amount=5, idempotency_key="order-1")
            assert conflict.value.code == "IDEMPOTENCY_CONFLICT"

            with pytest.raises(InsufficientFundsError) as poor:
                client.debit_wallet(wallet_id=wallet["id"], amount=701)
            assert poor.value.code == "INSUFFICIENT_FUNDS" and isinstance(poor.value, LedgerXError)
            assert client.wallet(wallet["id"])["balance"] == "700"

            listed = client.wallet_transactions(wallet["id"], first=10)["transactions"]
            assert [t["id"] for t in listed["nodes"]][:2] == [debit["id"], credit["id"]]
            assert client.transaction(debit["id"])["amount"] == "300"
            wallets = client.wallets(tenant.project_id)
            assert wallet["id"] in [w["id"] for w in wallets["nodes"]]

            with pytest.raises(NotFoundError):
                client.wallet(ids.encode("wallet", uuid.uuid4()))

    await asyncio.to_thread(run)


async def test_bulk_posting_answers_each_operation_and_a_retry_returns_the_first_results(tenant: Tenant) -> None:
    async with tenant.async_client() as client:
        a = await client.create_wallet(project_id=tenant.project_id, name="a")
        b = await client.create_wallet(project_id=tenant.project_id, name="b")
        await client.credit_wallet(wallet_id=a["id"], amount=100)
        ops: list[Any] = [
            {"kind": "DEBIT", "walletId": a["id"], "amount": 30, "idempotencyKey": "bulk-1"},
            {"kind": "TRANSFER", "walletId": a["id"], "toWalletId": b["id"], "amount": 20, "idempotencyKey": "bulk-2"},
            {"kind": "DEBIT", "walletId": a["id"], "amount": 500, "idempotencyKey": "bulk-3"},
        ]
        first = (await client.post_transactions(operations=ops))["results"]
        assert [r["error"]["code"] if r["error"] else None for r in first] == [None, None, "INSUFFICIENT_FUNDS"]
        again = (await client.post_transactions(operations=ops))["results"]
        assert [r["replayed"] for r in again] == [True, True, False]
        assert [r["transaction"] and r["transaction"]["id"] for r in again] == [
            r["transaction"] and r["transaction"]["id"] for r in first
        ]
        assert (await client.wallet(a["id"]))["balance"] == "50"
        atomic = (await client.post_transactions(operations=ops, atomic=True))["results"]
        assert [r["error"]["code"] for r in atomic if r["error"]] == ["ABORTED", "ABORTED", "INSUFFICIENT_FUNDS"]


async def test_the_async_client_transfers_refunds_and_types_its_errors(tenant: Tenant) -> None:
    retries: list[RetryEvent] = []
    async with tenant.async_client(on_retry=retries.append) as client:
        a = await client.create_wallet(project_id=tenant.project_id, name="a")
        b = await client.create_wallet(project_id=tenant.project_id, name="b")
        await client.credit_wallet(wallet_id=a["id"], amount=500)
        moved = await client.transfer_credits(from_wallet_id=a["id"], to_wallet_id=b["id"], amount=200)
        assert moved["amount"] == "200"
        debit = await client.debit_wallet(wallet_id=a["id"], amount=100)
        refund = await client.refund_transaction(transaction_id=debit["id"], amount=40)
        assert (refund["kind"], refund["refundOfId"]) == ("REFUND", debit["id"])
        assert (await client.wallet(a["id"]))["balance"] == "240"
        assert (await client.wallet(b["id"]))["balance"] == "200"

        with pytest.raises(BadUserInputError) as bad:
            await client.debit_wallet(wallet_id=a["id"], amount=-5)
        assert bad.value.field is not None
    async with AsyncLedgerX(tenant.server.url, api_key="lx_nope_nope", retry=FAST) as stranger:
        with pytest.raises(UnauthenticatedError):
            await stranger.wallets(tenant.project_id)
    assert retries == []  # business errors are never retried
    async with tenant.admin() as admin:
        assert (await admin.verify_ledger(tenant.project_id))["ok"] is True


class LoseTheFirstAnswer(httpx.HTTPTransport):
    """Forwards each request to the real server; for the first `operation` request, reads the
    server's answer and then fails as if the connection dropped before the answer arrived."""

    def __init__(self, operation: str) -> None:
        super().__init__()
        self.operation = operation
        self.lost = 0
        self.sent: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        body = request.read()
        if f'"operationName":"{self.operation}"'.encode() not in body:
            return response
        self.sent.append(body)
        response.read()
        if self.lost == 0:
            self.lost += 1
            response.close()
            raise httpx.ReadError("connection reset after the server answered", request=request)
        return response


async def test_a_debit_whose_answer_was_lost_is_retried_with_the_same_key_and_charged_once(tenant: Tenant) -> None:
    def run() -> None:
        with tenant.client() as setup:
            wallet = setup.create_wallet(project_id=tenant.project_id, name="retry")
            setup.credit_wallet(wallet_id=wallet["id"], amount=1000)

        lossy = LoseTheFirstAnswer("DebitWallet")
        retries: list[RetryEvent] = []
        with tenant.client(transport=lossy, on_retry=retries.append) as client:
            tx = client.debit_wallet(wallet_id=wallet["id"], amount=250)
            assert [e.reason for e in retries] == ["network"]
            assert len(lossy.sent) == 2 and lossy.sent[0] == lossy.sent[1]  # the same key, byte for byte
            assert tx["balanceAfter"] == "750"
            assert client.wallet(wallet["id"])["balance"] == "750"  # moved once
            debits = [
                t for t in client.wallet_transactions(wallet["id"])["transactions"]["nodes"] if t["type"] == "DEBIT"
            ]
            assert [t["id"] for t in debits] == [tx["id"]]

        # A mutation without an idempotency key is not retried once the request may have arrived.
        lossy_create = LoseTheFirstAnswer("CreateWallet")
        with tenant.client(transport=lossy_create) as client:
            with pytest.raises(NetworkError):
                client.create_wallet(project_id=tenant.project_id, name="once")
            assert len(lossy_create.sent) == 1
            names = [w["name"] for w in client.wallets(tenant.project_id, first=50)["nodes"]]
            assert names.count("once") == 1

    await asyncio.to_thread(run)


async def test_a_429_is_waited_out_and_retried(gql: GQL, live_server: LiveServer) -> None:
    tenant = await new_tenant(gql, live_server, rate_limit=(1, 1.0))  # one request a second
    retries: list[RetryEvent] = []
    async with tenant.async_client(on_retry=retries.append, retry=RetryPolicy(max_attempts=5)) as client:
        first = await client.current_api_key()
        started = time.monotonic()
        second = await client.current_api_key()  # the bucket is empty: 429, Retry-After
        assert first["id"] == second["id"]
    assert retries and retries[0].reason == "429" and retries[0].delay >= 1
    assert time.monotonic() - started >= 0.9
    async with tenant.async_client(retry=RetryPolicy(max_attempts=1)) as impatient:
        with contextlib.suppress(LedgerXError):
            await impatient.current_api_key()  # empties the bucket, if a token came back
        with pytest.raises(LedgerXError) as limited:
            await impatient.current_api_key()
        assert limited.value.code == "RATE_LIMITED" and limited.value.status == 429


class Unavailable(httpx.AsyncHTTPTransport):
    """A proxy's 503 (Retry-After: 0) for the first `count` requests, then the real server."""

    def __init__(self, count: int, code: str | None = None) -> None:
        super().__init__()
        self.count = count
        self.code = code
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.requests <= self.count:
            body = {"errors": [{"message": "down", "extensions": {"code": self.code}}]} if self.code else None
            return httpx.Response(503, headers={"Retry-After": "0"}, json=body)
        return await super().handle_async_request(request)


async def test_a_503_is_retried_unless_it_is_a_business_answer(tenant: Tenant) -> None:
    retries: list[RetryEvent] = []
    flaky = Unavailable(2)
    async with tenant.async_client(transport=flaky, on_retry=retries.append) as client:
        wallet = await client.create_wallet(project_id=tenant.project_id, name="after-503")
        assert wallet["name"] == "after-503"
    assert (flaky.requests, [e.reason for e in retries]) == (3, ["503", "503"])

    down = Unavailable(10)
    async with tenant.async_client(transport=down) as client:
        with pytest.raises(LedgerXError) as gave_up:
            await client.current_api_key()
    assert (down.requests, gave_up.value.status) == (FAST.max_attempts, 503)

    unpaid = Unavailable(10, code="PAYMENTS_NOT_CONFIGURED")
    async with tenant.async_client(transport=unpaid) as client:
        with pytest.raises(ledgerx_client.PaymentsNotConfiguredError):
            await client.current_api_key()
    assert unpaid.requests == 1


# -- usage -----------------------------------------------------------------------------------------


async def test_usage_ingest_sends_batches_and_reports_each_rejection(tenant: Tenant) -> None:
    async with tenant.admin() as admin:
        await admin.define_metric(
            project_id=tenant.project_id, key="api_calls", name="API calls", aggregation="SUM", unit_price="0.01"
        )
    events: list[ledgerx_client.IngestEvent] = [{"metricKey": "api_calls", "units": 1} for _ in range(2500)]
    events[7] = {"metricKey": "no_such_metric", "units": 1}
    events[2222] = {"metricKey": "api_calls", "units": "-1"}

    def run() -> ledgerx_client.IngestResult:
        with tenant.client() as client:
            return client.usage.ingest(events, batch_size=1000, max_in_flight=2)

    result = await asyncio.to_thread(run)
    assert (result.batches, result.accepted, result.duplicates) == (3, 2498, 0)
    assert [r.index for r in result.rejected] == [7, 2222]
    assert result.rejected[0].idempotency_key == result.idempotency_keys[7]
    assert [(r.code, r.field) for r in result.rejected] == [("NOT_FOUND", "metricKey"), ("BAD_USER_INPUT", "units")]

    # the same events again (the keys made up the first time): all duplicates
    again = [{**e, "idempotencyKey": k} for e, k in zip(events, result.idempotency_keys, strict=True)]
    async with tenant.async_client() as client:
        replay = await client.usage.ingest(again, batch_size=600)  # type: ignore[arg-type]
        assert (replay.batches, replay.accepted, replay.duplicates, len(replay.rejected)) == (5, 0, 2498, 2)
        event = await client.usage_event(tenant.project_id, result.idempotency_keys[0])
        assert event is not None and event["metricKey"] == "api_calls"

        # charging usage is a money mutation: one key, one debit
        wallet = await client.create_wallet(project_id=tenant.project_id, name="metered")
        await client.credit_wallet(wallet_id=wallet["id"], amount=100)
        preview = await client.preview_usage_charge(wallet_id=wallet["id"], metric_key="api_calls", units=500)
        assert preview["amount"] == "5"
        charge = await client.charge_usage(
            wallet_id=wallet["id"], metric_key="api_calls", units=500, idempotency_key="charge-1"
        )
        assert charge is not None and charge["amount"] == "5"
        replay = await client.charge_usage(
            wallet_id=wallet["id"], metric_key="api_calls", units=500, idempotency_key="charge-1"
        )
        assert replay is not None and replay["id"] == charge["id"]
        assert (await client.wallet(wallet["id"]))["balance"] == "95"
        recorded = await client.record_usage(project_id=tenant.project_id, metric_key="api_calls", units=3)
        assert (recorded["duplicate"], recorded["event"]["units"]) == (False, "3")

    async with tenant.admin() as admin:  # a signed-in member names the project
        mine = await admin.usage.ingest([{"metricKey": "api_calls", "units": 2}], project_id=tenant.project_id)
        assert (mine.accepted, mine.batches) == (1, 1)


@pytest.mark.parametrize("usage_max_batch", [100])
async def test_usage_ingest_splits_a_batch_the_server_finds_too_large(tenant: Tenant) -> None:
    async with tenant.admin() as admin:
        await admin.define_metric(
            project_id=tenant.project_id, key="hits", name="Hits", aggregation="SUM", unit_price=0
        )
    events: list[ledgerx_client.IngestEvent] = [{"metricKey": "hits", "units": 1} for _ in range(250)]
    events[201] = {"metricKey": "nope", "units": 1}
    async with tenant.async_client() as client:
        result = await client.usage.ingest(events, batch_size=250)
    # 250 > 100: 413 BATCH_TOO_LARGE, halves of 125 are too large again, quarters of 62/63 pass
    assert (result.batches, result.accepted, [r.index for r in result.rejected]) == (4, 249, [201])


async def test_usage_ingest_waits_out_429s_and_loses_nothing(gql: GQL, live_server: LiveServer) -> None:
    tenant = await new_tenant(gql, live_server, rate_limit=(2, 4.0))
    async with tenant.admin() as admin:
        await admin.define_metric(
            project_id=tenant.project_id, key="calls", name="Calls", aggregation="COUNT", unit_price=0
        )

    async def events() -> AsyncIterator[ledgerx_client.IngestEvent]:
        for i in range(80):
            yield {"metricKey": "calls", "units": 1, "idempotencyKey": f"ev-{i}"}

    async with tenant.async_client() as client:
        result = await client.usage.ingest(events(), batch_size=10, max_in_flight=4)
    assert (result.batches, result.accepted, result.duplicates, result.rejected) == (8, 80, 0, [])
    # the bucket of 2 refused some batches; they were sent again after Retry-After (not hammered)
    assert 1 <= result.throttled <= 16, result.throttled


# -- billing, grants, entitlements, invoices -------------------------------------------------------


async def test_billing_rules_are_created_previewed_paused_and_resumed(tenant: Tenant) -> None:
    async with tenant.async_client() as client:
        wallet = await client.create_wallet(project_id=tenant.project_id, name="billed")
        rule = await client.create_billing_rule(
            wallet_id=wallet["id"], name="daily", mode="DAILY_FLAT", amount=25, timezone="Europe/Paris"
        )
        assert (rule["status"], rule["amount"], rule["mode"]) == ("ACTIVE", "25", "DAILY_FLAT")
        preview = await client.preview_billing_rule(rule["id"], 3)
        assert [p["amount"] for p in preview] == ["25"] * 3
        assert preview[0]["at"] < preview[1]["at"] < preview[2]["at"]
        paused = await client.pause_billing_rule(rule["id"])
        assert paused["status"] == "PAUSED"
        assert (await client.billing_rule(rule["id"]))["status"] == "PAUSED"
        assert (await client.resume_billing_rule(rule["id"]))["status"] == "ACTIVE"
        updated = await client.update_billing_rule(id=rule["id"], amount=30)
        assert updated["amount"] == "30"
        listed = await client.billing_rules(tenant.project_id, wallet_id=wallet["id"])
        assert [r["id"] for r in listed["nodes"]] == [rule["id"]]


async def test_grants_are_given_listed_and_voided(tenant: Tenant) -> None:
    async with tenant.async_client() as client:
        wallet = await client.create_wallet(project_id=tenant.project_id, name="granted")
    async with tenant.admin() as admin:
        grant = await admin.grant_credits(wallet_id=wallet["id"], amount=300, expires_at="2099-01-01T00:00:00Z")
        assert (grant["category"], grant["status"], grant["remaining"]) == ("PROMOTIONAL", "ACTIVE", "300")
        assert (await admin.wallet(wallet["id"]))["balance"] == "300"
        grants = (await admin.wallet_grants(wallet["id"], status="ACTIVE"))["grants"]["nodes"]
        assert [g["id"] for g in grants] == [grant["id"]]
        voided = await admin.void_credit_grant(id=grant["id"])
        assert voided["status"] == "VOIDED"
        assert (await admin.wallet(wallet["id"]))["balance"] == "0"


async def test_entitlements_and_invoices(tenant: Tenant) -> None:
    async with tenant.async_client() as client:
        unknown = await client.entitlement(tenant.project_id, "no-such-feature")
        assert (unknown["featureKey"], unknown["hasAccess"]) == ("no-such-feature", False)
        every = await client.entitlements(tenant.project_id)
        assert all(isinstance(e["hasAccess"], bool) for e in every)
        with pytest.raises(ForbiddenError):  # invoices are for project admins, not API keys
            await client.invoices(project_id=tenant.project_id)
    async with tenant.admin() as admin:
        page = await admin.invoices(project_id=tenant.project_id, first=5)
        assert page["nodes"] == [] and page["pageInfo"]["hasNextPage"] is False


# -- webhooks --------------------------------------------------------------------------------------


@pytest.fixture
async def receiver(services: Services) -> AsyncIterator[Receiver]:
    await owner_sql(services.settings, "UPDATE webhook_deliveries SET status = 'FAILED' WHERE status = 'PENDING'")
    async with running_receiver() as r:
        yield r


async def test_a_real_delivery_verifies_and_a_tampered_one_does_not(tenant: Tenant, receiver: Receiver) -> None:
    async with tenant.async_client() as client:
        made = await client.create_webhook_endpoint(project_id=tenant.project_id, url=receiver.url(), events=["*"])
        secret = made["secret"]
        sent = await client.send_test_webhook(made["endpoint"]["id"])
        assert await tenant.server.services.webhook_delivery.run_once() >= 1
        [got] = await receiver.wait_for(1)
        payload = verify_webhook(secret, got.body, got.headers)
        assert got.headers["webhook-id"] == sent["eventId"]
        assert payload["type"] == "webhook.test"
        with pytest.raises(WebhookVerificationError) as tampered:
            verify_webhook(secret, got.body + b" ", got.headers)
        assert tampered.value.code == "WEBHOOK_VERIFICATION_FAILED"
        rotated = await client.rotate_webhook_endpoint_secret(made["endpoint"]["id"])
        with pytest.raises(WebhookVerificationError):
            verify_webhook(rotated["secret"], got.body, got.headers)
        deliveries = (await client.webhook_deliveries(made["endpoint"]["id"]))["deliveries"]["nodes"]
        assert [d["status"] for d in deliveries] == ["SUCCEEDED"]
        assert await client.delete_webhook_endpoint(made["endpoint"]["id"]) is True


def test_verify_webhook_accepts_what_standard_webhooks_signs_and_nothing_else() -> None:
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    body = json.dumps({"type": "transaction.posted", "data": {"amount": "5"}}).encode()
    now = int(time.time())
    signature = Webhook(secret).sign("msg_1", datetime_of(now), body.decode())
    headers = {"Webhook-Id": "msg_1", "Webhook-Timestamp": str(now), "Webhook-Signature": signature}
    assert verify_webhook(secret, body, headers) == {"type": "transaction.posted", "data": {"amount": "5"}}
    # during a rotation both secrets sign; either verifies
    both = {
        **headers,
        "Webhook-Signature": Webhook(other).sign("msg_1", datetime_of(now), body.decode()) + " " + signature,
    }
    assert verify_webhook(secret, body, both)["type"] == "transaction.posted"
    for bad_secret, bad_body, bad_headers in (
        (other, body, headers),
        (secret, body.replace(b"5", b"6"), headers),
        (secret, body, {**headers, "Webhook-Id": "msg_2"}),
        (secret, body, {k: v for k, v in headers.items() if k != "Webhook-Signature"}),
    ):
        with pytest.raises(WebhookVerificationError):
            verify_webhook(bad_secret, bad_body, bad_headers)
    old = now - 600
    stale = {**headers, "Webhook-Timestamp": str(old)}
    stale["Webhook-Signature"] = Webhook(secret).sign("msg_1", datetime_of(old), body.decode())
    with pytest.raises(WebhookVerificationError) as late:
        verify_webhook(secret, body, stale)
    assert late.value.field == "webhook-timestamp"
    assert verify_webhook(secret, body, stale, tolerance=900)["type"] == "transaction.posted"


def datetime_of(ts: int) -> Any:
    import datetime

    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)


# -- subscriptions ---------------------------------------------------------------------------------


async def test_subscriptions_receive_the_transactions_posted(tenant: Tenant) -> None:
    async with tenant.async_client() as client:
        wallet = await client.create_wallet(project_id=tenant.project_id, name="live")
        first = await client.credit_wallet(wallet_id=wallet["id"], amount=100)

        async def next_posted() -> Any:
            async with contextlib.aclosing(client.transaction_posted(tenant.project_id, after=first["cursor"])) as txs:
                async for tx in txs:
                    return tx
            return None

        listening = asyncio.create_task(next_posted())
        debit = await client.debit_wallet(wallet_id=wallet["id"], amount=40)
        got = await asyncio.wait_for(listening, 15)
        assert got is not None and (got["id"], got["amount"], got["balanceAfter"]) == (debit["id"], "40", "60")

    def blocking_update() -> Any:
        with tenant.client() as sync_client:
            updates = sync_client.wallet_updated(wallet["id"], after=first["cursor"])
            try:
                return next(iter(updates))
            finally:
                updates.close()

    update = await asyncio.wait_for(asyncio.to_thread(blocking_update), 15)
    assert (update["transaction"]["id"], update["wallet"]["balance"]) == (debit["id"], "60")

    async with AsyncLedgerX(tenant.server.url, api_key="lx_bad_key", retry=FAST) as stranger:
        with pytest.raises(LedgerXError) as refused:
            async for _ in stranger.transaction_posted(tenant.project_id):
                pass
        # the server refuses connection_init by closing the socket with 4403
        assert isinstance(refused.value, ForbiddenError) and refused.value.extensions["closeCode"] == 4403
