"""Who may do what in a project. Every resolver that touches a project goes through `project_access`.

Rules:
- A caller that is neither a member, nor the project's own API key, nor a platform admin gets
  NOT_FOUND (never FORBIDDEN), so project ids do not leak across tenants.
- Roles rank OWNER > ADMIN > MEMBER > VIEWER; `Need` names the least role an operation takes.
  VIEWER is read-only; "billable" operations (spending, recording usage) take MEMBER or above.
- API keys act as their project with their scopes (`scopes.py`); they never manage people or keys.
  An operation that names a scope admits keys holding it whatever role members need for it
  (members need ADMIN to run billing, keys `billing:write`); one that names none refuses keys
  when members need ADMIN or OWNER.
- A suspended project refuses every write (PROJECT_SUSPENDED) and every read except its
  admins'; platform admins are never blocked.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from typing import Literal

from ledgerx.db.engine import Database
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.errors import Forbidden, NotFound, ProjectSuspended
from ledgerx.domain.tenancy.scopes import Scope

RANK = {"VIEWER": 0, "MEMBER": 1, "ADMIN": 2, "OWNER": 3}


class Need(enum.Enum):
    MEMBER = "MEMBER"  # any role, VIEWER included (reads)
    BILLABLE = "BILLABLE"  # MEMBER or above (not VIEWER)
    ADMIN = "ADMIN"  # OWNER or ADMIN
    OWNER = "OWNER"


_NEED_RANK = {Need.MEMBER: 0, Need.BILLABLE: 1, Need.ADMIN: 2, Need.OWNER: 3}


@dataclasses.dataclass(frozen=True, slots=True)
class Access:
    project_id: uuid.UUID
    via: Literal["member", "api_key", "platform_admin"]
    role: str | None  # the member role; None for API keys and non-member platform admins
    suspended: bool
    scopes: frozenset[str] = frozenset()
    is_platform_admin: bool = False
    test_mode: bool = False


async def is_platform_admin(db: Database, user_id: uuid.UUID) -> bool:
    row = await db.fetchrow("SELECT is_platform_admin FROM users WHERE id = $1", user_id)
    return bool(row and row["is_platform_admin"])


# One round trip for a user's access: the project, their membership and the platform-admin flag.
_USER_ACCESS = """
SELECT u.is_platform_admin, p.status, p.test_mode, m.role
FROM users u
LEFT JOIN projects p ON p.id = $1
LEFT JOIN project_members m ON m.project_id = p.id AND m.user_id = u.id
WHERE u.id = $2
"""
_KEY_ACCESS = "SELECT status, test_mode FROM projects WHERE id = $1"


async def load_access(
    db: Database, principal: Principal, project_id: uuid.UUID, *, platform_admin: bool | None = None
) -> Access:
    """Find how `principal` reaches `project_id`; NOT_FOUND when it does not.

    Runs on every project-scoped request, so it is one raw statement (RLS scoped to the project).
    `platform_admin` is accepted for callers that already know it; the query reads it anyway.
    """
    if principal.kind == "api_key":
        if principal.project_id != project_id:
            raise NotFound("project not found")
        async with db.raw(project_id=project_id) as conn:
            key_row = await conn.fetchrow(_KEY_ACCESS, project_id)
        if key_row is None:
            raise NotFound("project not found")
        suspended = key_row["status"] == "SUSPENDED"
        return Access(project_id, "api_key", None, suspended, principal.scopes, False, key_row["test_mode"])

    assert principal.user_id is not None
    async with db.raw(project_id=project_id, user_id=principal.user_id) as conn:
        row = await conn.fetchrow(_USER_ACCESS, project_id, principal.user_id)
    admin = bool(row and row["is_platform_admin"])
    if row is None or row["status"] is None or (row["role"] is None and not admin):
        raise NotFound("project not found")
    role: str | None = row["role"]
    via: Literal["member", "platform_admin"] = "member" if role else "platform_admin"
    return Access(project_id, via, role, row["status"] == "SUSPENDED", frozenset(), admin, row["test_mode"])


def check_scope(scopes: frozenset[str], scope: Scope) -> None:
    """FORBIDDEN (extensions.scope names it) unless a key's `scopes` include `scope`."""
    if scope.name not in scopes:
        raise Forbidden(f"this API key lacks the scope {scope.name}", scope=scope.name)


def check(access: Access, need: Need, *, write: bool, scope: Scope | None = None, refusal: str | None = None) -> Access:
    """Raise FORBIDDEN / PROJECT_SUSPENDED unless `access` allows the operation.

    `refusal` replaces the message a member whose role is below `need` gets."""
    if access.is_platform_admin and (access.role is None or RANK[access.role] < _NEED_RANK[need]):
        return access  # platform admins act on any project, suspended or not
    if access.via == "api_key":
        if scope is None and need in (Need.ADMIN, Need.OWNER):
            raise Forbidden("API keys cannot manage projects, people or keys; sign in as an admin")
        if scope is not None:
            check_scope(access.scopes, scope)
        if access.suspended:
            raise ProjectSuspended("project is suspended")
        return access
    if access.is_platform_admin:
        return access
    assert access.role is not None
    if access.suspended and (write or RANK[access.role] < RANK["ADMIN"]):
        raise ProjectSuspended("project is suspended")
    if RANK[access.role] < _NEED_RANK[need]:
        raise Forbidden(refusal or f"this needs the {need.value.lower()} role or higher in the project")
    return access
