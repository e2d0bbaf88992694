"""Who may read a project's analytics (over time and live): any role, or an API key with
`project:read`. Platform revenue is for platform admins only (not a project rule)."""

from __future__ import annotations

from ledgerx.domain.tenancy.access import Need
from ledgerx.domain.tenancy.authorize import Rule
from ledgerx.domain.tenancy.scopes import PROJECT_READ

READ = Rule(Need.MEMBER, write=False, scope=PROJECT_READ)
