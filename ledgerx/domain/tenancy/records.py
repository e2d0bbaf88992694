"""What the tenancy domain hands to its callers: plain, frozen records of projects, members,
invitations and API keys (no ORM row leaves the domain; secrets and token hashes
never leave it either). Field names are the columns' names, so a record reads like its row."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid

from ledgerx.db.models import ApiKey
from ledgerx.domain.records import of


@dataclasses.dataclass(frozen=True, slots=True)
class ProjectRecord:
    id: uuid.UUID
    name: str
    external_key: str | None
    status: str  # ACTIVE | SUSPENDED
    suspended_reason: str | None
    suspended_at: dt.datetime | None
    test_mode: bool
    created_by: uuid.UUID | None
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class MemberRecord:
    id: uuid.UUID
    project_id: uuid.UUID
    user_id: uuid.UUID
    role: str  # OWNER | ADMIN | MEMBER | VIEWER
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class InviteRecord:
    id: uuid.UUID
    project_id: uuid.UUID
    email: str
    role: str
    invited_by: uuid.UUID | None
    created_at: dt.datetime
    expires_at: dt.datetime
    last_sent_at: dt.datetime | None
    resend_count: int
    accepted_at: dt.datetime | None
    accepted_by: uuid.UUID | None
    revoked_at: dt.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    public_id: str
    scopes: tuple[str, ...]
    created_by: uuid.UUID | None
    created_at: dt.datetime
    rotated_at: dt.datetime | None
    # Until when the previous secret still works after a rotation (None: no previous secret).
    previous_secret_expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    last_used_at: dt.datetime | None

    @classmethod
    def of(cls, k: ApiKey) -> ApiKeyRecord:
        previous = k.previous_expires_at if k.previous_secret_hash else None
        return of(cls, k, scopes=tuple(k.scopes), previous_secret_expires_at=previous)
