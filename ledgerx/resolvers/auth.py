"""Identity fields: signUp, logIn, refreshSession, logOut, me, verifyEmail, resendVerification,
googleAuthUrl, googleSignIn."""

from __future__ import annotations

import strawberry

from ledgerx.context import REFRESH_COOKIE, Context
from ledgerx.domain.auth.service import AuthResult
from ledgerx.domain.errors import Unauthenticated
from ledgerx.schema.identity import AuthPayload, GoogleAuthUrl, LogInInput, SignUpInput, UserType
from ledgerx.schema.info import Info


def _payload(ctx: Context, result: AuthResult) -> AuthPayload:
    """Also hand the refresh token to browsers as an HTTP-only cookie they cannot read."""
    if ctx.response is not None:
        ctx.response.set_cookie(
            REFRESH_COOKIE,
            result.refresh_token,
            max_age=ctx.services.settings.refresh_token_ttl,
            httponly=True,
            secure=ctx.services.settings.cookie_secure,
            samesite="strict",
            path="/graphql",
        )
    return AuthPayload(
        access_token=result.access_token,
        refresh_token=result.refresh_token,
        expires_in=result.expires_in,
        user=UserType.of(result.user),
    )


def _refresh_token(ctx: Context, given: str | None) -> str:
    token = given or ctx.request.cookies.get(REFRESH_COOKIE)
    if not token:
        raise Unauthenticated("no refresh token given (argument or cookie)")
    return token


@strawberry.type
class Query:
    @strawberry.field(description="The signed-in user.")
    async def me(self, info: Info) -> UserType:
        p = info.context.require_user()
        assert p.user_id is not None
        user = await info.context.services.auth.get_user(p.user_id)
        if user is None:
            raise Unauthenticated("account no longer exists")
        return UserType.of(user)


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def sign_up(self, info: Info, input: SignUpInput) -> AuthPayload:
        ctx = info.context
        return _payload(ctx, await ctx.services.auth.sign_up(input.email, input.password, input.name, ctx.actor()))

    @strawberry.mutation
    async def log_in(self, info: Info, input: LogInInput) -> AuthPayload:
        ctx = info.context
        return _payload(ctx, await ctx.services.auth.log_in(input.email, input.password, ctx.actor()))

    @strawberry.mutation(description="Spend a refresh token (argument or cookie) for a new pair.")
    async def refresh_session(self, info: Info, refresh_token: str | None = None) -> AuthPayload:
        ctx = info.context
        return _payload(ctx, await ctx.services.auth.refresh(_refresh_token(ctx, refresh_token), ctx.actor()))

    @strawberry.mutation(description="Revoke the refresh token's whole session.")
    async def log_out(self, info: Info, refresh_token: str | None = None) -> bool:
        ctx = info.context
        done = await ctx.services.auth.log_out(_refresh_token(ctx, refresh_token), ctx.actor())
        if ctx.response is not None:
            ctx.response.delete_cookie(REFRESH_COOKIE, path="/graphql")
        return done

    @strawberry.mutation(
        description="Confirm an email address with the token of a mailed link (no sign-in needed; single use)."
    )
    async def verify_email(self, info: Info, token: str) -> UserType:
        ctx = info.context
        return UserType.of(await ctx.services.auth.verify_email(token, ctx.actor()))

    @strawberry.mutation(
        description="Mail the signed-in user a new verification link (older links stop working); rate limited."
    )
    async def resend_verification(self, info: Info) -> bool:
        ctx = info.context
        p = ctx.require_user()
        assert p.user_id is not None
        await ctx.services.auth.resend_verification(p.user_id, ctx.actor())
        return True

    @strawberry.mutation
    async def google_auth_url(self, info: Info, redirect_uri: str) -> GoogleAuthUrl:
        url, state = await info.context.services.auth.google_auth_url(redirect_uri)
        return GoogleAuthUrl(url=url, state=state)

    @strawberry.mutation
    async def google_sign_in(self, info: Info, code: str, state: str, redirect_uri: str) -> AuthPayload:
        ctx = info.context
        return _payload(ctx, await ctx.services.auth.google_sign_in(code, state, redirect_uri, ctx.actor()))
