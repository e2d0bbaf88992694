"""`notify`: the one way a notification is sent.

It runs in the caller's transaction (an ORM session, through `driver`, or an asyncpg connection;
scoped to the project or on the system path), so a mail exists exactly when the change that caused
it commits. It finds the recipients and the opt-out (one statement), renders the kind's templates,
and writes one `mail_outbox` row per recipient with `ON CONFLICT DO NOTHING` on the occurrence
key: replaying the cause (a Stripe event delivered twice, a sweep run by two instances, a retried
transaction) mails nobody twice. The outbox sender delivers the rows (domain/mail.py).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx.db.engine import driver
from ledgerx.domain.notifications import recipients, templates
from ledgerx.domain.notifications.kinds import Kind
from ledgerx.ids import encode, uuid7

log = logging.getLogger("ledgerx.notifications")

MAX_OCCURRENCE_KEY = 300

_ENQUEUE = """
INSERT INTO mail_outbox (id, project_id, to_addr, subject, body_text, body_html, kind, occurrence_key)
SELECT u.id, $3, u.addr, $4, $5, $6, $7, $8 FROM unnest($1::uuid[], $2::text[]) AS u(id, addr)
ON CONFLICT DO NOTHING
RETURNING id
"""


def occurrence(kind: Kind, key: str) -> str:
    """The stored occurrence key: the kind's slug and the caller's key."""
    if not key or len(key) > MAX_OCCURRENCE_KEY:
        raise ValueError(f"an occurrence key must be 1 to {MAX_OCCURRENCE_KEY} characters")
    return f"{kind.slug}:{key}"


async def notify(
    tx: AsyncSession | asyncpg.Connection,
    project_id: uuid.UUID,
    kind: Kind,
    occurrence_key: str,
    facts: Mapping[str, object],
) -> int:
    """Mail `kind` about the occurrence `occurrence_key` to the project's recipients, in `tx`'s
    transaction; `facts` fill the kind's templates (`kinds.SPECS` names them). Returns how many
    mails were queued (0: turned off, nobody to mail, or already mailed)."""
    missing = [f for f in kind.spec.facts if f not in facts]
    if missing:
        raise ValueError(f"{kind.value} needs the facts {', '.join(missing)}")
    stored_key = occurrence(kind, occurrence_key)
    conn = await driver(tx) if isinstance(tx, AsyncSession) else tx
    found = await recipients.find(conn, project_id, kind)
    if found is None or found.turned_off or not found.addresses:
        return 0
    values = {k: str(v) for k, v in facts.items()}
    values["project_name"] = found.project_name
    values["project_id"] = encode("project", project_id)
    mail = templates.render(kind, values)
    rows = await conn.fetch(
        _ENQUEUE,
        [uuid7() for _ in found.addresses],
        list(found.addresses),
        project_id,
        mail.subject,
        mail.text,
        mail.html,
        kind.slug,
        stored_key,
    )
    if rows:
        log.info("notification %s (%s) queued for %d recipient(s) of %s", kind.value, stored_key, len(rows), project_id)
    return len(rows)
