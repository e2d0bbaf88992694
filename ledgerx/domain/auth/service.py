"""Sign-up, log-in, refresh, log-out and Google sign-in, composed from the pieces beside this file."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import uuid

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from ledgerx.db.engine import Database
from ledgerx.db.models import RefreshToken, User
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.auth import sessions
from ledgerx.domain.auth.login_limits import Bucket, LoginThrottle, fold_email
from ledgerx.domain.auth.oidc import OidcClient
from ledgerx.domain.auth.passwords import Passwords, check_policy
from ledgerx.domain.auth.records import UserRecord
from ledgerx.domain.auth.tokens import AccessTokens
from ledgerx.domain.auth.verification import EmailVerifier, mark_verified
from ledgerx.domain.errors import BadInput, Conflict, RateLimited, Unauthenticated
from ledgerx.domain.ratelimit import Limit, RateLimiter
from ledgerx.domain.records import of
from ledgerx.ids import encode, uuid7

_USER_BY_ID = (
    "SELECT id, email, name, email_verified, is_platform_admin, created_at, last_login_at FROM users WHERE id = $1"
)
_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")


def normalize_email(email: str) -> str:
    e = email.strip().lower()
    if len(e) > 254 or not _EMAIL.match(e):
        raise BadInput("email is not a valid address", field="email")
    return e


@dataclasses.dataclass(frozen=True, slots=True)
class AuthResult:
    user: UserRecord
    access_token: str
    refresh_token: str
    expires_in: int


@dataclasses.dataclass(frozen=True, slots=True)
class LoginLimits:
    """LOGIN_LIMIT_PER_EMAIL / LOGIN_LIMIT_PER_IP as buckets (capacity, refill per second).

    Log-in: failures per (email, client IP) and per client IP (login_limits.py; the email over
    all clients gets 10x the first). Sign-up: attempts per email and per IP.
    """

    per_email: Limit
    per_ip: Limit


class AuthService:
    def __init__(
        self,
        *,
        db: Database,
        passwords: Passwords,
        tokens: AccessTokens,
        limiter: RateLimiter,
        limits: LoginLimits,
        oidc: OidcClient,
        refresh_ttl: int,
        verifier: EmailVerifier,
    ) -> None:
        self.db = db
        self.passwords = passwords
        self.tokens = tokens
        self.limiter = limiter
        self.limits = limits
        self.oidc = oidc
        self.refresh_ttl = refresh_ttl
        self.verifier = verifier
        self.login_throttle = LoginThrottle(
            limiter.redis,
            prefix=limiter.prefix,
            pair=Bucket(limits.per_email.capacity, limits.per_email.per_second),
            per_ip=Bucket(limits.per_ip.capacity, limits.per_ip.per_second),
        )

    async def _throttle(self, action: str, email: str, actor: Actor) -> None:
        """Sign-up: per email and per IP buckets; both are spent so neither can be probed around."""
        keys = [(f"{action}:email:{email}", self.limits.per_email)]
        if actor.meta.ip:
            keys.append((f"{action}:ip:{actor.meta.ip}", self.limits.per_ip))
        for key, limit in keys:
            d = await self.limiter.hit(key, limit)
            if not d.allowed:
                raise RateLimited(
                    f"too many {action} attempts; retry in {d.retry_after_s}s", retry_after=d.retry_after_s
                )

    async def _issue(self, user: User, actor: Actor) -> AuthResult:
        session = await sessions.start(self.db, user.id, actor, self.refresh_ttl)
        access = self.tokens.issue(encode("user", user.id), session_id=str(session.family_id))
        return AuthResult(of(UserRecord, user), access, session.refresh_token, self.tokens.ttl)

    async def sign_up(self, email: str, password: str, name: str, actor: Actor) -> AuthResult:
        email = normalize_email(email)
        name = name.strip()
        if len(name) > 200:
            raise BadInput("name must be at most 200 characters", field="name")
        check_policy(password, email)
        await self._throttle("signup", email, actor)
        hashed = await self.passwords.hash(password)
        user = User(id=uuid7(), email=email, name=name, password_hash=hashed, email_verified=False)
        try:
            # The system path: the verification link and its mail belong to no project.
            async with self.db.transaction(system=True) as s:
                s.add(user)
                await s.flush()
                await self.verifier.issue(s, user)
                await audit.record(
                    s,
                    Actor("user", user.id, actor.meta),
                    "user.sign_up",
                    target_type="user",
                    target_id=encode("user", user.id),
                    after={"email": email},
                )
        except IntegrityError:
            raise Conflict("an account with this email already exists", field="email") from None
        self.verifier.mailer.kick()
        return await self._issue(user, actor)

    async def log_in(self, email: str, password: str, actor: Actor) -> AuthResult:
        # Failures are counted per case-folded address (whatever the spelling), before it is
        # judged valid: a malformed one costs the guesser as much as a real one.
        folded = fold_email(email[:320])
        try:
            email = normalize_email(email)
        except BadInput:
            email = email.strip().lower()[:254]
        refused = await self.login_throttle.attempt(folded, actor.meta.ip)
        if refused is not None:
            raise RateLimited(
                f"too many failed log-in attempts; retry in {refused.retry_after_s}s",
                retry_after=refused.retry_after_s,
                scope=refused.scope,
            )
        async with self.db.transaction() as s:
            user = (await s.execute(select(User).where(func.lower(User.email) == email))).scalar_one_or_none()
        # Unknown emails verify against a dummy hash: same work, same answer.
        ok, rehash = await self.passwords.verify(user.password_hash if user else None, password)
        if user is None or not ok:
            # The attempt's reserved failure stays counted.
            raise Unauthenticated("email or password is incorrect", reason="bad_credentials")
        await self.login_throttle.succeeded(folded, actor.meta.ip)
        new_hash = await self.passwords.hash(password) if rehash else None
        async with self.db.transaction() as s:
            values: dict[str, object] = {"last_login_at": dt.datetime.now(dt.UTC)}
            if new_hash:
                values["password_hash"] = new_hash
            await s.execute(update(User).where(User.id == user.id).values(**values))
            await audit.record(
                s,
                Actor("user", user.id, actor.meta),
                "user.log_in",
                target_type="user",
                target_id=encode("user", user.id),
                after={"method": "password", "rehashed": bool(new_hash)},
            )
        return await self._issue(user, actor)

    async def refresh(self, token: str, actor: Actor) -> AuthResult:
        rotated = await sessions.rotate(self.db, token, actor, self.refresh_ttl, revocations=self.tokens.revocations)
        user = await self.get_user(rotated.user_id)
        if user is None:
            raise Unauthenticated("account no longer exists")
        access = self.tokens.issue(encode("user", user.id), session_id=str(rotated.family_id))
        return AuthResult(user, access, rotated.refresh_token, self.tokens.ttl)

    async def log_out(self, token: str, actor: Actor) -> bool:
        return await sessions.revoke(self.db, token, actor, revocations=self.tokens.revocations)

    async def get_user(self, user_id: uuid.UUID) -> UserRecord | None:
        # Every `me` and token refresh reads this: one raw statement, then a record.
        row = await self.db.fetchrow(_USER_BY_ID, user_id)
        # The record straight from the row: an ORM instance in between cost more than the read.
        return UserRecord(**dict(row)) if row is not None else None

    async def google_auth_url(self, redirect_uri: str) -> tuple[str, str]:
        return await self.oidc.authorization_url(redirect_uri)

    async def verify_email(self, token: str, actor: Actor) -> UserRecord:
        return of(UserRecord, await self.verifier.verify(actor, token))

    async def resend_verification(self, user_id: uuid.UUID, actor: Actor) -> None:
        await self.verifier.resend(actor, user_id)

    async def google_sign_in(self, code: str, state: str, redirect_uri: str, actor: Actor) -> AuthResult:
        ident = await self.oidc.exchange(code, state, redirect_uri)
        now = dt.datetime.now(dt.UTC)
        dropped_sessions: set[uuid.UUID] = set()
        # The system path: marking the address verified retires its verification links.
        async with self.db.transaction(system=True) as s:
            user = (
                await s.execute(select(User).where(User.google_sub == ident.subject).with_for_update())
            ).scalar_one_or_none()
            action = "user.log_in"
            after: dict[str, object] = {"method": "google"}
            # Google vouches for the address only when it says so, and only for that address.
            if (
                user is not None
                and ident.email_verified
                and ident.email == user.email.lower()
                and not user.email_verified
            ):
                await mark_verified(s, user.id, now)
                user.email_verified = True
                after["emailVerified"] = True
            if user is None:
                if not ident.email_verified:
                    # Linking or creating on an unverified address would let anyone claim it.
                    raise Unauthenticated("the Google account's email is not verified", reason="email_unverified")
                user = (
                    await s.execute(select(User).where(func.lower(User.email) == ident.email).with_for_update())
                ).scalar_one_or_none()
                if user is not None:
                    if user.google_sub is not None:
                        raise Conflict("this account is linked to another Google identity", field="email")
                    if not user.email_verified and user.password_hash is not None:
                        # Nobody proved holding the address when this password was set: it may be
                        # an attacker's, who signed up first to wait for the real owner. The
                        # owner (proven by Google now) keeps the account; the password and its
                        # sessions go.
                        user.password_hash = None
                        dropped = await s.execute(
                            update(RefreshToken)
                            .where(RefreshToken.user_id == user.id, RefreshToken.revoked_at.is_(None))
                            .values(revoked_at=now, revoke_reason="unverified_password_dropped")
                            .returning(RefreshToken.family_id)
                        )
                        dropped_sessions.update(dropped.scalars())
                        after["unverifiedPasswordDropped"] = True
                    user.google_sub = ident.subject
                    await mark_verified(s, user.id, now)
                    user.email_verified = True
                    action = "user.google_linked"
                else:
                    user = User(
                        id=uuid7(),
                        email=ident.email,
                        name=ident.name,
                        email_verified=True,
                        google_sub=ident.subject,
                    )
                    s.add(user)
                    action = "user.sign_up"
            user.last_login_at = now
            await s.flush()
            await audit.record(
                s,
                Actor("user", user.id, actor.meta),
                action,
                target_type="user",
                target_id=encode("user", user.id),
                after=after,
            )
        if dropped_sessions and self.tokens.revocations is not None:
            # After commit, as logOut: the dropped password's access tokens die now, not at `exp`.
            await self.tokens.revocations.mark(dropped_sessions)
        return await self._issue(user, actor)
