"""verifyLedger: recompute a project's ledger from its entries and report every mismatch.

Runs in one REPEATABLE READ, read-only transaction, so postings committing meanwhile cannot make
a consistent ledger look inconsistent. Checks:
- every wallet's entries form an unbroken chain: seq 1..n, each prev_hash the previous hash,
  each hash recomputed from the entry's content, each balance_before the previous balance_after
  and balance_after = balance_before + amount;
- the wallet row agrees: balance = sum of entries = last balance_after, entry_seq, head_hash, and
  balance >= -credit_limit;
- every transaction has at least two entries summing to zero per currency, exactly one entry on
  its primary wallet that matches its amount/type/balances, and a hash recomputed from its content;
- no transaction is refunded beyond its amount;
- the credit grants (grantbook.py) agree with the books: every grant's `remaining` is its amount
  minus its draws and never below zero; a wallet's grants hold `max(balance, 0)`; each
  transaction changed its wallets' grants by exactly what it changed `max(balance, 0)` by (so the
  sum held after every entry since the wallet had grants, `grants_from_seq`, not only now); an
  ended grant (EXPIRED, VOIDED) names the transaction that ended it and holds nothing; no grant
  expired twice; and, replaying each wallet's grants entry by entry, every debit drew in the
  order (no grant before the last one it drew was left holding anything).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg

from ledgerx.domain.ledger import hashing
from ledgerx.domain.ledger.service import LedgerService

MAX_REPORTED = 10_000

ENTRY_STREAM = """
SELECT e.id, e.transaction_id, e.wallet_id, e.system_account_id, e.currency, e.amount, e.balance_before,
       e.balance_after, e.seq, e.prev_hash, e.hash, e.created_at,
       t.hash AS t_hash, t.project_id AS t_project_id, t.wallet_id AS t_wallet_id, t.type AS t_type, t.kind AS t_kind,
       t.currency AS t_currency, t.amount AS t_amount, t.balance_before AS t_balance_before,
       t.balance_after AS t_balance_after, t.idempotency_key AS t_idempotency_key, t.request_hash AS t_request_hash,
       t.reference AS t_reference, t.reason AS t_reason, t.refund_of AS t_refund_of, t.actor_type AS t_actor_type,
       t.actor_id AS t_actor_id, t.created_at AS t_created_at
FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id
WHERE e.project_id = $1
ORDER BY e.wallet_id NULLS LAST, e.seq, e.id
"""
WALLETS = "SELECT id, balance, credit_limit, entry_seq, head_hash FROM wallets WHERE project_id = $1"
TXN_SHAPE = """
SELECT t.id, count(e.id) AS entries, count(e.id) FILTER (WHERE e.wallet_id = t.wallet_id) AS primaries
FROM ledger_transactions t LEFT JOIN ledger_entries e ON e.transaction_id = t.id
WHERE t.project_id = $1
GROUP BY t.id
HAVING count(e.id) < 2 OR count(e.id) FILTER (WHERE e.wallet_id = t.wallet_id) <> 1
"""
UNBALANCED = """
SELECT transaction_id, currency, sum(amount)::numeric AS total FROM ledger_entries
WHERE project_id = $1 GROUP BY transaction_id, currency HAVING sum(amount) <> 0
"""
OVER_REFUNDED = """
SELECT o.id, o.amount, sum(r.amount)::numeric AS refunded
FROM ledger_transactions r JOIN ledger_transactions o ON o.id = r.refund_of
WHERE r.project_id = $1 GROUP BY o.id, o.amount HAVING sum(r.amount) > o.amount
"""


GRANT_REMAINING = """
SELECT g.id, g.wallet_id, g.amount, g.remaining, coalesce(sum(d.amount), 0)::numeric AS drawn
FROM credit_grants g LEFT JOIN credit_grant_draws d ON d.grant_id = g.id
WHERE g.project_id = $1
GROUP BY g.id
HAVING g.remaining < 0 OR g.remaining <> g.amount - coalesce(sum(d.amount), 0)
"""
GRANTS_BALANCE = """
SELECT w.id, w.balance, coalesce(sum(g.remaining), 0)::numeric AS held
FROM wallets w LEFT JOIN credit_grants g ON g.wallet_id = w.id
WHERE w.project_id = $1
GROUP BY w.id
HAVING coalesce(sum(g.remaining), 0) <> greatest(w.balance, 0)
"""
# Per wallet entry: what its transaction did to the wallet's grants (grants it made minus its
# draws on the wallet's grants) against what it did to max(balance, 0).
GRANT_STEPS = """
WITH made AS (
  SELECT source_transaction_id AS txn, wallet_id, sum(amount) AS n FROM credit_grants
  WHERE project_id = $1 AND source_transaction_id IS NOT NULL GROUP BY 1, 2
), drawn AS (
  SELECT d.transaction_id AS txn, g.wallet_id, sum(d.amount) AS n
  FROM credit_grant_draws d JOIN credit_grants g ON g.id = d.grant_id
  WHERE d.project_id = $1 GROUP BY 1, 2
)
SELECT e.transaction_id, e.wallet_id,
       (coalesce(m.n, 0) - coalesce(dr.n, 0))::numeric AS grants,
       (greatest(e.balance_after, 0) - greatest(e.balance_before, 0))::numeric AS books
FROM ledger_entries e
LEFT JOIN made m ON m.txn = e.transaction_id AND m.wallet_id = e.wallet_id
LEFT JOIN drawn dr ON dr.txn = e.transaction_id AND dr.wallet_id = e.wallet_id
JOIN wallets w ON w.id = e.wallet_id
WHERE e.project_id = $1 AND e.wallet_id IS NOT NULL AND e.seq > w.grants_from_seq
  AND coalesce(m.n, 0) - coalesce(dr.n, 0) <> greatest(e.balance_after, 0) - greatest(e.balance_before, 0)
"""
GRANTS_ENDED = """
SELECT id, wallet_id, status FROM credit_grants
WHERE project_id = $1 AND status IN ('EXPIRED', 'VOIDED') AND (ended_transaction_id IS NULL OR remaining <> 0)
"""
# For the order replay: every grant, every draw, and each wallet's entries in sequence.
ORDER_GRANTS = """
SELECT id, wallet_id, amount, priority, expires_at, created_at, source_transaction_id, ended_transaction_id
FROM credit_grants WHERE project_id = $1
"""
ORDER_DRAWS = "SELECT transaction_id, grant_id, amount FROM credit_grant_draws WHERE project_id = $1"
ORDER_ENTRIES = """
SELECT e.wallet_id, e.seq, e.transaction_id, e.amount, t.kind, t.refund_of, w.grants_from_seq
FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.transaction_id JOIN wallets w ON w.id = e.wallet_id
WHERE e.project_id = $1 AND e.wallet_id IS NOT NULL
ORDER BY e.wallet_id, e.seq
"""
EXPIRED_TWICE = """
SELECT d.grant_id, count(*) AS n FROM credit_grant_draws d JOIN ledger_transactions t ON t.id = d.transaction_id
WHERE d.project_id = $1 AND t.kind = 'EXPIRATION'
GROUP BY d.grant_id HAVING count(*) > 1
"""


@dataclasses.dataclass(frozen=True, slots=True)
class Mismatch:
    kind: str
    message: str
    wallet_id: uuid.UUID | None = None
    transaction_id: uuid.UUID | None = None
    entry_id: uuid.UUID | None = None


@dataclasses.dataclass(slots=True)
class Report:
    wallets_checked: int = 0
    entries_checked: int = 0
    transactions_checked: int = 0
    mismatches: list[Mismatch] = dataclasses.field(default_factory=list)
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def add(self, kind: str, message: str, **where: uuid.UUID | None) -> None:
        if len(self.mismatches) >= MAX_REPORTED:
            self.truncated = True
            return
        self.mismatches.append(Mismatch(kind, message, **where))


@dataclasses.dataclass(slots=True)
class _Chain:
    """The running state of one wallet's chain while its entries stream by."""

    wallet_id: uuid.UUID
    seq: int = 0
    head: bytes = hashing.GENESIS
    balance: int = 0  # last balance_after
    total: int = 0  # sum of amounts


async def verify_ledger(ledger: LedgerService, project_id: uuid.UUID) -> Report:
    report = Report()
    async with ledger.db.raw(project_id=project_id, snapshot=True) as conn:
        wallets = {r["id"]: r for r in await conn.fetch(WALLETS, project_id)}
        report.wallets_checked = len(wallets)
        chains = await _check_entries(conn, project_id, report)
        _check_wallets(wallets, chains, report)
        await _check_transactions(conn, project_id, report)
        await _check_grants(conn, project_id, report)
    return report


async def _check_grants(conn: asyncpg.Connection, project_id: uuid.UUID, report: Report) -> None:
    for r in await conn.fetch(GRANT_REMAINING, project_id):
        report.add(
            "GRANT_REMAINING",
            f"credit grant {r['id']}: remaining {r['remaining']}, but {r['amount']} less its draws is"
            f" {r['amount'] - r['drawn']}",
            wallet_id=r["wallet_id"],
        )
    for r in await conn.fetch(GRANTS_BALANCE, project_id):
        report.add("GRANTS_BALANCE", f"grants hold {r['held']} but the balance is {r['balance']}", wallet_id=r["id"])
    for r in await conn.fetch(GRANT_STEPS, project_id):
        report.add(
            "GRANT_STEP",
            f"the transaction changed the wallet's grants by {r['grants']}, its positive balance by {r['books']}",
            wallet_id=r["wallet_id"],
            transaction_id=r["transaction_id"],
        )
    for r in await conn.fetch(GRANTS_ENDED, project_id):
        report.add(
            "GRANT_ENDED",
            f"credit grant {r['id']} is {r['status']} but holds credits or names no transaction",
            wallet_id=r["wallet_id"],
        )
    for r in await conn.fetch(EXPIRED_TWICE, project_id):
        report.add("GRANT_EXPIRED_TWICE", f"credit grant {r['grant_id']} expired {r['n']} times")
    await _check_draw_order(conn, project_id, report)


_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)


def _order_key(g: Mapping[str, Any]) -> tuple[int, bool, dt.datetime, dt.datetime, uuid.UUID]:
    return (g["priority"], g["expires_at"] is None, g["expires_at"] or _NEVER, g["created_at"], g["id"])


async def _check_draw_order(conn: asyncpg.Connection, project_id: uuid.UUID, report: Report) -> None:
    """Replay each wallet's grants entry by entry: before a debit, its wallet's grants hold what
    the draws before it left; after it, every grant that comes before the last one it drew must be
    empty. Refunds of credits (they take back their own grants first) and grant ends (expiry, void:
    one named grant) are not debits in this sense."""
    grants = {r["id"]: r for r in await conn.fetch(ORDER_GRANTS, project_id)}
    if not grants:
        return
    draws: dict[uuid.UUID, list[tuple[uuid.UUID, int]]] = {}
    for r in await conn.fetch(ORDER_DRAWS, project_id):
        draws.setdefault(r["transaction_id"], []).append((r["grant_id"], r["amount"]))
    made: dict[tuple[uuid.UUID, uuid.UUID], list[uuid.UUID]] = {}
    ends = {g["ended_transaction_id"] for g in grants.values() if g["ended_transaction_id"] is not None}
    live: dict[uuid.UUID, dict[uuid.UUID, int]] = {}  # wallet -> grant -> remaining
    for g in grants.values():
        if g["source_transaction_id"] is None:
            live.setdefault(g["wallet_id"], {})[g["id"]] = g["amount"]
        else:
            made.setdefault((g["source_transaction_id"], g["wallet_id"]), []).append(g["id"])
    async for e in conn.cursor(ORDER_ENTRIES, project_id, prefetch=2000):
        wallet, txn = e["wallet_id"], e["transaction_id"]
        held = live.setdefault(wallet, {})
        for gid in made.get((txn, wallet), ()):
            held[gid] = grants[gid]["amount"]
        mine = [(gid, n) for gid, n in draws.get(txn, ()) if gid in held]
        for gid, n in mine:
            held[gid] -= n
        plain_debit = e["amount"] < 0 and e["refund_of"] is None and txn not in ends
        taken = [gid for gid, n in mine if n > 0]
        if not plain_debit or not taken or e["seq"] <= e["grants_from_seq"]:
            continue
        last = max(_order_key(grants[gid]) for gid in taken)
        skipped = [gid for gid, left in held.items() if left > 0 and _order_key(grants[gid]) < last]
        if skipped:
            report.add(
                "GRANT_ORDER",
                f"the debit drew a grant after {len(skipped)} grant(s) that come first and still hold credits",
                wallet_id=wallet,
                transaction_id=txn,
            )


async def _check_entries(conn: asyncpg.Connection, project_id: uuid.UUID, report: Report) -> dict[uuid.UUID, _Chain]:
    chains: dict[uuid.UUID, _Chain] = {}
    seen_txns: set[uuid.UUID] = set()
    async for r in conn.cursor(ENTRY_STREAM, project_id, prefetch=2000):
        report.entries_checked += 1
        seen_txns.add(r["transaction_id"])
        if r["wallet_id"] is None:
            _check_entry_hash(r, hashing.GENESIS, report)
            continue
        chain = chains.get(r["wallet_id"])
        if chain is None:
            chain = chains[r["wallet_id"]] = _Chain(r["wallet_id"])
        _check_chain_link(chain, r, report)
        if r["wallet_id"] == r["t_wallet_id"]:
            _check_primary(r, report)
    report.transactions_checked = len(seen_txns)
    return chains


def _check_chain_link(chain: _Chain, r: Mapping[str, Any], report: Report) -> None:
    where = {"wallet_id": chain.wallet_id, "transaction_id": r["transaction_id"], "entry_id": r["id"]}
    if r["seq"] != chain.seq + 1:
        report.add("SEQUENCE_GAP", f"entry seq {r['seq']} follows {chain.seq}", **where)
    prev = bytes(r["prev_hash"]) if r["prev_hash"] is not None else None
    if prev != chain.head:
        report.add("CHAIN_BROKEN", "prev_hash is not the previous entry's hash", **where)
    if r["balance_before"] != chain.balance:
        report.add(
            "BALANCE_CHAIN",
            f"balance_before {r['balance_before']} but the previous entry left {chain.balance}",
            **where,
        )
    if r["balance_after"] != r["balance_before"] + r["amount"]:
        report.add("ENTRY_ARITHMETIC", "balance_after is not balance_before + amount", **where)
    _check_entry_hash(r, prev or hashing.GENESIS, report)
    chain.seq = r["seq"]
    chain.head = bytes(r["hash"])
    chain.balance = r["balance_after"]
    chain.total += r["amount"]


def _check_entry_hash(r: Mapping[str, Any], prev: bytes, report: Report) -> None:
    expected = hashing.entry_hash(
        prev,
        id=r["id"],
        transaction_id=r["transaction_id"],
        transaction_hash=bytes(r["t_hash"]),
        wallet_id=r["wallet_id"],
        system_account_id=r["system_account_id"],
        currency=r["currency"],
        amount=r["amount"],
        balance_before=r["balance_before"],
        balance_after=r["balance_after"],
        seq=r["seq"],
        created_at=r["created_at"],
    )
    if expected != bytes(r["hash"]):
        report.add(
            "ENTRY_HASH",
            "entry content does not match its hash",
            wallet_id=r["wallet_id"],
            transaction_id=r["transaction_id"],
            entry_id=r["id"],
        )


def _check_primary(r: Mapping[str, Any], report: Report) -> None:
    """The transaction row must agree with its primary wallet's entry and with its own hash."""
    where = {"wallet_id": r["wallet_id"], "transaction_id": r["transaction_id"], "entry_id": r["id"]}
    sign = 1 if r["t_type"] == "CREDIT" else -1
    if (
        r["amount"] != sign * r["t_amount"]
        or r["balance_before"] != r["t_balance_before"]
        or r["balance_after"] != r["t_balance_after"]
    ):
        report.add("TRANSACTION_ENTRY", "transaction amount or balances disagree with its wallet entry", **where)
    expected = hashing.txn_hash(
        id=r["transaction_id"],
        project_id=r["t_project_id"],
        wallet_id=r["t_wallet_id"],
        type=r["t_type"],
        kind=r["t_kind"],
        currency=r["t_currency"],
        amount=r["t_amount"],
        balance_before=r["t_balance_before"],
        balance_after=r["t_balance_after"],
        idempotency_key=r["t_idempotency_key"],
        request_hash=bytes(r["t_request_hash"]),
        reference=r["t_reference"],
        reason=r["t_reason"],
        refund_of=r["t_refund_of"],
        actor_type=r["t_actor_type"],
        actor_id=r["t_actor_id"],
        created_at=r["t_created_at"],
    )
    if expected != bytes(r["t_hash"]):
        report.add("TRANSACTION_HASH", "transaction content does not match its hash", **where)


def _check_wallets(wallets: dict[uuid.UUID, Any], chains: dict[uuid.UUID, _Chain], report: Report) -> None:
    for wid, w in wallets.items():
        chain = chains.get(wid, _Chain(wid))
        head = bytes(w["head_hash"]) if w["head_hash"] is not None else hashing.GENESIS
        if w["balance"] != chain.total:
            report.add("WALLET_BALANCE", f"balance {w['balance']} but entries sum to {chain.total}", wallet_id=wid)
        elif w["balance"] != chain.balance:
            report.add(
                "WALLET_BALANCE", f"balance {w['balance']} but the last entry left {chain.balance}", wallet_id=wid
            )
        if w["entry_seq"] != chain.seq or head != chain.head:
            report.add("WALLET_HEAD", "the wallet's chain tip does not match its last entry", wallet_id=wid)
        if w["balance"] < -w["credit_limit"]:
            report.add("CREDIT_LIMIT", "balance is below the credit limit", wallet_id=wid)
    for wid in chains.keys() - wallets.keys():
        report.add("ORPHAN_ENTRIES", "entries reference a wallet outside this project", wallet_id=wid)


async def _check_transactions(conn: asyncpg.Connection, project_id: uuid.UUID, report: Report) -> None:
    for r in await conn.fetch(TXN_SHAPE, project_id):
        report.add(
            "TRANSACTION_SHAPE",
            f"{r['entries']} entries, {r['primaries']} on the primary wallet (want >= 2 and exactly 1)",
            transaction_id=r["id"],
        )
    for r in await conn.fetch(UNBALANCED, project_id):
        report.add(
            "UNBALANCED", f"{r['currency']} entries sum to {r['total']}, not 0", transaction_id=r["transaction_id"]
        )
    for r in await conn.fetch(OVER_REFUNDED, project_id):
        report.add("OVER_REFUNDED", f"refunded {r['refunded']} of {r['amount']}", transaction_id=r["id"])
