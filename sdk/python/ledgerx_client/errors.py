"""Typed errors carrying LedgerX's stable codes (`extensions.code`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class LedgerXError(Exception):
    """An error the server answered (its `code`, `message`, `field` and `extensions`), or one the
    client met on the way (`NETWORK_ERROR`, `WEBHOOK_VERIFICATION_FAILED`, `SUBSCRIPTION_CLOSED`)."""

    code: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        field: str | None = None,
        extensions: Mapping[str, Any] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field
        self.extensions: dict[str, Any] = dict(extensions or {})
        self.status = status

    @property
    def reason(self) -> str | None:
        """`extensions.reason`, when the server gave one (e.g. `ENDPOINT_DISABLED`)."""
        value = self.extensions.get("reason")
        return value if isinstance(value, str) else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, field={self.field!r})"


class UnauthenticatedError(LedgerXError):
    code = "UNAUTHENTICATED"


class ForbiddenError(LedgerXError):
    code = "FORBIDDEN"


class NotFoundError(LedgerXError):
    code = "NOT_FOUND"


class BadUserInputError(LedgerXError):
    code = "BAD_USER_INPUT"


class ConflictError(LedgerXError):
    code = "CONFLICT"


class IdempotencyConflictError(LedgerXError):
    """The idempotency key was used before with a different request."""

    code = "IDEMPOTENCY_CONFLICT"


class InsufficientFundsError(LedgerXError):
    code = "INSUFFICIENT_FUNDS"


class QuotaExceededError(LedgerXError):
    code = "QUOTA_EXCEEDED"


class RateLimitedError(LedgerXError):
    code = "RATE_LIMITED"

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait (`extensions.retryAfter` or the `Retry-After` header)."""
        value = self.extensions.get("retryAfter")
        return float(value) if isinstance(value, int | float) else None


class ProjectSuspendedError(LedgerXError):
    code = "PROJECT_SUSPENDED"


class InvitationSentError(LedgerXError):
    """`addMember` mailed an invitation instead (`extensions["inviteId"]`)."""

    code = "INVITATION_SENT"


class PaymentsNotConfiguredError(LedgerXError):
    code = "PAYMENTS_NOT_CONFIGURED"


class PaymentProviderError(LedgerXError):
    code = "PAYMENT_PROVIDER_ERROR"


class UnavailableError(LedgerXError):
    """The server could not reach its database and did nothing (HTTP 503, `Retry-After`): retried
    like a 429, with the same idempotency key, before it is raised."""

    code = "UNAVAILABLE"


class InternalError(LedgerXError):
    code = "INTERNAL"


class NetworkError(LedgerXError):
    """No answer from the server (connection refused or dropped, timeout), after the retries allowed."""

    code = "NETWORK_ERROR"


class WebhookVerificationError(LedgerXError):
    """A webhook whose signature, timestamp or headers do not verify: do not trust its body."""

    code = "WEBHOOK_VERIFICATION_FAILED"


class SubscriptionClosedError(LedgerXError):
    """The server ended a subscription's socket (`extensions["closeCode"]`)."""

    code = "SUBSCRIPTION_CLOSED"


ERRORS: dict[str, type[LedgerXError]] = {
    cls.code: cls
    for cls in (
        UnauthenticatedError,
        ForbiddenError,
        NotFoundError,
        BadUserInputError,
        ConflictError,
        IdempotencyConflictError,
        InsufficientFundsError,
        QuotaExceededError,
        RateLimitedError,
        ProjectSuspendedError,
        InvitationSentError,
        PaymentsNotConfiguredError,
        UnavailableError,
        PaymentProviderError,
        InternalError,
    )
}


def error_from(raw: Mapping[str, Any], status: int | None = None, *, retry_after: float | None = None) -> LedgerXError:
    """The typed error for a GraphQL error (`{message, extensions}`) or a plain route's
    `{"error": {code, message, ...}}` body."""
    extensions = raw.get("extensions")
    ext: dict[str, Any] = dict(extensions) if isinstance(extensions, Mapping) else {}
    if not ext:  # a plain route's error: its keys are the extensions
        ext = {k: v for k, v in raw.items() if k != "message"}
    if retry_after is not None and "retryAfter" not in ext:
        ext["retryAfter"] = retry_after
    code = ext.get("code")
    code = code if isinstance(code, str) else "INTERNAL"
    message = raw.get("message")
    field = ext.get("field")
    cls = ERRORS.get(code, LedgerXError)
    return cls(
        message if isinstance(message, str) else code,
        code=code,
        field=field if isinstance(field, str) else None,
        extensions=ext,
        status=status,
    )
