"""The ledger: wallets and immutable double-entry transactions that never double-charge.

Entry points for other domains:
- `posting.post_transaction(ledger, Posting(...))` and `posting.post_many(ledger, [...], conn=)` (many
  postings in one database transaction) — the only ways money moves (`posting.RETRYABLE`: the
  races a rerun of the caller's transaction resolves);
- `posting.credit_wallet / debit_wallet / transfer_credits`, `refunds.refund_transaction`;
- `reads.*` for wallets and transactions; `verification.verify_ledger`.
"""

from ledgerx.domain.ledger.service import LedgerService, WalletRef
from ledgerx.domain.ledger.types import (
    CREDITS,
    EntryRecord,
    Kind,
    Leg,
    Posted,
    Posting,
    SystemAccount,
    TransactionRecord,
    TxnType,
    WalletRecord,
)

__all__ = [
    "CREDITS",
    "EntryRecord",
    "Kind",
    "LedgerService",
    "Leg",
    "Posted",
    "Posting",
    "SystemAccount",
    "TransactionRecord",
    "TxnType",
    "WalletRecord",
    "WalletRef",
]
