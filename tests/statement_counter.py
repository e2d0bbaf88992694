"""Counts the SQL statements the app sends to PostgreSQL, through the ORM and the raw pool alike.

Both paths end in asyncpg (SQLAlchemy's asyncpg dialect runs prepared statements; the raw pool runs
`fetch`/`execute`/…), and asyncpg has no event hooks, so the counter wraps asyncpg's own choke
points: `Connection._do_execute` (every fetch*, execute with arguments, executemany),
`Connection.execute` without arguments (simple-query protocol: BEGIN, SET, COMMIT, …) and
`PreparedStatement`'s bind-execute (the ORM's statements). A statement is counted only when the
task sending it runs under `counting()` (tasks inherit the context), so the background work of other
tests and loops in the process is not counted.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from asyncpg import connection as asyncpg_connection
from asyncpg import prepared_stmt

_current: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("statement_counter", default=None)
_installed = False


def _record(query: object) -> None:
    seen = _current.get()
    if seen is not None:
        seen.append(" ".join(str(query).split())[:200])


def _install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    conn_cls: Any = asyncpg_connection.Connection
    stmt_cls: Any = prepared_stmt.PreparedStatement

    do_execute: Callable[..., Awaitable[Any]] = conn_cls._do_execute
    execute: Callable[..., Awaitable[Any]] = conn_cls.execute
    bind_execute: Callable[..., Awaitable[Any]] = stmt_cls._PreparedStatement__bind_execute
    stmt_executemany: Callable[..., Awaitable[Any]] = stmt_cls.executemany

    @functools.wraps(do_execute)
    async def counted_do_execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("retry", True):  # the retry of an outdated cached statement is the same statement
            _record(query)
        return await do_execute(self, query, *args, **kwargs)

    @functools.wraps(execute)
    async def counted_execute(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        if not args:  # with arguments it goes through _do_execute
            _record(query)
        return await execute(self, query, *args, **kwargs)

    @functools.wraps(bind_execute)
    async def counted_bind_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        _record(self.get_query())
        return await bind_execute(self, *args, **kwargs)

    @functools.wraps(stmt_executemany)
    async def counted_stmt_executemany(self: Any, *args: Any, **kwargs: Any) -> Any:
        _record(self.get_query())
        return await stmt_executemany(self, *args, **kwargs)

    conn_cls._do_execute = counted_do_execute
    conn_cls.execute = counted_execute
    stmt_cls._PreparedStatement__bind_execute = counted_bind_execute
    stmt_cls.executemany = counted_stmt_executemany


@contextlib.contextmanager
def counting() -> Iterator[list[str]]:
    """The statements sent while the block runs (by this task and the tasks it starts)."""
    _install()
    seen: list[str] = []
    token = _current.set(seen)
    try:
        yield seen
    finally:
        _current.reset(token)
