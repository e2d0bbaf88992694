"""The resolver side of authorization: parse the project id, find the caller's access, check it.

Every resolver that touches a project calls `project_access` first; the rules themselves live in
`domain/tenancy/access.py`.
"""

from __future__ import annotations

import uuid

from ledgerx import ids
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.errors import Forbidden
from ledgerx.domain.tenancy.access import Access, Need, check, load_access
from ledgerx.schema.info import Info


async def access_by_uuid(
    info: Info, project_id: uuid.UUID, need: Need, *, write: bool, scope: str | None = None
) -> Access:
    ctx = info.context
    principal = ctx.require_principal()
    cache: dict[uuid.UUID, Access] = ctx.loaders.setdefault("_access", {})
    access = cache.get(project_id)
    if access is None:
        shared = ctx.services.access_cache
        user_id = principal.user_id if principal.kind == "user" else None
        access = shared.get(user_id, project_id) if user_id is not None else None
        if access is None:
            epoch = shared.epoch
            access = await load_access(ctx.services.db, principal, project_id)
            if user_id is not None:
                shared.put(user_id, access, loaded_at_epoch=epoch)
        if user_id is not None:
            ctx.loaders.setdefault("_platform_admin", access.is_platform_admin)
        cache[project_id] = access
    return check(access, need, write=write, scope=scope)


async def project_access(
    info: Info,
    project_id: str,
    need: Need,
    *,
    write: bool,
    scope: str | None = None,
    field: str = "projectId",
) -> Access:
    """Access to the project named by a public id, or NOT_FOUND / FORBIDDEN / PROJECT_SUSPENDED."""
    return await access_by_uuid(info, ids.decode("project", project_id, field), need, write=write, scope=scope)


async def require_platform_admin(info: Info) -> Principal:
    principal = info.context.require_user()
    if not await info.context.is_platform_admin():
        raise Forbidden("platform admins only")
    return principal
