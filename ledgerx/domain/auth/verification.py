"""Email verification: a mailed, single-use, expiring link proves that a user holds their address.

Rules:
- Sign-up mails a link (`{LEDGERX_PUBLIC_URL}/verify-email?token=…`) in the sign-up transaction;
  `resendVerification` mails a new one (the older links die at once), limited per user.
- The token is random (`secrets.token_urlsafe(32)`), stored only as its SHA-256, valid for
  `EMAIL_VERIFICATION_TTL` (48 h) and spent by one conditional UPDATE, so two concurrent uses
  cannot both succeed. It proves the address it was mailed to, nothing else.
- `verifyEmail(token)` needs no sign-in (the link is often opened on another device): holding the
  token is the proof. Unknown, expired, spent and replaced tokens all read as NOT_FOUND.
- An address also counts as verified when Google says so (`email_verified` claim) or when its
  owner accepts an invitation mailed to it; `mark_verified` is the one place that records it and
  retires the open links.
- The table is visible only on the explicit system path (row-level security, migration 0007).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from collections.abc import Callable

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx.db.engine import Database
from ledgerx.db.models import EmailVerification, User
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import Conflict, NotFound, RateLimited
from ledgerx.domain.mail import Mailer, verification_mail
from ledgerx.domain.ratelimit import Limit, RateLimiter
from ledgerx.ids import encode, uuid7

TOKEN_BYTES = 32
_MAX_TOKEN_LEN = 128  # token_urlsafe(32) is 43 characters; anything much longer is not ours
# resendVerification: three mails at once, then one every five minutes (per user). Enough for a
# lost or spam-filtered mail, too few to turn LedgerX into a mail cannon against one inbox.
RESEND_LIMIT = Limit(capacity=3, per_second=1 / 300)

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def mark_verified(s: AsyncSession, user_id: uuid.UUID, now: dt.datetime) -> bool:
    """Record that the user holds their address; retire their open links. True if it changed.

    Runs in the caller's transaction, which must be on the system path (the links table is
    visible only there).
    """
    changed = (
        await s.execute(
            update(User)
            .where(User.id == user_id, User.email_verified.is_(False))
            .values(email_verified=True)
            .returning(User.id)
        )
    ).scalar() is not None
    await s.execute(
        update(EmailVerification)
        .where(
            EmailVerification.user_id == user_id,
            EmailVerification.used_at.is_(None),
            EmailVerification.revoked_at.is_(None),
        )
        .values(revoked_at=now)
    )
    return changed


class EmailVerifier:
    def __init__(
        self,
        db: Database,
        mailer: Mailer,
        limiter: RateLimiter,
        *,
        ttl: int,
        public_url: str | None,
        clock: Clock = utcnow,
    ) -> None:
        self.db = db
        self.mailer = mailer
        self.limiter = limiter
        self.ttl = dt.timedelta(seconds=ttl)
        self.public_url = (public_url or "http://127.0.0.1:8000").rstrip("/")
        # Injectable so tests pin instants (expiry) without sleeping.
        self.clock = clock

    def link(self, token: str) -> str:
        return f"{self.public_url}/verify-email?token={token}"

    async def issue(self, s: AsyncSession, user: User) -> EmailVerification:
        """Mail a new link in the caller's transaction (system path); older open links die."""
        now = self.clock()
        await s.execute(
            update(EmailVerification)
            .where(
                EmailVerification.user_id == user.id,
                EmailVerification.used_at.is_(None),
                EmailVerification.revoked_at.is_(None),
            )
            .values(revoked_at=now)
        )
        token = secrets.token_urlsafe(TOKEN_BYTES)
        row = EmailVerification(
            id=uuid7(),
            user_id=user.id,
            email=user.email,
            token_hash=hash_token(token),
            created_at=now,
            expires_at=now + self.ttl,
        )
        s.add(row)
        await s.flush()
        subject, body = verification_mail(
            name=user.name, email=user.email, link=self.link(token), expires_at=row.expires_at
        )
        await self.mailer.enqueue(s, to=user.email, subject=subject, body=body, kind="email_verification")
        return row

    async def resend(self, actor: Actor, user_id: uuid.UUID) -> None:
        decision = await self.limiter.hit(f"verify-resend:user:{user_id}", RESEND_LIMIT)
        if not decision.allowed:
            raise RateLimited(
                f"a verification mail was sent moments ago; retry in {decision.retry_after_s}s",
                retry_after=decision.retry_after_s,
            )
        async with self.db.transaction(system=True) as s:
            user = (await s.execute(select(User).where(User.id == user_id).with_for_update())).scalar_one_or_none()
            if user is None:
                raise NotFound("account no longer exists")
            if user.email_verified:
                raise Conflict("your email address is already verified")
            row = await self.issue(s, user)
            await audit.record(
                s,
                actor,
                "user.verification_sent",
                target_type="user",
                target_id=encode("user", user.id),
                after={"email": user.email, "expiresAt": row.expires_at.isoformat()},
            )
        self.mailer.kick()

    async def verify(self, actor: Actor, token: str) -> User:
        if not token or len(token) > _MAX_TOKEN_LEN:
            raise NotFound("verification link not found or no longer valid", field="token")
        now = self.clock()
        async with self.db.transaction(system=True) as s:
            # One conditional UPDATE spends the token: of two concurrent uses exactly one wins.
            spent = (
                await s.execute(
                    update(EmailVerification)
                    .where(
                        EmailVerification.token_hash == hash_token(token),
                        EmailVerification.used_at.is_(None),
                        EmailVerification.revoked_at.is_(None),
                        EmailVerification.expires_at > now,
                    )
                    .values(used_at=now)
                    .returning(EmailVerification.user_id, EmailVerification.email)
                )
            ).first()
            if spent is None:
                raise NotFound("verification link not found or no longer valid", field="token")
            user_id, mailed_to = spent
            user = (await s.execute(select(User).where(User.id == user_id).with_for_update())).scalar_one_or_none()
            # The link proves the address it went to; an account whose address changed since
            # gets nothing from it.
            if user is None or user.email.lower() != mailed_to.lower():
                raise NotFound("verification link not found or no longer valid", field="token")
            await mark_verified(s, user.id, now)
            await audit.record(
                s,
                Actor("user", user.id, actor.meta) if actor.type == "anonymous" else actor,
                "user.email_verified",
                target_type="user",
                target_id=encode("user", user.id),
                after={"email": user.email, "method": "link"},
            )
        user.email_verified = True
        return user
