"""Who may read and change a project's billing details and notification settings, and open its
billing portal.

Members of any role read them (they describe the project, like its plan); API keys need
`billing:read` (an address and tax ids are the tenant's customer data, not every key's business).
Changing them, and opening Stripe's customer portal (payment methods, invoices, cancellation),
takes a project admin (OWNER, ADMIN); API keys never can: where the bills and warnings go is
account administration, like managing people.
"""

from __future__ import annotations

from ledgerx.domain.tenancy.access import Need
from ledgerx.domain.tenancy.authorize import Rule
from ledgerx.domain.tenancy.scopes import BILLING_READ

READ = Rule(Need.MEMBER, write=False, scope=BILLING_READ)
MANAGE = Rule(
    Need.ADMIN,
    write=True,
    refusal="only project admins manage billing details, notification settings and the billing portal",
)
