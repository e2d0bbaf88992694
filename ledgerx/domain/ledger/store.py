"""SQL of the ledger's hot path and reads (raw asyncpg), and rows -> records.

The ledger talks to asyncpg directly: a posting is a handful of set-based statements, and ORM
overhead would cost more than the database work. Row-level security still applies: every
transaction is opened by `Database.raw` (ledgerx.db), which scopes it to its projects.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg

from ledgerx.domain import audit
from ledgerx.domain.ledger.types import EntryRecord, TransactionRecord, TxnType, WalletRecord
from ledgerx.domain.webhooks import outbox

WALLET_COLS = (
    "id, project_id, name, owner_user_id, currency, balance, credit_limit, low_balance_threshold,"
    " entry_seq, head_hash, created_at, updated_at"
)
TXN_COLS = (
    "id, project_id, wallet_id, type, kind, currency, amount, balance_before, balance_after, idempotency_key,"
    " request_hash, reference, reason, metadata::text AS metadata, refund_of, actor_type, actor_id, created_at, hash"
)
ENTRY_COLS = (
    "e.id, e.transaction_id, e.wallet_id, e.system_account_id, s.code AS system_code, e.currency, e.amount,"
    " e.balance_before, e.balance_after, e.seq, e.prev_hash, e.hash, e.created_at"
)

# Lock every wallet of a batch in one statement, in id order: LockRows sits above the Sort, so
# rows are locked in that order and two batches can never wait on each other in a cycle.
# `webhook_events`: the event types the enabled webhook endpoints of the wallet's project want
# (NULL: none), so a batch builds outbound events only for projects that have a taker; one index
# probe per wallet, in a statement the batch sends anyway. `auto_top_up_below`: top_ups.py.
LOCK_WALLETS = (
    f"SELECT {WALLET_COLS}, auto_top_up_below,"  # noqa: S608
    " (SELECT array_agg(DISTINCT t) FROM webhook_endpoints h, unnest(h.events) t"
    " WHERE h.project_id = wallets.project_id AND h.enabled AND h.deleted_at IS NULL) AS webhook_events"
    " FROM wallets WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE OF wallets"
)

# Run after the lock (a new statement gets a new snapshot): sees keys committed while we waited.
EXISTING_TXNS = (
    f"SELECT {TXN_COLS} FROM ledger_transactions"  # noqa: S608
    " WHERE (project_id, idempotency_key) IN (SELECT * FROM unnest($1::uuid[], $2::text[]))"
)
REFUNDED_TOTALS = (
    "SELECT refund_of, sum(amount)::bigint AS total FROM ledger_transactions"
    " WHERE refund_of = ANY($1::uuid[]) GROUP BY refund_of"
)
# A wallet's grants are read after its lock like the keys above (a fresh snapshot: grants that a
# batch which held the lock before us made or drew are seen as committed). Only the columns the
# draw order and the write need.
GRANT_COLS = (
    "id, project_id, wallet_id, amount, remaining, category, priority, expires_at, status,"
    " source_transaction_id, ended_transaction_id, created_at"
)
ACTIVE_GRANTS = (
    f"SELECT {GRANT_COLS} FROM credit_grants"  # noqa: S608
    " WHERE wallet_id = ANY($1::uuid[]) AND status = 'ACTIVE'"
)
# Of each wallet $1 (taking out $2 in total in the batch), the spendable grants in draw order
# (ix_credit_grants_draw_order) among the first $3 that the draws can reach: those before which
# less than the total is held. `upto`: held up to and including the row. A batch of small debits
# reads one grant per wallet however many it has; apply._spendable reads all of a wallet's grants
# when the first $3 do not cover it.
GRANTS_HEAD = (
    "SELECT g.* FROM unnest($1::uuid[], $2::int8[]) AS w(id, need) CROSS JOIN LATERAL ("  # noqa: S608
    " SELECT x.*, sum(x.remaining) OVER (ORDER BY x.priority, x.expires_at, x.created_at, x.id) AS upto"
    f" FROM (SELECT {GRANT_COLS} FROM credit_grants WHERE wallet_id = w.id AND status = 'ACTIVE'"
    " ORDER BY priority, expires_at, created_at, id LIMIT $3) x) g"
    " WHERE g.upto - g.remaining < w.need"
)
# Refunds and expiries/voids also name grants whatever their status, and a refund of a credit
# takes back first from the grants that credit made.
GRANTS_NAMED = (
    f"SELECT {GRANT_COLS} FROM credit_grants"  # noqa: S608
    " WHERE (wallet_id = ANY($1::uuid[]) AND status = 'ACTIVE') OR id = ANY($2::uuid[])"
    " OR source_transaction_id = ANY($3::uuid[])"
)
# What refunded originals drew from each grant, and what their refunds gave back.
REFUND_DRAWS = """
SELECT coalesce(t.refund_of, t.id) AS original, d.grant_id, d.ord, d.amount, (t.refund_of IS NULL) AS is_original
FROM credit_grant_draws d JOIN ledger_transactions t ON t.id = d.transaction_id
WHERE d.transaction_id = ANY($1::uuid[])
   OR d.transaction_id IN (SELECT id FROM ledger_transactions WHERE refund_of = ANY($1::uuid[]))
"""
ENTRIES_OF = (
    f"SELECT {ENTRY_COLS} FROM ledger_entries e"  # noqa: S608
    " LEFT JOIN ledger_system_accounts s ON s.id = e.system_account_id"
    " WHERE e.transaction_id = ANY($1::uuid[]) ORDER BY e.transaction_id, e.id"
)

# One statement writes a whole batch: transactions, entries, audit rows, the wallets' new
# balances and chain tips, and the batch's outbound webhook events with their deliveries (an
# empty array when no endpoint wants them: nothing read, nothing written). The entries' balance
# trigger runs once for all of it. The webhook events are $38..$41 (outbox.ctes); the audit rows'
# shape (columns from $42 on, filled with `audit.values`) is audit.py's. Then the credit grants:
# those the batch made (inserted in their final state), those it changed (remaining, status, the
# transaction that ended them) and the draws (apply._grant_columns).
_G = 42 + len(audit.COLUMNS)
_LEDGER = f"""
WITH {outbox.ctes(38)}, t AS (
  INSERT INTO ledger_transactions (id, project_id, wallet_id, type, kind, currency, amount, balance_before,
    balance_after, idempotency_key, request_hash, reference, reason, metadata, refund_of, actor_type, actor_id,
    created_at, hash)
  SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::int8[],
    $8::int8[], $9::int8[], $10::text[], $11::bytea[], $12::text[], $13::text[], $14::jsonb[], $15::uuid[],
    $16::text[], $17::uuid[], $18::timestamptz[], $19::bytea[])
  RETURNING id, metadata::text AS metadata
), e AS (
  INSERT INTO ledger_entries (id, transaction_id, project_id, wallet_id, system_account_id, currency, amount,
    balance_before, balance_after, seq, prev_hash, hash, created_at)
  SELECT * FROM unnest($20::uuid[], $21::uuid[], $22::uuid[], $23::uuid[], $24::uuid[], $25::text[], $26::int8[],
    $27::int8[], $28::int8[], $29::int8[], $30::bytea[], $31::bytea[], $32::timestamptz[])
), w AS (
  UPDATE wallets SET balance = v.balance, entry_seq = v.seq, head_hash = v.head, updated_at = $33
  FROM unnest($34::uuid[], $35::int8[], $36::int8[], $37::bytea[]) AS v(id, balance, seq, head)
  WHERE wallets.id = v.id
), a AS (
  INSERT INTO audit_log ({audit.COLUMN_NAMES}, at)
  SELECT u.*, $33 FROM {audit.unnest(42)} AS u
"""  # noqa: S608 (constants only)
_GRANTS = f"""
), gn AS (
  INSERT INTO credit_grants (id, project_id, wallet_id, amount, remaining, category, priority, expires_at, status,
    source_transaction_id, ended_transaction_id, reason, metadata, created_at, updated_at)
  SELECT u.*, $33, $33 FROM unnest(${_G}::uuid[], ${_G + 1}::uuid[], ${_G + 2}::uuid[], ${_G + 3}::int8[],
    ${_G + 4}::int8[], ${_G + 5}::text[], ${_G + 6}::int4[], ${_G + 7}::timestamptz[], ${_G + 8}::text[],
    ${_G + 9}::uuid[], ${_G + 10}::uuid[], ${_G + 11}::text[], ${_G + 12}::jsonb[]) AS u
), gu AS (
  UPDATE credit_grants SET remaining = v.remaining, status = v.status,
    ended_transaction_id = coalesce(v.ended, credit_grants.ended_transaction_id), updated_at = $33
  FROM unnest(${_G + 13}::uuid[], ${_G + 14}::int8[], ${_G + 15}::text[], ${_G + 16}::uuid[])
    AS v(id, remaining, status, ended)
  WHERE credit_grants.id = v.id
), gd AS (
  INSERT INTO credit_grant_draws (transaction_id, grant_id, project_id, amount, ord, created_at)
  SELECT u.*, $33 FROM unnest(${_G + 17}::uuid[], ${_G + 18}::uuid[], ${_G + 19}::uuid[], ${_G + 20}::int8[],
    ${_G + 21}::int4[]) AS u
)
"""  # noqa: S608 (constants only)


def write_batch(*, grants: bool = True) -> str:
    """WRITE_BATCH; without `grants`, the statement as it was before migration 0013 (tests of
    older migrations post on a schema without the grant tables)."""
    # Only metadata other than {} comes back (the batch's records already hold {}).
    return _LEDGER + (_GRANTS if grants else ")\n") + "SELECT id, metadata FROM t WHERE metadata <> '{}'\n"  # noqa: S608


WRITE_BATCH = write_batch()


ENSURE_SYSTEM_ACCOUNT = """
WITH ins AS (
  INSERT INTO ledger_system_accounts (id, project_id, code, currency) VALUES ($1, $2, $3, $4)
  ON CONFLICT (project_id, code, currency) DO NOTHING RETURNING id
)
SELECT id FROM ins UNION ALL
SELECT id FROM ledger_system_accounts WHERE project_id = $2 AND code = $3 AND currency = $4
LIMIT 1
"""


def wallet_from_row(r: Mapping[str, Any]) -> WalletRecord:
    return WalletRecord(
        id=r["id"],
        project_id=r["project_id"],
        name=r["name"],
        owner_user_id=r["owner_user_id"],
        currency=r["currency"],
        balance=r["balance"],
        credit_limit=r["credit_limit"],
        low_balance_threshold=r["low_balance_threshold"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


def entry_from_row(r: Mapping[str, Any]) -> EntryRecord:
    return EntryRecord(
        id=r["id"],
        transaction_id=r["transaction_id"],
        wallet_id=r["wallet_id"],
        system_account=r["system_code"],
        currency=r["currency"],
        amount=r["amount"],
        balance_before=r["balance_before"],
        balance_after=r["balance_after"],
        seq=r["seq"],
        hash=bytes(r["hash"]),
        created_at=r["created_at"],
    )


def txn_from_row(r: Mapping[str, Any], entries: Iterable[EntryRecord]) -> TransactionRecord:
    return TransactionRecord(
        id=r["id"],
        project_id=r["project_id"],
        wallet_id=r["wallet_id"],
        type=TxnType(r["type"]),
        kind=r["kind"],
        currency=r["currency"],
        amount=r["amount"],
        balance_before=r["balance_before"],
        balance_after=r["balance_after"],
        idempotency_key=r["idempotency_key"],
        reference=r["reference"],
        reason=r["reason"],
        metadata=parse_metadata(r["metadata"]),
        refund_of=r["refund_of"],
        created_at=r["created_at"],
        entries=tuple(entries),
    )


def parse_metadata(text: str | None) -> dict[str, Any]:
    value = json.loads(text) if text else {}
    return value if isinstance(value, dict) else {}


async def load_transactions(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> list[TransactionRecord]:
    """Records (with their entries, one query) for transaction rows read with TXN_COLS."""
    if not rows:
        return []
    by_txn: dict[uuid.UUID, list[EntryRecord]] = {}
    for er in await conn.fetch(ENTRIES_OF, [r["id"] for r in rows]):
        by_txn.setdefault(er["transaction_id"], []).append(entry_from_row(er))
    return [txn_from_row(r, by_txn.get(r["id"], ())) for r in rows]
