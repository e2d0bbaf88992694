"""Who may manage a project's outbound webhooks: project admins (OWNER, ADMIN), and API keys with
`webhooks:write`. Endpoint URLs and delivery logs are read under the same rule: they describe the
tenant's own infrastructure."""

from __future__ import annotations

from ledgerx.domain.tenancy.access import Need
from ledgerx.domain.tenancy.authorize import Rule
from ledgerx.domain.tenancy.scopes import WEBHOOKS_WRITE

READ = Rule(Need.ADMIN, write=False, scope=WEBHOOKS_WRITE)
MANAGE = Rule(Need.ADMIN, write=True, scope=WEBHOOKS_WRITE)
