"""Refresh-token sessions: opaque, stored as hashes, single use, rotated, reuse revokes the family."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import secrets
import uuid

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx.db.engine import Database
from ledgerx.db.models import RefreshToken
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import Unauthenticated
from ledgerx.ids import uuid7

TOKEN_PREFIX = "lxr_"


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


async def rotate(db: Database, token: str, actor: Actor, ttl: int) -> Rotated:
    """Spend `token` and return its successor in the same family.

    The spend is one conditional UPDATE, so of two concurrent uses exactly one wins. A token that
    was already spent (or belongs to a revoked family) means it leaked: the whole family is
    revoked and the reuse goes to the audit log.
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
        raise Unauthenticated("refresh token already used; the session has been revoked", reason="reused")
    raise Unauthenticated("refresh token expired or revoked")


async def _revoke_family(s: AsyncSession, family_id: uuid.UUID, reason: str, now: dt.datetime) -> None:
    await s.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now, revoke_reason=reason)
    )


async def revoke(db: Database, token: str, actor: Actor) -> bool:
    """Log out: revoke the token's whole family. Returns False for an unknown token."""
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
    return True
