"""Shared helpers for tests that need projects, members and platform admins."""

from __future__ import annotations

import re
import secrets

import asyncpg

from ledgerx.db.engine import asyncpg_dsn
from ledgerx.settings import Settings
from tests.conftest import GQL, SESSION, SignedIn, sign_up

CREATE_PROJECT = """
mutation($i: CreateProjectInput!) { createProject(input: $i) { id name externalKey status viewerRole } }
"""
ADD_MEMBER = "mutation($i: AddMemberInput!) { addMember(input: $i) { id role user { id email } } }"
VERIFY_EMAIL = "mutation($t: String!) { verifyEmail(token: $t) { id emailVerified } }"
VERIFY_LINK = re.compile(r"https?://\S+/verify-email\?token=([A-Za-z0-9_-]+)")


async def mailed_verification_token(email: str) -> str:
    """The token of the newest verification link mailed to `email`, read from the outbox as the
    table owner (what the user would find in their inbox; tests without SMTP read it here)."""
    conn = await asyncpg.connect(asyncpg_dsn(SESSION["database_url"]))
    try:
        body = await conn.fetchval(
            "SELECT body_text FROM mail_outbox WHERE lower(to_addr) = lower($1) AND kind = 'email_verification'"
            " ORDER BY id DESC LIMIT 1",
            email,
        )
    finally:
        await conn.close()
    m = VERIFY_LINK.search(body or "")
    assert m, f"no verification link mailed to {email}: {body!r}"
    return m.group(1)


async def verify_email(gql: GQL, user: SignedIn) -> None:
    """Open the user's mailed verification link, as they would."""
    data = await gql.ok(VERIFY_EMAIL, {"t": await mailed_verification_token(user.email)})
    assert data["verifyEmail"] == {"id": user.user_id, "emailVerified": True}


async def sign_up_verified(gql: GQL, email: str | None = None) -> SignedIn:
    user = await sign_up(gql, email)
    await verify_email(gql, user)
    return user


async def create_project(gql: GQL, owner: SignedIn, name: str = "Acme", external_key: str | None = None) -> str:
    key = external_key or f"ext-{secrets.token_hex(5)}"
    data = await gql.ok(CREATE_PROJECT, {"i": {"name": name, "externalKey": key}}, token=owner.token)
    return str(data["createProject"]["id"])


async def add_member(gql: GQL, admin: SignedIn, project_id: str, role: str) -> SignedIn:
    """A new user who verified their address, added with `role` (addMember adds verified accounts)."""
    user = await sign_up_verified(gql)
    await gql.ok(ADD_MEMBER, {"i": {"projectId": project_id, "email": user.email, "role": role}}, token=admin.token)
    return user


async def owner_sql(settings: Settings, sql: str, *args: object) -> list[asyncpg.Record]:
    """Run SQL as the table owner (the migration role), outside the app's row-level security."""
    assert settings.database_url
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url))
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def make_platform_admin(gql: GQL, settings: Settings) -> SignedIn:
    admin = await sign_up(gql)
    await owner_sql(settings, "UPDATE users SET is_platform_admin = true WHERE email = $1", admin.email)
    return admin


class Team:
    """A project with one user of every role."""

    def __init__(self, project_id: str, owner: SignedIn, admin: SignedIn, member: SignedIn, viewer: SignedIn) -> None:
        self.project_id = project_id
        self.owner, self.admin, self.member, self.viewer = owner, admin, member, viewer

    def by_role(self, role: str) -> SignedIn:
        return {"OWNER": self.owner, "ADMIN": self.admin, "MEMBER": self.member, "VIEWER": self.viewer}[role]


async def make_team(gql: GQL) -> Team:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    admin = await add_member(gql, owner, pid, "ADMIN")
    member = await add_member(gql, owner, pid, "MEMBER")
    viewer = await add_member(gql, owner, pid, "VIEWER")
    return Team(pid, owner, admin, member, viewer)
