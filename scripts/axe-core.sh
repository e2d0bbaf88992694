#!/usr/bin/env bash
# Print the path of axe-core's axe.min.js (the npm package `axe-core`, pinned below), installing it
# on first use into a cache outside the repository (AXE_CORE_CACHE, default
# ~/.cache/ledgerx/axe-core-<version>). tests/test_console_a11y.py injects the file into each
# console page; scripts/screenshots.py does not need it.
#   scripts/axe-core.sh            -> /root/.cache/ledgerx/axe-core-4.14.1/node_modules/axe-core/axe.min.js
# Exits 3 when npm is missing, 1 when the install fails.
set -euo pipefail

VERSION=4.14.1
CACHE=${AXE_CORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ledgerx/axe-core-$VERSION}
FILE="$CACHE/node_modules/axe-core/axe.min.js"

if [ ! -f "$FILE" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "axe-core: npm is required to install axe-core@$VERSION (e.g. apt-get install npm)" >&2
    exit 3
  fi
  # Install beside the final place and move it there, so concurrent runs never see half a package.
  mkdir -p "$(dirname "$CACHE")"
  tmp=$(mktemp -d "$CACHE.tmp.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  if ! npm install --prefix "$tmp" --no-audit --no-fund --no-save --silent "axe-core@$VERSION" >&2; then
    echo "axe-core: npm install axe-core@$VERSION failed" >&2
    exit 1
  fi
  mv -T "$tmp" "$CACHE" 2>/dev/null || true  # another run may have won the race: theirs is as good
fi

echo "$FILE"
