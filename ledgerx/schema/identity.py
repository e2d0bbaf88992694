"""GraphQL types of identity: users and sign-in payloads."""

from __future__ import annotations

import datetime as dt

import strawberry

from ledgerx import ids
from ledgerx.domain.auth.records import UserRecord


@strawberry.type(name="User")
class UserType:
    id: strawberry.ID
    email: str
    name: str
    email_verified: bool
    is_platform_admin: bool
    created_at: dt.datetime

    @classmethod
    def of(cls, u: UserRecord) -> UserType:
        return cls(
            id=strawberry.ID(ids.encode("user", u.id)),
            email=u.email,
            name=u.name,
            email_verified=u.email_verified,
            is_platform_admin=u.is_platform_admin,
            created_at=u.created_at,
        )


@strawberry.type
class AuthPayload:
    access_token: str
    refresh_token: str
    expires_in: int = strawberry.field(description="Seconds until the access token expires.")
    user: UserType


@strawberry.type
class GoogleAuthUrl:
    url: str
    state: str


@strawberry.input
class SignUpInput:
    email: str
    password: str
    name: str = ""


@strawberry.input
class LogInInput:
    email: str
    password: str
