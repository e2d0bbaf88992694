// Billing rules, credit grants, entitlements and invoices through the typed operations.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { ForbiddenError, LedgerX } from "@ledgerx/client";

import { ACCESS_TOKEN, API_KEY, PROJECT_ID, URL_, unique } from "./env.mjs";

describe("billing, grants, entitlements, invoices", () => {
  const lx = new LedgerX(URL_, { apiKey: API_KEY });
  let wallet;
  before(async () => {
    wallet = await lx.createWallet({ projectId: PROJECT_ID, name: unique("sdk-billing") });
    await lx.creditWallet({ walletId: wallet.id, amount: 10_000 });
  });
  after(() => lx.close());

  test("a billing rule is created, previewed without charging, paused and resumed", async () => {
    const rule = await lx.createBillingRule({
      walletId: wallet.id,
      name: "Seat fee",
      mode: "DAILY_FLAT",
      amount: 100,
      timezone: "Europe/Paris",
      timeOfDay: "09:00",
    });
    assert.equal(rule.status, "ACTIVE");
    assert.equal(rule.mode, "DAILY_FLAT");
    assert.equal(rule.amount, "100");
    assert.ok(rule.nextRunAt);
    const preview = await lx.previewBillingRule({ id: rule.id, count: 3 });
    assert.equal(preview.length, 3);
    for (const run of preview) {
      assert.equal(run.amount, "100");
      assert.equal(run.timezone, "Europe/Paris");
      assert.match(run.localAt, /T09:00/);
    }
    assert.ok(Date.parse(preview[0].at) < Date.parse(preview[1].at));
    assert.equal((await lx.wallet({ id: wallet.id })).balance, "10000", "a preview charges nothing");
    const paused = await lx.pauseBillingRule({ id: rule.id });
    assert.equal(paused.status, "PAUSED");
    assert.equal((await lx.billingRule({ id: rule.id })).status, "PAUSED");
    const resumed = await lx.resumeBillingRule({ id: rule.id });
    assert.equal(resumed.status, "ACTIVE");
    const listed = await lx.billingRules({ projectId: PROJECT_ID, walletId: wallet.id });
    assert.deepEqual(
      listed.nodes.map((r) => r.id),
      [rule.id],
    );
    const run = await lx.runBillingRule({ id: rule.id });
    assert.equal(run.amount, "100");
    assert.equal((await lx.wallet({ id: wallet.id })).balance, "9900");
  });

  test("credit grants are drawn by priority and listed", async () => {
    const grant = await lx.grantCredits({
      walletId: wallet.id,
      amount: 500,
      category: "PROMOTIONAL",
      priority: 10,
      expiresAt: new Date("2099-01-01T00:00:00Z"),
      reason: "launch",
    });
    assert.equal(grant.remaining, "500");
    assert.equal(grant.status, "ACTIVE");
    assert.equal(Date.parse(grant.expiresAt), Date.parse("2099-01-01T00:00:00Z"), "a Date goes as ISO 8601");
    const debit = await lx.debitWallet({ walletId: wallet.id, amount: 200 });
    assert.deepEqual(debit.grantDraws, [{ grantId: grant.id, amount: "200" }]);
    const grants = await lx.walletGrants({ walletId: wallet.id, status: "ACTIVE" });
    assert.equal(grants.grants.nodes.find((g) => g.id === grant.id)?.remaining, "300");
  });

  test("entitlements answer the project's plan", async () => {
    const sso = await lx.entitlement({ projectId: PROJECT_ID, featureKey: "sso" });
    assert.equal(sso.type, "BOOLEAN");
    assert.equal(sso.hasAccess, true);
    const calls = await lx.entitlement({ projectId: PROJECT_ID, featureKey: "monthly_calls" });
    assert.equal(calls.type, "METERED");
    assert.equal(calls.hasAccess, true);
    assert.equal(calls.limit, "1000000");
    assert.ok(calls.resetsAt);
    const missing = await lx.entitlement({ projectId: PROJECT_ID, featureKey: "not_in_the_plan" });
    assert.equal(missing.hasAccess, false);
    const all = await lx.entitlements({ projectId: PROJECT_ID });
    assert.deepEqual(all.map((e) => e.featureKey).sort(), ["monthly_calls", "sso"]);
  });

  test("invoices list (none without payments); API keys may not read them, members may", async () => {
    await assert.rejects(lx.invoices({ projectId: PROJECT_ID }), (e) => e instanceof ForbiddenError);
    const owner = new LedgerX(URL_, { accessToken: ACCESS_TOKEN });
    const page = await owner.invoices({ projectId: PROJECT_ID, first: 10 });
    assert.deepEqual(page.nodes, []);
    assert.equal(page.pageInfo.hasNextPage, false);
  });
});
