"""Domain errors with the stable codes of DESIGN.md.

Resolvers let these propagate; the GraphQL layer turns them into `extensions.code` (and
`extensions.field` for bad input). Anything else is unexpected and is masked as INTERNAL.
"""

from __future__ import annotations

from typing import Any

from ledgerx.db import outage


class AppError(Exception):
    code = "INTERNAL"
    http_status = 400
    retry_after: int | None = None  # seconds; sent as Retry-After by the transports when set

    def __init__(self, message: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra

    @property
    def extensions(self) -> dict[str, Any]:
        """The GraphQL `extensions`; graphql-core copies this attribute onto the errors it wraps
        (subscriptions included), so the code reaches clients on every path."""
        ext: dict[str, Any] = {"code": self.code}
        if self.field is not None:
            ext["field"] = self.field
        ext.update(self.extra)
        return ext


class Unauthenticated(AppError):
    code = "UNAUTHENTICATED"
    http_status = 401


class Forbidden(AppError):
    code = "FORBIDDEN"
    http_status = 403


class NotFound(AppError):
    code = "NOT_FOUND"
    http_status = 404


class BadInput(AppError):
    code = "BAD_USER_INPUT"


class Conflict(AppError):
    code = "CONFLICT"
    http_status = 409


class InvitationSent(AppError):
    """`addMember` for an address without a verified account: nothing was added, an invitation was
    mailed instead (extensions carry `inviteId`). Not a failure of the request; the address joins
    when its owner accepts."""

    code = "INVITATION_SENT"
    http_status = 202


class IdempotencyConflict(AppError):
    code = "IDEMPOTENCY_CONFLICT"
    http_status = 409


class InsufficientFunds(AppError):
    code = "INSUFFICIENT_FUNDS"
    http_status = 402


class QuotaExceeded(AppError):
    code = "QUOTA_EXCEEDED"
    http_status = 429


class RateLimited(AppError):
    code = "RATE_LIMITED"
    http_status = 429

    def __init__(self, message: str, *, retry_after: int, **extra: Any) -> None:
        super().__init__(message, retryAfter=retry_after, **extra)
        self.retry_after = retry_after


class Unavailable(AppError):
    """The database could not take the request (ledgerx/db/outage.py): nothing was done, and the
    same request may be sent again after `retry_after` seconds."""

    code = "UNAVAILABLE"
    http_status = 503

    def __init__(self, message: str = "the service cannot reach its database; retry shortly", *, retry_after: int = 1):
        super().__init__(message, retryAfter=retry_after)
        self.retry_after = retry_after

    @classmethod
    def of(cls, exc: BaseException) -> Unavailable | None:
        """UNAVAILABLE for an error that means the database refused the request before any of its
        statements ran (db/outage.py), else None: the transports answer it instead of INTERNAL."""
        return cls() if outage.refused(exc) else None


class ProjectSuspended(AppError):
    code = "PROJECT_SUSPENDED"
    http_status = 403


class PaymentsNotConfigured(AppError):
    """The server cannot take payments until an operator acts (no STRIPE_API_KEY, or Stripe refuses it)."""

    code = "PAYMENTS_NOT_CONFIGURED"
    http_status = 503


class PaymentProviderError(AppError):
    """The payment provider failed or refused a call for a reason that is not the caller's input;
    `extensions` carry its message and request id (`providerMessage`, `providerRequestId`)."""

    code = "PAYMENT_PROVIDER_ERROR"
    http_status = 502
