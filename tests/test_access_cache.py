"""The per-instance access cache (domain/tenancy/access_cache.py): what it may and may not remember.

A member's access is remembered for ACCESS_CACHE_TTL_MS; a change made through this instance
applies at once, on another instance as soon as the announcement reaches it, one made behind the
API's back within the TTL, and refusals are never remembered.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from ledgerx import ids
from ledgerx.app import create_app
from ledgerx.domain import topics
from ledgerx.domain.tenancy.access import Access
from ledgerx.domain.tenancy.access_cache import AccessCache
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, SignedIn, sign_up
from tests.tenancy_helpers import add_member, create_project, make_platform_admin, owner_sql

WALLETS = "query($p: ID!) { wallets(projectId: $p) { edges { node { id } } } }"
CREATE_WALLET = "mutation($i: CreateWalletInput!) { createWallet(input: $i) { id } }"
UPDATE_ROLE = "mutation($i: UpdateMemberRoleInput!) { updateMemberRole(input: $i) { role } }"
REMOVE = "mutation($i: RemoveMemberInput!) { removeMember(input: $i) }"
SUSPEND = "mutation($i: SuspendProjectInput!) { suspendProject(input: $i) { status } }"


async def member_who_has_read(gql: GQL) -> tuple[str, SignedIn]:
    """A project and a MEMBER who has just read it (so an enabled cache holds their access)."""
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    member = await add_member(gql, owner, pid, "MEMBER")
    await gql.ok(WALLETS, {"p": pid}, token=member.token)
    return pid, member


async def remove_behind_the_back(services: Services, project_id: str, member: SignedIn) -> None:
    """Remove a member as another instance would: in the database, unseen by this one."""
    await owner_sql(
        services.settings,
        "DELETE FROM project_members WHERE project_id = $1 AND user_id = $2",
        ids.decode("project", project_id),
        ids.decode("user", member.user_id),
    )


async def test_changes_made_through_this_instance_apply_at_once(gql: GQL, services: Services) -> None:
    services.access_cache.ttl = 3600  # only invalidation can explain what follows
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    admin = await add_member(gql, owner, pid, "ADMIN")
    await gql.ok(CREATE_WALLET, {"i": {"projectId": pid, "name": "a"}}, token=admin.token)  # cached now

    await gql.ok(UPDATE_ROLE, {"i": {"projectId": pid, "userId": admin.user_id, "role": "VIEWER"}}, token=owner.token)
    err = await gql.error(CREATE_WALLET, {"i": {"projectId": pid, "name": "b"}}, token=admin.token)
    assert err["code"] == "FORBIDDEN"
    await gql.ok(WALLETS, {"p": pid}, token=admin.token)  # a viewer still reads
    await gql.ok(UPDATE_ROLE, {"i": {"projectId": pid, "userId": admin.user_id, "role": "ADMIN"}}, token=owner.token)
    await gql.ok(CREATE_WALLET, {"i": {"projectId": pid, "name": "c"}}, token=admin.token)

    await gql.ok(REMOVE, {"i": {"projectId": pid, "userId": admin.user_id}}, token=owner.token)
    assert (await gql.error(WALLETS, {"p": pid}, token=admin.token))["code"] == "NOT_FOUND"

    platform = await make_platform_admin(gql, services.settings)
    await gql.ok(CREATE_WALLET, {"i": {"projectId": pid, "name": "d"}}, token=owner.token)
    await gql.ok(SUSPEND, {"i": {"projectId": pid, "reason": "fraud"}}, token=platform.token)
    err = await gql.error(CREATE_WALLET, {"i": {"projectId": pid, "name": "e"}}, token=owner.token)
    assert err["code"] == "PROJECT_SUSPENDED"


async def test_a_change_behind_the_instances_back_applies_within_the_ttl(gql: GQL, services: Services) -> None:
    services.access_cache.ttl = 0.5
    pid, member = await member_who_has_read(gql)
    await remove_behind_the_back(services, pid, member)
    await gql.ok(WALLETS, {"p": pid}, token=member.token)  # the documented window
    await asyncio.sleep(0.6)
    assert (await gql.error(WALLETS, {"p": pid}, token=member.token))["code"] == "NOT_FOUND"


async def test_refusals_are_never_remembered(gql: GQL, services: Services) -> None:
    services.access_cache.ttl = 3600
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    stranger = await sign_up(gql)
    assert (await gql.error(WALLETS, {"p": pid}, token=stranger.token))["code"] == "NOT_FOUND"

    # Added behind the instance's back: seen at once, since NOT_FOUND was not kept.
    await owner_sql(
        services.settings,
        "INSERT INTO project_members (id, project_id, user_id, role) VALUES ($1, $2, $3, 'VIEWER')",
        ids.uuid7(),
        ids.decode("project", pid),
        ids.decode("user", stranger.user_id),
    )
    await gql.ok(WALLETS, {"p": pid}, token=stranger.token)


async def test_a_zero_ttl_turns_the_cache_off(gql: GQL, services: Services) -> None:
    services.access_cache.ttl = 0
    pid, member = await member_who_has_read(gql)
    await remove_behind_the_back(services, pid, member)
    assert (await gql.error(WALLETS, {"p": pid}, token=member.token))["code"] == "NOT_FOUND"


async def test_another_instance_forgets_as_soon_as_a_change_is_announced(
    gql: GQL, services: Services, settings: Settings
) -> None:
    """Instance B cached a member's access; the member is removed through instance A; B follows
    the announcement on Redis and refuses at once (its TTL is an hour, so only that can explain it)."""
    services.access_cache.ttl = 3600
    other = Services.build(settings)  # instance B: same database, same Redis prefix
    other.access_cache.ttl = 3600
    follower = asyncio.create_task(other.changes.follow())
    transport = httpx.ASGITransport(app=create_app(settings, other))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://b") as client_b:
            gql_b = GQL(client_b)
            owner = await sign_up(gql)
            pid = await create_project(gql, owner)
            member = await add_member(gql, owner, pid, "MEMBER")
            await gql_b.ok(WALLETS, {"p": pid}, token=member.token)
            deadline = time.monotonic() + 5
            while topics.MEMBERS_PATTERN not in other.events.active_patterns():
                assert time.monotonic() < deadline, "instance B never subscribed to access changes"
                await asyncio.sleep(0.01)

            await gql.ok(REMOVE, {"i": {"projectId": pid, "userId": member.user_id}}, token=owner.token)
            deadline = time.monotonic() + 5
            while "errors" not in await gql_b(WALLETS, {"p": pid}, token=member.token):
                assert time.monotonic() < deadline, "instance B kept the removed member's access"
                await asyncio.sleep(0.01)
            assert (await gql_b.error(WALLETS, {"p": pid}, token=member.token))["code"] == "NOT_FOUND"
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)
        await other.close()


def test_an_answer_loaded_across_an_announced_change_is_not_kept() -> None:
    """A lookup that started before a removal was announced may have read the old membership."""
    cache = AccessCache(ttl=3600)
    user, project = ids.uuid7(), ids.uuid7()
    member = Access(project, "member", "ADMIN", suspended=False)
    started = cache.epoch
    cache.forget_project(project)  # the removal is announced while the lookup runs
    cache.put(user, member, loaded_at_epoch=started)
    assert cache.get(user, project) is None
    cache.put(user, member, loaded_at_epoch=cache.epoch)
    assert cache.get(user, project) == member


# --- POST /v1/usage goes through the same access, cache and invalidation as GraphQL -------------------

RECORD = "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { duplicate } }"
DEFINE = "mutation($i: DefineMetricInput!) { defineMetric(input: $i) { key } }"
CREATE_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } secret } }"
REVOKE_KEY = "mutation($id: ID!) { revokeApiKey(id: $id) { id } }"


async def usage_project(gql: GQL, services: Services) -> tuple[str, SignedIn]:
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    metric = {"projectId": pid, "key": "api_calls", "name": "calls", "aggregation": "SUM", "unitPrice": "1"}
    await gql.ok(DEFINE, {"i": metric}, token=owner.token)
    # The project's own gateway limit: a plan another test made default must not throttle it.
    limit = '{"rateLimit": {"burst": 1000000, "perSecond": 1000000}}'
    await owner_sql(
        services.settings, "UPDATE projects SET overrides = $2::jsonb WHERE id = $1", ids.decode("project", pid), limit
    )
    return pid, owner


async def post_usage(gql: GQL, credential: str, project_id: str | None = None) -> tuple[int, str | None]:
    """(status, error code) of POST /v1/usage with one event."""
    body: dict[str, object] = {"events": [{"metricKey": "api_calls", "units": 1, "idempotencyKey": ids.uuid7().hex}]}
    if project_id is not None:
        body["projectId"] = project_id
    r = await gql.client.post("/v1/usage", json=body, headers={"Authorization": f"Bearer {credential}"})
    return r.status_code, (r.json().get("error") or {}).get("code")


async def record(gql: GQL, credential: str, project_id: str) -> str | None:
    """The error code of recordUsage over GraphQL (None when it was recorded)."""
    i = {"projectId": project_id, "metricKey": "api_calls", "units": "1", "idempotencyKey": ids.uuid7().hex}
    body = await gql(RECORD, {"i": i}, headers={"Authorization": f"Bearer {credential}"})
    return body["errors"][0]["extensions"]["code"] if body.get("errors") else None


async def test_post_usage_reads_the_access_cache_graphql_filled(gql: GQL, services: Services) -> None:
    """A member's access remembered by a GraphQL request serves POST /v1/usage too: removed behind
    the instance's back (no announcement), the member still posts within the TTL, exactly as over
    GraphQL, and is refused by both once the TTL is over."""
    services.access_cache.ttl = 0.8
    pid, owner = await usage_project(gql, services)
    member = await add_member(gql, owner, pid, "MEMBER")
    await gql.ok(WALLETS, {"p": pid}, token=member.token)  # cached by GraphQL
    await remove_behind_the_back(services, pid, member)
    assert await post_usage(gql, member.token, pid) == (200, None)
    assert await record(gql, member.token, pid) is None
    await asyncio.sleep(0.9)
    assert await post_usage(gql, member.token, pid) == (404, "NOT_FOUND")
    assert await record(gql, member.token, pid) == "NOT_FOUND"


async def test_an_announced_change_reaches_post_usage_as_fast_as_graphql(gql: GQL, services: Services) -> None:
    """With an hour's TTL only invalidation can explain it: a role change or a removal made through
    the API applies to the very next POST /v1/usage, as to the next GraphQL request."""
    services.access_cache.ttl = 3600
    pid, owner = await usage_project(gql, services)
    member = await add_member(gql, owner, pid, "MEMBER")
    assert await post_usage(gql, member.token, pid) == (200, None)  # cached by the HTTP route
    assert services.access_cache.get(ids.decode("user", member.user_id), ids.decode("project", pid)) is not None

    await gql.ok(UPDATE_ROLE, {"i": {"projectId": pid, "userId": member.user_id, "role": "VIEWER"}}, token=owner.token)
    assert await post_usage(gql, member.token, pid) == (403, "FORBIDDEN")
    assert await record(gql, member.token, pid) == "FORBIDDEN"

    await gql.ok(UPDATE_ROLE, {"i": {"projectId": pid, "userId": member.user_id, "role": "MEMBER"}}, token=owner.token)
    assert await post_usage(gql, member.token, pid) == (200, None)
    await gql.ok(REMOVE, {"i": {"projectId": pid, "userId": member.user_id}}, token=owner.token)
    assert await post_usage(gql, member.token, pid) == (404, "NOT_FOUND")
    assert await record(gql, member.token, pid) == "NOT_FOUND"


async def test_a_revoked_key_is_refused_by_post_usage_at_once(gql: GQL, services: Services) -> None:
    """Keys are never cached: revoked through the API or behind its back, the next request fails."""
    services.access_cache.ttl = 3600
    pid, owner = await usage_project(gql, services)
    keys = []
    for name in ("a", "b"):
        i = {"projectId": pid, "name": name, "scopes": ["usage:write"]}
        keys.append((await gql.ok(CREATE_KEY, {"i": i}, token=owner.token))["createApiKey"])
    for k in keys:
        assert await post_usage(gql, k["secret"]) == (200, None)
        assert await record(gql, k["secret"], pid) is None

    await gql.ok(REVOKE_KEY, {"id": keys[0]["apiKey"]["id"]}, token=owner.token)
    await owner_sql(
        services.settings,
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1",
        ids.decode("api_key", keys[1]["apiKey"]["id"]),
    )
    for k in keys:
        assert await post_usage(gql, k["secret"]) == (401, "UNAUTHENTICATED")
        assert await record(gql, k["secret"], pid) == "UNAUTHENTICATED"
