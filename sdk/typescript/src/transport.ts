/**
 * The transport under the generated operations: authentication, retries, typed errors and
 * subscriptions.
 *
 * Retries: a network error, HTTP 429 or HTTP 503 is tried again, at most `retry.maxAttempts`
 * times in all, after `Retry-After` when the server sent one, else after an exponential backoff
 * with jitter. The request is sent again byte for byte, so a money mutation carries the same
 * idempotency key and the server answers the retry with the transaction it already posted. A
 * network error on a mutation without an idempotency key is retried only when the request cannot
 * have reached the server (the connection was never made). Other answers are never retried: they
 * raise the `LedgerXError` subclass of their code.
 */
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";

import type { DocumentTypeDecoration } from "@graphql-typed-document-node/core";
import { createClient } from "graphql-ws/client";
import type { Client as WsClient } from "graphql-ws/client";
import WebSocket from "ws";

import {
  ForbiddenError,
  LedgerXError,
  NetworkError,
  SubscriptionClosedError,
  UnauthenticatedError,
  errorFrom,
} from "./errors.js";
import { VERSION } from "./version.js";

export const USER_AGENT = `ledgerx-client-typescript/${VERSION}`;

/** A typed document whose text is its `toString()` (graphql-codegen's `documentMode: "string"`). */
export type TypedDocument<TResult, TVariables> = DocumentTypeDecoration<TResult, TVariables> & { toString(): string };

/** How often and how long to retry network errors, 429 and 503. */
export interface RetryPolicy {
  /** Attempts in all, the first included (1: never retry). Default 4. */
  maxAttempts: number;
  /** The first backoff; it doubles per attempt (with jitter). Default 250 ms. */
  backoffMs: number;
  /** The longest backoff. Default 8 s. */
  maxBackoffMs: number;
  /** The longest `Retry-After` honoured; a longer one is waited this long. Default 60 s. */
  maxRetryAfterMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { maxAttempts: 4, backoffMs: 250, maxBackoffMs: 8000, maxRetryAfterMs: 60_000 };

/** Passed to `onRetry` before each wait: which attempt failed, why, and the wait. */
export interface RetryEvent {
  attempt: number;
  reason: "network" | "429" | "503";
  delayMs: number;
  /** The operation's name (`DebitWallet`) or the route (`/v1/usage`). */
  operation: string;
  error?: unknown;
}

/** A credential, or a function that gives the current one (e.g. a refreshed access token). */
export type Credential = string | (() => string | Promise<string>);

export interface ClientOptions {
  /** A project's API key (`lx_…`). */
  apiKey?: Credential;
  /** A user's access token. */
  accessToken?: Credential;
  /** Per HTTP request. Default 30 s. */
  timeoutMs?: number;
  retry?: Partial<RetryPolicy>;
  onRetry?: (event: RetryEvent) => void;
  /** Another fetch (a proxy agent, a test double). Default: the global fetch. */
  fetch?: typeof fetch;
  /** Extra HTTP headers on every request. */
  headers?: Record<string, string>;
  /** The WebSocket class for subscriptions. Default: the `ws` package. */
  webSocketImpl?: unknown;
}

export interface RequestOptions {
  /** Whether sending the request twice is harmless (queries, and mutations with an idempotency key). */
  idempotent?: boolean;
  signal?: AbortSignal;
}

export interface PostOptions extends RequestOptions {
  /** Retry 429/503 here (default true); usage ingestion handles them itself. */
  retryStatus?: boolean;
  /** Named in retry events. */
  operation?: string;
}

/** A live subscription: an async iterator of the root field's values; `return()` or `close()` ends it. */
export interface LiveSubscription<T> extends AsyncIterableIterator<T> {
  close(): Promise<void>;
}

/** An input whose `idempotencyKey` may be left out (the client makes one up). */
export type WithOptionalKey<T> = T extends { idempotencyKey: string }
  ? Omit<T, "idempotencyKey"> & { idempotencyKey?: string }
  : T;

/** An input whose list `K` holds items with optional idempotency keys. */
export type WithOptionalKeys<T, K extends string> = {
  [P in keyof T]: P extends K ? (T[P] extends ReadonlyArray<infer I> ? ReadonlyArray<WithOptionalKey<I>> : T[P]) : T[P];
};

export function newIdempotencyKey(): string {
  return randomUUID();
}

/** The input with its idempotency key, made up when missing. */
export function withKey<T extends { idempotencyKey?: string | null }>(input: T): T & { idempotencyKey: string } {
  return { ...input, idempotencyKey: input.idempotencyKey || newIdempotencyKey() };
}

/** The input with a key on each item of its keyed lists. */
export function withKeys<T extends object>(input: T, lists: readonly string[]): T {
  const out = { ...input } as Record<string, unknown>;
  for (const name of lists) {
    const items = out[name];
    if (Array.isArray(items)) out[name] = items.map((item: { idempotencyKey?: string | null }) => withKey(item));
  }
  return out as T;
}

/** JSON with bigints as strings of digits (how LedgerX takes BigInt amounts). */
export function encode(payload: unknown): string {
  return JSON.stringify(payload, (_key, value: unknown) => (typeof value === "bigint" ? value.toString() : value));
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

const NOT_RETRIED_503 = new Set(["PAYMENTS_NOT_CONFIGURED", "PAYMENT_PROVIDER_ERROR"]);
const NEVER_SENT = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "UND_ERR_CONNECT_TIMEOUT", "EHOSTUNREACH", "ENETUNREACH"]);

/** One HTTP answer: its status, JSON body (or null) and `Retry-After` in seconds. */
export class Answer {
  constructor(
    readonly status: number,
    readonly body: unknown,
    readonly retryAfter: number | null,
  ) {}

  get code(): string | null {
    const body = this.body;
    if (!isRecord(body)) return null;
    if (isRecord(body.error)) return typeof body.error.code === "string" ? body.error.code : null;
    const errors = body.errors;
    if (Array.isArray(errors) && isRecord(errors[0]) && isRecord(errors[0].extensions)) {
      const code = errors[0].extensions.code;
      return typeof code === "string" ? code : null;
    }
    return null;
  }

  get retryable(): boolean {
    return this.status === 429 || (this.status === 503 && !NOT_RETRIED_503.has(this.code ?? ""));
  }

  error(): LedgerXError {
    const body = this.body;
    if (isRecord(body)) {
      if (isRecord(body.error)) return errorFrom(body.error, this.status, this.retryAfter);
      const errors = body.errors;
      if (Array.isArray(errors) && errors.length > 0) {
        const err = errorFrom(errors[0], this.status, this.retryAfter);
        if (errors.length > 1) err.extensions.otherErrors = errors.slice(1);
        return err;
      }
    }
    const code = ({ 401: "UNAUTHENTICATED", 403: "FORBIDDEN", 404: "NOT_FOUND", 429: "RATE_LIMITED" } as const)[
      this.status as 401 | 403 | 404 | 429
    ] ?? "INTERNAL";
    const ext: Record<string, unknown> = { code };
    if (this.retryAfter !== null) ext.retryAfter = this.retryAfter;
    return errorFrom({ message: `HTTP ${this.status}`, extensions: ext }, this.status, this.retryAfter);
  }

  /** The `data` of a GraphQL answer, or its typed error. */
  data<T>(): T {
    const body = this.body;
    if (this.status >= 400 || !isRecord(body) || (Array.isArray(body.errors) && body.errors.length > 0)) {
      throw this.error();
    }
    if (!isRecord(body.data)) throw new LedgerXError("the answer has no data", { status: this.status });
    return body.data as T;
  }
}

function parseRetryAfter(value: string | null): number | null {
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max(0, (when - Date.now()) / 1000);
}

function errorCode(error: unknown): string | undefined {
  for (let e: unknown = error, depth = 0; isRecord(e) || e instanceof Error; depth++) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string") return code;
    if (depth > 4) break;
    e = (e as { cause?: unknown }).cause;
  }
  return undefined;
}

function describe(error: unknown): string {
  const code = errorCode(error);
  const message = error instanceof Error ? error.message : String(error);
  const cause = error instanceof Error && error.cause instanceof Error ? `: ${error.cause.message}` : "";
  return `${code ? `${code} ` : ""}${message}${cause}`;
}

function wsUrl(base: string): string {
  return base.replace(/^http(s?):\/\//, "ws$1://") + "/graphql";
}

/** The base of the generated `Operations`: HTTP with retries, errors and graphql-ws subscriptions. */
export class Transport {
  readonly baseUrl: string;
  readonly retry: RetryPolicy;
  readonly #credential: Credential | undefined;
  readonly #timeoutMs: number;
  readonly #onRetry: ((event: RetryEvent) => void) | undefined;
  readonly #fetch: typeof fetch;
  readonly #headers: Record<string, string>;
  readonly #webSocketImpl: unknown;
  #ws: WsClient | undefined;
  readonly #live = new Set<LiveSubscription<unknown>>();

  constructor(baseUrl: string, options: ClientOptions = {}) {
    if (!baseUrl) throw new TypeError("LedgerX needs the server's base URL, e.g. https://ledgerx.example.com");
    if (options.apiKey && options.accessToken) throw new TypeError("give apiKey or accessToken, not both");
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.#credential = options.apiKey ?? options.accessToken;
    this.#timeoutMs = options.timeoutMs ?? 30_000;
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    if (!(this.retry.maxAttempts >= 1)) throw new RangeError("retry.maxAttempts must be at least 1");
    this.#onRetry = options.onRetry;
    this.#fetch = options.fetch ?? globalThis.fetch;
    this.#headers = { ...options.headers };
    this.#webSocketImpl = options.webSocketImpl ?? WebSocket;
  }

  async #authorization(): Promise<string | undefined> {
    const c = this.#credential;
    const value = typeof c === "function" ? await c() : c;
    return value ? `Bearer ${value}` : undefined;
  }

  /** The wait before retry `attempt + 1` (Retry-After when given, else exponential with jitter). */
  delayMs(attempt: number, retryAfter: number | null): number {
    const p = this.retry;
    if (retryAfter !== null) return Math.min(retryAfter * 1000, p.maxRetryAfterMs) + Math.random() * (p.backoffMs / 2);
    const base = Math.min(p.maxBackoffMs, p.backoffMs * 2 ** (attempt - 1));
    return base / 2 + Math.random() * (base / 2);
  }

  #notify(event: RetryEvent): number {
    this.#onRetry?.(event);
    return event.delayMs;
  }

  /** POST a JSON body to `path`, retrying as the module comment says; the answer as it came. */
  async post(path: string, payload: unknown, options: PostOptions = {}): Promise<Answer> {
    const body = encode(payload); // once: every attempt sends the same bytes (and key)
    const operation = options.operation ?? path;
    const headers: Record<string, string> = {
      "User-Agent": USER_AGENT,
      Accept: "application/json",
      "Content-Type": "application/json",
      ...this.#headers,
    };
    const auth = await this.#authorization();
    if (auth) headers.Authorization = auth;
    for (let attempt = 1; ; attempt++) {
      const timeout = AbortSignal.timeout(this.#timeoutMs);
      const signal = options.signal ? AbortSignal.any([options.signal, timeout]) : timeout;
      let response: Response;
      let parsed: unknown = null;
      try {
        response = await this.#fetch(this.baseUrl + path, { method: "POST", headers, body, signal });
        const text = await response.text();
        try {
          parsed = text ? JSON.parse(text) : null;
        } catch {
          parsed = null;
        }
      } catch (error) {
        if (options.signal?.aborted) throw options.signal.reason ?? error;
        const neverSent = NEVER_SENT.has(errorCode(error) ?? "");
        if (attempt >= this.retry.maxAttempts || !(options.idempotent || neverSent)) {
          throw new NetworkError(`no answer from ${this.baseUrl}${path}: ${describe(error)}`, { cause: error });
        }
        const wait = this.#notify({ attempt, reason: "network", delayMs: this.delayMs(attempt, null), operation, error });
        await sleep(wait, undefined, { signal: options.signal });
        continue;
      }
      const answer = new Answer(response.status, parsed, parseRetryAfter(response.headers.get("retry-after")));
      if (options.retryStatus === false || !answer.retryable || attempt >= this.retry.maxAttempts) return answer;
      const reason = answer.status === 429 ? "429" : "503";
      const wait = this.#notify({ attempt, reason, delayMs: this.delayMs(attempt, answer.retryAfter), operation });
      await sleep(wait, undefined, { signal: options.signal });
    }
  }

  /** Run a typed document; its `data` (or the typed error of its first error). */
  async execute<TResult, TVariables>(
    document: TypedDocument<TResult, TVariables>,
    operationName: string | undefined,
    variables: TVariables,
    options: RequestOptions = {},
  ): Promise<TResult> {
    const payload = { query: document.toString(), variables, operationName };
    const answer = await this.post("/graphql", payload, { ...options, operation: operationName ?? "anonymous" });
    return answer.data<TResult>();
  }

  /** Any typed document (your own queries), sent as one request; queries count as idempotent. */
  request<TResult, TVariables>(
    document: TypedDocument<TResult, TVariables>,
    variables: TVariables,
    options: RequestOptions = {},
  ): Promise<TResult> {
    const text = document.toString();
    const idempotent = options.idempotent ?? /^\s*(query\b|\{)/.test(text.replace(/^\s*(#[^\n]*\n\s*)*/, ""));
    return this.execute(document, undefined, variables, { ...options, idempotent });
  }

  #socket(): WsClient {
    this.#ws ??= createClient({
      url: wsUrl(this.baseUrl),
      webSocketImpl: this.#webSocketImpl,
      lazy: true,
      lazyCloseTimeout: 0,
      retryAttempts: 0,
      connectionParams: async () => {
        const auth = await this.#authorization();
        return auth ? { authorization: auth } : {};
      },
    });
    return this.#ws;
  }

  /** Subscribe over graphql-transport-ws; values of the root field `root`. */
  subscribe<TResult, TVariables, K extends keyof TResult>(
    document: TypedDocument<TResult, TVariables>,
    operationName: string,
    variables: TVariables,
    root: K,
  ): LiveSubscription<TResult[K]> {
    const queue: TResult[K][] = [];
    const waiting: Array<{ resolve: (r: IteratorResult<TResult[K]>) => void; reject: (e: unknown) => void }> = [];
    let failure: unknown = undefined;
    let done = false;
    const settle = (): void => {
      while (waiting.length > 0 && (queue.length > 0 || done)) {
        const w = waiting.shift()!;
        if (queue.length > 0) w.resolve({ value: queue.shift()!, done: false });
        else if (failure !== undefined) {
          w.reject(failure);
          failure = undefined;
        } else w.resolve({ value: undefined, done: true });
      }
    };
    const fail = (error: unknown): void => {
      if (done) return;
      failure = error;
      done = true;
      settle();
      this.#live.delete(live as LiveSubscription<unknown>);
    };
    const unsubscribe = this.#socket().subscribe<TResult>(
      { query: document.toString(), variables: variables as Record<string, unknown>, operationName },
      {
        next: (result) => {
          if (result.errors && result.errors.length > 0) return fail(errorFrom(result.errors[0]));
          if (result.data) queue.push(result.data[root]);
          settle();
        },
        error: (error) => fail(subscriptionError(error)),
        complete: () => fail(undefined),
      },
    );
    const end = async (): Promise<IteratorResult<TResult[K]>> => {
      if (!done) {
        unsubscribe();
        done = true;
        queue.length = 0;
        settle();
        this.#live.delete(live as LiveSubscription<unknown>);
      }
      return { value: undefined, done: true };
    };
    const live: LiveSubscription<TResult[K]> = {
      next: () => {
        if (queue.length > 0) return Promise.resolve({ value: queue.shift()!, done: false });
        if (done) {
          if (failure !== undefined) {
            const f = failure;
            failure = undefined;
            return Promise.reject(f);
          }
          return Promise.resolve({ value: undefined, done: true });
        }
        return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
      },
      return: end,
      close: async () => {
        await end();
      },
      [Symbol.asyncIterator]() {
        return live;
      },
    };
    this.#live.add(live as LiveSubscription<unknown>);
    return live;
  }

  /** End every subscription and the socket. HTTP needs no closing. */
  async close(): Promise<void> {
    await Promise.all([...this.#live].map((s) => s.close()));
    await this.#ws?.dispose();
    this.#ws = undefined;
  }
}

function subscriptionError(error: unknown): LedgerXError {
  if (Array.isArray(error) && error.length > 0) return errorFrom(error[0]);
  if (isRecord(error) && typeof error.code === "number") {
    const code = error.code;
    const reason = typeof error.reason === "string" ? error.reason : "";
    const extensions = { closeCode: code, reason };
    if (code === 4401) return new UnauthenticatedError(reason || "the credential expired or was revoked", { extensions });
    if (code === 4403) return new ForbiddenError(reason || "forbidden", { extensions });
    if (code === 1006 && !reason) return new NetworkError("the subscription's socket was lost", { extensions });
    return new SubscriptionClosedError(`the subscription's socket closed (${code}${reason ? `: ${reason}` : ""})`, {
      extensions,
    });
  }
  return new NetworkError(`subscription failed: ${describe(error)}`, { cause: error });
}
