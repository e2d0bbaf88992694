"""graphql-transport-ws with LedgerX's rules: a socket is only as good as its credential, right now.

strawberry authenticates a websocket once, in `connection_init`; after that its operations would run
with whatever the credential was worth at connect time. Here:

- every `subscribe` message (queries and mutations too) is authorized as an HTTP request would be
  at that moment: the credential is authenticated again (an API key's row is read, a token's `exp`
  checked), the caller's rate-limit bucket is spent and the token's session checked for revocation
  in that same Redis call (gateway.admit). Each operation runs with a fresh context, so nothing a
  previous operation cached (project access, platform-admin flag, DataLoaders) carries over;
- the socket is closed when its credential dies, also while it is idle or only runs subscriptions:
  4401 when it expired or was revoked, 4403 when the caller is forbidden. A timer fires at the
  token's `exp`; revocations are heard as they are announced on the event bus (a session's log-out
  or refresh-token reuse; an API key's revocation is one of its project's access changes), with
  a periodic re-check (LIVE_RECHECK) behind a lost announcement;
- the server pings every WS_PING_INTERVAL seconds and closes (4408) a connection that has not
  answered within WS_PONG_TIMEOUT: proxies drop idle connections silently, and a client that
  vanished would otherwise hold its subscriptions forever. (strawberry's `keep_alive` only covers
  the legacy graphql-ws protocol.)
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
from typing import Any

from graphql import GraphQLError
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_transport_ws.types import (
    Message,
    PongMessage,
    SubscribeMessage,
)

from ledgerx import gateway
from ledgerx.context import Context, authenticate, authenticate_now, connection_credential, session_revoked
from ledgerx.domain import topics
from ledgerx.domain.analytics.guard import StreamGuard
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.errors import AppError, RateLimited
from ledgerx.services import Services

log = logging.getLogger("ledgerx.ws")

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_PONG_TIMEOUT = 4408

# The context of the operation being started: operation tasks copy it when strawberry creates them.
_operation_context: contextvars.ContextVar[Context | None] = contextvars.ContextVar("lx_ws_op_context", default=None)


def close_code(error: AppError) -> int:
    return CLOSE_FORBIDDEN if error.code == "FORBIDDEN" else CLOSE_UNAUTHORIZED


def token_expiry(services: Services, credential: str) -> float | None:
    """When a bearer access token stops being valid (its `exp`); None for API keys."""
    token = credential.strip()
    if token.lower().startswith("bearer "):
        token = token[7:].strip()
    if token.startswith("lx_"):
        return None
    exp = services.tokens.verify(token).get("exp")
    return float(exp) if isinstance(exp, int) else None


async def authorize_operation(services: Services, credential: str | None, ip: str | None) -> Principal:
    """One operation on a socket, admitted as an HTTP request would be now (or an AppError)."""
    principal = await authenticate(services, credential)
    decision = await gateway.admit(services, principal, ip)
    if decision.flagged:
        raise session_revoked()
    if not decision.allowed:
        raise gateway.rate_limited(decision)
    return principal


class _Watched:
    """What the connection's StreamGuard acts on (see analytics/guard.py: `Guarded`)."""

    def __init__(self) -> None:
        self.recheck = asyncio.Event()
        self.error: AppError | None = None
        self.failed = asyncio.Event()

    def fail(self, error: BaseException) -> None:
        if isinstance(error, AppError) and not self.failed.is_set():
            self.error = error
            self.failed.set()


class TransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self._pong = asyncio.Event()

    # strawberry reads `self.context` when an operation task starts: each operation gets its own.
    @property
    def context(self) -> Context:
        return _operation_context.get() or self._connection_context

    @context.setter
    def context(self, value: Context) -> None:
        self._connection_context = value

    @property
    def services(self) -> Services:
        return self._connection_context.services

    async def handle_message(self, message: Message) -> None:
        if self._closing:
            return  # arrived after we closed: never act on it
        await super().handle_message(message)

    async def handle_connection_init(self, message: Any) -> None:
        await super().handle_connection_init(message)
        if self.connection_acknowledged and not self._tasks:
            self._start(self._watch_credential(), "ledgerx-ws-credential")
            if self.services.settings.ws_ping_interval > 0:
                self._start(self._keep_alive(), "ledgerx-ws-ping")

    async def handle_pong(self, message: PongMessage) -> None:
        self._pong.set()

    async def handle_subscribe(self, message: SubscribeMessage) -> None:
        op_id = message.get("id") if isinstance(message, dict) else None
        if not self.connection_acknowledged or not isinstance(op_id, str) or op_id in self.operations:
            await super().handle_subscribe(message)  # strawberry's protocol errors
            return
        base = self._connection_context
        try:
            principal = await authorize_operation(
                self.services, connection_credential(base.connection_params), base.meta.ip
            )
        except RateLimited as exc:
            error = GraphQLError(exc.message, extensions=exc.extensions)
            await self.send_message({"id": op_id, "type": "error", "payload": [error.formatted]})
            return
        except AppError as exc:
            await self.close(close_code(exc), exc.message)
            return
        except Exception:
            # The credential could not be checked (the database is away): refuse this operation
            # as an HTTP request would be refused, and keep the socket.
            log.exception("websocket: could not authorize an operation")
            error = GraphQLError("internal error", extensions={"code": "INTERNAL"})
            await self.send_message({"id": op_id, "type": "error", "payload": [error.formatted]})
            return
        fresh = dataclasses.replace(base, principal=principal, auth_error=None, loaders={}, dataloaders={})
        token = _operation_context.set(fresh)
        try:
            await super().handle_subscribe(message)
        finally:
            _operation_context.reset(token)

    async def close(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        # A close reason is at most 123 bytes.
        with contextlib.suppress(Exception):
            await self.websocket.close(code=code, reason=reason.encode()[:120].decode(errors="ignore"))

    async def shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        await super().shutdown()

    def _start(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def _watch_credential(self) -> None:
        """Close the socket when its credential dies: at the token's `exp`, when a revocation is
        announced, or at a periodic re-check."""
        services = self.services
        ctx = self._connection_context
        credential = connection_credential(ctx.connection_params)
        principal = ctx.principal
        if credential is None or principal is None:
            return
        try:
            expires_at = token_expiry(services, credential)
        except AppError as exc:
            await self.close(close_code(exc), exc.message)
            return

        async def recheck() -> None:
            await authenticate_now(services, credential)

        watched = _Watched()
        guard = StreamGuard(recheck, expires_at=expires_at, interval=services.live.recheck)
        tasks = [asyncio.create_task(guard.run(watched), name="ledgerx-ws-guard")]
        if principal.kind == "api_key" and principal.project_id is not None:
            # Key revocations are announced as access changes of the key's project.
            tasks.append(asyncio.create_task(self._relay(topics.project_members(principal.project_id), None, watched)))
        elif principal.session_id:
            tasks.append(asyncio.create_task(self._relay(topics.SESSIONS_REVOKED, principal.session_id, watched)))
        try:
            await watched.failed.wait()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t
        assert watched.error is not None
        await self.close(close_code(watched.error), watched.error.message)

    async def _relay(self, topic: str, session_id: str | None, watched: _Watched) -> None:
        """Wake the guard on announcements that may concern this socket's credential."""
        while True:
            try:
                async with self.services.events.subscribe(topic) as events:
                    async for event in events:
                        if session_id is None or event.get("sessionId") == session_id:
                            watched.recheck.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("websocket: could not follow %s; retrying", topic, exc_info=True)
                await asyncio.sleep(1.0)

    async def _keep_alive(self) -> None:
        settings = self.services.settings
        while not self._closing:
            await asyncio.sleep(settings.ws_ping_interval)
            self._pong.clear()
            try:
                await self.send_message({"type": "ping"})
            except (WebSocketDisconnected, RuntimeError):
                return  # the socket is gone; the handler is shutting down
            try:
                await asyncio.wait_for(self._pong.wait(), settings.ws_pong_timeout)
            except TimeoutError:
                await self.close(CLOSE_PONG_TIMEOUT, f"no pong within {settings.ws_pong_timeout:g}s")
                return
