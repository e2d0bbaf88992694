/**
 * Verify the webhooks LedgerX sends (Standard Webhooks: https://www.standardwebhooks.com/).
 *
 * Each delivery carries `webhook-id` (the event's id, the same on every attempt: drop
 * duplicates by it), `webhook-timestamp` (Unix seconds) and `webhook-signature`
 * (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, space-separated when more than one secret
 * signs, as during a rotation). Secrets look like `whsec_<base64>`.
 */
import { createHmac, timingSafeEqual } from "node:crypto";

import { WebhookVerificationError } from "./errors.js";

export const DEFAULT_TOLERANCE_SECONDS = 300;

/** Headers as Node's `IncomingMessage.headers`, a fetch `Headers`, or a plain object. */
export type WebhookHeaders =
  | Headers
  | { get(name: string): string | null }
  | Record<string, string | string[] | undefined>;

/** What every LedgerX event's body holds; `data` has the fields of the GraphQL type its type names. */
export interface WebhookEvent<T = unknown> {
  id: string;
  type: string;
  createdAt: string;
  projectId: string;
  data: T;
}

export interface VerifyOptions {
  /** Seconds a timestamp may be away from now, either way. Default 300. */
  toleranceSeconds?: number;
  /** "Now" (a Date or milliseconds since the epoch), for tests. */
  now?: Date | number;
}

function secretBytes(secret: string | Uint8Array): Buffer {
  if (typeof secret !== "string") return Buffer.from(secret);
  const raw = secret.startsWith("whsec_") ? secret.slice("whsec_".length) : secret;
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(raw) || raw.length % 4 !== 0) {
    throw new WebhookVerificationError("the webhook secret is not whsec_<base64>");
  }
  return Buffer.from(raw, "base64");
}

function header(headers: WebhookHeaders, name: string): string {
  let value: string | string[] | null | undefined;
  if (typeof (headers as { get?: unknown }).get === "function") {
    value = (headers as { get(name: string): string | null }).get(name);
  } else {
    for (const [key, v] of Object.entries(headers as Record<string, string | string[] | undefined>)) {
      if (key.toLowerCase() === name) value = v;
    }
  }
  if (Array.isArray(value)) value = value.join(" ");
  if (value === null || value === undefined || value === "") {
    throw new WebhookVerificationError(`missing header ${name}`, { field: name });
  }
  return value;
}

/**
 * The delivery's JSON payload once its signature verifies with `secret` (the endpoint's
 * `whsec_…`, or its raw bytes) and its timestamp is within `toleranceSeconds` of now.
 *
 * Pass the body exactly as received (a string or bytes, before any JSON parsing). Throws
 * `WebhookVerificationError` (code `WEBHOOK_VERIFICATION_FAILED`) otherwise.
 */
export function verifyWebhook<T = unknown>(
  secret: string | Uint8Array,
  body: string | Uint8Array,
  headers: WebhookHeaders,
  options: VerifyOptions = {},
): WebhookEvent<T> {
  const key = secretBytes(secret);
  const payload = typeof body === "string" ? Buffer.from(body, "utf8") : Buffer.from(body);
  const id = header(headers, "webhook-id");
  const stamp = header(headers, "webhook-timestamp");
  const signatures = header(headers, "webhook-signature");
  if (!/^\d{1,15}$/.test(stamp)) {
    throw new WebhookVerificationError("webhook-timestamp is not a Unix time", { field: "webhook-timestamp" });
  }
  const timestamp = Number(stamp);
  const tolerance = options.toleranceSeconds ?? DEFAULT_TOLERANCE_SECONDS;
  const now = (options.now === undefined ? Date.now() : Number(options.now)) / 1000;
  if (timestamp < now - tolerance) {
    throw new WebhookVerificationError("the webhook's timestamp is too old", { field: "webhook-timestamp" });
  }
  if (timestamp > now + tolerance) {
    throw new WebhookVerificationError("the webhook's timestamp is in the future", { field: "webhook-timestamp" });
  }
  const expected = createHmac("sha256", key).update(`${id}.${stamp}.`).update(payload).digest();
  for (const candidate of signatures.split(" ")) {
    const comma = candidate.indexOf(",");
    if (comma < 0 || candidate.slice(0, comma) !== "v1") continue;
    const given = Buffer.from(candidate.slice(comma + 1), "base64");
    if (given.length === expected.length && timingSafeEqual(given, expected)) {
      try {
        return JSON.parse(payload.toString("utf8")) as WebhookEvent<T>;
      } catch {
        throw new WebhookVerificationError("the webhook's body is not JSON");
      }
    }
  }
  throw new WebhookVerificationError("no webhook signature matches the secret", { field: "webhook-signature" });
}
