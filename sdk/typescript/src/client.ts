import { Operations } from "./generated/operations.js";
import type { ClientOptions } from "./transport.js";
import { Usage } from "./usage.js";

/**
 * A LedgerX client.
 *
 * ```ts
 * const lx = new LedgerX("https://ledgerx.example.com", { apiKey: "lx_…" });
 * const tx = await lx.debitWallet({ walletId: "wal_…", amount: 100 });
 * ```
 *
 * Authenticate with a project's API key or a user's access token (both are sent as
 * `Authorization: Bearer …`, and in `connection_init` for subscriptions). Every method is one
 * operation of sdk/operations (typed by graphql-codegen); `usage.ingest` posts usage events to
 * `/v1/usage`; `request` runs a typed document of your own. `close()` ends open subscriptions.
 */
export class LedgerX extends Operations {
  readonly usage: Usage;

  constructor(baseUrl: string, options: ClientOptions = {}) {
    super(baseUrl, options);
    this.usage = new Usage(this);
  }
}
