"""`ledgerx serve` as a process: what it prints at start, how it stops, how it fails.

These start the real command (embedded PostgreSQL and Redis in a temporary data directory) and
send it the signals systemd, Kubernetes, CI and a terminal send. One data directory serves the
whole module, so the embedded PostgreSQL is initialized once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
LEDGERX = [sys.executable, "-m", "ledgerx.cli"]


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "REDIS_URL", "LEDGERX_ENV") and not k.startswith("LEDGERX_TEST_")
    }
    env.update(LEDGERX_DATA_DIR=str(data_dir), SCHEDULER_ENABLED="false", WORKER_ENABLED="false", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _server_pids(data_dir: Path) -> tuple[int, int]:
    """(postmaster, redis-server) of the data directory, from their own pid files."""
    pg = int((data_dir / "pg" / "postmaster.pid").read_text().split("\n", 1)[0])
    registry = json.loads((data_dir / "redis.db.settings").read_text())
    redis = int(Path(registry["pidfile"]).read_text().strip())
    return pg, redis


def _postgres_of(data_dir: Path) -> list[int]:
    """Every live process whose command line names this data directory (postmaster, workers)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if str(data_dir / "pg") in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found


@dataclasses.dataclass
class Run:
    proc: subprocess.Popen[str]
    port: int
    stdout: str = ""
    stderr: str = ""

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"ledgerx serve exited ({self.proc.returncode}):\n{out}\n{err[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.proc.kill()
        pytest.fail("ledgerx serve did not become ready")

    def stop(self, sig: int, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        self.stdout, self.stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode


def _serve(data_dir: Path, *args: str) -> Run:
    port = _free_port()
    proc = subprocess.Popen(
        [*LEDGERX, "serve", "--port", str(port), *args],
        cwd=ROOT,
        env=_env(data_dir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Run(proc, port)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("lifecycle")
    yield path
    # Whatever a failing test left behind: stop it by pid, never by name.
    for pid in _postgres_of(path):
        os.kill(pid, signal.SIGTERM)
    try:
        _, redis_pid = _server_pids(path)
        if _alive(redis_pid):
            os.kill(redis_pid, signal.SIGTERM)
    except (OSError, ValueError, KeyError):
        pass


@pytest.fixture(scope="module")
def terminated(data_dir: Path) -> tuple[Run, tuple[int, int]]:
    """A first `ledgerx serve`, ready, then sent SIGTERM."""
    run = _serve(data_dir)
    run.wait_ready()
    pids = _server_pids(data_dir)
    assert all(_alive(p) for p in pids)
    run.stop(signal.SIGTERM)
    return run, pids


def test_sigterm_stops_embedded_postgres_and_redis(data_dir: Path, terminated: tuple[Run, tuple[int, int]]) -> None:
    run, (pg_pid, redis_pid) = terminated
    assert run.proc.returncode == -signal.SIGTERM, run.stderr[-2000:]  # ends by the signal, as asked
    assert not _alive(pg_pid), "embedded PostgreSQL still running after SIGTERM"
    assert not _alive(redis_pid), "embedded Redis still running after SIGTERM"
    assert _postgres_of(data_dir) == []
    assert "Traceback" not in run.stderr


def test_start_prints_where_things_are(data_dir: Path, terminated: tuple[Run, tuple[int, int]]) -> None:
    run, _ = terminated
    out = run.stdout
    assert f"http://127.0.0.1:{run.port}/graphql" in out
    assert "GraphiQL" in out  # development
    assert f"http://127.0.0.1:{run.port}/dashboard" in out
    assert str(data_dir.resolve()) in out
    assert "embedded PostgreSQL and Redis" in out
    assert "ledgerx create-admin" in out
    # Logging is configured before the embedded servers start, so their lines are there (as JSON).
    logged = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    messages = {r["msg"] for r in logged}
    assert {"embedded postgres ready", "embedded redis ready"} <= messages
    # pgserver's and platformdirs' chatter stays out.
    assert "XDG_RUNTIME_DIR" not in run.stderr
    assert not any(r["logger"] == "pgserver" for r in logged)


def test_restart_after_kill_9_recovers_and_ctrl_c_stops_both(
    data_dir: Path, terminated: tuple[Run, tuple[int, int]]
) -> None:
    # A server killed with -9 leaves its pid in the handle files and its servers running.
    crashed = _serve(data_dir)
    crashed.wait_ready()
    crashed.proc.kill()
    crashed.proc.communicate(timeout=30)
    pg_pid, redis_pid = _server_pids(data_dir)
    assert _alive(pg_pid) and _alive(redis_pid)
    assert crashed.proc.pid in json.loads((data_dir / "pg" / ".handle_pids.json").read_text())

    # The next start comes up (joining the orphaned servers) and Ctrl+C stops them after all.
    again = _serve(data_dir)
    again.wait_ready()
    assert _server_pids(data_dir) == (pg_pid, redis_pid)
    returncode = again.stop(signal.SIGINT)
    assert not _alive(pg_pid), "embedded PostgreSQL left running: stale handle from the killed run"
    assert not _alive(redis_pid), "embedded Redis left running"
    assert returncode == -signal.SIGINT
    assert _postgres_of(data_dir) == []
    assert "Traceback" not in again.stderr


def test_workers_share_the_port_and_the_signing_key_and_stop_together(
    data_dir: Path, terminated: tuple[Run, tuple[int, int]]
) -> None:
    """`--workers 2`: two processes answer on one port (each its own app and pools), a token one
    signed is good at the other (the development key is made before they start), and SIGTERM
    stops both and the embedded servers."""
    run = _serve(data_dir, "--workers", "2")
    run.wait_ready()
    workers = psutil.Process(run.proc.pid).children()
    served = [p for p in workers if "spawn_main" in " ".join(p.cmdline())]
    assert len(served) == 2, [p.cmdline() for p in workers]
    url = f"http://127.0.0.1:{run.port}"
    signed = httpx.post(
        f"{url}/graphql",
        json={
            "query": "mutation($i: SignUpInput!) { signUp(input: $i) { accessToken } }",
            "variables": {"i": {"email": "workers@example.com", "password": "two workers password"}},
        },
    ).json()
    token = signed["data"]["signUp"]["accessToken"]
    for _ in range(30):  # a new connection each: the kernel hands them to either process
        me = httpx.post(
            f"{url}/graphql", json={"query": "{ me { email } }"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert me.json() == {"data": {"me": {"email": "workers@example.com"}}}
    # 31 GraphQL requests: each process counts its own, so two processes that both served never agree.
    counts = set()
    for _ in range(20):
        metrics = httpx.get(f"{url}/metrics").text
        found = re.search(r'ledgerx_http_requests_total\{route="/graphql",status="200"\} (\d+)', metrics)
        assert found is not None
        counts.add(int(found.group(1)))
    assert len(counts) == 2 and sum(counts) == 31, counts
    pg_pid, redis_pid = _server_pids(data_dir)
    assert run.stop(signal.SIGTERM) == -signal.SIGTERM, run.stderr[-2000:]
    assert not any(_alive(p.pid) for p in served)
    assert not _alive(pg_pid) and not _alive(redis_pid)
    assert "Traceback" not in run.stderr


def _run_cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LEDGERX, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_unreachable_database_url_is_one_line(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there
    env = _env(
        tmp_path,
        DATABASE_URL=f"postgresql://app:s3cret@127.0.0.1:{port}/ledgerx",
        REDIS_URL=os.environ.get("LEDGERX_TEST_REDIS_URL", f"redis://127.0.0.1:{port}/0"),
    )
    result = _run_cli("serve", "--port", str(_free_port()), env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    db_lines = [line for line in lines if "DATABASE_URL" in line]
    assert len(db_lines) == 1, result.stderr
    assert f"127.0.0.1:{port}" in db_lines[0]
    assert "refused" in db_lines[0].lower()
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr
    assert len(lines) <= 2


def test_unreachable_redis_url_is_one_line(tmp_path: Path) -> None:
    db = os.environ.get("LEDGERX_TEST_DATABASE_URL")
    if not db:
        pytest.skip("needs a reachable DATABASE_URL (LEDGERX_TEST_DATABASE_URL)")
    port = _free_port()
    env = _env(tmp_path, DATABASE_URL=db, REDIS_URL=f"redis://:pw@127.0.0.1:{port}/0")
    result = _run_cli("migrate", env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ledgerx: REDIS_URL: cannot connect to redis://:***@127.0.0.1:")


def test_editable_install_prints_nothing(tmp_path: Path) -> None:
    """`pip install -q -e .` (what `make run` does) is silent: no setuptools license deprecation
    notice, no editable-install notice. Installed into a throwaway target, not this venv."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "-e",
            str(ROOT),
            "--target",
            str(tmp_path / "target"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # A machine's pip configuration may name package indexes that lack a package; not ours to fix.
    lines = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if not re.match(r"WARNING: Location '.*' is ignored", line)
    ]
    assert lines == []
