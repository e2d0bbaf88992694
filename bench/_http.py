"""A minimal keep-alive HTTP/1.1 load generator (asyncio streams), light enough that on a
2-core machine the server, not the client, is what gets measured."""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass


@dataclass
class Result:
    requests: int
    seconds: float
    latencies: list[float]
    errors: int
    # CPU seconds each kind of process spent during the figure (`metered`), when measured.
    cpu: dict[str, float] | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000 if xs else float("nan")

    def line(self, name: str) -> str:
        return (
            f"{name:<34} {self.rps:>9.0f} req/s   p50 {self.pct(0.50):6.2f} ms   p99 {self.pct(0.99):6.2f} ms"
            f"   errors {self.errors}"
        )

    def cpu_line(self) -> str:
        """CPU per operation by process kind, and cores busy: where an operation's cost goes."""
        if not self.cpu or not self.requests:
            return ""
        parts = [f"{k} {v / self.requests * 1e6:.0f} µs" for k, v in self.cpu.items()]
        busy = sum(self.cpu.values()) / self.seconds
        return f"    cpu per operation: {', '.join(parts)}; {busy:.2f} of {os.cpu_count()} cores busy"


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(server_pids: Sequence[int] = ()) -> dict[str, float]:
    """CPU seconds so far of this process ("bench": the load generator, and the ledger core when
    it runs in process), of `server_pids` (LedgerX), and of every PostgreSQL and Redis process on
    this machine (a database elsewhere reads as 0). Processes that ended since are not counted."""
    own = os.times()
    totals = {"bench": own.user + own.system, "ledgerx": sum(_proc_cpu(p) for p in server_pids), "postgres": 0.0}
    totals["redis"] = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm == "postgres":
            totals["postgres"] += _proc_cpu(int(entry))
        elif comm == "redis-server":
            totals["redis"] += _proc_cpu(int(entry))
    return totals


async def metered(run: Awaitable[Result], server_pids: Sequence[int] = ()) -> Result:
    """`run`'s figure with the CPU each kind of process spent meanwhile (Result.cpu_line)."""
    before = cpu_seconds(server_pids)
    result = await run
    after = cpu_seconds(server_pids)
    result.cpu = {k: after[k] - before[k] for k in before if after[k] - before[k] > 0}
    return result


async def _worker(host: str, port: int, raw: bytes, deadline: float, lat: list[float], errs: list[int]) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    n = 0
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if status != 200:
                errs[0] += 1
            n += 1
    finally:
        writer.close()
    return n


async def load(host: str, port: int, raw: bytes, *, concurrency: int, seconds: float) -> Result:
    lat: list[float] = []
    errs = [0]
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    counts = await asyncio.gather(*[_worker(host, port, raw, deadline, lat, errs) for _ in range(concurrency)])
    return Result(sum(counts), time.perf_counter() - t0, lat, errs[0])


def request(method: str, path: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: bench"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    module_app: str, port: int, env: dict[str, str] | None = None, server: str = "uvicorn"
) -> subprocess.Popen[bytes]:
    """One server worker in its own process: uvicorn (uvloop and httptools when installed), or
    granian (Rust HTTP, uvloop) for the trial of #19. granian has no app factories: it is given
    `lazy:<module>:<factory>` (bench/_lazy.py), which builds the app at the lifespan's start."""
    if server == "granian":
        cmd = [
            sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--loop", "uvloop", "--log-level", "warning", "--no-access-log", "bench._lazy:app",
        ]  # fmt: skip
        return subprocess.Popen(cmd, env={**os.environ, **(env or {}), "LEDGERX_BENCH_FACTORY": module_app})
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        module_app,
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})})


class Instances:
    """N server processes sharing one port (bench/_serve.py); stopped together."""

    def __init__(self, procs: list[subprocess.Popen[bytes]]) -> None:
        self.procs = procs
        self.pid = procs[0].pid

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def terminate(self) -> None:
        for p in self.procs:
            p.terminate()

    def wait(self, timeout: float | None = None) -> None:
        for p in self.procs:
            p.wait(timeout)


def spawn_instances(factory: str, port: int, count: int, env: dict[str, str]) -> Instances:
    """`count` processes serving `factory` on `port`, connections spread evenly by the kernel."""
    cmd = [sys.executable, "-m", "bench._serve", factory, str(port)]
    return Instances([subprocess.Popen(cmd, env={**os.environ, **env}) for _ in range(max(count, 1))])


async def wait_ready(port: int, path: str = "/healthz", timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = await load("127.0.0.1", port, request("GET", path), concurrency=1, seconds=0.01)
            if r.requests and not r.errors:
                return
        except OSError:
            pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"server on :{port} did not become ready")


def load_line() -> str:
    """The machine's load average: on a shared machine the figures move with it."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def median(xs: list[float]) -> float:
    return statistics.median(xs)
