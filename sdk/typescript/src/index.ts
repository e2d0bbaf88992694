/**
 * `@ledgerx/client`: LedgerX's TypeScript client: typed operations (graphql-codegen), usage
 * ingestion with batching and back-pressure, live subscriptions (graphql-ws) and webhook
 * verification (Standard Webhooks).
 */
export { LedgerX } from "./client.js";
export { OPERATIONS } from "./generated/operations.js";
export {
  Answer,
  DEFAULT_RETRY,
  USER_AGENT,
  Transport,
  encode,
  newIdempotencyKey,
  withKey,
  withKeys,
} from "./transport.js";
export type {
  ClientOptions,
  Credential,
  LiveSubscription,
  PostOptions,
  RequestOptions,
  RetryEvent,
  RetryPolicy,
  TypedDocument,
  WithOptionalKey,
  WithOptionalKeys,
} from "./transport.js";
export {
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
  errorFrom,
  isLedgerXError,
} from "./errors.js";
export type { ClientErrorCode, ErrorCode, LedgerXErrorOptions, ServerErrorCode } from "./errors.js";
export { DEFAULT_BATCH_SIZE, DEFAULT_IN_FLIGHT, MAX_BATCH_SIZE, Usage } from "./usage.js";
export type { IngestEvent, IngestOptions, IngestResult, Rejection } from "./usage.js";
export { DEFAULT_TOLERANCE_SECONDS, verifyWebhook } from "./webhooks.js";
export type { VerifyOptions, WebhookEvent, WebhookHeaders } from "./webhooks.js";
export { VERSION } from "./version.js";
/** The generated documents and their types (`DebitWalletDocument`, `TransactionFieldsFragment`, inputs, enums). */
export * from "./generated/graphql.js";
