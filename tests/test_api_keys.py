"""Per-project API keys: create, use (Bearer, X-Api-Key, websocket), rotate with an overlap, revoke,
roles, isolation between projects, lastUsedAt without a write per request, audit rows."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from ledgerx import ids
from ledgerx.app import create_app
from ledgerx.domain.errors import BadInput
from ledgerx.domain.tenancy import api_keys, scopes
from ledgerx.services import Services
from ledgerx.settings import Settings, SettingsError
from tests.conftest import GQL, LiveServer, SignedIn, sign_up
from tests.tenancy_helpers import create_project, make_platform_admin, make_team, owner_sql

CREATE = """
mutation($i: CreateApiKeyInput!) {
  createApiKey(input: $i) {
    apiKey { id projectId name prefix scopes createdAt lastUsedAt rotatedAt previousSecretExpiresAt revokedAt }
    secret
  }
}
"""
ROTATE = """
mutation($id: ID!) {
  rotateApiKey(id: $id) { apiKey { id prefix scopes rotatedAt previousSecretExpiresAt revokedAt } secret }
}
"""
REVOKE = "mutation($id: ID!) { revokeApiKey(id: $id) { id name revokedAt previousSecretExpiresAt } }"
LIST = """
query($p: ID!, $f: Int, $a: String) {
  apiKeys(projectId: $p, first: $f, after: $a) {
    edges { node { id name prefix scopes createdAt lastUsedAt revokedAt } cursor }
    pageInfo { hasNextPage endCursor }
  }
}
"""
PROJECT = "query($id: ID!) { project(id: $id) { id name } }"
CURRENT = "{ currentApiKey { id projectId name prefix scopes lastUsedAt } }"
ME = "{ me { id } }"
SUSPEND = "mutation($i: SuspendProjectInput!) { suspendProject(input: $i) { id status } }"

TOKEN = re.compile(r"^lx_([0-9a-hjkmnp-tv-z]{12})_([A-Za-z0-9_-]{43})$")
NOWHERE = "prj_00000000000000000000000000"


async def new_key(
    gql: GQL, admin: SignedIn, project_id: str, scopes: list[str] | None = None, name: str = "server"
) -> tuple[dict[str, Any], str]:
    scopes = ["usage:write", "wallets:read"] if scopes is None else scopes
    data = await gql.ok(CREATE, {"i": {"projectId": project_id, "name": name, "scopes": scopes}}, token=admin.token)
    payload = data["createApiKey"]
    return payload["apiKey"], payload["secret"]


def as_key(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def works(gql: GQL, secret: str, project_id: str, header: str = "Authorization") -> bool:
    """Whether the key reads its project; asserts that a failure is UNAUTHENTICATED."""
    headers = {header: f"Bearer {secret}" if header == "Authorization" else secret}
    body = await gql(PROJECT, {"id": project_id}, headers=headers)
    if not body.get("errors"):
        assert body["data"]["project"]["id"] == project_id
        return True
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", body
    return False


async def auth_error(gql: GQL, secret: str) -> dict[str, Any]:
    return await gql.error(PROJECT, {"id": NOWHERE}, headers=as_key(secret))


@dataclasses.dataclass
class Env:
    gql: GQL
    owner: SignedIn
    project_id: str


@pytest.fixture
async def env(gql: GQL) -> Env:
    owner = await sign_up(gql)
    return Env(gql, owner, await create_project(gql, owner, name="Keys Inc"))


@pytest.fixture
async def no_overlap_gql(services: Services) -> AsyncIterator[GQL]:
    """The same database and Redis, served with API_KEY_ROTATION_OVERLAP=0."""
    # A shallow copy shares every running service; only the settings differ.
    svc = copy.copy(services)
    svc.settings = dataclasses.replace(services.settings, api_key_rotation_overlap=0)
    transport = httpx.ASGITransport(app=create_app(svc.settings, svc), client=("203.0.113.8", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield GQL(c)


# --- the whole life of a key over GraphQL ---------------------------------------------------------


async def test_create_use_rotate_revoke_end_to_end(env: Env) -> None:
    gql, owner, pid = env.gql, env.owner, env.project_id
    key, secret = await new_key(gql, owner, pid, ["wallets:read", "usage:write", "usage:write"], name="  backend  ")

    m = TOKEN.match(secret)
    assert m, secret
    assert key["id"].startswith("key_")
    assert key["projectId"] == pid
    assert key["name"] == "backend"
    assert key["prefix"] == f"lx_{m.group(1)}" and secret.startswith(key["prefix"] + "_")
    assert key["scopes"] == ["usage:write", "wallets:read"]  # deduplicated, sorted
    assert key["createdAt"] and key["lastUsedAt"] is None and key["revokedAt"] is None
    assert key["rotatedAt"] is None and key["previousSecretExpiresAt"] is None

    # The key acts as its project, through either header.
    assert await works(gql, secret, pid)
    assert await works(gql, secret, pid, header="X-Api-Key")
    me = (await gql.ok(CURRENT, headers={"X-Api-Key": secret}))["currentApiKey"]
    assert me["id"] == key["id"] and me["projectId"] == pid and me["scopes"] == key["scopes"]
    # It is not a user.
    assert (await gql.error(ME, headers=as_key(secret)))["code"] == "UNAUTHENTICATED"

    # Admins see it listed, never with its secret.
    body = await gql(LIST, {"p": pid}, token=owner.token)
    assert not body.get("errors"), body
    nodes = [e["node"] for e in body["data"]["apiKeys"]["edges"]]
    assert [n["id"] for n in nodes] == [key["id"]]
    assert m.group(2) not in json.dumps(body)

    # Rotation: a new secret for the same key; the old one still works during the overlap.
    rotated = (await gql.ok(ROTATE, {"id": key["id"]}, token=owner.token))["rotateApiKey"]
    new_secret = rotated["secret"]
    assert TOKEN.match(new_secret) and new_secret != secret
    assert rotated["apiKey"]["id"] == key["id"] and rotated["apiKey"]["prefix"] == key["prefix"]
    assert rotated["apiKey"]["scopes"] == key["scopes"]
    assert rotated["apiKey"]["rotatedAt"]
    expires = dt.datetime.fromisoformat(rotated["apiKey"]["previousSecretExpiresAt"])
    overlap = (expires - dt.datetime.fromisoformat(rotated["apiKey"]["rotatedAt"])).total_seconds()
    assert overlap == 24 * 3600  # the default API_KEY_ROTATION_OVERLAP
    assert await works(gql, new_secret, pid)
    assert await works(gql, secret, pid)

    # Revocation: immediate, for the new secret and the overlapping old one.
    revoked = (await gql.ok(REVOKE, {"id": key["id"]}, token=owner.token))["revokeApiKey"]
    assert revoked["id"] == key["id"] and revoked["revokedAt"] and revoked["previousSecretExpiresAt"] is None
    assert not await works(gql, new_secret, pid)
    assert not await works(gql, secret, pid)
    assert not await works(gql, new_secret, pid, header="X-Api-Key")
    listed = (await gql.ok(LIST, {"p": pid}, token=owner.token))["apiKeys"]["edges"]
    assert listed[0]["node"]["revokedAt"] == revoked["revokedAt"]

    # Revoking again changes nothing; a revoked key cannot be brought back by rotation.
    again = (await gql.ok(REVOKE, {"id": key["id"]}, token=owner.token))["revokeApiKey"]
    assert again["revokedAt"] == revoked["revokedAt"]
    conflict = await gql.error(ROTATE, {"id": key["id"]}, token=owner.token)
    assert conflict["code"] == "CONFLICT"


async def test_rotation_overlap_ends(env: Env, settings: Settings, services: Services) -> None:
    gql, owner, pid = env.gql, env.owner, env.project_id
    key, old = await new_key(gql, owner, pid)
    new = (await gql.ok(ROTATE, {"id": key["id"]}, token=owner.token))["rotateApiKey"]["secret"]
    assert await works(gql, old, pid) and await works(gql, new, pid)

    # The overlap runs out: the old secret dies, the new one lives on. (Moved in SQL here, which no
    # announcement tells: the instance's verified keys are dropped as the TTL would; a real overlap
    # end is honoured by the cache itself, which keeps an old secret no longer than its overlap.)
    await owner_sql(
        settings,
        "UPDATE api_keys SET previous_expires_at = now() - interval '1 second' WHERE id = $1",
        ids.decode("api_key", key["id"]),
    )
    services.verified_keys.forget_project(ids.decode("project", pid))
    assert not await works(gql, old, pid)
    assert await works(gql, new, pid)

    # Rotating again retires the previous generation: only the newest two can ever overlap.
    newest = (await gql.ok(ROTATE, {"id": key["id"]}, token=owner.token))["rotateApiKey"]["secret"]
    assert await works(gql, newest, pid) and await works(gql, new, pid) and not await works(gql, old, pid)


async def test_rotation_with_zero_overlap_kills_the_old_secret_at_once(env: Env, no_overlap_gql: GQL) -> None:
    key, old = await new_key(env.gql, env.owner, env.project_id)
    rotated = (await no_overlap_gql.ok(ROTATE, {"id": key["id"]}, token=env.owner.token))["rotateApiKey"]
    assert rotated["apiKey"]["previousSecretExpiresAt"] is None
    assert not await works(env.gql, old, env.project_id)
    assert await works(env.gql, rotated["secret"], env.project_id)


# --- failures look alike ----------------------------------------------------------------------------


async def test_bad_keys_are_unauthenticated_with_one_message(env: Env) -> None:
    gql, owner, pid = env.gql, env.owner, env.project_id
    _, secret = await new_key(gql, owner, pid)
    m = TOKEN.match(secret)
    assert m
    public_id, good_secret = m.groups()
    wrong_secret = f"lx_{public_id}_{'A' * 43}"
    unknown = f"lx_{'z' * 12}_{good_secret}"
    malformed = [
        "lx_",
        "lx_short",
        f"lx_{public_id}",
        f"lx_{public_id}_{good_secret}x",
        f"lx_{public_id.upper()}_{good_secret}",
    ]
    revoked_key, revoked_secret = await new_key(gql, owner, pid)
    await gql.ok(REVOKE, {"id": revoked_key["id"]}, token=owner.token)

    errors = [await auth_error(gql, s) for s in [wrong_secret, unknown, revoked_secret, *malformed]]
    assert {e["code"] for e in errors} == {"UNAUTHENTICATED"}
    assert {e["message"] for e in errors} == {"invalid API key"}
    assert all(set(e) == {"code", "message"} for e in errors)  # no reason or hint either
    x = await gql.error(PROJECT, {"id": NOWHERE}, headers={"X-Api-Key": wrong_secret})
    assert x["code"] == "UNAUTHENTICATED" and x["message"] == "invalid API key"
    assert await works(gql, secret, pid)  # the real key was never disturbed


# --- input and roles ---------------------------------------------------------------------------------


async def test_create_input_is_validated(env: Env) -> None:
    gql, owner, pid = env.gql, env.owner, env.project_id
    bad = await gql.error(
        CREATE, {"i": {"projectId": pid, "name": "k", "scopes": ["usage:write", "root:all"]}}, token=owner.token
    )
    assert bad["code"] == "BAD_USER_INPUT" and bad["field"] == "scopes" and bad["unknown"] == ["root:all"]
    # A key with no scope at all is refused: almost always a client that forgot to send them.
    bad = await gql.error(CREATE, {"i": {"projectId": pid, "name": "k", "scopes": []}}, token=owner.token)
    assert (bad["code"], bad["field"], bad["reason"]) == ("BAD_USER_INPUT", "scopes", "NO_SCOPES")
    assert "usage:write" in bad["message"]  # the message lists the known scopes
    bad = await gql.error(CREATE, {"i": {"projectId": pid, "name": " ", "scopes": []}}, token=owner.token)
    assert bad["code"] == "BAD_USER_INPUT" and bad["field"] == "name"
    bad = await gql.error(CREATE, {"i": {"projectId": owner.user_id, "name": "k", "scopes": []}}, token=owner.token)
    assert bad["code"] == "BAD_USER_INPUT" and bad["field"] == "projectId"
    bad = await gql.error(ROTATE, {"id": pid}, token=owner.token)
    assert bad["code"] == "BAD_USER_INPUT" and bad["field"] == "id"
    assert (await gql.error(CREATE, {"i": {"projectId": pid, "name": "k", "scopes": []}}))["code"] == "UNAUTHENTICATED"
    # Nothing half-written.
    assert (await gql.ok(LIST, {"p": pid}, token=owner.token))["apiKeys"]["edges"] == []
    known = (await gql.ok("{ apiKeyScopes }"))["apiKeyScopes"]
    assert known == [
        "billing:read",
        "billing:write",
        "entitlements:read",
        "project:read",
        "usage:read",
        "usage:write",
        "wallets:read",
        "wallets:write",
        "webhooks:write",
    ]


async def test_only_project_admins_manage_keys(gql: GQL) -> None:
    team = await make_team(gql)
    pid = team.project_id
    admin_key, _ = await new_key(gql, team.admin, pid, name="by admin")
    owner_key, owner_secret = await new_key(gql, team.owner, pid, name="by owner")
    for role in ("MEMBER", "VIEWER"):
        user = team.by_role(role)
        err = await gql.error(CREATE, {"i": {"projectId": pid, "name": "k", "scopes": []}}, token=user.token)
        assert err["code"] == "FORBIDDEN", (role, err)
        assert (await gql.error(ROTATE, {"id": owner_key["id"]}, token=user.token))["code"] == "FORBIDDEN"
        assert (await gql.error(REVOKE, {"id": owner_key["id"]}, token=user.token))["code"] == "FORBIDDEN"
        assert (await gql.error(LIST, {"p": pid}, token=user.token))["code"] == "FORBIDDEN"
    # An ADMIN manages keys the owner made and the other way round.
    await gql.ok(ROTATE, {"id": owner_key["id"]}, token=team.admin.token)
    await gql.ok(REVOKE, {"id": admin_key["id"]}, token=team.owner.token)

    # A key never manages keys, not even in its own project, and not itself.
    owner_secret = (await gql.ok(ROTATE, {"id": owner_key["id"]}, token=team.owner.token))["rotateApiKey"]["secret"]
    k = as_key(owner_secret)
    assert (await gql.error(CREATE, {"i": {"projectId": pid, "name": "k", "scopes": []}}, headers=k))[
        "code"
    ] == "FORBIDDEN"
    assert (await gql.error(ROTATE, {"id": owner_key["id"]}, headers=k))["code"] == "FORBIDDEN"
    assert (await gql.error(REVOKE, {"id": owner_key["id"]}, headers=k))["code"] == "FORBIDDEN"
    assert (await gql.error(LIST, {"p": pid}, headers=k))["code"] == "FORBIDDEN"
    assert await works(gql, owner_secret, pid)
    assert len((await gql.ok(LIST, {"p": pid}, token=team.owner.token))["apiKeys"]["edges"]) == 2


# --- isolation -------------------------------------------------------------------------------------------


async def test_keys_and_users_never_reach_another_project(gql: GQL) -> None:
    alice, bob = await sign_up(gql), await sign_up(gql)
    a = await create_project(gql, alice, name="A")
    b = await create_project(gql, bob, name="B")
    key_a, secret_a = await new_key(gql, alice, a)
    key_b, secret_b = await new_key(gql, bob, b)
    ka = as_key(secret_a)

    assert await works(gql, secret_a, a)
    # A's key: everything of B is NOT_FOUND, as if it did not exist.
    assert (await gql.error(PROJECT, {"id": b}, headers=ka))["code"] == "NOT_FOUND"
    assert (await gql.error(CREATE, {"i": {"projectId": b, "name": "x", "scopes": []}}, headers=ka))[
        "code"
    ] == "NOT_FOUND"
    assert (await gql.error(LIST, {"p": b}, headers=ka))["code"] == "NOT_FOUND"
    assert (await gql.error(ROTATE, {"id": key_b["id"]}, headers=ka))["code"] == "NOT_FOUND"
    assert (await gql.error(REVOKE, {"id": key_b["id"]}, headers=ka))["code"] == "NOT_FOUND"
    # A's owner: the same for B's keys.
    assert (await gql.error(LIST, {"p": b}, token=alice.token))["code"] == "NOT_FOUND"
    assert (await gql.error(ROTATE, {"id": key_b["id"]}, token=alice.token))["code"] == "NOT_FOUND"
    assert (await gql.error(REVOKE, {"id": key_b["id"]}, token=alice.token))["code"] == "NOT_FOUND"
    assert (await gql.error(CREATE, {"i": {"projectId": b, "name": "x", "scopes": []}}, token=alice.token))[
        "code"
    ] == "NOT_FOUND"
    # An id that was never issued looks the same as somebody else's.
    ghost = ids.encode("api_key", ids.uuid7())
    assert (await gql.error(REVOKE, {"id": ghost}, token=alice.token))["code"] == "NOT_FOUND"
    # B is untouched and B's key still works; A's list holds only A's key.
    assert await works(gql, secret_b, b)
    listed = (await gql.ok(LIST, {"p": a}, token=alice.token))["apiKeys"]["edges"]
    assert [e["node"]["id"] for e in listed] == [key_a["id"]]


async def test_key_of_a_suspended_project_is_refused(gql: GQL, settings: Settings) -> None:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    _, secret = await new_key(gql, owner, pid)
    admin = await make_platform_admin(gql, settings)
    await gql.ok(SUSPEND, {"i": {"projectId": pid, "reason": "unpaid"}}, token=admin.token)
    assert (await gql.error(PROJECT, {"id": pid}, headers=as_key(secret)))["code"] == "PROJECT_SUSPENDED"


# --- pagination ----------------------------------------------------------------------------------------


async def test_api_keys_is_a_cursor_connection_newest_first(env: Env) -> None:
    gql, owner, pid = env.gql, env.owner, env.project_id
    made = [(await new_key(gql, owner, pid, name=f"k{i}"))[0]["id"] for i in range(3)]
    page1 = (await gql.ok(LIST, {"p": pid, "f": 2}, token=owner.token))["apiKeys"]
    assert [e["node"]["id"] for e in page1["edges"]] == made[::-1][:2]
    assert page1["pageInfo"]["hasNextPage"] is True
    page2 = (await gql.ok(LIST, {"p": pid, "f": 2, "a": page1["pageInfo"]["endCursor"]}, token=owner.token))["apiKeys"]
    assert [e["node"]["id"] for e in page2["edges"]] == [made[0]]
    assert page2["pageInfo"]["hasNextPage"] is False
    assert (await gql.error(LIST, {"p": pid, "f": 0}, token=owner.token))["field"] == "first"
    assert (await gql.error(LIST, {"p": pid, "a": "nope!"}, token=owner.token))["field"] == "after"


# --- lastUsedAt ------------------------------------------------------------------------------------------


async def test_last_used_at_is_set_after_use_without_a_write_per_request(
    env: Env, settings: Settings, services: Services
) -> None:
    gql, owner, pid = env.gql, env.owner, env.project_id
    key, secret = await new_key(gql, owner, pid)
    key_uuid = ids.decode("api_key", key["id"])

    async def stored() -> dt.datetime | None:
        rows = await owner_sql(settings, "SELECT last_used_at FROM api_keys WHERE id = $1", key_uuid)
        value: dt.datetime | None = rows[0]["last_used_at"]
        return value

    assert await works(gql, secret, pid)
    await api_keys.flush_last_used()
    first = await stored()
    assert first is not None
    listed = (await gql.ok(LIST, {"p": pid}, token=owner.token))["apiKeys"]["edges"][0]["node"]
    assert listed["lastUsedAt"] is not None

    # More requests within the resolution write nothing.
    for _ in range(5):
        assert await works(gql, secret, pid)
    await api_keys.flush_last_used()
    assert await stored() == first

    # Once the stored value is older than the resolution, the next use moves it. (Aged in SQL here:
    # the instance's memory of the key, which knows when it last wrote, is dropped as its TTL would.)
    await owner_sql(settings, "UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE id = $1", key_uuid)
    services.verified_keys.forget_project(ids.decode("project", pid))
    old = await stored()
    assert await works(gql, secret, pid, header="X-Api-Key")
    await api_keys.flush_last_used()
    latest = await stored()
    assert old is not None and latest is not None and latest > old + dt.timedelta(seconds=100)


async def test_recent_use_schedules_no_write(services: Services) -> None:
    key_id, project_id = ids.uuid7(), ids.uuid7()
    now = dt.datetime.now(dt.UTC)
    api_keys._maybe_touch(services.db, key_id, project_id, now - dt.timedelta(seconds=10), now)
    assert key_id not in api_keys._inflight


# --- audit ------------------------------------------------------------------------------------------------


async def test_create_rotate_revoke_are_audited_without_secrets(env: Env, settings: Settings) -> None:
    gql, owner, pid = env.gql, env.owner, env.project_id
    key, secret = await new_key(gql, owner, pid)
    rotated = (await gql.ok(ROTATE, {"id": key["id"]}, token=owner.token))["rotateApiKey"]["secret"]
    await gql.ok(REVOKE, {"id": key["id"]}, token=owner.token)
    await gql.ok(REVOKE, {"id": key["id"]}, token=owner.token)  # no change, no row
    rows = await owner_sql(
        settings,
        "SELECT action, actor_type, actor_id, project_id, before, after FROM audit_log WHERE target_id = $1 ORDER BY id",
        key["id"],
    )
    assert [r["action"] for r in rows] == ["api_key.create", "api_key.rotate", "api_key.revoke"]
    assert {r["actor_type"] for r in rows} == {"user"}
    assert {ids.encode("user", r["actor_id"]) for r in rows} == {owner.user_id}
    assert {ids.encode("project", r["project_id"]) for r in rows} == {pid}
    text = json.dumps([[r["before"], r["after"]] for r in rows])
    for s in (secret, rotated):
        # lx_<id>_<secret>: the secret itself may contain "_", so split from the left.
        assert s.split("_", 2)[2][:20] not in text
    assert json.loads(rows[0]["after"])["scopes"] == key["scopes"]
    assert json.loads(rows[2]["after"])["revokedAt"] is not None


# --- websockets --------------------------------------------------------------------------------------------


async def _ws_init(url: str, payload: dict[str, object]) -> tuple[websockets.ClientConnection, dict[str, Any]]:
    ws = await websockets.connect(url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")])
    await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 5))


async def test_websocket_authenticated_with_an_api_key(live_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=live_server.url) as c:
        gql = GQL(c)
        owner = await sign_up(gql)
        pid = await create_project(gql, owner)
        key, secret = await new_key(gql, owner, pid)
        _, revoked = await new_key(gql, owner, pid)
        revoked_id = (await gql.ok(LIST, {"p": pid, "f": 1}, token=owner.token))["apiKeys"]["edges"][0]["node"]["id"]
        await gql.ok(REVOKE, {"id": revoked_id}, token=owner.token)

    ws, ack = await _ws_init(live_server.ws_url, {"authorization": f"Bearer {secret}"})
    try:
        assert ack["type"] == "connection_ack"
        await ws.send(
            json.dumps(
                {
                    "id": "q",
                    "type": "subscribe",
                    "payload": {
                        "query": "query($id: ID!) { project(id: $id) { id } currentApiKey { id } }",
                        "variables": {"id": pid},
                    },
                }
            )
        )
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert msg["type"] == "next", msg
        assert msg["payload"]["data"] == {"project": {"id": pid}, "currentApiKey": {"id": key["id"]}}
        await ws.send(json.dumps({"id": "h", "type": "subscribe", "payload": {"query": "subscription { heartbeat }"}}))
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if msg.get("id") == "h":
                break
        assert msg["type"] == "next" and msg["payload"]["data"]["heartbeat"]
    finally:
        await ws.close()

    ws = await websockets.connect(live_server.ws_url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")])
    await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {revoked}"}}))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403


# --- pieces ---------------------------------------------------------------------------------------------------


def test_scope_validation_and_token_parsing() -> None:
    assert scopes.validate([" usage:write", "usage:write", "billing:read"]) == ["billing:read", "usage:write"]
    with pytest.raises(BadInput) as e:
        scopes.validate(["usage:write", "USAGE:WRITE"])
    assert e.value.field == "scopes"
    with pytest.raises(BadInput) as e:
        scopes.validate([])
    assert e.value.field == "scopes" and e.value.extra["reason"] == "NO_SCOPES"
    assert api_keys.parse_token("lx_0123456789ab_" + "A" * 43) == ("0123456789ab", "A" * 43)
    for bad in (
        "",
        "lx_0123456789ab",
        "lx_0123456789ai_" + "A" * 43,
        "lx_0123456789ab_" + "A" * 42,
        "Bearer lx_x",
        "lx_0123456789ab_" + "A" * 43 + "\n",
    ):
        assert api_keys.parse_token(bad) is None


def test_rotation_overlap_setting() -> None:
    assert Settings.from_env({}).api_key_rotation_overlap == 86400
    assert Settings.from_env({"API_KEY_ROTATION_OVERLAP": "2h"}).api_key_rotation_overlap == 7200
    assert Settings.from_env({"API_KEY_ROTATION_OVERLAP": "0"}).api_key_rotation_overlap == 0
    with pytest.raises(SettingsError, match="API_KEY_ROTATION_OVERLAP"):
        Settings.from_env({"API_KEY_ROTATION_OVERLAP": "soon"})
