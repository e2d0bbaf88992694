"""GraphQL types of the ledger: wallets, transactions, entries, verification, inputs, events."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import uuid
from typing import Any

import strawberry
from strawberry.scalars import JSON

from ledgerx import ids
from ledgerx.dataloaders import ledger as loaders
from ledgerx.domain.errors import BadInput
from ledgerx.domain.ledger import EntryRecord, TransactionRecord, WalletRecord
from ledgerx.domain.ledger import TxnType as DomainTxnType
from ledgerx.domain.ledger.types import GrantStatus, WalletUpdateRecord
from ledgerx.domain.ledger.verification import Mismatch, Report
from ledgerx.domain.pagination import decode_cursor, encode_cursor, page_size
from ledgerx.schema.grants import CreditGrantStatus, CreditGrantType, GrantDrawType
from ledgerx.schema.info import Info
from ledgerx.schema.pagination import Connection, Edge, PageInfo
from ledgerx.schema.scalars import BigInt
from ledgerx.schema.top_up import AutoTopUpType, of_wallet


@strawberry.enum(description="The direction of a transaction on its primary wallet.")
class TransactionType(enum.Enum):
    CREDIT = "CREDIT"
    DEBIT = "DEBIT"


@strawberry.enum(description="What caused a transaction (mirrors the domain's Kind; a test keeps them equal).")
class TransactionKind(enum.Enum):
    ADJUSTMENT = "ADJUSTMENT"
    TRANSFER = "TRANSFER"
    REFUND = "REFUND"
    USAGE = "USAGE"
    BILLING = "BILLING"
    PURCHASE = "PURCHASE"
    SUBSCRIPTION = "SUBSCRIPTION"
    PROMOTION = "PROMOTION"
    DISPUTE = "DISPUTE"
    EXPIRATION = "EXPIRATION"


def _id(kind: str, value: uuid.UUID | None) -> strawberry.ID | None:
    return strawberry.ID(ids.encode(kind, value)) if value is not None else None


# -- cursors over a wallet's entry sequence ---------------------------------------------------------


def encode_seq_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(b"s:" + seq.to_bytes(8, "big")).decode().rstrip("=")


def decode_seq_cursor(cursor: str | None, field: str = "after") -> int | None:
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise BadInput("malformed cursor", field=field) from None
    if len(raw) != 10 or not raw.startswith(b"s:"):
        raise BadInput("malformed cursor", field=field)
    return int.from_bytes(raw[2:], "big")


# -- types -------------------------------------------------------------------------------------------


@strawberry.type(name="LedgerEntry", description="One leg of a transaction: a wallet or a system account.")
class LedgerEntryType:
    id: strawberry.ID
    wallet_id: strawberry.ID | None
    system_account: str | None = strawberry.field(description="EXTERNAL_FUNDING, USAGE_REVENUE, REFUNDS, …")
    currency: str
    amount: BigInt = strawberry.field(description="Signed: positive credits the account.")
    balance_before: BigInt | None
    balance_after: BigInt | None
    sequence: int | None = strawberry.field(description="Position in the wallet's hash chain (1, 2, …).")
    hash: str = strawberry.field(description="sha256 (hex) of the entry's content and the previous entry's hash.")

    @classmethod
    def of(cls, e: EntryRecord) -> LedgerEntryType:
        return cls(
            id=strawberry.ID(ids.encode("entry", e.id)),
            wallet_id=_id("wallet", e.wallet_id),
            system_account=e.system_account,
            currency=e.currency,
            amount=e.amount,
            balance_before=e.balance_before,
            balance_after=e.balance_after,
            sequence=e.seq,
            hash=e.hash.hex(),
        )


@strawberry.type(name="Transaction")
class TransactionType_:
    id: strawberry.ID
    cursor: strawberry.ID = strawberry.field(
        description="Where this transaction is in a stream (its id): pass it as transactionPosted's or"
        " walletUpdated's `after` to resume after it."
    )
    project_id: strawberry.ID
    wallet_id: strawberry.ID = strawberry.field(description="The primary wallet (the source of a transfer).")
    type: TransactionType
    kind: TransactionKind
    currency: str
    amount: BigInt
    balance_before: BigInt
    balance_after: BigInt
    idempotency_key: str
    reference: str | None
    reason: str | None
    metadata: JSON
    refund_of_id: strawberry.ID | None = strawberry.field(description="The transaction this one refunds.")
    created_at: dt.datetime
    entries: list[LedgerEntryType]
    project_uuid: strawberry.Private[uuid.UUID]
    uuid: strawberry.Private[uuid.UUID]

    @strawberry.field
    async def refunded_amount(self, info: Info) -> BigInt:
        """How much of this transaction has been refunded so far."""
        return await loaders.refunded_totals(info.context, self.project_uuid).load(self.uuid)

    @strawberry.field
    async def grant_draws(self, info: Info) -> list[GrantDrawType]:
        """The credit grants this transaction drew (or, negative, gave back to: a refund)."""
        draws = await loaders.grant_draws(info.context, self.project_uuid).load(self.uuid)
        return [GrantDrawType.of(d) for d in draws]

    @classmethod
    def of(cls, t: TransactionRecord) -> TransactionType_:
        public_id = strawberry.ID(ids.encode("transaction", t.id))
        return cls(
            id=public_id,
            cursor=public_id,
            project_id=strawberry.ID(ids.encode("project", t.project_id)),
            wallet_id=strawberry.ID(ids.encode("wallet", t.wallet_id)),
            type=TransactionType(DomainTxnType(t.type).value),
            kind=TransactionKind(t.kind),
            currency=t.currency,
            amount=t.amount,
            balance_before=t.balance_before,
            balance_after=t.balance_after,
            idempotency_key=t.idempotency_key,
            reference=t.reference,
            reason=t.reason,
            metadata=JSON(t.metadata),
            refund_of_id=_id("transaction", t.refund_of),
            created_at=t.created_at,
            entries=[LedgerEntryType.of(e) for e in t.entries],
            project_uuid=t.project_id,
            uuid=t.id,
        )


@strawberry.type(name="Wallet")
class WalletType:
    id: strawberry.ID
    project_id: strawberry.ID
    name: str
    owner_user_id: strawberry.ID | None
    currency: str
    balance: BigInt
    credit_limit: BigInt = strawberry.field(description="How far below zero the balance may go.")
    low_balance_threshold: BigInt | None
    created_at: dt.datetime
    updated_at: dt.datetime
    project_uuid: strawberry.Private[uuid.UUID]
    uuid: strawberry.Private[uuid.UUID]

    @strawberry.field
    async def auto_top_up(self, info: Info) -> AutoTopUpType | None:
        """The wallet's auto top-up (null: never set)."""
        return await of_wallet(info, self.project_uuid, self.uuid)

    @strawberry.field
    async def transactions(
        self, info: Info, first: int | None = 20, after: str | None = None
    ) -> Connection[TransactionType_]:
        """Transactions touching this wallet, newest first."""
        limit = page_size(first)
        before_seq = decode_seq_cursor(after)
        pages = loaders.wallet_transactions(info.context, self.project_uuid, first=limit, before_seq=before_seq)
        page = await pages.load(self.uuid)
        edges = [Edge(node=TransactionType_.of(i.transaction), cursor=encode_seq_cursor(i.seq)) for i in page.items]
        return Connection(
            edges=edges,
            page_info=PageInfo(has_next_page=page.has_next, end_cursor=edges[-1].cursor if edges else None),
        )

    @strawberry.field
    async def grants(
        self,
        info: Info,
        status: CreditGrantStatus | None = None,
        first: int | None = 20,
        after: str | None = None,
    ) -> Connection[CreditGrantType]:
        """The wallet's credit grants, oldest first (`status`: only those)."""
        limit = page_size(first)
        wanted = GrantStatus(status.value) if status is not None else None
        pages = loaders.wallet_grants(
            info.context, self.project_uuid, status=wanted, first=limit, after=decode_cursor(after)
        )
        page = await pages.load(self.uuid)
        edges = [Edge(node=CreditGrantType.of(g), cursor=encode_cursor(g.id)) for g in page.items]
        return Connection(
            edges=edges,
            page_info=PageInfo(has_next_page=page.has_next, end_cursor=edges[-1].cursor if edges else None),
        )

    @classmethod
    def of(cls, w: WalletRecord) -> WalletType:
        return cls(
            id=strawberry.ID(ids.encode("wallet", w.id)),
            project_id=strawberry.ID(ids.encode("project", w.project_id)),
            name=w.name,
            owner_user_id=_id("user", w.owner_user_id),
            currency=w.currency,
            balance=w.balance,
            credit_limit=w.credit_limit,
            low_balance_threshold=w.low_balance_threshold,
            created_at=w.created_at,
            updated_at=w.updated_at,
            project_uuid=w.project_id,
            uuid=w.id,
        )


@strawberry.type
class LedgerMismatch:
    kind: str = strawberry.field(description="ENTRY_HASH, CHAIN_BROKEN, WALLET_BALANCE, UNBALANCED, …")
    message: str
    wallet_id: strawberry.ID | None
    transaction_id: strawberry.ID | None
    entry_id: strawberry.ID | None

    @classmethod
    def of(cls, m: Mismatch) -> LedgerMismatch:
        return cls(
            kind=m.kind,
            message=m.message,
            wallet_id=_id("wallet", m.wallet_id),
            transaction_id=_id("transaction", m.transaction_id),
            entry_id=_id("entry", m.entry_id),
        )


@strawberry.type
class LedgerVerification:
    ok: bool
    wallets_checked: int
    entries_checked: int
    transactions_checked: int
    mismatches: list[LedgerMismatch]
    truncated: bool = strawberry.field(description="More mismatches exist than are listed.")

    @classmethod
    def of(cls, r: Report) -> LedgerVerification:
        return cls(
            ok=r.ok,
            wallets_checked=r.wallets_checked,
            entries_checked=r.entries_checked,
            transactions_checked=r.transactions_checked,
            mismatches=[LedgerMismatch.of(m) for m in r.mismatches],
            truncated=r.truncated,
        )


@strawberry.type
class WalletUpdate:
    wallet: WalletType = strawberry.field(description="The wallet right after the transaction.")
    transaction: TransactionType_
    low_balance: bool = strawberry.field(description="This transaction took the balance below lowBalanceThreshold.")
    cursor: strawberry.ID = strawberry.field(
        description="The transaction's id: pass it as walletUpdated's `after` to resume after it."
    )

    @classmethod
    def of(cls, u: WalletUpdateRecord) -> WalletUpdate:
        txn = TransactionType_.of(u.transaction)
        return cls(wallet=WalletType.of(u.wallet), transaction=txn, low_balance=u.low_balance, cursor=txn.id)


# -- inputs ------------------------------------------------------------------------------------------


@strawberry.input
class CreateWalletInput:
    project_id: strawberry.ID
    name: str
    owner_user_id: strawberry.ID | None = None
    currency: str | None = strawberry.field(default=None, description="CREDITS (default) or an ISO 4217 code.")
    credit_limit: BigInt | None = None
    low_balance_threshold: BigInt | None = None


@strawberry.input
class CreditWalletInput:
    wallet_id: strawberry.ID
    amount: BigInt
    idempotency_key: str
    reason: str | None = None
    metadata: JSON | None = None
    reference: str | None = None


@strawberry.input
class DebitWalletInput:
    wallet_id: strawberry.ID
    amount: BigInt
    idempotency_key: str
    reason: str | None = None
    metadata: JSON | None = None
    reference: str | None = None


@strawberry.input
class TransferCreditsInput:
    from_wallet_id: strawberry.ID
    to_wallet_id: strawberry.ID
    amount: BigInt
    idempotency_key: str
    reason: str | None = None
    metadata: JSON | None = None


@strawberry.input
class RefundTransactionInput:
    transaction_id: strawberry.ID
    amount: BigInt | None = strawberry.field(default=None, description="Default: all that is left to refund.")
    idempotency_key: str
    reason: str | None = None


def as_dict(value: Any) -> dict[str, Any] | None:
    """JSON input that must be an object (metadata)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadInput("metadata must be a JSON object", field="metadata")
    return value
