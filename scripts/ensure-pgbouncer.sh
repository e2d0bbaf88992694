#!/usr/bin/env bash
# Make sure Debian's `pgbouncer` is present for tests/test_pgbouncer.py (LedgerX behind PgBouncer in
# transaction pooling mode). Installs it with apt-get when running as root and apt works; otherwise
# says why and exits 0 — the test then skips with that reason (it never passes without PgBouncer).
# The test never uses Debian's system service (it starts its own process on a free port), so the
# install runs with a policy-rc.d that keeps the package from starting it.
set -uo pipefail

found() {
  command -v pgbouncer 2>/dev/null || { [ -x /usr/sbin/pgbouncer ] && echo /usr/sbin/pgbouncer; }
}

if path="$(found)"; then
  echo "pgbouncer: $path ($("$path" --version 2>/dev/null | head -n1))"
  exit 0
fi
if [ "$(id -u)" != "0" ]; then
  echo "pgbouncer is missing and this is not root: the PgBouncer test will be skipped (apt-get install pgbouncer)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "pgbouncer is missing and apt-get is not available: the PgBouncer test will be skipped"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show pgbouncer >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1 || true
fi
# policy-rc.d 101: the package's postinst must not start the system service (nothing needs it,
# and it would hold port 6432).
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
fi
if apt-get install -y -qq --no-install-recommends pgbouncer >/dev/null 2>&1 && path="$(found)"; then
  echo "pgbouncer installed: $path ($("$path" --version 2>/dev/null | head -n1))"
else
  echo "could not install pgbouncer with apt-get: the PgBouncer test will be skipped"
fi
if [ "$made_policy" = 1 ]; then
  rm -f "$policy"
fi
exit 0
