"""Who may record and read usage, over GraphQL and POST /v1/usage alike. Recording (and charging
it to a wallet) is billable: MEMBER or above, or an API key with `usage:write`; reads take any role,
or `usage:read`. Defining metrics sets prices: project admins only (`Need.ADMIN`, no key)."""

from __future__ import annotations

from ledgerx.domain.tenancy.access import Need
from ledgerx.domain.tenancy.authorize import Rule
from ledgerx.domain.tenancy.scopes import USAGE_READ, USAGE_WRITE

READ = Rule(Need.MEMBER, write=False, scope=USAGE_READ)
RECORD = Rule(Need.BILLABLE, write=True, scope=USAGE_WRITE)
