/** Typed errors carrying LedgerX's stable codes (`extensions.code`). */

/** The codes the server answers (README: "Errors carry a stable extensions.code"). */
export type ServerErrorCode =
  | "UNAUTHENTICATED"
  | "FORBIDDEN"
  | "NOT_FOUND"
  | "BAD_USER_INPUT"
  | "CONFLICT"
  | "IDEMPOTENCY_CONFLICT"
  | "INSUFFICIENT_FUNDS"
  | "QUOTA_EXCEEDED"
  | "RATE_LIMITED"
  | "PROJECT_SUSPENDED"
  | "INVITATION_SENT"
  | "PAYMENTS_NOT_CONFIGURED"
  | "PAYMENT_PROVIDER_ERROR"
  | "UNAVAILABLE"
  | "INTERNAL";

/** The codes of errors the client meets on its own. */
export type ClientErrorCode = "NETWORK_ERROR" | "WEBHOOK_VERIFICATION_FAILED" | "SUBSCRIPTION_CLOSED";

export type ErrorCode = ServerErrorCode | ClientErrorCode;

export interface LedgerXErrorOptions {
  code?: string;
  field?: string | null;
  extensions?: Record<string, unknown>;
  status?: number | null;
  cause?: unknown;
}

/**
 * An error the server answered (its `code`, `message`, `field` and `extensions`), or one the
 * client met on the way (`NETWORK_ERROR`, `WEBHOOK_VERIFICATION_FAILED`, `SUBSCRIPTION_CLOSED`).
 * `code` is a string for forward compatibility: a code newer than this SDK arrives as a plain
 * `LedgerXError` with that code.
 */
export class LedgerXError extends Error {
  static readonly code: ErrorCode = "INTERNAL";
  readonly code: ErrorCode | (string & {});
  readonly field: string | null;
  readonly extensions: Record<string, unknown>;
  /** The HTTP status of the answer, when there was one. */
  readonly status: number | null;

  constructor(message: string, options: LedgerXErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = options.code ?? (new.target as typeof LedgerXError).code;
    this.field = options.field ?? null;
    this.extensions = { ...(options.extensions ?? {}) };
    this.status = options.status ?? null;
  }

  /** `extensions.reason`, when the server gave one (e.g. `BATCH_TOO_LARGE`, `NO_SCOPES`). */
  get reason(): string | null {
    const value = this.extensions.reason;
    return typeof value === "string" ? value : null;
  }
}

export class UnauthenticatedError extends LedgerXError {
  static override readonly code = "UNAUTHENTICATED";
}
export class ForbiddenError extends LedgerXError {
  static override readonly code = "FORBIDDEN";
}
export class NotFoundError extends LedgerXError {
  static override readonly code = "NOT_FOUND";
}
export class BadUserInputError extends LedgerXError {
  static override readonly code = "BAD_USER_INPUT";
}
export class ConflictError extends LedgerXError {
  static override readonly code = "CONFLICT";
}
/** The idempotency key was used before with a different request. */
export class IdempotencyConflictError extends LedgerXError {
  static override readonly code = "IDEMPOTENCY_CONFLICT";
}
export class InsufficientFundsError extends LedgerXError {
  static override readonly code = "INSUFFICIENT_FUNDS";
}
export class QuotaExceededError extends LedgerXError {
  static override readonly code = "QUOTA_EXCEEDED";
}
export class RateLimitedError extends LedgerXError {
  static override readonly code = "RATE_LIMITED";

  /** Seconds to wait (`extensions.retryAfter`, or the `Retry-After` header). */
  get retryAfter(): number | null {
    const value = this.extensions.retryAfter;
    return typeof value === "number" ? value : null;
  }
}
export class ProjectSuspendedError extends LedgerXError {
  static override readonly code = "PROJECT_SUSPENDED";
}
/** `addMember` mailed an invitation instead (`extensions.inviteId`). */
export class InvitationSentError extends LedgerXError {
  static override readonly code = "INVITATION_SENT";
}
export class PaymentsNotConfiguredError extends LedgerXError {
  static override readonly code = "PAYMENTS_NOT_CONFIGURED";
}
export class PaymentProviderError extends LedgerXError {
  static override readonly code = "PAYMENT_PROVIDER_ERROR";
}
/** The server could not reach its database and did nothing (HTTP 503, `Retry-After`): retried like a 429, with the same idempotency key, before it is thrown. */
export class UnavailableError extends LedgerXError {
  static override readonly code = "UNAVAILABLE";
}
export class InternalError extends LedgerXError {
  static override readonly code = "INTERNAL";
}
/** No answer from the server (connection refused or dropped, timeout), after the retries allowed. */
export class NetworkError extends LedgerXError {
  static override readonly code = "NETWORK_ERROR";
}
/** A webhook whose signature, timestamp or headers do not verify: do not trust its body. */
export class WebhookVerificationError extends LedgerXError {
  static override readonly code = "WEBHOOK_VERIFICATION_FAILED";
}
/** The server ended a subscription's socket (`extensions.closeCode`). */
export class SubscriptionClosedError extends LedgerXError {
  static override readonly code = "SUBSCRIPTION_CLOSED";
}

const BY_CODE: ReadonlyMap<string, typeof LedgerXError> = new Map(
  [
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
    PaymentProviderError,
    UnavailableError,
    InternalError,
  ].map((cls) => [cls.code, cls] as const),
);

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * The typed error for a GraphQL error (`{message, extensions}`) or a plain route's
 * `{"error": {code, message, ...}}` body.
 */
export function errorFrom(raw: unknown, status: number | null = null, retryAfter: number | null = null): LedgerXError {
  const record = isRecord(raw) ? raw : {};
  let ext: Record<string, unknown> = isRecord(record.extensions) ? { ...record.extensions } : {};
  if (Object.keys(ext).length === 0) {
    // a plain route's error: its keys are the extensions
    ext = Object.fromEntries(Object.entries(record).filter(([k]) => k !== "message"));
  }
  if (retryAfter !== null && ext.retryAfter === undefined) ext.retryAfter = retryAfter;
  const code = typeof ext.code === "string" ? ext.code : "INTERNAL";
  const message = typeof record.message === "string" ? record.message : code;
  const field = typeof ext.field === "string" ? ext.field : null;
  const cls = BY_CODE.get(code) ?? LedgerXError;
  return new cls(message, { code, field, extensions: ext, status });
}

/** Whether `error` is a LedgerXError, with `code` when given. */
export function isLedgerXError(error: unknown, code?: ErrorCode): error is LedgerXError {
  return error instanceof LedgerXError && (code === undefined || error.code === code);
}
