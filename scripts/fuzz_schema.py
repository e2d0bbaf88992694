"""Fuzz every GraphQL query and mutation with schemathesis; fail on any 5xx or INTERNAL error.

    .venv/bin/python scripts/fuzz_schema.py --serve              # starts its own server (embedded DB)
    .venv/bin/python scripts/fuzz_schema.py --url http://127.0.0.1:8000/graphql -n 50

It signs up a user who owns a project with wallets, transactions, a metric, usage, an API key, a
billing rule and a run, then runs schemathesis (GraphQL mode) twice over the whole schema: signed
in as that user, and anonymous. Generated `ID` arguments are often those real ids and custom
scalars (BigInt, Decimal, DateTime, JSON) get strategies that include their edge cases (see
scripts/fuzz_schema_hooks.py). Any response with HTTP 5xx or an error whose `extensions.code` is
`INTERNAL` is a failure, whatever the input was. Failures are printed grouped by operation and
error message; the exit status is 1 when there is any.

--serve runs `ledgerx serve` on a free port with high rate limits (so the fuzzer is not just
answered RATE_LIMITED) in a temporary data directory: against the embedded PostgreSQL and Redis,
or DATABASE_URL/REDIS_URL when they are set (then a fresh database is created beside it and
dropped afterwards, and a separate Redis prefix is used).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
BIN = Path(sys.executable).parent
PASSWORD = "fuzzing passphrase 42"


class Client:
    def __init__(self, url: str) -> None:
        self.url = url
        self.token: str | None = None

    def __call__(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        r = httpx.post(self.url, json={"query": query, "variables": variables or {}}, headers=headers, timeout=30)
        body: dict[str, Any] = r.json()
        if body.get("errors"):
            raise SystemExit(f"set-up failed: {body['errors']}")
        data: dict[str, Any] = body["data"]
        return data


def seed(url: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """A user with a project full of things; returns (known ids and strings, login)."""
    gql = Client(url)
    email = f"fuzz-{secrets.token_hex(4)}@example.com"
    data = gql(
        "mutation($i: SignUpInput!) { signUp(input: $i) { accessToken user { id } } }",
        {"i": {"email": email, "password": PASSWORD, "name": "Fuzz"}},
    )
    gql.token = data["signUp"]["accessToken"]
    ids = [data["signUp"]["user"]["id"]]
    ext = f"fuzz-{secrets.token_hex(3)}"
    prj = gql(
        "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }",
        {"i": {"name": "Fuzz", "externalKey": ext}},
    )
    project = prj["createProject"]["id"]
    wallets = []
    for name in ("main", "spare"):
        w = gql(
            "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }",
            {"i": {"projectId": project, "name": name}},
        )
        wallets.append(w["createWallet"]["id"])
    t = gql(
        "mutation($i: CreditWalletInput!) { creditWallet(input: $i) { id } }",
        {"i": {"walletId": wallets[0], "amount": "100000", "idempotencyKey": "fuzz-topup"}},
    )
    txn = t["creditWallet"]["id"]
    m = gql(
        "mutation($i: DefineMetricInput!) { defineMetric(input: $i) { id } }",
        {
            "i": {
                "projectId": project,
                "key": "api_calls",
                "name": "API calls",
                "aggregation": "SUM",
                "unitPrice": "0.5",
            }
        },
    )
    gql(
        "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { event { id } } }",
        {"i": {"projectId": project, "metricKey": "api_calls", "units": "3", "idempotencyKey": "fuzz-use-1"}},
    )
    k = gql(
        "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } } }",
        {"i": {"projectId": project, "name": "fuzz", "scopes": ["usage:write"]}},
    )
    r = gql(
        "mutation($i: CreateBillingRuleInput!) { createBillingRule(input: $i) { id } }",
        {"i": {"walletId": wallets[0], "name": "daily", "mode": "DAILY_FLAT", "amount": "10"}},
    )
    rule = r["createBillingRule"]["id"]
    run = gql("mutation($id: ID!) { runBillingRule(id: $id) { id } }", {"id": rule})["runBillingRule"]["id"]
    inv = gql(
        "mutation($i: CreateInviteInput!) { createInvite(input: $i) { id } }",
        {"i": {"projectId": project, "email": f"fuzz-invitee-{secrets.token_hex(3)}@example.com", "role": "VIEWER"}},
    )
    # A test-mode project too (its own clock: advanceTestClock), with a wallet and a rule.
    sandbox = gql(
        "mutation($i: CreateProjectInput!) { createProject(input: $i) { id } }",
        {"i": {"name": "Fuzz sandbox", "testMode": True}},
    )["createProject"]["id"]
    sandbox_wallet = gql(
        "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }",
        {"i": {"projectId": sandbox, "name": "test"}},
    )["createWallet"]["id"]
    gql(
        "mutation($i: CreateBillingRuleInput!) { createBillingRule(input: $i) { id } }",
        {"i": {"walletId": sandbox_wallet, "name": "monthly", "mode": "MONTHLY_FLAT", "amount": "10"}},
    )
    ids += [project, *wallets, txn, m["defineMetric"]["id"], k["createApiKey"]["apiKey"]["id"], rule, run]
    ids += [sandbox, sandbox_wallet]
    ids.append(inv["createInvite"]["id"])
    strings = ["api_calls", ext, email, "fuzz-topup", "fuzz-use-1", "UTC", "Europe/Paris", "CREDITS", "USD"]
    by_name = {
        "metricKey": ["api_calls"],
        "key": ["api_calls"],
        "externalKey": [ext],
        "email": [email],
        "idempotencyKey": ["fuzz-topup", "fuzz-use-1"],
        "timezone": ["UTC", "Europe/Paris", "Pacific/Kiritimati", "America/St_Johns"],
        "currency": ["CREDITS", "USD", "usd"],
    }
    known = {"ids": ids, "strings": strings, "by_name": by_name}
    return known, {"url": url, "email": email, "password": PASSWORD}


def run_schemathesis(url: str, mode: str, env: dict[str, str], args: argparse.Namespace) -> tuple[int, int]:
    """Runs one pass; returns (schemathesis' exit code, requests that errored: timeouts, resets)."""
    cmd = [
        str(BIN / "schemathesis"),
        "run",
        url,
        "--phases",
        "fuzzing",
        "--checks",
        "no_internal_error",
        "--max-examples",
        str(args.max_examples),
        "--workers",
        str(args.workers),
        "--no-shrink",
        "--suppress-health-check",
        "all",
        "--continue-on-failure",
        "--warnings",
        "off",
        # A request that does not finish is a failure too (schemathesis reports it as an error).
        "--request-timeout",
        str(args.request_timeout),
    ]
    if args.seed is not None:
        cmd += ["--seed", str(args.seed)]
    for name in args.operation or ():
        cmd += ["--include-name", name]
    print(f"== schemathesis as {mode}", flush=True)
    out = subprocess.run(  # noqa: S603 - our own command line
        cmd, env=env, cwd=env["FUZZ_WORKDIR"], capture_output=True, text=True, check=False
    )
    # The summary: operations and test-case counts (the failures are reported from our own file).
    tail = [ln for ln in out.stdout.splitlines() if re.search(r"Selected:|Tested:|generated|passed|failed|error", ln)]
    print("\n".join(tail[-6:]), flush=True)
    (Path(env["FUZZ_WORKDIR"]) / f"schemathesis-{mode}.txt").write_text(out.stdout + out.stderr, encoding="utf-8")
    if os.environ.get("FUZZ_VERBOSE") or out.returncode not in (0, 1):
        print(out.stdout[-6000:], out.stderr[-3000:], sep="\n")
    # A request that hung past --request-timeout or lost its connection is an "error" to
    # schemathesis, not a check failure: print those cases (with their curl line) and count them.
    errors = re.search(r"=+ ERRORS =+\n(.*?)\n=+ [A-Z]+ =+", out.stdout, re.S)
    if errors:
        print(errors[1].strip()[:6000], flush=True)
    errored = re.search(r"(\d+) errored", out.stdout)
    return out.returncode, int(errored[1]) if errored else 0


def _shape(message: str) -> str:
    """An error message with its request ids and numbers blanked, to group failures by cause."""
    return re.sub(r"[0-9a-f]{8,}|\d+", "#", message)[:160]


def causes(server_log: Path) -> dict[str, str]:
    """Request id -> the exception behind an INTERNAL answer, from the server's JSON log lines."""
    found: dict[str, str] = {}
    if not server_log.exists():
        return found
    for line in server_log.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        exc = entry.get("exc") if isinstance(entry, dict) else None
        if entry.get("request_id") and isinstance(exc, str):
            raised = re.findall(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit)\b.*)$", exc, re.M)
            found[entry["request_id"]] = (raised[0] if raised else exc.strip().splitlines()[-1])[:200]
    return found


def report(path: Path, server_log: Path | None = None) -> int:
    lines = (
        [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()] if path.exists() else []
    )
    why = causes(server_log) if server_log else {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
    for f in lines:
        first = f["errors"][0] if f["errors"] else {}
        message = str(first.get("message", ""))
        request_id = (first.get("extensions") or {}).get("requestId")
        cause = why.get(request_id) if request_id else None
        key = f"HTTP {f['status']}: " + _shape(cause or message)
        groups[(f["operation"], key)].append(f)
    print(f"== {len(lines)} failing requests, {len(groups)} distinct (operation, error)")
    for (op, err), items in sorted(groups.items()):
        ex = items[0]
        print(f"- {op} [{ex['mode']}] x{len(items)}: {err}")
        print(f"    query: {json.dumps(ex['query'])[:400]}")
        if ex.get("variables"):
            print(f"    variables: {json.dumps(ex['variables'])[:300]}")
    return len(lines)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def serve(workdir: Path) -> Iterator[str]:
    """`ledgerx serve` on a free port, on its own database; yields the GraphQL URL."""
    env = dict(os.environ)
    env.update(
        LEDGERX_DATA_DIR=str(workdir / "data"),
        REDIS_PREFIX=f"lxfuzz:{secrets.token_hex(4)}:",
        RATE_LIMIT_BURST="1000000",
        RATE_LIMIT_PER_SECOND="1000000",
        ANONYMOUS_RATE_LIMIT_BURST="1000000",
        ANONYMOUS_RATE_LIMIT_PER_SECOND="1000000",
        LOGIN_LIMIT_PER_EMAIL="1000",
        LOGIN_LIMIT_PER_IP="1000000",
        SCHEDULER_ENABLED="false",
        WORKER_ENABLED="false",
        LOG_LEVEL="warning",
    )
    admin_url = os.environ.get("DATABASE_URL")
    db_name = f"lxfuzz_{secrets.token_hex(4)}"
    if admin_url:
        _psql(admin_url, f'CREATE DATABASE "{db_name}"')
        env["DATABASE_URL"] = _with_db(admin_url, db_name)
    port = _free_port()
    log = (workdir / "server.log").open("w")
    proc = subprocess.Popen(  # noqa: S603 - our own entry point
        [str(BIN / "ledgerx"), "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {workdir / 'server.log'}")
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/graphql"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        if proc.poll() is None:
            proc.kill()
        log.close()
        if admin_url:
            _psql(admin_url, f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def _with_db(url: str, name: str) -> str:
    base, _, query = url.partition("?")
    return base[: base.rfind("/") + 1] + name + ("?" + query if query else "")


def _psql(url: str, sql: str) -> None:
    import asyncio

    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server's GraphQL URL (rate limits may answer RATE_LIMITED)")
    where.add_argument("--serve", action="store_true", help="start a server of this checkout for the run")
    p.add_argument("-n", "--max-examples", type=int, default=30, help="test cases per operation and identity")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int)
    p.add_argument("--anonymous-only", action="store_true", help="skip the signed-in run")
    p.add_argument("--operation", action="append", help="only this operation, e.g. Query.usageSummary (repeatable)")
    p.add_argument("--request-timeout", type=float, default=30.0, help="seconds before a request counts as hung")
    args = p.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="ledgerx-fuzz-"))
    failures = workdir / "failures.jsonl"
    try:
        with serve(workdir) if args.serve else contextlib.nullcontext(args.url) as url:
            known, login = seed(url)
            env = dict(os.environ)
            env.update(
                PYTHONPATH=os.pathsep.join([str(SCRIPTS), env.get("PYTHONPATH", "")]),
                SCHEMATHESIS_HOOKS="fuzz_schema_hooks",
                FUZZ_KNOWN=json.dumps(known),
                FUZZ_FAILURES=str(failures),
                FUZZ_WORKDIR=str(workdir),
            )
            runs = []
            if not args.anonymous_only:
                runs.append(
                    run_schemathesis(url, "user", {**env, "FUZZ_MODE": "user", "FUZZ_LOGIN": json.dumps(login)}, args)
                )
            runs.append(run_schemathesis(url, "anonymous", {**env, "FUZZ_MODE": "anonymous"}, args))
        count = report(failures, workdir / "server.log" if args.serve else None)
        if any(code not in (0, 1) for code, _ in runs):
            print("schemathesis itself failed (see above)")
            return 2
        errored = sum(n for _, n in runs)
        if errored:
            print(f"== {errored} requests errored (hung past --request-timeout or the connection dropped): see above")
        return 1 if count or errored else 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
