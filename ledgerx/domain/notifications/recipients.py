"""Who gets a notification of a project, read in the caller's transaction (one statement).

BILLING kinds go to the billing email when the project set one (billing details), else to its
owner and admins; ADMINS kinds (an endpoint disabled: the project's own setup) always go to the
owner and admins. A kind the project turned off (notification settings) goes to nobody.
"""

from __future__ import annotations

import dataclasses
import uuid

import asyncpg

from ledgerx.domain.notifications.kinds import Audience, Kind

_FIND = """
SELECT p.name,
       coalesce($2::text = ANY (ns.disabled), false) AS off,
       bd.email AS billing_email,
       ARRAY(SELECT lower(u.email) FROM project_members m JOIN users u ON u.id = m.user_id
              WHERE m.project_id = p.id AND m.role IN ('OWNER', 'ADMIN')
              ORDER BY m.role = 'OWNER' DESC, lower(u.email)) AS admins
  FROM projects p
  LEFT JOIN notification_settings ns ON ns.project_id = p.id
  LEFT JOIN billing_details bd ON bd.project_id = p.id
 WHERE p.id = $1
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Recipients:
    project_name: str
    turned_off: bool
    addresses: tuple[str, ...]  # lower case, no duplicates, in a stable order


async def find(conn: asyncpg.Connection, project_id: uuid.UUID, kind: Kind) -> Recipients | None:
    """None when the project does not exist (or is outside the transaction's scope)."""
    row = await conn.fetchrow(_FIND, project_id, kind.value)
    if row is None:
        return None
    billing = (row["billing_email"] or "").strip().lower()
    if kind.spec.audience is Audience.BILLING and billing:
        addresses: tuple[str, ...] = (billing,)
    else:
        addresses = tuple(dict.fromkeys(row["admins"]))
    return Recipients(row["name"], bool(row["off"]), addresses)
