// Subscriptions over graphql-transport-ws (graphql-ws with the ws package).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { LedgerX, LedgerXError } from "@ledgerx/client";

import { ACCESS_TOKEN, API_KEY, PROJECT_ID, URL_, unique } from "./env.mjs";

function within(ms, promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

describe("subscriptions", () => {
  const lx = new LedgerX(URL_, { apiKey: API_KEY });
  let wallet;
  let first;
  before(async () => {
    wallet = await lx.createWallet({ projectId: PROJECT_ID, name: unique("sdk-live") });
    first = await lx.creditWallet({ walletId: wallet.id, amount: 100 });
  });
  after(() => lx.close());

  test("transactionPosted receives a debit, after the cursor it started from", async () => {
    const live = lx.transactionPosted({ projectId: PROJECT_ID, after: first.cursor });
    try {
      const debit = await lx.debitWallet({ walletId: wallet.id, amount: 30 });
      let got;
      for (;;) {
        const { value, done } = await within(15_000, live.next(), "transactionPosted");
        assert.equal(done, false);
        if (value.id === debit.id) {
          got = value;
          break;
        }
      }
      assert.equal(got.amount, "30");
      assert.equal(got.walletId, wallet.id);
      assert.equal(got.balanceAfter, "70");
    } finally {
      await live.close();
    }
    assert.deepEqual(await live.next(), { value: undefined, done: true });
  });

  test("walletUpdated with an access token, as an async iterator", async () => {
    const owner = new LedgerX(URL_, { accessToken: async () => ACCESS_TOKEN });
    try {
      const live = owner.walletUpdated({ walletId: wallet.id, after: first.cursor });
      const credit = await lx.creditWallet({ walletId: wallet.id, amount: 5 });
      const seen = [];
      await within(
        15_000,
        (async () => {
          for await (const update of live) {
            seen.push(update.transaction?.id);
            if (update.transaction?.id === credit.id) {
              assert.equal(update.wallet.id, wallet.id);
              assert.equal(update.cursor, credit.cursor);
              break; // ends the subscription
            }
          }
        })(),
        "walletUpdated",
      );
      assert.ok(seen.includes(credit.id));
    } finally {
      await owner.close();
    }
  });

  test("a subscription with a bad credential or input fails with a typed error", async () => {
    const stranger = new LedgerX(URL_, { apiKey: "lx_nope_nope" });
    try {
      await assert.rejects(within(15_000, stranger.transactionPosted({ projectId: PROJECT_ID }).next(), "refusal"), (e) => {
        assert.ok(e instanceof LedgerXError, String(e));
        assert.ok(["UNAUTHENTICATED", "FORBIDDEN"].includes(e.code), e.code);
        return true;
      });
    } finally {
      await stranger.close();
    }
    await assert.rejects(within(15_000, lx.transactionPosted({ projectId: PROJECT_ID, after: "txn_unknown" }).next(), "bad after"), (e) => {
      assert.ok(e instanceof LedgerXError, String(e));
      assert.equal(e.code, "BAD_USER_INPUT");
      return true;
    });
  });
});
