"""A bounded schema fuzz run: every query and mutation, a few generated cases each, signed in as a
user who owns a populated project and anonymous; no answer may be a 5xx or carry an INTERNAL
error. The full run is `scripts/fuzz_schema.py --serve -n 50` (README); this one uses a fixed seed
so a failure reproduces."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from tests.conftest import LiveServer

ROOT = Path(__file__).resolve().parent.parent


async def test_schema_fuzz_finds_no_internal_error_and_no_5xx(live_server: LiveServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEDGERX_", "SCHEMATHESIS_"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "scripts" / "fuzz_schema.py"),
        "--url", f"{live_server.url}/graphql", "--max-examples", "6", "--seed", "12", "--workers", "1",
        "--request-timeout", "20",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    report = out.decode()
    # Both identities ran over the whole schema (a run that tested nothing must not pass).
    tested = [int(n) for n in re.findall(r"Tested: (\d+)", report)]
    assert len(tested) == 2 and min(tested) >= 80, report
    assert proc.returncode == 0, report
