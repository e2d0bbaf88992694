"""The tenant scope of a transaction, and how every scoped transaction begins and ends.

Row-level security (rls.py) reads three transaction-local settings: `ledgerx.project_ids` (the
projects whose rows are visible), `ledgerx.user_id` (a user finding their own memberships) and
`ledgerx.scope` ('system': the explicit cross-project path). This module is the only place that
writes them (`settings_sql`), and the only place that decides how a transaction ends (`end`):

- A transaction whose block raised is rolled back with the ROLLBACK shielded from the caller's
  cancellation (a cancelled request still ends its transaction).
- A connection whose transaction did not end cleanly (the ROLLBACK or COMMIT failed or was
  interrupted, so the connection may still be inside a transaction, mid-protocol, or holding the
  settings) is discarded, never handed to the next transaction.

`Database.transaction` (ORM session) and `Database.raw` (asyncpg pool) in engine.py are the two
openers built on this.

Behind a transaction pooler (PgBouncer, `DATABASE_POOLER=pgbouncer`) the app role cannot travel in
the startup packet, so it is set here too, per transaction (`set_config('role', ..., true)`, the
same as `SET LOCAL ROLE`), in the same statement as the scope: no extra round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import asyncpg

Discard = Callable[[], Awaitable[None]]


@dataclasses.dataclass(frozen=True, slots=True)
class Scope:
    """What a transaction may see: its projects (sorted, unique), a user, or the system path."""

    project_ids: tuple[uuid.UUID, ...] = ()
    user_id: uuid.UUID | None = None
    system: bool = False

    @classmethod
    def of(
        cls,
        *,
        project_id: uuid.UUID | None = None,
        project_ids: Iterable[uuid.UUID] = (),
        user_id: uuid.UUID | None = None,
        system: bool = False,
    ) -> Scope:
        # Parsed as UUIDs: their text is hex and dashes only, which is what makes inlining safe.
        ids = {uuid.UUID(str(p)) for p in project_ids}
        if project_id:
            ids.add(uuid.UUID(str(project_id)))
        user = uuid.UUID(str(user_id)) if user_id else None
        return cls(tuple(sorted(ids, key=str)), user, system)

    @property
    def empty(self) -> bool:
        """Nothing to scope: only non-tenant tables are reachable (settings unset read as empty)."""
        return not self.project_ids and self.user_id is None and not self.system

    def values(self) -> dict[str, str]:
        """The three settings' values, as text."""
        return {
            "project_ids": ",".join(str(p) for p in self.project_ids),
            "user_id": str(self.user_id) if self.user_id else "",
            "scope": "system" if self.system else "",
        }


_ROLE = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def settings_sql(placeholders: dict[str, str], role: str | None = None) -> str:
    """The statement that sets the scope (transaction-local), with each value's SQL text given;
    with `role`, it also switches to that role until the transaction ends (a lower-case SQL
    identifier, checked here because it is inlined)."""
    switch = ""
    if role is not None:
        if not _ROLE.fullmatch(role):
            raise ValueError(f"not a lower-case SQL identifier: {role!r}")
        switch = f"set_config('role', '{role}', true), "
    return (
        f"SELECT {switch}set_config('ledgerx.project_ids', {placeholders['project_ids']}, true),"
        f" set_config('ledgerx.user_id', {placeholders['user_id']}, true),"
        f" set_config('ledgerx.scope', {placeholders['scope']}, true)"
    )


_BOUND = {k: f":{k}" for k in ("project_ids", "user_id", "scope")}

# The ORM's form: bound parameters (one prepared statement for every scope).
SETTINGS_BOUND = settings_sql(_BOUND)


@functools.cache
def settings_bound(role: str | None) -> str:
    """`SETTINGS_BOUND`, switching to `role` too when one is given (the transaction-pooler form)."""
    return settings_sql(_BOUND, role)


def begin_sql(scope: Scope, begin: str = "BEGIN", role: str | None = None) -> str:
    """`BEGIN; SELECT set_config(...)` with the values inlined: one simple-protocol round trip
    opens the transaction and scopes it (the raw path's speed depends on it). The values are
    UUIDs and a fixed word (see `Scope.of`), so inlining them is safe; `role` as in `settings_sql`."""
    return f"{begin}; " + settings_sql({k: f"'{v}'" for k, v in scope.values().items()}, role)


async def end(finish: Callable[[], Awaitable[object]], discard: Discard, *, rollback: bool) -> None:
    """Run `finish`: COMMIT, or ROLLBACK after the block raised. If it fails or is interrupted,
    the connection's state is unknown: `discard` it (terminate or invalidate, so it never returns
    to a pool). A failed COMMIT raises. A ROLLBACK is shielded from the caller's cancellation (a
    cancelled request, even one cancelled mid-statement, still ends its transaction and keeps its
    connection when the ROLLBACK completes) and its own failure is not raised (the caller
    re-raises the block's error); a cancellation of the caller is."""
    if not rollback:
        try:
            await finish()
        except BaseException:
            await discard()
            raise
        return
    job = asyncio.ensure_future(finish())
    try:
        await asyncio.shield(job)
    except BaseException as exc:
        await discard()
        # Closing the connection makes a ROLLBACK still in flight fail at once; wait for it so
        # nothing else touches the connection (or the session) concurrently, and read its error.
        with contextlib.suppress(BaseException):
            await asyncio.wait([job], timeout=5)
        if job.done() and not job.cancelled():
            job.exception()
        if isinstance(exc, Exception):
            return
        raise


@contextlib.asynccontextmanager
async def scoped(
    conn: asyncpg.Connection, scope: Scope, *, begin: str = "BEGIN", role: str | None = None
) -> AsyncIterator[asyncpg.Connection]:
    """One transaction on a connection the caller holds: begun and scoped (and, with `role`,
    switched to that role) in one round trip, committed when the block ends, rolled back when it
    raises; `end` decides what happens when neither completes (the connection is terminated; a
    pool replaces it on release)."""

    async def terminate() -> None:
        conn.terminate()

    try:
        await conn.execute(begin_sql(scope, begin, role))
        yield conn
    except BaseException:
        await end(lambda: conn.execute("ROLLBACK"), terminate, rollback=True)
        raise
    await end(lambda: conn.execute("COMMIT"), terminate, rollback=False)
