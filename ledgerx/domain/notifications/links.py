"""Links the mails carry into LedgerX's console (LEDGERX_PUBLIC_URL, as invitation links do).

The payment mails link to the console's billing page of the project, not to a Stripe portal
session: a portal session URL logs whoever holds it into the customer's billing without a
password and expires within minutes, so it must not sit in a mailbox. The billing page asks the
signed-in admin's browser to call `createBillingPortalSession(projectId, returnUrl)` and follows
the URL it returns.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlencode

from ledgerx.ids import encode

DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"


def billing_page(public_url: str | None, project_id: uuid.UUID) -> str:
    base = (public_url or DEFAULT_PUBLIC_URL).rstrip("/")
    return f"{base}/billing?{urlencode({'project': encode('project', project_id)})}"
