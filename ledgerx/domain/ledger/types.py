"""Ledger values shared by posting, reads, verification and the API layer (no database here)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import uuid
from collections.abc import Mapping
from typing import Any

from ledgerx.domain.actor import Actor

CREDITS = "CREDITS"
MAX_BIGINT = 2**63 - 1
MIN_BIGINT = -(2**63)


class TxnType(enum.StrEnum):
    """The direction of a transaction on its primary wallet."""

    CREDIT = "CREDIT"
    DEBIT = "DEBIT"


class Kind(enum.StrEnum):
    """What caused a transaction. Later domains post with their own kind."""

    ADJUSTMENT = "ADJUSTMENT"  # creditWallet / debitWallet by an admin or API key
    TRANSFER = "TRANSFER"
    REFUND = "REFUND"
    USAGE = "USAGE"
    BILLING = "BILLING"
    PURCHASE = "PURCHASE"
    SUBSCRIPTION = "SUBSCRIPTION"
    PROMOTION = "PROMOTION"
    DISPUTE = "DISPUTE"
    EXPIRATION = "EXPIRATION"


class SystemAccount(enum.StrEnum):
    """A project's counterparty accounts: money always comes from, or goes to, somewhere."""

    EXTERNAL_FUNDING = "EXTERNAL_FUNDING"  # money entering the project from outside (top-ups, grants)
    ADJUSTMENTS = "ADJUSTMENTS"  # manual debits
    USAGE_REVENUE = "USAGE_REVENUE"
    SUBSCRIPTION_REVENUE = "SUBSCRIPTION_REVENUE"
    BILLING_REVENUE = "BILLING_REVENUE"
    PROMOTIONS = "PROMOTIONS"
    REFUNDS = "REFUNDS"  # contra account of every refund that reverses a system leg
    DISPUTES = "DISPUTES"
    EXPIRATIONS = "EXPIRATIONS"


@dataclasses.dataclass(frozen=True, slots=True)
class Leg:
    """One side of a posting: a signed amount on a wallet or on a system account."""

    amount: int
    wallet_id: uuid.UUID | None = None
    system: SystemAccount | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Posting:
    """What `post_transaction` records. Legs sum to zero; `wallet_id` names the primary wallet
    (the one `Transaction.type/amount/balanceBefore/balanceAfter` describe)."""

    project_id: uuid.UUID
    wallet_id: uuid.UUID
    kind: Kind
    currency: str
    legs: tuple[Leg, ...]
    idempotency_key: str
    actor: Actor
    reference: str | None = None
    reason: str | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # The audit action; defaults to "ledger.<kind>".
    action: str | None = None
    # What "the same request" means for idempotency; defaults to everything above that moves money.
    fingerprint: Mapping[str, Any] | None = None
    # The terms of the grant the primary wallet's credit makes (None: PAID, priority 50, no expiry).
    terms: GrantTerms | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class WalletRecord:
    id: uuid.UUID
    project_id: uuid.UUID
    name: str
    owner_user_id: uuid.UUID | None
    currency: str
    balance: int
    credit_limit: int
    low_balance_threshold: int | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class EntryRecord:
    id: uuid.UUID
    transaction_id: uuid.UUID
    wallet_id: uuid.UUID | None
    system_account: str | None  # the SystemAccount code for system entries
    currency: str
    amount: int  # signed
    balance_before: int | None
    balance_after: int | None
    seq: int | None
    hash: bytes
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class TransactionRecord:
    id: uuid.UUID
    project_id: uuid.UUID
    wallet_id: uuid.UUID
    type: TxnType
    kind: str
    currency: str
    amount: int
    balance_before: int
    balance_after: int
    idempotency_key: str
    reference: str | None
    reason: str | None
    metadata: dict[str, Any]
    refund_of: uuid.UUID | None
    created_at: dt.datetime
    entries: tuple[EntryRecord, ...]


class GrantCategory(enum.StrEnum):
    PAID = "PAID"
    PROMOTIONAL = "PROMOTIONAL"


class GrantStatus(enum.StrEnum):
    """ACTIVE exactly while something remains (a CHECK of the table says so too)."""

    ACTIVE = "ACTIVE"
    DEPLETED = "DEPLETED"
    EXPIRED = "EXPIRED"
    VOIDED = "VOIDED"


MIN_PRIORITY = 0
MAX_PRIORITY = 100
DEFAULT_PRIORITY = 50


@dataclasses.dataclass(frozen=True, slots=True)
class GrantTerms:
    """The terms of the grant a credit makes (domain/ledger/grants.py: who sets which)."""

    category: GrantCategory = GrantCategory.PAID
    priority: int = DEFAULT_PRIORITY
    expires_at: dt.datetime | None = None
    reason: str | None = None
    metadata_json: str = "{}"


PAID_TERMS = GrantTerms()


@dataclasses.dataclass(frozen=True, slots=True)
class GrantRecord:
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
    reason: str | None
    metadata: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class GrantDraw:
    """What one transaction took from one grant (> 0), or gave back to it (< 0: a refund)."""

    transaction_id: uuid.UUID
    grant_id: uuid.UUID
    amount: int


@dataclasses.dataclass(frozen=True, slots=True)
class Posted:
    """The result of `post_transaction`; `replayed` when the idempotency key had been used."""

    transaction: TransactionRecord
    replayed: bool = False
    # Wallets touched, as they were right after this transaction (for events and responses).
    wallets: tuple[WalletRecord, ...] = ()
    # New transactions only: the grants it made and its draws (a replay reads them: grants.py).
    grants: tuple[GrantRecord, ...] = ()
    draws: tuple[GrantDraw, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class WalletUpdateRecord:
    """One transaction as the wallet's stream tells it (`walletUpdated`): `seq` is the wallet's
    entry in it (the stream's order), `wallet` the wallet right after it."""

    seq: int
    wallet: WalletRecord
    transaction: TransactionRecord
    low_balance: bool
