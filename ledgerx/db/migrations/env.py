"""Alembic environment (async). Runs as the database owner, never as the app role."""

from __future__ import annotations

import asyncio
import contextlib
import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from ledgerx.db.engine import async_url
from ledgerx.db.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("DATABASE_URL is not set; use `ledgerx migrate`, which can start the embedded server")
    return str(url)


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(async_url(_url()))
    async with engine.connect() as conn:
        # Serialize concurrent `ledgerx migrate` runs (several instances starting at once).
        await conn.exec_driver_sql("SELECT pg_advisory_lock(7412093)")
        try:
            await conn.run_sync(_run)
            await conn.commit()
        except BaseException:
            # Out of the failed transaction first, or the unlock below fails too and its "current
            # transaction is aborted" replaces the migration's own error.
            await conn.rollback()
            raise
        finally:
            # A session lock: closing the connection releases it too, so a failed unlock may not
            # hide what happened above.
            with contextlib.suppress(Exception):
                await conn.exec_driver_sql("SELECT pg_advisory_unlock(7412093)")
                await conn.commit()
    await engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline migrations are not supported; run against a database")
asyncio.run(_run_async())
