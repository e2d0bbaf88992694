// What the suite needs from its environment: a running LedgerX and credentials for one of its
// projects (tests/test_sdk_typescript.py prepares them; see the README's "Tests" section).
import assert from "node:assert/strict";
import net from "node:net";

function need(name) {
  const value = process.env[name];
  assert.ok(value, `set ${name} (tests/test_sdk_typescript.py prepares a server and passes it)`);
  return value;
}

export const URL_ = need("LEDGERX_URL");
export const API_KEY = need("LEDGERX_API_KEY"); // every scope, for PROJECT_ID
export const PROJECT_ID = need("LEDGERX_PROJECT_ID"); // on a plan with sso (BOOLEAN) and monthly_calls (METERED on api_calls)
export const ACCESS_TOKEN = need("LEDGERX_ACCESS_TOKEN"); // the project's owner
export const THROTTLED_API_KEY = need("LEDGERX_THROTTLED_API_KEY"); // another project, its rate limit a few per second
export const METRIC = process.env.LEDGERX_METRIC ?? "api_calls";

export function unique(tag) {
  return `${tag}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

/**
 * A TCP proxy to the server that, on its first connection, forwards the request, waits for the
 * server's answer to begin, and then closes the client's socket without passing the answer on:
 * the server did the work, the client saw the connection drop. Later connections pass through.
 */
export async function droppingProxy() {
  const target = new URL(URL_);
  let armed = true;
  const stats = { connections: 0, dropped: 0 };
  const sockets = new Set();
  const server = net.createServer((client) => {
    stats.connections++;
    const upstream = net.connect(Number(target.port), target.hostname);
    sockets.add(client).add(upstream);
    client.on("error", () => {});
    upstream.on("error", () => {});
    client.on("close", () => upstream.destroy());
    upstream.on("close", () => client.destroy());
    client.pipe(upstream);
    if (armed) {
      armed = false;
      upstream.once("data", () => {
        stats.dropped++;
        client.destroy();
        upstream.destroy();
      });
    } else {
      upstream.pipe(client);
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    stats,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
