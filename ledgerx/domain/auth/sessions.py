"""Refresh-token sessions: opaque, stored as hashes, single use, rotated, reuse revokes the family.

A session is a refresh-token family; its id (`family_id`) is the `sid` claim of every access token
issued for it. Revoking a session (log-out, a detected refresh-token reuse) also ends its access
tokens before they expire: `Revocations` marks the session in Redis (a key living as long as an
access token can, read by the gateway's rate-limit script, so the check costs no round trip) and
announces it on the event bus (open websockets of the session close at once). The database row's
`revoked_at` stays the truth: it answers when Redis cannot.

Every instance also mirrors the marks in memory (`follow`): it subscribes to the announcements
(gap-aware), then reads every mark with SCAN, and reads them again after any gap (a dropped
pub/sub connection, an overflow). While that mirror is whole, `known_revoked` answers the
gateway's "was this session revoked?" from memory, so a signed-in caller's rate limit can be
spent from a lease like an API key's, with no round trip. The moment the bus loses its connection
the mirror stops answering (`None`) until it has been read again, and the gateway asks Redis as
before: a revocation is never missed because a message was.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Iterable

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx.db.engine import Database
from ledgerx.db.models import RefreshToken
from ledgerx.domain import audit, topics
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import Unauthenticated
from ledgerx.domain.events import GAP, EventBus, Subscription
from ledgerx.ids import uuid7

log = logging.getLogger("ledgerx.sessions")

TOKEN_PREFIX = "lxr_"
_REVOKED_IN_DB = (
    "SELECT EXISTS (SELECT 1 FROM refresh_tokens WHERE family_id = $1 AND revoked_at IS NOT NULL) AS revoked"
)


class Revocations:
    """Sessions whose access tokens must stop working before they expire (see the module doc)."""

    RETRY_S = 1.0

    def __init__(self, redis: Redis, db: Database, bus: EventBus | None, *, prefix: str, ttl: int) -> None:
        self.redis = redis
        self.db = db
        self.bus = bus
        self.prefix = prefix + "sess:revoked:"
        # The longest an access token lives (TTL plus verification leeway): after that, the
        # tokens of a revoked session are refused by their own `exp`, and the mark can go.
        self.ttl = ttl
        # Marks Redis did not take (it was down): this instance still refuses these sessions and
        # keeps writing them until Redis answers (other instances ask the database meanwhile).
        self.pending: set[str] = set()
        self._retry: asyncio.Task[None] | None = None
        # The in-memory mirror (`follow`): session id -> when its mark ends (monotonic seconds).
        self._mirror: dict[str, float] = {}
        self._listening: Subscription | None = None
        self._whole_since: int | None = None  # the bus's disconnect count when the mirror was read

    def key(self, session_id: str) -> str:
        return self.prefix + session_id

    async def mark(self, family_ids: Iterable[uuid.UUID]) -> None:
        """After the revocation committed: mark and announce. Never raises (it is committed)."""
        sids = [str(f) for f in family_ids]
        if not sids:
            return
        for sid in sids:  # this instance refuses them at once; the others when they hear of it
            self._remember(sid)
        if not await self._write(sids):
            self.pending.update(sids)
            if self._retry is None or self._retry.done():
                self._retry = asyncio.create_task(self._write_pending(), name="ledgerx-session-revocations")
        if self.bus is not None:
            await self.bus.publish_many([topics.session_revoked(sid) for sid in sids])

    async def _write(self, sids: list[str]) -> bool:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid in sids:
                    pipe.set(self.key(sid), b"1", ex=self.ttl)
                await pipe.execute()
        except (RedisError, OSError):
            log.warning("could not mark %d revoked sessions in redis; retrying", len(sids), exc_info=True)
            return False
        return True

    async def _write_pending(self) -> None:
        while self.pending:
            await asyncio.sleep(self.RETRY_S)
            batch = list(self.pending)
            if await self._write(batch):
                self.pending.difference_update(batch)

    async def revoked_in_db(self, session_id: str) -> bool:
        """The database's answer (Redis is down): one indexed read of the session's rows."""
        try:
            family = uuid.UUID(session_id)
        except ValueError:
            return True  # not a session id we issued
        row = await self.db.fetchrow(_REVOKED_IN_DB, family)
        return bool(row and row["revoked"])

    async def is_revoked(self, session_id: str) -> bool:
        """For checks outside the gateway (open websockets, streams): Redis, else the database."""
        if session_id in self.pending:
            return True
        try:
            return bool(await self.redis.exists(self.key(session_id)))
        except (RedisError, OSError):
            return await self.revoked_in_db(session_id)

    def known_revoked(self, session_id: str) -> bool | None:
        """From the mirror while it is whole; None when it is not (then ask Redis)."""
        sub = self._listening
        if (
            self._whole_since is None
            or sub is None
            or sub.gap_pending
            or self.bus is None
            or self.bus.disconnects != self._whole_since
        ):
            return None
        if session_id in self.pending:
            return True
        ends = self._mirror.get(session_id)
        if ends is None:
            return False
        if ends < time.monotonic():
            self._mirror.pop(session_id, None)  # the session's tokens have all expired by now
            return False
        return True

    async def follow(self, retry_s: float = 1.0) -> None:
        """Keep the mirror (runs for the life of the app; see the module docstring)."""
        if self.bus is None:
            return
        while True:
            try:
                async with self.bus.subscribe(topics.SESSIONS_REVOKED, gaps=True) as heard:
                    self._listening = heard
                    await self._read_marks()
                    async for event in heard:
                        if event is GAP:
                            self._whole_since = None
                            await self._read_marks()
                            continue
                        sid = event.get("sessionId")
                        if isinstance(sid, str):
                            self._remember(sid)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("session revocations: mirror lost; asking redis until it is read again", exc_info=True)
            finally:
                self._whole_since = None
                self._listening = None
            await asyncio.sleep(retry_s)

    async def _read_marks(self) -> None:
        """Every mark in Redis, read after the subscription is confirmed: a mark written later is
        announced to it, so between them nothing is missed."""
        assert self.bus is not None
        disconnects = self.bus.disconnects
        found: dict[str, float] = {}
        ends = time.monotonic() + self.ttl  # at most a mark's life; a shorter one only errs to refuse
        async for key in self.redis.scan_iter(match=self.prefix + "*", count=1000):
            name = key.decode() if isinstance(key, bytes) else str(key)
            found[name[len(self.prefix) :]] = ends
        self._mirror = found
        self._whole_since = disconnects

    def _remember(self, session_id: str) -> None:
        if len(self._mirror) > 1_000_000:  # bounded: a flood of revocations falls back to Redis
            self._whole_since = None
            return
        self._mirror[session_id] = time.monotonic() + self.ttl

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry


def _hash(token: str) -> bytes:
    # The token has 256 bits of entropy, so a fast hash is enough (no dictionary to attack).
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclasses.dataclass(frozen=True, slots=True)
class Rotated:
    user_id: uuid.UUID
    family_id: uuid.UUID
    refresh_token: str


async def start(db: Database, user_id: uuid.UUID, actor: Actor, ttl: int) -> Rotated:
    """Open a new session family for a fresh sign-in."""
    token = new_token()
    family = uuid7()
    async with db.transaction() as s:
        s.add(
            RefreshToken(
                id=uuid7(),
                family_id=family,
                user_id=user_id,
                token_hash=_hash(token),
                expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl),
                user_agent=actor.meta.user_agent,
                ip=actor.meta.ip,
            )
        )
    return Rotated(user_id, family, token)


async def rotate(
    db: Database, token: str, actor: Actor, ttl: int, *, revocations: Revocations | None = None
) -> Rotated:
    """Spend `token` and return its successor in the same family.

    The spend is one conditional UPDATE, so of two concurrent uses exactly one wins. A token that
    was already spent (or belongs to a revoked family) means it leaked: the whole family is
    revoked (its access tokens too, through `revocations`) and the reuse goes to the audit log.
    """
    h = _hash(token)
    now = dt.datetime.now(dt.UTC)
    async with db.transaction() as s:
        spent = (
            await s.execute(
                update(RefreshToken)
                .where(
                    RefreshToken.token_hash == h,
                    RefreshToken.used_at.is_(None),
                    RefreshToken.revoked_at.is_(None),
                    RefreshToken.expires_at > now,
                )
                .values(used_at=now)
                .returning(RefreshToken.user_id, RefreshToken.family_id)
            )
        ).one_or_none()
        if spent is not None:
            successor = new_token()
            s.add(
                RefreshToken(
                    id=uuid7(),
                    family_id=spent.family_id,
                    user_id=spent.user_id,
                    token_hash=_hash(successor),
                    expires_at=now + dt.timedelta(seconds=ttl),
                    user_agent=actor.meta.user_agent,
                    ip=actor.meta.ip,
                )
            )
            return Rotated(spent.user_id, spent.family_id, successor)

    # Not spendable: find out why, outside the failed path's transaction.
    async with db.transaction() as s:
        row = (
            await s.execute(
                select(
                    RefreshToken.user_id,
                    RefreshToken.family_id,
                    RefreshToken.used_at,
                    RefreshToken.revoked_at,
                ).where(RefreshToken.token_hash == h)
            )
        ).one_or_none()
        if row is None:
            raise Unauthenticated("invalid refresh token")
        if row.used_at is not None:
            await _revoke_family(s, row.family_id, "reuse", now)
            await audit.record(
                s,
                Actor("user", row.user_id, actor.meta),
                "auth.refresh_token_reused",
                target_type="session",
                target_id=str(row.family_id),
                after={"family_revoked": True},
            )
    if row.used_at is not None:
        if revocations is not None:
            await revocations.mark([row.family_id])
        raise Unauthenticated("refresh token already used; the session has been revoked", reason="reused")
    raise Unauthenticated("refresh token expired or revoked")


async def _revoke_family(s: AsyncSession, family_id: uuid.UUID, reason: str, now: dt.datetime) -> None:
    await s.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now, revoke_reason=reason)
    )


async def revoke(db: Database, token: str, actor: Actor, *, revocations: Revocations | None = None) -> bool:
    """Log out: revoke the token's whole family and its access tokens. False for an unknown token."""
    now = dt.datetime.now(dt.UTC)
    async with db.transaction() as s:
        row = (
            await s.execute(
                select(RefreshToken.user_id, RefreshToken.family_id).where(RefreshToken.token_hash == _hash(token))
            )
        ).one_or_none()
        if row is None:
            return False
        await _revoke_family(s, row.family_id, "logout", now)
        await audit.record(
            s,
            Actor("user", row.user_id, actor.meta),
            "auth.logout",
            target_type="session",
            target_id=str(row.family_id),
        )
    if revocations is not None:
        await revocations.mark([row.family_id])
    return True
