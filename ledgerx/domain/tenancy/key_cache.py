"""A short-lived, per-instance memory of verified API keys.

A backend checking entitlements or recording usage sends its key on every request, and verifying
it (the key's row, read in a transaction of its own) cost as much as the work the request came for.
So a key verified here is remembered for `ttl` seconds (ACCESS_CACHE_TTL_MS, the members' access
cache's TTL), by its public id and the digest of the secret presented: a wrong secret is never
served from memory, and the secret itself is never kept.

What keeps it safe, exactly as for members' access (access_cache.py):
- Revoking or rotating a key, and suspending its project, announce `access_changed` after commit
  (domain/changes.py), which drops the project's keys here at once on the instance that made the
  change, and on every other instance when the announcement arrives.
- `ttl` bounds what a lost announcement (or a change made in SQL) leaves behind; a secret kept for
  its rotation overlap is remembered no longer than the overlap lasts. `ACCESS_CACHE_TTL_MS=0`
  turns the cache off.
- A verification that raced with a forget is not kept (the epoch read before the lookup).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from collections import OrderedDict

from ledgerx.domain.auth.principal import Principal

_MAX_ENTRIES = 50_000

Digest = tuple[str, bytes]  # (public id, sha256 of the secret presented)


@dataclasses.dataclass(slots=True)
class Verified:
    principal: Principal
    last_used_at: dt.datetime | None  # as last read or written (lastUsedAt's resolution)
    touch_after: float = 0.0  # time.monotonic() from which a lastUsedAt write may be due
    expires: float = 0.0  # time.monotonic()


class VerifiedKeys:
    def __init__(self, ttl: float, *, max_entries: int = _MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[Digest, Verified] = OrderedDict()
        self.epoch = 0

    def get(self, digest: Digest) -> Verified | None:
        hit = self._entries.get(digest)
        if hit is None:
            return None
        if hit.expires < time.monotonic():
            del self._entries[digest]
            return None
        return hit

    def put(self, digest: Digest, entry: Verified, *, loaded_at_epoch: int, valid_for: float | None = None) -> None:
        """Remember a verified key for `ttl` seconds (less when `valid_for` says so), unless a change
        was announced while it was being verified."""
        ttl = self.ttl if valid_for is None else min(self.ttl, valid_for)
        if ttl <= 0 or loaded_at_epoch != self.epoch:
            return
        entry.expires = time.monotonic() + ttl
        self._entries[digest] = entry
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget_project(self, project_id: uuid.UUID) -> None:
        self.epoch += 1
        for digest in [d for d, e in self._entries.items() if e.principal.project_id == project_id]:
            del self._entries[digest]
