// Wallets and transactions against a live LedgerX: typed answers, idempotency keys, typed errors,
// and retries that reuse the key (a dropped connection, a 429 with Retry-After).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";

import {
  IdempotencyConflictError,
  InsufficientFundsError,
  LedgerX,
  LedgerXError,
  NetworkError,
  NotFoundError,
  UnauthenticatedError,
  VERSION,
} from "@ledgerx/client";

import { API_KEY, PROJECT_ID, THROTTLED_API_KEY, URL_, droppingProxy, unique } from "./env.mjs";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe("wallets and transactions", () => {
  const lx = new LedgerX(URL_, { apiKey: API_KEY });
  let wallet;

  before(async () => {
    wallet = await lx.createWallet({ projectId: PROJECT_ID, name: unique("sdk-ledger"), lowBalanceThreshold: 10 });
  });
  after(() => lx.close());

  test("the SDK's version is the server's and the package's", async () => {
    const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
    assert.equal(VERSION, pkg.version);
    assert.equal(await lx.version(), VERSION);
  });

  test("credit and debit post double-entry transactions with typed fields", async () => {
    assert.equal(wallet.balance, "0");
    assert.equal(wallet.projectId, PROJECT_ID);
    const credit = await lx.creditWallet({ walletId: wallet.id, amount: 1000n, reason: "top-up" });
    assert.equal(credit.type, "CREDIT");
    assert.equal(credit.balanceAfter, "1000");
    assert.match(credit.idempotencyKey, UUID, "a key is made up when none is given");
    const debit = await lx.debitWallet({ walletId: wallet.id, amount: "250", metadata: { job: 7 } });
    assert.equal(debit.type, "DEBIT");
    assert.equal(debit.amount, "250");
    assert.deepEqual([debit.balanceBefore, debit.balanceAfter], ["1000", "750"]);
    assert.deepEqual(debit.metadata, { job: 7 });
    assert.notEqual(debit.idempotencyKey, credit.idempotencyKey);
    const again = await lx.wallet({ id: wallet.id });
    assert.equal(again?.balance, "750");
    const page = await lx.walletTransactions({ walletId: wallet.id, first: 10 });
    assert.deepEqual(
      page?.transactions.nodes.map((t) => t.id),
      [debit.id, credit.id],
    );
    assert.equal((await lx.transaction({ id: debit.id }))?.amount, "250");
  });

  test("the same idempotency key and request answers the first transaction; another request is IDEMPOTENCY_CONFLICT", async () => {
    const key = unique("job");
    const first = await lx.debitWallet({ walletId: wallet.id, amount: 5, idempotencyKey: key });
    const second = await lx.debitWallet({ walletId: wallet.id, amount: 5, idempotencyKey: key });
    assert.equal(second.id, first.id);
    assert.equal((await lx.wallet({ id: wallet.id }))?.balance, first.balanceAfter);
    const error = await lx.debitWallet({ walletId: wallet.id, amount: 6, idempotencyKey: key }).then(
      () => assert.fail("a different request with the same key must be refused"),
      (e) => e,
    );
    assert.ok(error instanceof IdempotencyConflictError);
    assert.equal(error.code, "IDEMPOTENCY_CONFLICT");
  });

  test("a debit past the credit limit is an InsufficientFundsError and writes nothing", async () => {
    const before_ = (await lx.wallet({ id: wallet.id }))?.balance;
    await assert.rejects(lx.debitWallet({ walletId: wallet.id, amount: "1000000" }), (error) => {
      assert.ok(error instanceof InsufficientFundsError);
      assert.ok(error instanceof LedgerXError);
      assert.equal(error.code, "INSUFFICIENT_FUNDS");
      assert.equal(error.name, "InsufficientFundsError");
      assert.equal(error.status, 200, "GraphQL answers errors with HTTP 200");
      return true;
    });
    assert.equal((await lx.wallet({ id: wallet.id }))?.balance, before_);
  });

  test("bad input names its field; unknown ids are NOT_FOUND; a bad key is UNAUTHENTICATED", async () => {
    await assert.rejects(lx.debitWallet({ walletId: wallet.id, amount: "-5" }), (error) => {
      assert.equal(error.code, "BAD_USER_INPUT");
      assert.equal(error.field, "amount");
      return true;
    });
    await assert.rejects(lx.debitWallet({ walletId: "wal_doesnotexist", amount: 1 }), (error) => {
      assert.ok(error instanceof LedgerXError);
      assert.ok(["NOT_FOUND", "BAD_USER_INPUT"].includes(error.code), error.code);
      return true;
    });
    const stranger = new LedgerX(URL_, { apiKey: "lx_nope_nope" });
    await assert.rejects(stranger.wallet({ id: wallet.id }), (error) => {
      assert.ok(error instanceof UnauthenticatedError);
      assert.equal(error.code, "UNAUTHENTICATED");
      return true;
    });
    assert.ok(NotFoundError.code === "NOT_FOUND");
  });

  test("a debit whose connection drops after the server posted it is retried with its key and posts once", async () => {
    const proxy = await droppingProxy();
    const retries = [];
    const through = new LedgerX(proxy.url, {
      apiKey: API_KEY,
      onRetry: (e) => retries.push(e),
      retry: { backoffMs: 20 },
    });
    try {
      const before_ = BigInt((await lx.wallet({ id: wallet.id })).balance);
      const debit = await through.debitWallet({ walletId: wallet.id, amount: 7, reason: "dropped once" });
      assert.equal(proxy.stats.dropped, 1, "the first answer was dropped");
      assert.equal(retries.length, 1);
      assert.equal(retries[0].reason, "network");
      assert.equal(retries[0].operation, "DebitWallet");
      assert.match(debit.idempotencyKey, UUID);
      assert.equal(BigInt(debit.balanceBefore), before_, "the retry is answered with the first posting");
      assert.equal(BigInt((await lx.wallet({ id: wallet.id })).balance), before_ - 7n, "debited once");
      const page = await lx.walletTransactions({ walletId: wallet.id, first: 50 });
      const posted = page.transactions.nodes.filter((t) => t.idempotencyKey === debit.idempotencyKey);
      assert.deepEqual(
        posted.map((t) => t.id),
        [debit.id],
      );
    } finally {
      await proxy.close();
    }
  });

  test("a mutation without an idempotency key is not retried after a dropped connection", async () => {
    const proxy = await droppingProxy();
    const retries = [];
    const through = new LedgerX(proxy.url, { apiKey: API_KEY, onRetry: (e) => retries.push(e) });
    const name = unique("not-retried");
    try {
      await assert.rejects(through.createWallet({ projectId: PROJECT_ID, name }), (error) => {
        assert.ok(error instanceof NetworkError);
        assert.equal(error.code, "NETWORK_ERROR");
        return true;
      });
      assert.equal(retries.length, 0);
      const all = await lx.wallets({ projectId: PROJECT_ID, first: 100 });
      assert.equal(all.nodes.filter((w) => w.name === name).length, 1, "created once, by the only attempt");
    } finally {
      await proxy.close();
    }
  });

  test("a 429 is waited out for its Retry-After and the same request (same key) goes again", async () => {
    // The throttled project's key may make a few requests per second (tests/test_sdk_typescript.py).
    const retries = [];
    const throttled = new LedgerX(URL_, { apiKey: THROTTLED_API_KEY, onRetry: (e) => retries.push(e) });
    const me = await throttled.currentApiKey();
    const target = await throttled.createWallet({ projectId: me.projectId, name: unique("throttled") });
    await throttled.creditWallet({ walletId: target.id, amount: 100, idempotencyKey: unique("credit") });
    const keys = [];
    for (let i = 0; i < 8; i++) {
      const tx = await throttled.debitWallet({ walletId: target.id, amount: 1 });
      keys.push(tx.idempotencyKey);
    }
    const limited = retries.filter((e) => e.reason === "429");
    assert.ok(limited.length > 0, "the burst was spent and the server answered 429");
    for (const e of limited) assert.ok(e.delayMs >= 900, `waited ${e.delayMs} ms, the Retry-After (>= 1 s)`);
    assert.equal(new Set(keys).size, 8);
    const after_ = await throttled.wallet({ id: target.id });
    assert.equal(BigInt(after_.balance), BigInt(target.balance) + 100n - 8n, "every debit posted once");
  });
});
