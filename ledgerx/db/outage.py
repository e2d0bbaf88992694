"""Whether an error means the database could not take a request at all.

Connecting was refused (the server is down, restarting, out of connection slots, its name does not
resolve) or PgBouncer gave up waiting for a free server connection (`query_wait_timeout`): no
statement of the request ran, so it did nothing and may simply be sent again. The transports
answer these UNAVAILABLE (HTTP 503 with Retry-After, which the SDKs retry with the same
idempotency key) instead of masking them as INTERNAL. A connection lost in the middle of a
transaction is not among them: whether its COMMIT happened is unknown, and only the caller's
idempotency key can tell.
"""

from __future__ import annotations

import socket

import asyncpg

_REFUSED: tuple[type[BaseException], ...] = (
    asyncpg.TooManyConnectionsError,  # 53300: max_connections reached
    asyncpg.CannotConnectNowError,  # 57P03: starting up, shutting down, in recovery
    ConnectionRefusedError,  # nothing listens
    socket.gaierror,  # the host name does not resolve
)


def refused(exc: BaseException) -> bool:
    """True when `exc`, or an error it was raised from (SQLAlchemy wraps the driver's), is one of
    the refusals above."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _REFUSED) or _pooler_wait_timeout(current):
            return True
        orig = getattr(current, "orig", None)  # sqlalchemy.exc.DBAPIError's driver error
        current = orig if isinstance(orig, BaseException) else current.__cause__ or current.__context__
    return False


def _pooler_wait_timeout(exc: BaseException) -> bool:
    # PgBouncer answers a client that waited past query_wait_timeout for a server connection with
    # this error (SQLSTATE 08P01) before any of its statements reached PostgreSQL.
    return isinstance(exc, asyncpg.PostgresError) and "query_wait_timeout" in str(exc)
