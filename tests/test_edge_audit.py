"""GraphQL over HTTP conformance: graphql-http's serverAudits, 0 errors and 0 warnings."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import LiveServer

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "graphql-http-audit.sh"


@pytest.mark.skipif(not (shutil.which("node") and shutil.which("npm")), reason="node and npm are needed")
async def test_graphql_http_server_audits_pass(live_server: LiveServer) -> None:
    # The server runs in this event loop: the audit must run beside it, not block it.
    proc = await asyncio.create_subprocess_exec(
        "bash",
        str(SCRIPT),
        f"{live_server.url}/graphql",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    text = out.decode()
    summary = re.search(r"^(\d+) ok, (\d+) warn, (\d+) error$", text, re.M)
    assert summary, text
    ok, warn, error = map(int, summary.groups())
    assert (warn, error) == (0, 0), text
    assert ok >= 61
    assert proc.returncode == 0, text
