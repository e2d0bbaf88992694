"""Who may move money. Reads need any role (or an API key with `wallets:read`); creating wallets and
every posting through the API need ADMIN or OWNER, or an API key with `wallets:write`: credits
create money from the project's funding account, so a plain MEMBER must not mint them."""

from __future__ import annotations

from ledgerx.domain.errors import Forbidden
from ledgerx.domain.tenancy.access import RANK, Access

READ_SCOPE = "wallets:read"
WRITE_SCOPE = "wallets:write"


def require_ledger_admin(access: Access) -> Access:
    """On top of `check(..., Need.BILLABLE, scope=WRITE_SCOPE)`: members need ADMIN or above."""
    if access.is_platform_admin or access.via == "api_key":
        return access
    if access.role is None or RANK[access.role] < RANK["ADMIN"]:
        raise Forbidden("moving money needs the admin role or higher in the project")
    return access
