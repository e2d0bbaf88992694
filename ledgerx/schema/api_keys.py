"""GraphQL types of API keys. Secrets appear only in `ApiKeyWithSecret`, returned once by create/rotate."""

from __future__ import annotations

import datetime as dt

import strawberry

from ledgerx import ids
from ledgerx.domain.tenancy.api_keys import prefix_of
from ledgerx.domain.tenancy.records import ApiKeyRecord


@strawberry.type(name="ApiKey", description="A project API key. Its secret is never readable after creation.")
class ApiKeyType:
    id: strawberry.ID
    project_id: strawberry.ID
    name: str
    prefix: str = strawberry.field(description="`lx_<public id>`: the first part of the key, to tell keys apart.")
    scopes: list[str]
    created_at: dt.datetime
    last_used_at: dt.datetime | None = strawberry.field(
        description="When the key last authenticated a request (to the minute: not written on every request)."
    )
    rotated_at: dt.datetime | None
    previous_secret_expires_at: dt.datetime | None = strawberry.field(
        description="After a rotation, until when the previous secret still works."
    )
    revoked_at: dt.datetime | None

    @classmethod
    def of(cls, k: ApiKeyRecord) -> ApiKeyType:
        return cls(
            id=strawberry.ID(ids.encode("api_key", k.id)),
            project_id=strawberry.ID(ids.encode("project", k.project_id)),
            name=k.name,
            prefix=prefix_of(k),
            scopes=list(k.scopes),
            created_at=k.created_at,
            last_used_at=k.last_used_at,
            rotated_at=k.rotated_at,
            previous_secret_expires_at=k.previous_secret_expires_at,
            revoked_at=k.revoked_at,
        )


@strawberry.type
class ApiKeyWithSecret:
    api_key: ApiKeyType
    secret: str = strawberry.field(
        description="The whole key, `lx_<public id>_<secret>`. Shown only in this response; store it now."
    )


@strawberry.input
class CreateApiKeyInput:
    project_id: strawberry.ID
    name: str
    scopes: list[str] = strawberry.field(description="Known scopes: see `apiKeyScopes`.")
