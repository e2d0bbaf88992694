// Webhook endpoints and verifyWebhook: bodies signed by the standardwebhooks package (a third
// party's verdict on both sides), and real deliveries from the server to a local receiver.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import http from "node:http";
import { after, before, describe, test } from "node:test";

import { LedgerX, WebhookVerificationError, verifyWebhook } from "@ledgerx/client";
import { Webhook } from "standardwebhooks";

import { API_KEY, PROJECT_ID, URL_, unique } from "./env.mjs";

const SECRET = `whsec_${randomBytes(24).toString("base64")}`;

function signed(body, { secret = SECRET, id = "evt_test", at = new Date() } = {}) {
  const signature = new Webhook(secret).sign(id, at, body);
  return { "webhook-id": id, "webhook-timestamp": String(Math.floor(at.getTime() / 1000)), "webhook-signature": signature };
}

describe("verifyWebhook", () => {
  const body = JSON.stringify({ id: "evt_test", type: "transaction.posted", createdAt: "2026-01-01T00:00:00Z", projectId: "prj_x", data: { amount: "5" } });

  test("accepts what standardwebhooks signs, and gives the parsed event", () => {
    const event = verifyWebhook(SECRET, body, signed(body));
    assert.equal(event.type, "transaction.posted");
    assert.deepEqual(event.data, { amount: "5" });
    // Bytes, a fetch Headers object and upper-case names work too.
    const headers = new Headers(signed(body));
    assert.equal(verifyWebhook(SECRET, Buffer.from(body), headers).id, "evt_test");
    const upper = Object.fromEntries(Object.entries(signed(body)).map(([k, v]) => [k.toUpperCase(), v]));
    assert.equal(verifyWebhook(SECRET, body, upper).id, "evt_test");
  });

  test("refuses a changed body, another secret, an old or future timestamp, missing headers", () => {
    const refuses = (fn, field) =>
      assert.throws(fn, (e) => {
        assert.ok(e instanceof WebhookVerificationError);
        assert.equal(e.code, "WEBHOOK_VERIFICATION_FAILED");
        if (field) assert.equal(e.field, field);
        return true;
      });
    const headers = signed(body);
    refuses(() => verifyWebhook(SECRET, body.replace('"5"', '"6"'), headers), "webhook-signature");
    refuses(() => verifyWebhook(`whsec_${randomBytes(24).toString("base64")}`, body, headers), "webhook-signature");
    const old = signed(body, { at: new Date(Date.now() - 10 * 60_000) });
    refuses(() => verifyWebhook(SECRET, body, old), "webhook-timestamp");
    const future = signed(body, { at: new Date(Date.now() + 10 * 60_000) });
    refuses(() => verifyWebhook(SECRET, body, future), "webhook-timestamp");
    assert.equal(verifyWebhook(SECRET, body, old, { toleranceSeconds: 3600 }).id, "evt_test");
    refuses(() => verifyWebhook(SECRET, body, { "webhook-id": "evt_test" }), "webhook-timestamp");
    refuses(() => verifyWebhook("not base64!", body, headers));
  });

  test("during a rotation either signature verifies", () => {
    const other = `whsec_${randomBytes(24).toString("base64")}`;
    const at = new Date();
    const a = signed(body, { at });
    const b = signed(body, { at, secret: other });
    const both = { ...a, "webhook-signature": `${b["webhook-signature"]} ${a["webhook-signature"]}` };
    assert.equal(verifyWebhook(SECRET, body, both).id, "evt_test");
    assert.equal(verifyWebhook(other, body, both).id, "evt_test");
  });
});

describe("webhook endpoints and real deliveries", () => {
  const lx = new LedgerX(URL_, { apiKey: API_KEY });
  const received = [];
  const waiters = [];
  let server;
  let url;

  function next(predicate, timeoutMs = 20_000) {
    const found = received.find(predicate);
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("no delivery arrived")), timeoutMs);
      waiters.push({ predicate, resolve: (d) => (clearTimeout(timer), resolve(d)) });
    });
  }

  before(async () => {
    server = http.createServer((req, res) => {
      const chunks = [];
      req.on("data", (c) => chunks.push(c));
      req.on("end", () => {
        const delivery = { headers: req.headers, body: Buffer.concat(chunks) };
        received.push(delivery);
        for (const w of [...waiters]) {
          if (w.predicate(delivery)) {
            waiters.splice(waiters.indexOf(w), 1);
            w.resolve(delivery);
          }
        }
        res.writeHead(204).end();
      });
    });
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${server.address().port}/hooks`;
  });
  after(async () => {
    await lx.close();
    await new Promise((resolve) => server.close(resolve));
  });

  test("an endpoint receives signed events that verifyWebhook and standardwebhooks both accept", async () => {
    const { endpoint, secret } = await lx.createWebhookEndpoint({
      projectId: PROJECT_ID,
      url,
      events: ["transaction.posted"],
      description: unique("sdk"),
    });
    assert.match(secret, /^whsec_/);
    assert.equal(endpoint.enabled, true);
    assert.deepEqual(endpoint.events, ["transaction.posted"]);
    try {
      const test_ = await lx.sendTestWebhook({ endpointId: endpoint.id });
      assert.equal(test_.eventType, "webhook.test");
      const d1 = await next((d) => d.headers["webhook-id"] === test_.eventId);
      const event = verifyWebhook(secret, d1.body, d1.headers);
      assert.equal(event.type, "webhook.test");
      assert.equal(event.projectId, PROJECT_ID);
      const third = new Webhook(secret).verify(d1.body.toString(), d1.headers);
      assert.deepEqual(third, event);
      // A real event: a debit's transaction.posted.
      const wallet = await lx.createWallet({ projectId: PROJECT_ID, name: unique("hooked") });
      const tx = await lx.creditWallet({ walletId: wallet.id, amount: 42 });
      const d2 = await next((d) => JSON.parse(d.body.toString()).data?.id === tx.id);
      const posted = verifyWebhook(secret, d2.body, d2.headers);
      assert.equal(posted.type, "transaction.posted");
      assert.equal(posted.data.amount, "42");
      assert.throws(() => verifyWebhook(SECRET, d2.body, d2.headers), WebhookVerificationError);
      const deliveries = await lx.webhookDeliveries({ endpointId: endpoint.id, first: 10 });
      assert.ok(deliveries.deliveries.nodes.some((d) => d.eventId === test_.eventId));
      // A rotated secret: the new one verifies what comes next.
      const rotated = await lx.rotateWebhookEndpointSecret({ id: endpoint.id });
      assert.ok(rotated.endpoint.previousSecretExpiresAt);
      const again = await lx.sendTestWebhook({ endpointId: endpoint.id });
      const d3 = await next((d) => d.headers["webhook-id"] === again.eventId);
      assert.equal(verifyWebhook(rotated.secret, d3.body, d3.headers).type, "webhook.test");
      assert.equal(verifyWebhook(secret, d3.body, d3.headers).type, "webhook.test", "the old secret signs for 24 h");
      const updated = await lx.updateWebhookEndpoint({ id: endpoint.id, enabled: false });
      assert.equal(updated.enabled, false);
    } finally {
      assert.equal(await lx.deleteWebhookEndpoint({ id: endpoint.id }), true);
    }
    const gone = await lx.webhookEndpoint({ id: endpoint.id }).catch((e) => e.code);
    assert.ok(gone === null || gone === "NOT_FOUND", String(gone));
  });
});
