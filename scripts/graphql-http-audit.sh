#!/usr/bin/env bash
# Run the GraphQL-over-HTTP conformance audits of the npm package `graphql-http` (serverAudits)
# against a running LedgerX:  scripts/graphql-http-audit.sh [URL]   (default http://127.0.0.1:8000/graphql)
#
# The package is installed on first use into a cache outside the repository
# (GRAPHQL_HTTP_AUDIT_CACHE, default ~/.cache/ledgerx/graphql-http-<version>).
# Prints one line per audit that is not ok and a closing "N ok, N warn, N error" line; exits 1
# when any audit warns or errors, 3 when node or npm is missing.
set -euo pipefail

VERSION=1.23.1
URL=${1:-http://127.0.0.1:8000/graphql}
CACHE=${GRAPHQL_HTTP_AUDIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ledgerx/graphql-http-$VERSION}
HERE=$(cd "$(dirname "$0")" && pwd)

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "graphql-http-audit: $tool is required (e.g. apt-get install nodejs npm)" >&2
    exit 3
  fi
done

if [ ! -f "$CACHE/node_modules/graphql-http/package.json" ]; then
  # Install beside the final place and move it there, so concurrent runs never see half a package.
  mkdir -p "$(dirname "$CACHE")"
  tmp=$(mktemp -d "$CACHE.tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  npm install --prefix "$tmp" --no-audit --no-fund --no-save --silent "graphql-http@$VERSION" >&2
  mv -T "$tmp" "$CACHE" 2>/dev/null || true  # another run may have won the race: theirs is as good
fi

exec node "$HERE/graphql-http-audit.mjs" "$URL" "$CACHE/node_modules/graphql-http"
