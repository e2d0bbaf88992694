/**
 * `client.usage.ingest(events)`: usage events over `POST /v1/usage`, in batches, with back-pressure.
 *
 * - Batches of `batchSize` events (the server takes at most `USAGE_MAX_BATCH`, 10,000 by default;
 *   a batch the server finds too large (413 `BATCH_TOO_LARGE`) is split in two and sent again).
 * - At most `maxInFlight` batches are in flight; events are read from the (async) iterable only as
 *   batches are sent, so a generator of any length is fine.
 * - A 429 (or 503) pauses every sender until its `Retry-After` has passed, then the same batch is
 *   sent again. Every event has an idempotency key (made up when missing, returned in
 *   `idempotencyKeys`), so a batch sent twice (a retry after a dropped connection) is recorded once.
 * - The result adds up the server's answers: `accepted`, `duplicates`, `overage`, and each
 *   rejected event with its index in the events given.
 */
import { setTimeout as sleep } from "node:timers/promises";

import type { Answer, Transport } from "./transport.js";
import { newIdempotencyKey } from "./transport.js";

export const DEFAULT_BATCH_SIZE = 1000;
export const MAX_BATCH_SIZE = 10_000;
export const DEFAULT_IN_FLIGHT = 4;
const MAX_THROTTLED_WAITS = 100; // per batch

/** One usage event (README: Usage, quotas and billing rules). */
export interface IngestEvent {
  metricKey: string;
  units: string | number;
  /** Made up (crypto.randomUUID) when missing. */
  idempotencyKey?: string;
  /** ISO 8601 with an offset, or a Date; up to USAGE_LATE_WINDOW (35 days) back. */
  occurredAt?: string | Date;
  properties?: Record<string, unknown>;
}

/** An event the server refused; `index` is its position in the events given. */
export interface Rejection {
  index: number;
  idempotencyKey: string;
  code: string;
  message: string;
  field: string | null;
  reason: string | null;
}

export interface IngestResult {
  accepted: number;
  duplicates: number;
  overage: number;
  rejected: Rejection[];
  /** Every event's key, in the order given. */
  idempotencyKeys: string[];
  /** Requests answered 200. */
  batches: number;
  /** 429/503 answers waited out. */
  throttled: number;
}

export interface IngestOptions {
  batchSize?: number;
  maxInFlight?: number;
  /** Needed when signed in as a user (an API key records for its own project). */
  projectId?: string;
  signal?: AbortSignal;
}

type Keyed = IngestEvent & { idempotencyKey: string };

interface BatchAnswer {
  accepted?: number;
  duplicates?: number;
  overage?: number;
  rejected?: Array<{ index: number; code: string; message: string; field?: string | null; reason?: string | null }>;
}

function tooLarge(answer: Answer): boolean {
  const body = answer.body as { error?: { reason?: unknown } } | null;
  return answer.status === 413 && body?.error?.reason === "BATCH_TOO_LARGE";
}

async function* batches(
  events: Iterable<IngestEvent> | AsyncIterable<IngestEvent>,
  size: number,
  keys: string[],
): AsyncGenerator<[number, Keyed[]]> {
  let batch: Keyed[] = [];
  let offset = 0;
  for await (const event of events) {
    const keyed = { ...event, idempotencyKey: event.idempotencyKey || newIdempotencyKey() };
    keys.push(keyed.idempotencyKey);
    batch.push(keyed);
    if (batch.length === size) {
      yield [offset, batch];
      offset += batch.length;
      batch = [];
    }
  }
  if (batch.length > 0) yield [offset, batch];
}

/** Usage ingestion (`client.usage`). */
export class Usage {
  readonly #transport: Transport;

  constructor(transport: Transport) {
    this.#transport = transport;
  }

  /** Record `events`; resolves when every batch is answered, rejects with the first batch's error. */
  async ingest(
    events: Iterable<IngestEvent> | AsyncIterable<IngestEvent>,
    options: IngestOptions = {},
  ): Promise<IngestResult> {
    const batchSize = options.batchSize ?? DEFAULT_BATCH_SIZE;
    const maxInFlight = options.maxInFlight ?? DEFAULT_IN_FLIGHT;
    if (!(Number.isInteger(batchSize) && batchSize >= 1 && batchSize <= MAX_BATCH_SIZE)) {
      throw new RangeError(`batchSize must be an integer within 1..${MAX_BATCH_SIZE}`);
    }
    if (!(Number.isInteger(maxInFlight) && maxInFlight >= 1)) throw new RangeError("maxInFlight must be at least 1");
    const result: IngestResult = {
      accepted: 0,
      duplicates: 0,
      overage: 0,
      rejected: [],
      idempotencyKeys: [],
      batches: 0,
      throttled: 0,
    };
    const transport = this.#transport;
    const signal = options.signal;
    let pausedUntil = 0; // no batch is sent before this instant (a 429's Retry-After moves it)

    const send = async (offset: number, batch: Keyed[]): Promise<void> => {
      for (let waits = 0; ; ) {
        const delay = pausedUntil - Date.now();
        if (delay > 0) await sleep(delay, undefined, { signal });
        const body: Record<string, unknown> = { events: batch };
        if (options.projectId !== undefined) body.projectId = options.projectId;
        const answer = await transport.post("/v1/usage", body, {
          idempotent: true,
          retryStatus: false,
          operation: "/v1/usage",
          ...(signal ? { signal } : {}),
        });
        if (answer.retryable && waits < MAX_THROTTLED_WAITS) {
          waits++;
          result.throttled++;
          const wait =
            answer.retryAfter !== null
              ? answer.retryAfter * 1000
              : Math.min(transport.retry.maxBackoffMs, transport.retry.backoffMs * 2 ** Math.min(waits, 5));
          pausedUntil = Math.max(pausedUntil, Date.now() + wait);
          continue;
        }
        if (tooLarge(answer) && batch.length > 1) {
          const half = Math.floor(batch.length / 2);
          await send(offset, batch.slice(0, half));
          await send(offset + half, batch.slice(half));
          return;
        }
        if (answer.status !== 200 || typeof answer.body !== "object" || answer.body === null) throw answer.error();
        const got = answer.body as BatchAnswer;
        result.batches++;
        result.accepted += got.accepted ?? 0;
        result.duplicates += got.duplicates ?? 0;
        result.overage += got.overage ?? 0;
        for (const r of got.rejected ?? []) {
          result.rejected.push({
            index: offset + r.index,
            idempotencyKey: batch[r.index]?.idempotencyKey ?? "",
            code: r.code,
            message: r.message,
            field: r.field ?? null,
            reason: r.reason ?? null,
          });
        }
        return;
      }
    };

    const inFlight = new Set<Promise<void>>();
    let failure: { error: unknown } | undefined;
    for await (const [offset, batch] of batches(events, batchSize, result.idempotencyKeys)) {
      while (inFlight.size >= maxInFlight && failure === undefined) await Promise.race(inFlight);
      if (failure !== undefined) break;
      const task: Promise<void> = send(offset, batch).then(
        () => void inFlight.delete(task),
        (error: unknown) => {
          inFlight.delete(task);
          failure ??= { error };
        },
      );
      inFlight.add(task);
    }
    await Promise.all(inFlight);
    if (failure !== undefined) throw failure.error;
    result.rejected.sort((a, b) => a.index - b.index);
    return result;
  }
}
