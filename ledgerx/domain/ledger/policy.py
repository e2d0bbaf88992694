"""Who may move money. Reads need any role (or an API key with `wallets:read`); creating wallets and
every posting through the API need ADMIN or OWNER, or an API key with `wallets:write`: credits
create money from the project's funding account, so a plain MEMBER must not mint them."""

from __future__ import annotations

from ledgerx.domain.tenancy.access import Need
from ledgerx.domain.tenancy.authorize import Rule
from ledgerx.domain.tenancy.scopes import WALLETS_READ, WALLETS_WRITE

READ = Rule(Need.MEMBER, write=False, scope=WALLETS_READ)
WRITE = Rule(
    Need.ADMIN, write=True, scope=WALLETS_WRITE, refusal="moving money needs the admin role or higher in the project"
)
