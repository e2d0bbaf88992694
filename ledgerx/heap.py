"""The process heap after startup: build what is built once, then freeze it out of the GC's way.

CPython's full (generation 2) collection walks every tracked object. LedgerX's are ~245K after
its first requests (the ORM's mappers, the GraphQL schema, the imported libraries), and walking
them took 110-190 ms on this project's 2-core machine: each full collection stalled every request
in flight for that long, 13 of them in 7 s under load, which was `me`'s p99 (170 ms against a p50
of 20 ms; bench/graphql_overhead.py). Those objects live as long as the process, so after the
one-time work is done they are moved to the permanent generation (`gc.freeze`) and full
collections walk only what requests create.

Only a serving process does this (`ledgerx serve`, the benchmarks): frozen objects are never
collected, so a process that builds many apps (the test suite) would keep every one of them.
"""

from __future__ import annotations

import gc

from sqlalchemy.orm import configure_mappers


def settle() -> None:
    """Call once startup is done (services and the GraphQL schema built)."""
    configure_mappers()  # otherwise done by the first ORM query: ~20K long-lived objects
    gc.collect()  # what startup left as garbage must not be frozen with the rest
    gc.freeze()
