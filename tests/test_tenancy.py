"""Projects, members, roles, ownership, suspension, the audit log and tenant isolation."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import event

from ledgerx.db.engine import asyncpg_dsn
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, sign_up
from tests.tenancy_helpers import (
    ADD_MEMBER,
    CREATE_PROJECT,
    add_member,
    create_project,
    make_platform_admin,
    make_team,
    owner_sql,
    sign_up_verified,
)

PROJECT = (
    "query($id: ID!) { project(id: $id) { id name externalKey status viewerRole members { role user { email } } } }"
)
PROJECTS = "query($f: Int, $a: String) { projects(first: $f, after: $a) { edges { node { id name } cursor } pageInfo { hasNextPage endCursor } } }"
BY_KEY = "query($k: String!) { projectByExternalKey(externalKey: $k) { id name } }"
UPDATE = "mutation($i: UpdateProjectInput!) { updateProject(input: $i) { id name externalKey } }"
ROLE = "mutation($i: UpdateMemberRoleInput!) { updateMemberRole(input: $i) { role user { id } } }"
REMOVE = "mutation($i: RemoveMemberInput!) { removeMember(input: $i) }"
TRANSFER = "mutation($i: TransferOwnershipInput!) { transferOwnership(input: $i) { id viewerRole members { role user { id } } } }"
AUDIT = "query($p: ID!, $f: Int, $a: String) { auditLog(projectId: $p, first: $f, after: $a) { edges { node { action actorType targetId before after } } pageInfo { hasNextPage endCursor } } }"
SUSPEND = "mutation($i: SuspendProjectInput!) { suspendProject(input: $i) { id status suspendedReason } }"
REACTIVATE = "mutation($id: ID!) { reactivateProject(id: $id) { id status } }"
CREATE_INVITE = "mutation($i: CreateInviteInput!) { createInvite(input: $i) { id } }"
RESEND_INVITE = "mutation($id: ID!) { resendInvite(id: $id) { id } }"
REVOKE_INVITE = "mutation($id: ID!) { revokeInvite(id: $id) { id } }"
INVITES = "query($p: ID!) { invites(projectId: $p) { edges { node { id } } } }"
CREATE_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } secret } }"
ROTATE_KEY = "mutation($id: ID!) { rotateApiKey(id: $id) { apiKey { id } secret } }"
REVOKE_KEY = "mutation($id: ID!) { revokeApiKey(id: $id) { id revokedAt } }"
API_KEYS = "query($p: ID!) { apiKeys(projectId: $p) { edges { node { id } } } }"


async def _fixtures(gql: GQL, pid: str, owner_token: str, settings: Settings) -> tuple[str, str]:
    """An open invite (past its resend cool-down) and an API key in the project, made by its owner."""
    inv = await gql.ok(
        CREATE_INVITE,
        {"i": {"projectId": pid, "email": f"inv-{pid[-6:]}@example.com", "role": "MEMBER"}},
        token=owner_token,
    )
    key = await gql.ok(
        CREATE_KEY, {"i": {"projectId": pid, "name": "k", "scopes": ["project:read"]}}, token=owner_token
    )
    from ledgerx import ids

    await owner_sql(
        settings,
        "UPDATE invites SET last_sent_at = now() - interval '1 day' WHERE id = $1",
        ids.decode("invite", inv["createInvite"]["id"]),
    )
    return inv["createInvite"]["id"], key["createApiKey"]["apiKey"]["id"]


async def test_create_project_makes_the_creator_owner(gql: GQL) -> None:
    owner = await sign_up(gql)
    data = await gql.ok(CREATE_PROJECT, {"i": {"name": "  Acme  ", "externalKey": "acme-1x"}}, token=owner.token)
    p = data["createProject"]
    assert p["id"].startswith("prj_") and p["name"] == "Acme" and p["status"] == "ACTIVE" and p["viewerRole"] == "OWNER"
    got = (await gql.ok(PROJECT, {"id": p["id"]}, token=owner.token))["project"]
    assert got["members"] == [{"role": "OWNER", "user": {"email": owner.email}}]
    assert (await gql.ok(BY_KEY, {"k": "acme-1x"}, token=owner.token))["projectByExternalKey"]["id"] == p["id"]


async def test_project_input_errors(gql: GQL) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner, external_key="dup-key-1")
    dup = await gql.error(CREATE_PROJECT, {"i": {"name": "B", "externalKey": "dup-key-1"}}, token=owner.token)
    assert dup["code"] == "CONFLICT" and dup["field"] == "externalKey"
    bad = await gql.error(CREATE_PROJECT, {"i": {"name": " ", "externalKey": "x1"}}, token=owner.token)
    assert bad["code"] == "BAD_USER_INPUT" and bad["field"] == "name"
    bad = await gql.error(CREATE_PROJECT, {"i": {"name": "B", "externalKey": "has space"}}, token=owner.token)
    assert bad["field"] == "externalKey"
    wrong_kind = await gql.error(PROJECT, {"id": owner.user_id}, token=owner.token)
    assert wrong_kind["code"] == "BAD_USER_INPUT" and wrong_kind["field"] == "id"
    assert (await gql.error(PROJECT, {"id": pid}))["code"] == "UNAUTHENTICATED"
    # Nothing half-written: the failed creations left no project behind.
    assert len((await gql.ok(PROJECTS, {"f": 10}, token=owner.token))["projects"]["edges"]) == 1


async def test_projects_paginate_in_creation_order(gql: GQL) -> None:
    owner = await sign_up(gql)
    made = [await create_project(gql, owner, name=f"P{i}") for i in range(5)]
    other = await sign_up(gql)
    await create_project(gql, other)  # not visible to owner
    page1 = (await gql.ok(PROJECTS, {"f": 3}, token=owner.token))["projects"]
    assert [e["node"]["id"] for e in page1["edges"]] == made[:3] and page1["pageInfo"]["hasNextPage"]
    page2 = (await gql.ok(PROJECTS, {"f": 3, "a": page1["pageInfo"]["endCursor"]}, token=owner.token))["projects"]
    assert [e["node"]["id"] for e in page2["edges"]] == made[3:] and not page2["pageInfo"]["hasNextPage"]
    assert (await gql.error(PROJECTS, {"f": 1000}, token=owner.token))["field"] == "first"
    assert (await gql.error(PROJECTS, {"f": 2, "a": "garbage!"}, token=owner.token))["field"] == "after"


# ---------------------------------------------------------------- the role matrix

MATRIX_ROLES = ("OWNER", "ADMIN", "MEMBER", "VIEWER")


async def _attempt(gql: GQL, team: object, role: str, action: str, settings: Settings) -> str | None:
    """Run `action` as `role` in a fresh team; return the error code or None when allowed."""
    from tests.tenancy_helpers import Team

    assert isinstance(team, Team)
    me = team.by_role(role)
    pid = team.project_id
    extra = await sign_up_verified(gql)
    victim = team.member if role != "MEMBER" else team.viewer
    invite_id, key_id = await _fixtures(gql, pid, team.owner.token, settings)
    ops = {
        "createInvite": (CREATE_INVITE, {"i": {"projectId": pid, "email": extra.email, "role": "VIEWER"}}),
        "resendInvite": (RESEND_INVITE, {"id": invite_id}),
        "revokeInvite": (REVOKE_INVITE, {"id": invite_id}),
        "invites": (INVITES, {"p": pid}),
        "createApiKey": (CREATE_KEY, {"i": {"projectId": pid, "name": "mine", "scopes": ["usage:write"]}}),
        "rotateApiKey": (ROTATE_KEY, {"id": key_id}),
        "revokeApiKey": (REVOKE_KEY, {"id": key_id}),
        "apiKeys": (API_KEYS, {"p": pid}),
        "updateProject": (UPDATE, {"i": {"projectId": pid, "name": "Renamed"}}),
        "addMember": (ADD_MEMBER, {"i": {"projectId": pid, "email": extra.email, "role": "MEMBER"}}),
        "updateMemberRole": (ROLE, {"i": {"projectId": pid, "userId": victim.user_id, "role": "VIEWER"}}),
        "removeMember": (REMOVE, {"i": {"projectId": pid, "userId": victim.user_id}}),
        "transferOwnership": (
            TRANSFER,
            {"i": {"projectId": pid, "userId": team.admin.user_id if role != "ADMIN" else team.member.user_id}},
        ),
        "auditLog": (AUDIT, {"p": pid, "f": 5}),
        "project": (PROJECT, {"id": pid}),
        "suspendProject": (SUSPEND, {"i": {"projectId": pid, "reason": "fraud"}}),
    }
    q, v = ops[action]
    body = await gql(q, v, token=me.token)
    if body.get("errors"):
        return str(body["errors"][0]["extensions"]["code"])
    return None


ADMINS_ONLY = {"OWNER": None, "ADMIN": None, "MEMBER": "FORBIDDEN", "VIEWER": "FORBIDDEN"}
EXPECTED = {
    # action: {role: None (allowed) or the error code}
    "createInvite": ADMINS_ONLY,
    "resendInvite": ADMINS_ONLY,
    "revokeInvite": ADMINS_ONLY,
    "invites": ADMINS_ONLY,
    "createApiKey": ADMINS_ONLY,
    "rotateApiKey": ADMINS_ONLY,
    "revokeApiKey": ADMINS_ONLY,
    "apiKeys": ADMINS_ONLY,
    "updateProject": {"OWNER": None, "ADMIN": None, "MEMBER": "FORBIDDEN", "VIEWER": "FORBIDDEN"},
    "addMember": {"OWNER": None, "ADMIN": None, "MEMBER": "FORBIDDEN", "VIEWER": "FORBIDDEN"},
    "updateMemberRole": {"OWNER": None, "ADMIN": None, "MEMBER": "FORBIDDEN", "VIEWER": "FORBIDDEN"},
    "removeMember": {"OWNER": None, "ADMIN": None, "MEMBER": "FORBIDDEN", "VIEWER": "FORBIDDEN"},
    "transferOwnership": {"OWNER": None, "ADMIN": "FORBIDDEN", "MEMBER": "FORBIDDEN", "VIEWER": "FORBIDDEN"},
    "auditLog": {"OWNER": None, "ADMIN": None, "MEMBER": "FORBIDDEN", "VIEWER": "FORBIDDEN"},
    "project": {"OWNER": None, "ADMIN": None, "MEMBER": None, "VIEWER": None},
    "suspendProject": {"OWNER": "FORBIDDEN", "ADMIN": "FORBIDDEN", "MEMBER": "FORBIDDEN", "VIEWER": "FORBIDDEN"},
}


@pytest.mark.parametrize("action", sorted(EXPECTED))
async def test_role_matrix(gql: GQL, action: str, settings: Settings) -> None:
    got = {}
    for role in MATRIX_ROLES:
        team = await make_team(gql)
        got[role] = await _attempt(gql, team, role, action, settings)
    assert got == EXPECTED[action]


# ---------------------------------------------------------------- ownership and member rules


async def test_transfer_ownership_rules(gql: GQL) -> None:
    team = await make_team(gql)
    pid = team.project_id
    outsider = await sign_up(gql)
    err = await gql.error(TRANSFER, {"i": {"projectId": pid, "userId": outsider.user_id}}, token=team.owner.token)
    assert err["code"] == "NOT_FOUND" and err["field"] == "userId"
    data = await gql.ok(TRANSFER, {"i": {"projectId": pid, "userId": team.member.user_id}}, token=team.owner.token)
    roles = {m["user"]["id"]: m["role"] for m in data["transferOwnership"]["members"]}
    assert roles[team.member.user_id] == "OWNER" and roles[team.owner.user_id] == "ADMIN"
    assert list(roles.values()).count("OWNER") == 1
    # The old owner is an admin now and can no longer transfer.
    assert (await gql.error(TRANSFER, {"i": {"projectId": pid, "userId": team.owner.user_id}}, token=team.owner.token))[
        "code"
    ] == "FORBIDDEN"


async def test_owner_cannot_be_removed_or_demoted(gql: GQL) -> None:
    team = await make_team(gql)
    pid, owner_id = team.project_id, team.owner.user_id
    for q, v in (
        (REMOVE, {"i": {"projectId": pid, "userId": owner_id}}),
        (ROLE, {"i": {"projectId": pid, "userId": owner_id, "role": "ADMIN"}}),
    ):
        for actor in (team.owner, team.admin):
            assert (await gql.error(q, v, token=actor.token))["code"] == "CONFLICT"
    owner_role = await gql.error(
        ROLE, {"i": {"projectId": pid, "userId": team.member.user_id, "role": "OWNER"}}, token=team.owner.token
    )
    assert owner_role["code"] == "BAD_USER_INPUT" and owner_role["field"] == "role"
    members = (await gql.ok(PROJECT, {"id": pid}, token=team.owner.token))["project"]["members"]
    assert [m["role"] for m in members].count("OWNER") == 1


async def test_members_may_leave_and_admins_cannot_touch_other_admins(gql: GQL) -> None:
    team = await make_team(gql)
    pid = team.project_id
    second_admin = await add_member(gql, team.owner, pid, "ADMIN")
    assert (await gql.error(REMOVE, {"i": {"projectId": pid, "userId": second_admin.user_id}}, token=team.admin.token))[
        "code"
    ] == "FORBIDDEN"
    assert (await gql.ok(REMOVE, {"i": {"projectId": pid, "userId": team.viewer.user_id}}, token=team.viewer.token))[
        "removeMember"
    ]
    assert (await gql.error(PROJECT, {"id": pid}, token=team.viewer.token))["code"] == "NOT_FOUND"
    dup = await gql.error(
        ADD_MEMBER, {"i": {"projectId": pid, "email": team.member.email, "role": "VIEWER"}}, token=team.owner.token
    )
    assert dup["code"] == "CONFLICT"
    unknown = await gql.error(
        ADD_MEMBER, {"i": {"projectId": pid, "email": "nobody@example.com", "role": "VIEWER"}}, token=team.owner.token
    )
    # No account: an invitation goes out instead (see test_email_verification.py).
    assert unknown["code"] == "INVITATION_SENT" and unknown["field"] == "email"


# ---------------------------------------------------------------- suspension


async def test_suspension_blocks_members_but_not_platform_admins(gql: GQL, settings: Settings) -> None:
    team = await make_team(gql)
    pid = team.project_id
    admin = await make_platform_admin(gql, settings)
    s = (await gql.ok(SUSPEND, {"i": {"projectId": pid, "reason": "chargebacks"}}, token=admin.token))["suspendProject"]
    assert s["status"] == "SUSPENDED" and s["suspendedReason"] == "chargebacks"
    for who in (team.owner, team.admin):
        assert (await gql.error(UPDATE, {"i": {"projectId": pid, "name": "X"}}, token=who.token))[
            "code"
        ] == "PROJECT_SUSPENDED"
        assert (await gql.ok(PROJECT, {"id": pid}, token=who.token))["project"]["status"] == "SUSPENDED"
    for who in (team.member, team.viewer):
        assert (await gql.error(PROJECT, {"id": pid}, token=who.token))["code"] == "PROJECT_SUSPENDED"
        assert (await gql.error(REMOVE, {"i": {"projectId": pid, "userId": who.user_id}}, token=who.token))[
            "code"
        ] == "PROJECT_SUSPENDED"
    # Platform admins are never blocked, even though they are not members.
    assert await gql.ok(UPDATE, {"i": {"projectId": pid, "name": "Fixed by support"}}, token=admin.token)
    assert (await gql.ok(REACTIVATE, {"id": pid}, token=admin.token))["reactivateProject"]["status"] == "ACTIVE"
    assert await gql.ok(UPDATE, {"i": {"projectId": pid, "name": "Back"}}, token=team.admin.token)
    no_reason = await gql.error(SUSPEND, {"i": {"projectId": pid, "reason": " "}}, token=admin.token)
    assert no_reason["code"] == "BAD_USER_INPUT" and no_reason["field"] == "reason"
    actions = [
        e["node"]["action"]
        for e in (await gql.ok(AUDIT, {"p": pid, "f": 50}, token=team.owner.token))["auditLog"]["edges"]
    ]
    assert "project.suspend" in actions and "project.reactivate" in actions


# ---------------------------------------------------------------- isolation


async def test_other_projects_are_not_found_through_every_field(gql: GQL, settings: Settings) -> None:
    a_owner = await sign_up(gql)
    a_pid = await create_project(gql, a_owner)
    every_scope = (await gql.ok("{ apiKeyScopes }", token=a_owner.token))["apiKeyScopes"]
    a_key = (
        await gql.ok(CREATE_KEY, {"i": {"projectId": a_pid, "name": "a", "scopes": every_scope}}, token=a_owner.token)
    )["createApiKey"]["secret"]
    b = await make_team(gql)
    pid = b.project_id
    b_key = "iso-" + pid[-8:]
    await gql.ok(UPDATE, {"i": {"projectId": pid, "externalKey": b_key}}, token=b.owner.token)
    invite_id, key_id = await _fixtures(gql, pid, b.owner.token, settings)
    attempts = [
        (CREATE_INVITE, {"i": {"projectId": pid, "email": "x@example.com", "role": "ADMIN"}}),
        (RESEND_INVITE, {"id": invite_id}),
        (REVOKE_INVITE, {"id": invite_id}),
        (INVITES, {"p": pid}),
        (CREATE_KEY, {"i": {"projectId": pid, "name": "x", "scopes": ["usage:write"]}}),
        (ROTATE_KEY, {"id": key_id}),
        (REVOKE_KEY, {"id": key_id}),
        (API_KEYS, {"p": pid}),
        (PROJECT, {"id": pid}),
        (BY_KEY, {"k": b_key}),
        (UPDATE, {"i": {"projectId": pid, "name": "pwned"}}),
        (ADD_MEMBER, {"i": {"projectId": pid, "email": a_owner.email, "role": "ADMIN"}}),
        (ROLE, {"i": {"projectId": pid, "userId": b.member.user_id, "role": "VIEWER"}}),
        (REMOVE, {"i": {"projectId": pid, "userId": b.member.user_id}}),
        (TRANSFER, {"i": {"projectId": pid, "userId": a_owner.user_id}}),
        (AUDIT, {"p": pid}),
    ]
    for q, v in attempts:
        err = await gql.error(q, v, token=a_owner.token)
        assert err["code"] == "NOT_FOUND", (q, err)
        err = await gql.error(q, v, headers={"X-Api-Key": a_key})
        assert err["code"] == "NOT_FOUND", ("api key", q, err)
    listed = [e["node"]["id"] for e in (await gql.ok(PROJECTS, {"f": 50}, token=a_owner.token))["projects"]["edges"]]
    assert pid not in listed
    by_key = [
        e["node"]["id"] for e in (await gql.ok(PROJECTS, {"f": 50}, headers={"X-Api-Key": a_key}))["projects"]["edges"]
    ]
    assert by_key == [a_pid]
    # The invite and key of B still work as before.
    assert (await gql.ok(API_KEYS, {"p": pid}, token=b.owner.token))["apiKeys"]["edges"][0]["node"]["id"] == key_id
    # Nothing changed in B.
    assert (await gql.ok(PROJECT, {"id": pid}, token=b.owner.token))["project"]["name"] == "Acme"


async def test_database_refuses_other_tenants_rows_to_the_app_role(gql: GQL, settings: Settings) -> None:
    a_owner, b_owner = await sign_up(gql), await sign_up(gql)
    a, b = await create_project(gql, a_owner), await create_project(gql, b_owner)
    rows = await owner_sql(settings, "SELECT id FROM projects WHERE id IN (SELECT id FROM projects) ORDER BY id")
    by_public = {}
    from ledgerx import ids

    for r in rows:
        by_public[ids.encode("project", r["id"])] = r["id"]
    a_id, b_id = by_public[a], by_public[b]
    assert settings.database_url
    conn = await asyncpg.connect(asyncpg_dsn(settings.database_url), server_settings={"role": settings.db_app_role})
    try:
        assert await conn.fetchval("SELECT current_user") == settings.db_app_role
        async with conn.transaction():
            await conn.execute("SELECT set_config('ledgerx.project_ids', $1, true)", str(a_id))
            assert await conn.fetchval("SELECT count(*) FROM projects WHERE id = $1", b_id) == 0
            assert await conn.fetchval("SELECT count(*) FROM project_members WHERE project_id = $1", b_id) == 0
            assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE project_id = $1", b_id) == 0
            assert await conn.fetchval("SELECT count(*) FROM projects WHERE id = $1", a_id) == 1
            # Writing into B from A's transaction is refused by the policy's WITH CHECK.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(
                    "INSERT INTO project_members (id, project_id, user_id, role) "
                    "SELECT gen_random_uuid(), $1, user_id, 'ADMIN' FROM project_members LIMIT 1",
                    b_id,
                )
        # No setting at all: nothing of any tenant.
        assert await conn.fetchval("SELECT count(*) FROM projects") == 0
        # The app role cannot turn RLS off or raise its privileges.
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute("ALTER TABLE projects DISABLE ROW LEVEL SECURITY")
    finally:
        await conn.close()


async def test_audit_log_is_append_only(gql: GQL, settings: Settings) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    entries = (await gql.ok(AUDIT, {"p": pid}, token=owner.token))["auditLog"]["edges"]
    assert entries[0]["node"]["action"] == "project.create" and entries[0]["node"]["actorType"] == "USER"
    assert settings.database_url
    app = await asyncpg.connect(asyncpg_dsn(settings.database_url), server_settings={"role": settings.db_app_role})
    try:
        for sql in ("UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(sql)
    finally:
        await app.close()
    # Even the owner of the table is refused by the triggers.
    for sql in ("UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await owner_sql(settings, sql)


async def test_audit_log_records_changes_with_before_and_after(gql: GQL) -> None:
    team = await make_team(gql)
    await gql.ok(UPDATE, {"i": {"projectId": team.project_id, "name": "Renamed"}}, token=team.admin.token)
    await gql.ok(
        ROLE,
        {"i": {"projectId": team.project_id, "userId": team.member.user_id, "role": "VIEWER"}},
        token=team.owner.token,
    )
    page = (await gql.ok(AUDIT, {"p": team.project_id, "f": 2}, token=team.owner.token))["auditLog"]
    first, second = (e["node"] for e in page["edges"])
    assert (
        first["action"] == "member.update_role"
        and first["before"] == {"role": "MEMBER"}
        and first["after"] == {"role": "VIEWER"}
    )
    assert (
        second["action"] == "project.update"
        and second["before"]["name"] == "Acme"
        and second["after"]["name"] == "Renamed"
    )
    rest = await gql.ok(
        AUDIT, {"p": team.project_id, "f": 50, "a": page["pageInfo"]["endCursor"]}, token=team.owner.token
    )
    assert [e["node"]["action"] for e in rest["auditLog"]["edges"]][-1] == "project.create"


# ---------------------------------------------------------------- query counts


async def test_projects_with_members_cost_a_constant_number_of_queries(gql: GQL, services: Services) -> None:
    async def count_for(n: int) -> int:
        owner = await sign_up(gql)
        for i in range(n):
            pid = await create_project(gql, owner, name=f"P{i}")
            if i % 2 == 0:
                await add_member(gql, owner, pid, "MEMBER")
        statements: list[str] = []

        def on_execute(conn: object, cursor: object, statement: str, *args: object) -> None:
            statements.append(statement)

        engine = services.db.engine.sync_engine
        event.listen(engine, "before_cursor_execute", on_execute)
        try:
            data = await gql.ok(
                "query($f: Int) { projects(first: $f) { edges { node { id members { role user { email } } } } } }",
                {"f": 50},
                token=owner.token,
            )
        finally:
            event.remove(engine, "before_cursor_execute", on_execute)
        assert len(data["projects"]["edges"]) == n
        return len(statements)

    small, large = await count_for(5), await count_for(50)
    assert small == large
    assert 3 <= small <= 8  # projects, members, users (+ the RLS settings of each transaction)
