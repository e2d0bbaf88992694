"""The grants of a batch's locked wallets, while `apply` decides the batch in memory.

The rules (docs: domain/ledger/grants.py has the public side):

- **One invariant.** For every wallet, `sum(remaining of its grants) = max(balance, 0)`. A wallet
  below zero (down to its credit limit) has spent every grant; what it owes is `-balance`, the
  overdraft, and is not a grant.
- **Money out** (a debit, the source of a transfer, an expiry, a void) draws grants in the order
  `(priority, expiresAt (none last), createdAt, id)`: as much as the grants hold, which is
  `min(amount, max(balance, 0))`; the rest deepens the overdraft. A refund of a credit takes back
  from the grants that credit made first. A grant stays drawable until its EXPIRATION posts.
- **Money in** becomes grants ("pieces"): a plain credit one grant of the posting's terms (PAID,
  priority 50, no expiry by default); the target of a transfer one grant per grant the source drew,
  with that grant's category, priority and expiry (the part the source took from its overdraft: a
  PAID grant); a refund of a debit gives back to the grants the debit drew, latest draw first, never
  more than the debit took from each minus what earlier refunds gave back: to the grant itself
  while it is ACTIVE or DEPLETED (a DEPLETED grant becomes ACTIVE again; one past its expiry is
  taken by the next expiry pass), else (EXPIRED, VOIDED) as a new grant with the same category,
  priority and expiry, so the refund restores what the debit took and no more: what would have
  expired still expires. Whatever the debit took from the overdraft comes back as a PAID grant.
- **An overdraft is repaid first.** Money into a wallet below zero repays the overdraft out of its
  pieces, in order: a new grant is made with its full amount and `remaining` reduced by what
  repaid the overdraft (recorded as a draw of the credit's own transaction on it, so `amount -
  sum(draws) = remaining` holds for every grant); a give-back is reduced by it.

Nothing here reads or writes the database: `apply` loads the grants after the wallets' lock and
writes what changed in its one statement.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from ledgerx.domain.ledger import store
from ledgerx.domain.ledger.types import (
    PAID_TERMS,
    GrantCategory,
    GrantDraw,
    GrantRecord,
    GrantStatus,
    GrantTerms,
)
from ledgerx.ids import uuid7

_NEVER = dt.datetime.max.replace(tzinfo=dt.UTC)


@dataclasses.dataclass(slots=True)
class LiveGrant:
    id: uuid.UUID
    project_id: uuid.UUID
    wallet_id: uuid.UUID
    amount: int
    remaining: int
    category: GrantCategory
    priority: int
    expires_at: dt.datetime | None
    status: GrantStatus
    source_transaction_id: uuid.UUID | None
    ended_transaction_id: uuid.UUID | None
    created_at: dt.datetime
    reason: str | None = None
    metadata_json: str = "{}"
    new: bool = False  # made in this batch: inserted with its final state
    dirty: bool = False  # loaded and changed: updated with its final state

    def key(self) -> tuple[int, bool, dt.datetime, dt.datetime, uuid.UUID]:
        """The draw order: lower priority number, earliest expiry (none last), oldest."""
        return (self.priority, self.expires_at is None, self.expires_at or _NEVER, self.created_at, self.id)

    def terms(self) -> GrantTerms:
        return GrantTerms(self.category, self.priority, self.expires_at)

    def record(self, now: dt.datetime) -> GrantRecord:
        return GrantRecord(
            id=self.id,
            project_id=self.project_id,
            wallet_id=self.wallet_id,
            amount=self.amount,
            remaining=self.remaining,
            category=self.category,
            priority=self.priority,
            expires_at=self.expires_at,
            status=self.status,
            source_transaction_id=self.source_transaction_id,
            ended_transaction_id=self.ended_transaction_id,
            reason=self.reason,
            metadata=store.parse_metadata(self.metadata_json),
            created_at=self.created_at,
            updated_at=now,
        )


def from_row(r: Mapping[str, Any]) -> LiveGrant:
    """A grant row as the batch works on it (the draw columns; `reason` and `metadata` when the
    row has them: grants.record reads whole rows through here)."""
    return LiveGrant(
        id=r["id"],
        project_id=r["project_id"],
        wallet_id=r["wallet_id"],
        amount=r["amount"],
        remaining=r["remaining"],
        category=GrantCategory(r["category"]),
        priority=r["priority"],
        expires_at=r["expires_at"],
        status=GrantStatus(r["status"]),
        source_transaction_id=r["source_transaction_id"],
        ended_transaction_id=r["ended_transaction_id"],
        created_at=r["created_at"],
        reason=r.get("reason"),
        metadata_json=r.get("metadata") or "{}",
    )


@dataclasses.dataclass(slots=True)
class Owed:
    """What a debit drew from a grant and refunds have not given back yet (running)."""

    grant_id: uuid.UUID
    ord: int
    amount: int


@dataclasses.dataclass(slots=True)
class Moved:
    """Money leaving a wallet in this posting, with the terms it leaves with (a transfer's target
    gets grants of the same terms)."""

    terms: GrantTerms
    amount: int


@dataclasses.dataclass(slots=True)
class Book:
    grants: dict[uuid.UUID, LiveGrant] = dataclasses.field(default_factory=dict)
    # Per wallet: the grants that may be drawn (ACTIVE when loaded, or made in this batch), in
    # draw order. Spent ones stay in the list (remaining 0) and are skipped.
    order: dict[uuid.UUID, list[LiveGrant]] = dataclasses.field(default_factory=dict)
    # Per original transaction (of a refund in the batch): what each grant is still owed.
    owed: dict[uuid.UUID, list[Owed]] = dataclasses.field(default_factory=dict)
    # The draw rows of the batch: transaction -> grant -> amount, in the order they came in.
    draws: dict[uuid.UUID, dict[uuid.UUID, int]] = dataclasses.field(default_factory=dict)

    def load(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for r in rows:
            g = from_row(r)
            self.grants[g.id] = g
            if g.status is GrantStatus.ACTIVE:
                self.order.setdefault(g.wallet_id, []).append(g)
        for grants in self.order.values():
            grants.sort(key=LiveGrant.key)

    def load_owed(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Rows (original, grant_id, ord, amount, is_original) of REFUND_DRAWS."""
        drawn: dict[tuple[uuid.UUID, uuid.UUID], Owed] = {}
        returned: dict[tuple[uuid.UUID, uuid.UUID], int] = {}
        for r in rows:
            k = (r["original"], r["grant_id"])
            if r["is_original"]:
                if r["amount"] > 0:
                    drawn[k] = Owed(r["grant_id"], r["ord"], r["amount"])
            elif r["amount"] < 0:
                returned[k] = returned.get(k, 0) - r["amount"]
        for (orig, gid), o in drawn.items():
            o.amount -= returned.get((orig, gid), 0)
            if o.amount > 0:
                self.owed.setdefault(orig, []).append(o)
        for owed in self.owed.values():
            owed.sort(key=lambda o: o.ord, reverse=True)  # latest draw first

    def _draw(self, txn_id: uuid.UUID, g: LiveGrant, amount: int) -> None:
        """Take (> 0) or give back (< 0) `amount` of `g`, recorded on `txn_id`."""
        g.remaining -= amount
        if g.status in (GrantStatus.ACTIVE, GrantStatus.DEPLETED):
            g.status = GrantStatus.ACTIVE if g.remaining > 0 else GrantStatus.DEPLETED
        g.dirty = not g.new
        mine = self.draws.setdefault(txn_id, {})
        total = mine.get(g.id, 0) + amount
        if total:
            mine[g.id] = total
        else:
            mine.pop(g.id, None)

    # -- money out ----------------------------------------------------------------------------

    def take(
        self,
        txn_id: uuid.UUID,
        wallet_id: uuid.UUID,
        amount: int,
        balance_before: int,
        *,
        first: Iterable[LiveGrant] = (),
    ) -> list[Moved]:
        """Draw `amount` leaving the wallet: `first` (if spendable), then the draw order."""
        left = min(amount, max(balance_before, 0))
        moved: list[Moved] = []
        seen: set[uuid.UUID] = set()
        for g in (*first, *self.order.get(wallet_id, ())):
            if left == 0:
                break
            if g.id in seen or g.remaining <= 0 or g.wallet_id != wallet_id:
                continue
            seen.add(g.id)
            n = min(left, g.remaining)
            self._draw(txn_id, g, n)
            moved.append(Moved(g.terms(), n))
            left -= n
        if left:
            # The grants hold less than the balance: the books and the grants disagree. Writing
            # anything now would make it worse; the batch fails and verifyLedger names the wallet.
            raise RuntimeError(f"wallet {wallet_id}: grants hold {left} less than its balance")
        uncovered = amount - min(amount, max(balance_before, 0))
        if uncovered:
            moved.append(Moved(PAID_TERMS, uncovered))
        return moved

    def end(self, txn_id: uuid.UUID, g: LiveGrant, status: GrantStatus) -> None:
        """An expiry or a void: the remainder leaves (the caller's leg is exactly `remaining`)."""
        self._draw(txn_id, g, g.remaining)
        g.status = status
        g.ended_transaction_id = txn_id

    # -- money in -----------------------------------------------------------------------------

    def give(
        self,
        txn_id: uuid.UUID,
        project_id: uuid.UUID,
        wallet_id: uuid.UUID,
        amount: int,
        balance_before: int,
        pieces: list[tuple[LiveGrant | GrantTerms, int]],
        now: dt.datetime,
    ) -> list[LiveGrant]:
        """Put `amount` into the wallet as `pieces` (summing to `amount`), repaying the overdraft
        first. Returns the grants made."""
        repay = min(max(-balance_before, 0), amount)
        made: list[LiveGrant] = []
        for target, n in pieces:
            used = min(repay, n)
            repay -= used
            if isinstance(target, LiveGrant):
                if n - used:
                    self._draw(txn_id, target, -(n - used))
                    listed = self.order.setdefault(wallet_id, [])
                    if target.status is GrantStatus.ACTIVE and all(x is not target for x in listed):
                        self._insert(target)
                continue
            g = LiveGrant(
                id=uuid7(),
                project_id=project_id,
                wallet_id=wallet_id,
                amount=n,
                remaining=n,
                category=target.category,
                priority=target.priority,
                expires_at=target.expires_at,
                status=GrantStatus.ACTIVE,
                source_transaction_id=txn_id,
                ended_transaction_id=None,
                created_at=now,
                reason=target.reason,
                metadata_json=target.metadata_json,
                new=True,
            )
            self.grants[g.id] = g
            self._insert(g)
            if used:
                self._draw(txn_id, g, used)
            made.append(g)
        return made

    def _insert(self, g: LiveGrant) -> None:
        grants = self.order.setdefault(g.wallet_id, [])
        grants.append(g)
        grants.sort(key=LiveGrant.key)

    def give_back(
        self, original: uuid.UUID, wallet_id: uuid.UUID, amount: int
    ) -> list[tuple[LiveGrant | GrantTerms, int]]:
        """The pieces of a refund of `original` into `wallet_id` (see the module's rules), and
        the owed amounts reduced by them."""
        pieces: list[tuple[LiveGrant | GrantTerms, int]] = []
        left = amount
        for o in self.owed.get(original, ()):
            if left == 0:
                break
            g = self.grants.get(o.grant_id)
            if g is None or g.wallet_id != wallet_id or o.amount <= 0:
                continue
            n = min(left, o.amount)
            o.amount -= n
            left -= n
            alive = g.status in (GrantStatus.ACTIVE, GrantStatus.DEPLETED)
            pieces.append((g if alive else g.terms(), n))
        if left:
            pieces.append((PAID_TERMS, left))
        return pieces

    def made_by(self, txn_id: uuid.UUID, wallet_id: uuid.UUID) -> list[LiveGrant]:
        """The spendable grants a transaction made in a wallet (a refund of a credit takes them first)."""
        return [
            g
            for g in self.grants.values()
            if g.source_transaction_id == txn_id and g.wallet_id == wallet_id and g.remaining > 0
        ]

    def draws_of(self, txn_id: uuid.UUID) -> list[GrantDraw]:
        return [GrantDraw(txn_id, g, n) for g, n in self.draws.get(txn_id, {}).items()]

    def changed(self) -> tuple[list[LiveGrant], list[LiveGrant]]:
        """(made in the batch, loaded and changed), for the batch's write."""
        made = [g for g in self.grants.values() if g.new]
        return made, [g for g in self.grants.values() if g.dirty]
