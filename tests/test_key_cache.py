"""Verified API keys and their access are remembered per instance (domain/tenancy/key_cache.py,
access_cache.py), and forgotten on every instance when a key is revoked or rotated or its project
suspended.

The caches' TTL is raised to a minute here, so a refusal seen within a second or two can only come
from the announcement, never from an entry running out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from ledgerx import ids
from ledgerx.domain.entitlements import policy
from ledgerx.domain.errors import AppError, Unauthenticated
from ledgerx.domain.tenancy.api_keys import hash_secret, parse_token
from ledgerx.domain.tenancy.authorize import Authorizer
from ledgerx.services import Services
from ledgerx.settings import Settings
from tests.conftest import GQL, sign_up
from tests.instances import following_instance
from tests.tenancy_helpers import create_project, make_platform_admin

CREATE_KEY = "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { apiKey { id } secret } }"
REVOKE = "mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }"
ROTATE = "mutation($id: ID!) { rotateApiKey(id: $id) { secret } }"
SUSPEND = "mutation($i: SuspendProjectInput!) { suspendProject(input: $i) { status } }"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, access_cache_ttl=60.0)


@pytest.fixture
async def instance_b(settings: Settings) -> AsyncIterator[Services]:
    async with following_instance(settings) as other:
        yield other


async def eventually(check: Callable[[], Awaitable[bool]], what: str, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def served(b: Services, secret: str) -> bool:
    """Whether instance B lets the key read its project's entitlements (authentication and access)."""
    try:
        principal = await b.authenticate_api_key(secret)
        assert principal.project_id is not None
        await Authorizer(b.db, b.access_cache, principal).require(principal.project_id, policy.READ)
    except AppError:
        return False
    return True


async def new_key(gql: GQL) -> tuple[str, str, str, str]:
    """(owner token, project id, key id, secret) of a fresh project's key."""
    owner = await sign_up(gql)
    pid = await create_project(gql, owner)
    made = (
        await gql.ok(
            CREATE_KEY, {"i": {"projectId": pid, "name": "k", "scopes": ["entitlements:read"]}}, token=owner.token
        )
    )["createApiKey"]
    return owner.token, pid, made["apiKey"]["id"], made["secret"]


async def test_a_key_revoked_on_one_instance_is_refused_on_another_at_once(gql: GQL, instance_b: Services) -> None:
    token, _, key_id, secret = await new_key(gql)
    assert await served(instance_b, secret)
    # Verified and remembered on B now: it answers without the database.
    assert instance_b.verified_keys.get(_digest(secret)) is not None
    await gql.ok(REVOKE, {"id": key_id}, token=token)

    async def refused() -> bool:
        return not await served(instance_b, secret)

    await eventually(refused, "instance B kept serving a revoked key from memory")


async def test_a_wrong_secret_is_never_answered_from_memory(gql: GQL, services: Services) -> None:
    _, _, _, secret = await new_key(gql)
    assert await served(services, secret)
    forged = secret[:-4] + ("aaaa" if not secret.endswith("aaaa") else "bbbb")
    with pytest.raises(Unauthenticated):
        await services.authenticate_api_key(forged)
    assert await served(services, secret)


async def test_rotation_and_suspension_reach_every_instance(
    gql: GQL, settings: Settings, services: Services, instance_b: Services
) -> None:
    token, pid, key_id, secret = await new_key(gql)
    assert await served(instance_b, secret)
    new_secret = (await gql.ok(ROTATE, {"id": key_id}, token=token))["rotateApiKey"]["secret"]
    # The old secret keeps working through its overlap; both are served on B.
    assert await served(instance_b, secret)
    assert await served(instance_b, new_secret)
    admin = await make_platform_admin(gql, settings)
    await gql.ok(SUSPEND, {"i": {"projectId": pid, "reason": "unpaid"}}, token=admin.token)

    async def suspended() -> bool:
        principal = await instance_b.authenticate_api_key(new_secret)
        assert principal.project_id == ids.decode("project", pid)
        try:
            await Authorizer(instance_b.db, instance_b.access_cache, principal).require(pid_uuid, policy.READ)
        except AppError as exc:
            return exc.code == "PROJECT_SUSPENDED"
        return False

    pid_uuid = ids.decode("project", pid)
    await eventually(suspended, "instance B kept a suspended project's key access from memory")


def _digest(secret: str) -> tuple[str, bytes]:
    parsed = parse_token(secret)
    assert parsed is not None
    return parsed[0], hash_secret(parsed[1])
