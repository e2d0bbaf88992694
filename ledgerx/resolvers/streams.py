"""Subscriptions stay authorized for their whole life: live analytics and the ledger's streams.

The resolver checks access when a subscription starts. The credential the websocket connected with
is kept, and a `StreamGuard` re-checks it every LIVE_RECHECK seconds and at once when the
project's access changes are announced (removal, demotion, suspension, key revocation); a token's
`exp` ends the stream at that instant. A failed re-check ends the stream with the error's code.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

from graphql import GraphQLError

from ledgerx.context import authenticate_now
from ledgerx.domain import topics
from ledgerx.domain.analytics.guard import StreamGuard
from ledgerx.domain.errors import AppError, Unauthenticated
from ledgerx.domain.tenancy.access import load_access
from ledgerx.domain.tenancy.authorize import Rule, permit
from ledgerx.schema.info import Info
from ledgerx.services import Services

T = TypeVar("T")


def stream_credential(info: Info) -> tuple[str, float | None]:
    """The credential the websocket connected with, and when it stops being valid (a token's `exp`)."""
    ctx = info.context
    params: dict[str, Any] = ctx.connection_params or {}
    credential = params.get("authorization") or params.get("Authorization")
    if not credential and params.get("apiKey"):
        credential = "Bearer " + str(params["apiKey"])
    if not credential:
        credential = ctx.request.headers.get("authorization")
    if not credential and ctx.request.headers.get("x-api-key"):
        credential = "Bearer " + ctx.request.headers["x-api-key"]
    if not isinstance(credential, str) or not credential.strip():
        raise Unauthenticated("sign in or send an API key")
    token = credential.strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    if token.startswith("lx_"):
        return credential, None
    exp = ctx.services.tokens.verify(token).get("exp")
    return credential, float(exp) if isinstance(exp, int | float) else None


def graphql_error(exc: AppError) -> GraphQLError:
    return GraphQLError(exc.message, extensions=exc.extensions)


def member_guard(info: Info, project_id: uuid.UUID, rule: Rule) -> StreamGuard:
    """A guard that keeps the caller allowed by `rule` (a domain's read rule) in `project_id`."""
    services = info.context.services
    credential, expires_at = stream_credential(info)

    async def recheck() -> None:
        # Also refuses a session revoked since (log-out, refresh-token reuse).
        principal = await authenticate_now(services, credential)
        # load_access reads the platform-admin flag in the same statement; never the access cache.
        permit(await load_access(services.db, principal, project_id), rule)

    return StreamGuard(recheck, expires_at=expires_at, interval=services.live.recheck)


class GuardedStream:
    """The side of a ledger subscription a guard acts on: `recheck` to wake it, `fail` to end it."""

    def __init__(self) -> None:
        self.recheck = asyncio.Event()
        self.failed: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    def fail(self, error: BaseException) -> None:
        if not self.failed.done():
            self.failed.set_result(error)


async def guarded(
    services: Services, source: AsyncIterator[T], project_id: uuid.UUID, guard: StreamGuard
) -> AsyncGenerator[T, None]:
    """The items of `source` until it ends or the guard ends the stream (raised as a GraphQL
    error); `source` is closed either way."""
    stream = GuardedStream()
    members = topics.project_members(project_id)
    nxt: asyncio.Future[T] | None = None
    async with services.events.subscribe(members) as changes:
        relay = asyncio.create_task(_relay(changes, stream.recheck), name="ledgerx-stream-recheck")
        watch = asyncio.create_task(guard.run(stream), name="ledgerx-stream-guard")
        try:
            while True:
                nxt = asyncio.ensure_future(anext(source))
                waiting: set[asyncio.Future[Any]] = {nxt, stream.failed}
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if stream.failed.done():
                    error = stream.failed.result()
                    if isinstance(error, AppError):
                        raise graphql_error(error)
                    raise error
                try:
                    item = nxt.result()
                except StopAsyncIteration:
                    return
                nxt = None
                yield item
        finally:
            relay.cancel()
            watch.cancel()
            if nxt is not None and not nxt.done():
                nxt.cancel()
                with contextlib.suppress(BaseException):
                    await nxt
            aclose = getattr(source, "aclose", None)
            if aclose is not None:
                await aclose()


async def _relay(changes: AsyncIterator[dict[str, Any]], recheck: asyncio.Event) -> None:
    async for _ in changes:
        recheck.set()
