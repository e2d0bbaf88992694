"""Keeping a live stream authorized: it ends when the token expires or access is lost.

Authorization is checked when the subscription starts (by the resolver). After that the guard
re-checks it every `interval` seconds (jittered, so a thousand streams do not re-check at once)
and at once when the feed hears that the project's memberships changed; a token's `exp` ends the
stream at that instant. A failed re-check ends the stream with the error (UNAUTHENTICATED,
NOT_FOUND, FORBIDDEN); a re-check that cannot run (the database is away) keeps it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from ledgerx.domain.errors import AppError, Unauthenticated

log = logging.getLogger("ledgerx.analytics.live")


class Guarded(Protocol):
    """What a guard watches over: a stream it can end, and an event that asks for a re-check now
    (a live feed's `Watcher`, a ledger subscription's `GuardedStream`)."""

    recheck: asyncio.Event

    def fail(self, error: BaseException) -> None: ...


class StreamGuard:
    def __init__(
        self,
        recheck: Callable[[], Awaitable[None]],
        *,
        expires_at: float | None,
        interval: float,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.recheck = recheck
        self.expires_at = expires_at
        self.interval = interval
        self.wall = wall
        self.checks = 0

    def _expired(self) -> bool:
        return self.expires_at is not None and self.wall() >= self.expires_at

    async def run(self, w: Guarded) -> None:
        while True:
            if self._expired():
                w.fail(Unauthenticated("the access token expired; sign in again and resubscribe"))
                return
            timeout = self.interval * random.uniform(0.8, 1.2)
            if self.expires_at is not None:
                timeout = min(timeout, self.expires_at - self.wall())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(w.recheck.wait(), timeout=max(timeout, 0.005))
            w.recheck.clear()
            if self._expired():
                w.fail(Unauthenticated("the access token expired; sign in again and resubscribe"))
                return
            self.checks += 1
            try:
                await self.recheck()
            except AppError as exc:
                w.fail(exc)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("live stream access re-check failed; keeping the stream", exc_info=True)
