"""Mail a project's owner and admins when the delivery worker disables one of its endpoints.

Called in the transaction that disables the endpoint (delivery.py), so the mail exists exactly
when the endpoint is disabled. The occurrence is (endpoint, when it started failing): an endpoint
enabled again and disabled after a new failure streak is mailed again; the same streak never twice.
"""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg

from ledgerx.domain import mail
from ledgerx.domain.notifications.kinds import Kind
from ledgerx.domain.notifications.notify import notify
from ledgerx.ids import encode


async def endpoint_disabled(
    conn: asyncpg.Connection,
    project_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    url: str,
    failing_since: dt.datetime,
    failing_for: str,
) -> int:
    return await notify(
        conn,
        project_id,
        Kind.WEBHOOK_ENDPOINT_DISABLED,
        f"{endpoint_id}:{int(failing_since.timestamp())}",
        {
            "endpoint_id": encode("webhook_endpoint", endpoint_id),
            "endpoint_url": url,
            "failing_since": mail.instant(failing_since),
            "reason": f"every attempt failed for {failing_for}",
        },
    )
