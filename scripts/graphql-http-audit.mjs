// Runs graphql-http's serverAudits against a URL (see graphql-http-audit.sh, which installs the
// package): node graphql-http-audit.mjs URL PACKAGE_DIR
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';

const [url, packageDir] = process.argv.slice(2);
if (!url || !packageDir) {
  console.error('usage: node graphql-http-audit.mjs URL PATH/TO/node_modules/graphql-http');
  process.exit(2);
}
// The audits module itself: it needs neither the `graphql` package nor a server implementation.
const { serverAudits } = await import(pathToFileURL(join(packageDir, 'lib/audits/server.mjs')).href);

const counts = { ok: 0, warn: 0, error: 0 };
for (const audit of serverAudits({ url })) {
  const result = await audit.fn(); // one at a time: the server's rate limits see a steady client
  counts[result.status] += 1;
  if (result.status !== 'ok') {
    const status = result.response ? ` (HTTP ${result.response.status})` : '';
    console.log(`${result.status} ${result.id} ${result.name}: ${result.reason}${status}`);
  }
}
console.log(`${counts.ok} ok, ${counts.warn} warn, ${counts.error} error`);
process.exit(counts.warn || counts.error ? 1 : 0);
