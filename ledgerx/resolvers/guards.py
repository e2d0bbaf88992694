"""The resolver side of authorization: the request's `Authorizer`, and the project-id forms of it.

Every resolver that touches a project authorizes the caller here first (or through a domain
helper given `authorizer(info)`, such as `ledger.wallets.find_wallet`). What may be done lives in
the domain: `domain/tenancy/authorize.py` finds and checks access (the same way for POST
/v1/usage), the rules that name API-key scopes live with their domain (`domain/*/policy.py`), and
the scopes themselves in `domain/tenancy/scopes.py`.
"""

from __future__ import annotations

import uuid
from typing import overload

from ledgerx import ids
from ledgerx.domain.auth.principal import Principal
from ledgerx.domain.errors import Forbidden
from ledgerx.domain.tenancy.access import Access, Need
from ledgerx.domain.tenancy.authorize import Authorizer, Rule
from ledgerx.schema.info import Info


def authorizer(info: Info) -> Authorizer:
    """The caller's authorizer for this request (UNAUTHENTICATED without a principal); the
    context holds it, so fields below the resolvers (schema types) find the same one."""
    return info.context.authorizer()


def _rule(need: Need | Rule, write: bool | None) -> Rule:
    return need if isinstance(need, Rule) else Rule(need, write=bool(write))


# Either a domain `Rule`, or the tenancy rule `need` with `write` (no API-key scope: keys are then
# refused ADMIN and OWNER operations). The overloads keep the two forms apart for the type checker.
@overload
async def access_by_uuid(info: Info, project_id: uuid.UUID, need: Rule) -> Access: ...
@overload
async def access_by_uuid(info: Info, project_id: uuid.UUID, need: Need, *, write: bool) -> Access: ...
async def access_by_uuid(info: Info, project_id: uuid.UUID, need: Need | Rule, *, write: bool | None = None) -> Access:
    """Access to the project, or NOT_FOUND / FORBIDDEN / PROJECT_SUSPENDED."""
    return await authorizer(info).require(project_id, _rule(need, write))


@overload
async def project_access(info: Info, project_id: str, need: Rule, *, field: str = ...) -> Access: ...
@overload
async def project_access(info: Info, project_id: str, need: Need, *, write: bool, field: str = ...) -> Access: ...
async def project_access(
    info: Info, project_id: str, need: Need | Rule, *, write: bool | None = None, field: str = "projectId"
) -> Access:
    """Access to the project named by a public id, or NOT_FOUND / FORBIDDEN / PROJECT_SUSPENDED."""
    uid = ids.decode("project", project_id, field)  # a malformed id is BAD_USER_INPUT, even unauthenticated
    return await authorizer(info).require(uid, _rule(need, write))


async def require_platform_admin(info: Info) -> Principal:
    principal = info.context.require_user()
    if not await info.context.is_platform_admin():
        raise Forbidden("platform admins only")
    return principal
