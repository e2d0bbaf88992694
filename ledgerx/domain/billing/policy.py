"""Who may bill. Reads (rules, runs, previews, the test clock) take any role in the rule's project
(API keys: `billing:read`); creating, changing, pausing, resuming and running rules, and advancing
test clocks, take ADMIN or OWNER (API keys: `billing:write`): a rule moves money on a schedule."""

from __future__ import annotations

from ledgerx.domain.tenancy.access import Need
from ledgerx.domain.tenancy.authorize import Rule
from ledgerx.domain.tenancy.scopes import BILLING_READ, BILLING_WRITE

READ = Rule(Need.MEMBER, write=False, scope=BILLING_READ)
WRITE = Rule(Need.ADMIN, write=True, scope=BILLING_WRITE)
