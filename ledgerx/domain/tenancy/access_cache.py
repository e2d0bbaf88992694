"""A short-lived, per-instance memory of members' and API keys' access to projects.

Every project-scoped request needs the caller's access (`load_access`: a database transaction of
its own). A client hammering one project — a backend charging wallets, a dashboard polling — asks
the same question many times a second, and that lookup was a quarter of the server-side cost of a
`debitWallet`. So a signed-in member's access, and an API key's to its project, is remembered for
`ttl` seconds (keyed by the user's or the key's id). Every request path reads and fills it the same
way, through `authorize.Authorizer`: GraphQL, POST /v1/usage and GET /v1/entitlements alike.

What keeps it safe:
- Only positive member and API-key answers are kept. A caller who is refused and a platform admin
  acting on a project they are not a member of are always looked up afresh, so gaining access is
  seen at once.
- Every change that can narrow access (role change, removal, ownership transfer, suspension, an API
  key's revocation or rotation) is announced after commit by the domain function that made it
  (`ProjectChanges.access_changed`, domain/changes.py), which first drops the project's entries
  here: on the instance that made the change it takes effect immediately.
- Other instances follow those announcements (Redis pub/sub, `ProjectChanges.follow`) and drop the
  project's entries as soon as one arrives; `ttl` (default 2 s; `ACCESS_CACHE_TTL_MS=0` turns the cache
  off) bounds what a lost announcement, a Redis outage or a change made outside the API (SQL, an
  operator script) can leave behind. Live streams re-check with `load_access` directly.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict

from ledgerx.domain.tenancy.access import Access

_MAX_ENTRIES = 50_000


class AccessCache:
    def __init__(self, ttl: float, *, max_entries: int = _MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[uuid.UUID, uuid.UUID], tuple[float, Access]] = OrderedDict()
        # Bumped by every forget: an answer loaded across a forget may predate the change and is
        # not kept (`put` with the epoch read before the load).
        self.epoch = 0

    def get(self, holder: uuid.UUID, project_id: uuid.UUID) -> Access | None:
        """The access of a user or an API key (`holder`: its id) to the project, if remembered."""
        if self.ttl <= 0:
            return None
        key = (holder, project_id)
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[0] < time.monotonic():
            del self._entries[key]
            return None
        return hit[1]

    def put(self, holder: uuid.UUID, access: Access, *, loaded_at_epoch: int) -> None:
        """Remember `access` if it is a plain membership or an API key's (see the module notes) and
        no change was announced while it was being loaded."""
        if (
            self.ttl <= 0
            or access.via not in ("member", "api_key")
            or access.is_platform_admin
            or loaded_at_epoch != self.epoch
        ):
            return
        key = (holder, access.project_id)
        self._entries[key] = (time.monotonic() + self.ttl, access)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget_project(self, project_id: uuid.UUID) -> None:
        self.epoch += 1
        for key in [k for k in self._entries if k[1] == project_id]:
            del self._entries[key]

    def clear(self) -> None:
        self.epoch += 1
        self._entries.clear()
