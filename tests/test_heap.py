"""A serving process freezes its startup heap (ledgerx/heap.py): full collections then walk only
what requests create, not the ~230K objects startup built (walking those stalled every request in
flight for 110-190 ms, `me`'s p99). Run in a child process: a frozen heap is never collected, so
this test process must not freeze its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, new_email

PROBE = """
import gc, json, sys
from starlette.testclient import TestClient
from ledgerx.app import create_app
from ledgerx.settings import Settings

app = create_app(Settings.from_env(), settle_heap=sys.argv[1] == "settle")
with TestClient(app) as c:
    frozen = gc.get_freeze_count()
    signed = c.post("/graphql", json={
        "query": "mutation($i: SignUpInput!) { signUp(input: $i) { accessToken } }",
        "variables": {"i": {"email": sys.argv[2], "password": "heap probe password 1"}},
    }).json()
    token = signed["data"]["signUp"]["accessToken"]
    me = c.post("/graphql", json={"query": "{ me { email } }"}, headers={"Authorization": f"Bearer {token}"}).json()
    gc.collect()
    print(json.dumps({"frozen": frozen, "live": len(gc.get_objects()), "me": me}))
"""


def _probe(mode: str, database_url: str, redis_url: str, tmp_path: Path) -> dict[str, object]:
    email = new_email("heap")
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"lxheap:{os.getpid()}:",
        "LEDGERX_DATA_DIR": str(tmp_path),
        "SCHEDULER_ENABLED": "false",
        "WORKER_ENABLED": "false",
        "PYTHONPATH": str(ROOT),
    }
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", PROBE, mode, email],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    found: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["me"] == {"data": {"me": {"email": email}}}
    return found


def test_a_serving_process_freezes_what_startup_built(database_url: str, redis_url: str, tmp_path: Path) -> None:
    settled = _probe("settle", database_url, redis_url, tmp_path)
    frozen, live = settled["frozen"], settled["live"]
    assert isinstance(frozen, int) and isinstance(live, int)
    # The GraphQL schema (~15K objects) and the ORM's mappers are built before the freeze: after a
    # sign-up and a `me` a full collection walks ~3.6K objects (~18.5K when the schema is left to
    # the first request), a small fraction of the frozen heap.
    assert frozen > 100_000 and live < frozen // 25, settled
    # Without it (the test suite's own apps) nothing is frozen and a collection walks it all.
    plain = _probe("plain", database_url, redis_url, tmp_path)
    assert plain["frozen"] == 0 and isinstance(plain["live"], int) and plain["live"] > frozen, plain
