"""Who may check entitlements: any member of the project, or an API key with `entitlements:read`
(GraphQL and GET /v1/entitlements alike). Overriding them is for platform admins."""

from __future__ import annotations

from ledgerx.domain.tenancy.access import Need
from ledgerx.domain.tenancy.authorize import Rule
from ledgerx.domain.tenancy.scopes import ENTITLEMENTS_READ

READ = Rule(Need.MEMBER, write=False, scope=ENTITLEMENTS_READ)
