"""What the identity domain hands to its callers: a plain, frozen record of a user (never the
password hash or the Google subject)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid


@dataclasses.dataclass(frozen=True, slots=True)
class UserRecord:
    id: uuid.UUID
    email: str
    name: str
    email_verified: bool
    is_platform_admin: bool
    created_at: dt.datetime
    last_login_at: dt.datetime | None
