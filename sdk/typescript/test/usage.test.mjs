// Usage ingestion over POST /v1/usage: batches, made-up keys, duplicates, rejections with their
// index, and back-pressure from the server's 429s.
import assert from "node:assert/strict";
import { after, describe, test } from "node:test";

import { LedgerX, MAX_BATCH_SIZE } from "@ledgerx/client";

import { API_KEY, METRIC, PROJECT_ID, THROTTLED_API_KEY, URL_, unique } from "./env.mjs";

function events(n, tag = unique("ev")) {
  return Array.from({ length: n }, (_, i) => ({ metricKey: METRIC, units: (i % 3) + 1, properties: { tag, i } }));
}

describe("usage ingestion", () => {
  const lx = new LedgerX(URL_, { apiKey: API_KEY });
  after(() => lx.close());

  test("events go in batches; every event gets a key; sending them again counts duplicates", async () => {
    const given = events(25);
    const result = await lx.usage.ingest(given, { batchSize: 10, maxInFlight: 2 });
    assert.equal(result.batches, 3);
    assert.equal(result.accepted, 25);
    assert.equal(result.duplicates, 0);
    assert.deepEqual(result.rejected, []);
    assert.equal(result.idempotencyKeys.length, 25);
    assert.equal(new Set(result.idempotencyKeys).size, 25);
    // Stored as sent: the server finds each event by its key.
    const stored = await lx.usageEvent({ projectId: PROJECT_ID, idempotencyKey: result.idempotencyKeys[24] });
    assert.equal(stored?.metricKey, METRIC);
    assert.equal(Number(stored?.units), (24 % 3) + 1);
    assert.deepEqual(stored?.properties, given[24].properties);
    // The same events with their keys again: recorded once.
    const keyed = given.map((e, i) => ({ ...e, idempotencyKey: result.idempotencyKeys[i] }));
    const again = await lx.usage.ingest(keyed, { batchSize: 7 });
    assert.equal(again.batches, 4);
    assert.equal(again.accepted, 0);
    assert.equal(again.duplicates, 25);
  });

  test("a bad event is rejected alone, with its index in the events given", async () => {
    async function* generate() {
      for (let i = 0; i < 12; i++) {
        yield i === 9 ? { metricKey: "no_such_metric", units: 1 } : { metricKey: METRIC, units: 1 };
      }
    }
    const result = await lx.usage.ingest(generate(), { batchSize: 4 });
    assert.equal(result.batches, 3);
    assert.equal(result.accepted, 11);
    assert.equal(result.rejected.length, 1);
    const [r] = result.rejected;
    assert.equal(r.index, 9);
    assert.equal(r.idempotencyKey, result.idempotencyKeys[9]);
    assert.ok(["BAD_USER_INPUT", "NOT_FOUND"].includes(r.code), r.code);
  });

  test("options are checked before anything is sent", async () => {
    await assert.rejects(lx.usage.ingest(events(1), { batchSize: MAX_BATCH_SIZE + 1 }), RangeError);
    await assert.rejects(lx.usage.ingest(events(1), { maxInFlight: 0 }), RangeError);
  });

  test("429s pause every sender for their Retry-After; nothing is lost or doubled", async () => {
    // The throttled project's key may make a few requests per second: 12 batches, 4 in flight.
    const throttled = new LedgerX(URL_, { apiKey: THROTTLED_API_KEY });
    const started = Date.now();
    const result = await throttled.usage.ingest(events(60), { batchSize: 5, maxInFlight: 4 });
    const elapsed = Date.now() - started;
    assert.equal(result.batches, 12);
    assert.equal(result.accepted, 60);
    assert.equal(result.duplicates, 0, "a refused batch was not recorded, and its resend is recorded once");
    assert.ok(result.throttled > 0, "the server pushed back");
    assert.ok(elapsed >= 1000, `took ${elapsed} ms: the senders waited for Retry-After`);
  });
});
