"""Credit grant expiry: at `expiresAt` the remainder leaves through one EXPIRATION transaction.

`run(ledger, now)` is one pass (the scheduler calls it each tick, on the lease holder):

1. **Expire.** Claim the wallets that hold due grants with `FOR UPDATE SKIP LOCKED`, in id order
   (the order `apply` locks wallets in, so a claim never deadlocks with a batch of postings, and
   concurrent passes take disjoint wallets), and post, in the same transaction, one EXPIRATION per
   due grant (its remainder, from the wallet to the project's EXPIRATIONS account) through `apply`
   like any posting. Exactly once: the idempotency key is derived from the grant
   (`grant-expiry:<grant id>`), and `apply` re-checks under the wallet's lock that the grant is
   still ACTIVE and due, so another pass, a restart or a retry finds it done. Each expiry emits
   `credit_grant.expired` (data: the grant after it, GraphQL CreditGrant) in that transaction.
   "Due" is the project's clock: a test-mode project's grants expire on its test clock
   (`advanceTestClock`, then the next pass), a live project's on the real time. Until its
   expiry posts, a grant can still be drawn (the draw order spends soon-expiring grants first).
2. **Warn.** Grants that expire within `WARN_BEFORE` (3 days) and were not warned about get
   CREDITS_EXPIRING (occurrence key: the grant id, so one mail per recipient whatever happens),
   marked in the same transaction (`expiry_notified_at`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import uuid
from typing import Any

import asyncpg

from ledgerx import ids
from ledgerx.domain import mail
from ledgerx.domain.actor import Actor
from ledgerx.domain.errors import AppError
from ledgerx.domain.ledger import apply, grants, payloads
from ledgerx.domain.ledger.batcher import RETRYABLE
from ledgerx.domain.ledger.service import LedgerService
from ledgerx.domain.ledger.types import GrantStatus, SystemAccount
from ledgerx.domain.notifications import amounts
from ledgerx.domain.notifications.kinds import Kind as Notice
from ledgerx.domain.notifications.notify import notify
from ledgerx.domain.webhooks import outbox

log = logging.getLogger("ledgerx.ledger.expiry")

WARN_BEFORE = dt.timedelta(days=3)
EVENT = "credit_grant.expired"

# The project's now for each grant: its test clock in test mode (the real time until first read).
_DUE = """
SELECT g.id, g.project_id, g.wallet_id, w.currency,
       {now} AS project_now
FROM credit_grants g
JOIN wallets w ON w.id = g.wallet_id
JOIN projects p ON p.id = g.project_id
LEFT JOIN billing_test_clocks c ON c.project_id = g.project_id
WHERE g.status = 'ACTIVE' AND g.expires_at IS NOT NULL AND g.expires_at <= $2
  AND g.expires_at <= {now}
ORDER BY g.expires_at, g.id
LIMIT $3
""".format(now=grants.project_now_sql("$1"))
# The wallets of the candidates, locked in id order; those another transaction holds are skipped
# (a batch of postings is working on them, or another pass: the next pass takes them).
_CLAIM = "SELECT id FROM wallets WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE SKIP LOCKED"
_WARN = """
SELECT g.id, g.project_id, g.wallet_id, g.remaining, g.expires_at, w.name, w.currency
FROM credit_grants g
JOIN wallets w ON w.id = g.wallet_id
JOIN projects p ON p.id = g.project_id
LEFT JOIN billing_test_clocks c ON c.project_id = g.project_id
WHERE g.status = 'ACTIVE' AND g.expires_at IS NOT NULL AND g.expiry_notified_at IS NULL
  AND g.expires_at <= $2
  AND g.expires_at <= {now} + $3::interval
ORDER BY g.expires_at, g.id
LIMIT $4
FOR UPDATE OF g SKIP LOCKED
""".format(now=grants.project_now_sql("$1"))
_WARNED = "UPDATE credit_grants SET expiry_notified_at = $2 WHERE id = ANY($1::uuid[])"
# Test clocks can run ahead of the real time; this bounds the candidate scan by the furthest one.
_HORIZON = "SELECT greatest($1::timestamptz, (SELECT max(now) FROM billing_test_clocks))"


@dataclasses.dataclass(slots=True)
class Stats:
    expired: int = 0
    warned: int = 0
    skipped: int = 0  # due but refused under the lock (spent meanwhile, done by another pass)


def key_of(grant_id: uuid.UUID) -> str:
    """The idempotency key of a grant's expiry: the same in every pass and instance."""
    return f"grant-expiry:{ids.encode('credit_grant', grant_id)}"


async def run(ledger: LedgerService, now: dt.datetime | None = None, *, limit: int = 200) -> Stats:
    """Expire what is due and warn about what is close, in batches, until none is left."""
    now = now or ledger.now()
    total = Stats()
    while True:
        for attempt in range(3):
            try:
                stats = await expire_batch(ledger, now, limit=limit)
                break
            except RETRYABLE:
                if attempt == 2:
                    raise
        total.expired += stats.expired
        total.skipped += stats.skipped
        if stats.expired == 0:
            break
    while True:
        warned = await warn_batch(ledger, now, limit=limit)
        total.warned += warned
        if warned < limit:
            break
    return total


async def expire_batch(ledger: LedgerService, now: dt.datetime, *, limit: int) -> Stats:
    stats = Stats()
    actor = Actor.system()
    events: list[tuple[str, dict[str, Any]]] = []
    async with ledger.db.raw(system=True) as conn:
        horizon = await conn.fetchval(_HORIZON, now)
        due = await conn.fetch(_DUE, now, horizon, limit)
        if not due:
            return stats
        claimed = {r["id"] for r in await conn.fetch(_CLAIM, list({r["wallet_id"] for r in due}))}
        items: list[apply.Prepared] = []
        for r in due:
            if r["wallet_id"] not in claimed:
                continue
            account = await ledger.system_account(r["project_id"], SystemAccount.EXPIRATIONS.value, r["currency"])
            op = apply.GrantOp(
                r["id"], r["wallet_id"], GrantStatus.EXPIRED, account, SystemAccount.EXPIRATIONS.value, r["project_now"]
            )
            items.append(
                grants.ending_prepared(
                    op, r["project_id"], r["currency"], key_of(r["id"]), actor, "ledger.grant_expire"
                )
            )
        if not items:
            return stats
        result = await apply.apply(conn, items, ledger.now())
        expired: list[uuid.UUID] = []
        for p, outcome in zip(items, result.outcomes, strict=True):
            assert p.grant_op is not None
            if isinstance(outcome, AppError) or outcome.replayed:
                stats.skipped += 1
                continue
            expired.append(p.grant_op.grant_id)
        stats.expired = len(expired)
        if expired:
            batch = outbox.Batch()
            for r in await conn.fetch(grants.BY_ID, expired):
                batch.add(r["project_id"], EVENT, payloads.credit_grant(grants.record(r)))
            await outbox.emit_many(conn, batch)
        events = result.events
    ledger.publish(events)
    if stats.expired:
        log.info("expired %d credit grant(s)", stats.expired)
    return stats


async def warn_batch(ledger: LedgerService, now: dt.datetime, *, limit: int) -> int:
    """CREDITS_EXPIRING for up to `limit` grants expiring within WARN_BEFORE; returns how many."""
    async with ledger.db.raw(system=True) as conn:
        horizon = await conn.fetchval(_HORIZON, now) + WARN_BEFORE
        rows = await conn.fetch(_WARN, now, horizon, WARN_BEFORE, limit)
        for r in rows:
            await _warn(conn, r)
        if rows:
            await conn.execute(_WARNED, [r["id"] for r in rows], now)
    return len(rows)


async def _warn(conn: asyncpg.Connection, r: asyncpg.Record) -> None:
    await notify(
        conn,
        r["project_id"],
        Notice.CREDITS_EXPIRING,
        ids.encode("credit_grant", r["id"]),
        {
            "wallet_name": r["name"],
            "wallet_id": ids.encode("wallet", r["wallet_id"]),
            "amount": amounts.amount(r["remaining"], r["currency"]),
            "expires_at": mail.instant(r["expires_at"]),
        },
    )
