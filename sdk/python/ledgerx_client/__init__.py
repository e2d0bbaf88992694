"""LedgerX's Python client: typed sync and async clients for its GraphQL API, usage ingestion,
live subscriptions and webhook verification."""

from ledgerx_client import types
from ledgerx_client._base import RetryEvent, RetryPolicy
from ledgerx_client._version import __version__
from ledgerx_client.client import AsyncLedgerX, LedgerX
from ledgerx_client.errors import (
    BadUserInputError,
    ConflictError,
    ForbiddenError,
    IdempotencyConflictError,
    InsufficientFundsError,
    InternalError,
    InvitationSentError,
    LedgerXError,
    NetworkError,
    NotFoundError,
    PaymentProviderError,
    PaymentsNotConfiguredError,
    ProjectSuspendedError,
    QuotaExceededError,
    RateLimitedError,
    SubscriptionClosedError,
    UnauthenticatedError,
    UnavailableError,
    WebhookVerificationError,
)
from ledgerx_client.usage import IngestEvent, IngestResult, Rejection
from ledgerx_client.webhooks import verify_webhook

__all__ = [
    "AsyncLedgerX",
    "BadUserInputError",
    "ConflictError",
    "ForbiddenError",
    "IdempotencyConflictError",
    "IngestEvent",
    "IngestResult",
    "InsufficientFundsError",
    "InternalError",
    "InvitationSentError",
    "LedgerX",
    "LedgerXError",
    "NetworkError",
    "NotFoundError",
    "PaymentProviderError",
    "PaymentsNotConfiguredError",
    "ProjectSuspendedError",
    "QuotaExceededError",
    "RateLimitedError",
    "Rejection",
    "RetryEvent",
    "RetryPolicy",
    "SubscriptionClosedError",
    "UnauthenticatedError",
    "UnavailableError",
    "WebhookVerificationError",
    "__version__",
    "types",
    "verify_webhook",
]
