"""API key fields: createApiKey, rotateApiKey, revokeApiKey, apiKeys, currentApiKey, apiKeyScopes.

Managing keys takes a project admin (OWNER or ADMIN) signed in as a user: the access rules refuse
API keys (FORBIDDEN) and answer NOT_FOUND to anyone outside the project.
"""

from __future__ import annotations

import uuid

import strawberry

from ledgerx import ids
from ledgerx.domain.errors import Unauthenticated
from ledgerx.domain.pagination import decode_cursor, page_size
from ledgerx.domain.tenancy import api_keys, scopes
from ledgerx.domain.tenancy.access import Need
from ledgerx.domain.tenancy.authorize import Rule
from ledgerx.resolvers.guards import authorizer, project_access
from ledgerx.schema.api_keys import ApiKeyType, ApiKeyWithSecret, CreateApiKeyInput
from ledgerx.schema.info import Info
from ledgerx.schema.pagination import Connection, connection

# Managing keys: project admins signed in as users (no scope admits a key).
_MANAGE = Rule(Need.ADMIN, write=True)


async def _admin_key(info: Info, key_public_id: str) -> tuple[uuid.UUID, uuid.UUID]:
    """(project id, key id) of a key the caller may manage; NOT_FOUND for keys of other projects."""
    info.context.require_principal()
    key_id = ids.decode("api_key", key_public_id)
    project_id = await api_keys.project_of(info.context.services.db, key_id)
    # Another project's key and a made-up one get the same answer: the id leaks nothing.
    await authorizer(info).require_for(project_id, _MANAGE, what="API key", field="id")
    assert project_id is not None
    return project_id, key_id


@strawberry.type
class Query:
    @strawberry.field(description="A project's API keys, newest first, revoked ones included (project admins).")
    async def api_keys(
        self, info: Info, project_id: strawberry.ID, first: int | None = 20, after: str | None = None
    ) -> Connection[ApiKeyType]:
        limit = page_size(first)
        cursor = decode_cursor(after)
        access = await project_access(info, project_id, Need.ADMIN, write=False)
        rows = await api_keys.list_page(info.context.services.db, access.project_id, limit=limit, after=cursor)
        return connection(rows, limit, lambda k: k.id, ApiKeyType.of)

    @strawberry.field(description="The API key making this request (its project, scopes, last use).")
    async def current_api_key(self, info: Info) -> ApiKeyType:
        p = info.context.require_principal()
        if p.kind != "api_key" or p.api_key_id is None or p.project_id is None:
            raise Unauthenticated("this field needs an API key")
        return ApiKeyType.of(await api_keys.get(info.context.services.db, p.project_id, p.api_key_id))

    @strawberry.field(description="The scopes an API key can be given.")
    def api_key_scopes(self) -> list[str]:
        return list(scopes.NAMES)


@strawberry.type
class Mutation:
    @strawberry.mutation(description="A new API key; its secret is in this response only (project admins).")
    async def create_api_key(self, info: Info, input: CreateApiKeyInput) -> ApiKeyWithSecret:
        ctx = info.context
        access = await project_access(info, input.project_id, Need.ADMIN, write=True)
        issued = await api_keys.create(
            ctx.services.db, ctx.actor(), access.project_id, name=input.name, scopes=input.scopes
        )
        return ApiKeyWithSecret(api_key=ApiKeyType.of(issued.key), secret=issued.secret)

    @strawberry.mutation(
        description="A new secret for the key; the old one keeps working for the configured overlap (project admins)."
    )
    async def rotate_api_key(self, info: Info, id: strawberry.ID) -> ApiKeyWithSecret:
        ctx = info.context
        project_id, key_id = await _admin_key(info, id)
        issued = await api_keys.rotate(
            ctx.services.db,
            ctx.actor(),
            project_id,
            key_id,
            overlap_seconds=ctx.services.settings.api_key_rotation_overlap,
            changes=ctx.services.changes,
        )
        return ApiKeyWithSecret(api_key=ApiKeyType.of(issued.key), secret=issued.secret)

    @strawberry.mutation(description="Revoke the key at once, with any secret still in its rotation overlap.")
    async def revoke_api_key(self, info: Info, id: strawberry.ID) -> ApiKeyType:
        ctx = info.context
        project_id, key_id = await _admin_key(info, id)
        revoked = await api_keys.revoke(ctx.services.db, ctx.actor(), project_id, key_id, changes=ctx.services.changes)
        return ApiKeyType.of(revoked)
