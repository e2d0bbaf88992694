"""Shared helpers for tests that need projects, members and platform admins."""

from __future__ import annotations

import secrets

import asyncpg

from ledgerx.db.engine import asyncpg_dsn
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, sign_up

CREATE_PROJECT = """
mutation($i: CreateProjectInput!) { createProject(input: $i) { id name externalKey status viewerRole } }
"""
ADD_MEMBER = "mutation($i: AddMemberInput!) { addMember(input: $i) { id role user { id email } } }"


async def create_project(gql: GQL, owner: SignedIn, name: str = "Acme", external_key: str | None = None) -> str:
    key = external_key or f"ext-{secrets.token_hex(5)}"
    data = await gql.ok(CREATE_PROJECT, {"i": {"name": name, "externalKey": key}}, token=owner.token)
    return str(data["createProject"]["id"])


async def add_member(gql: GQL, admin: SignedIn, project_id: str, role: str) -> SignedIn:
    user = await sign_up(gql)
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
