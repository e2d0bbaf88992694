"""A lease row in PostgreSQL: which instance drives a background loop.

One row per loop name: holder, expiry, last renewal and an `epoch` that grows each time the lease
changes hands (a fencing token). The holder renews before expiry; anyone may take the lease once
it has expired (a holder that died or hung). Taking and renewing are one atomic upsert, so two
instances can never both believe they took it at the same epoch.

The lease decides who does the work, to keep instances from contending for it; it is not what
makes billing correct. Even two drivers at once (clock skew, a paused process that wakes after its
lease expired) charge each period once: rules are claimed with row locks and each run is unique
per rule and period.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import secrets
import socket
from collections.abc import Callable

from sqlalchemy import text

from ledgerx.db.engine import Database

Clock = Callable[[], dt.datetime]

ACQUIRE = text(
    """
INSERT INTO scheduler_leases AS l (name, holder, epoch, acquired_at, renewed_at, expires_at)
VALUES (:name, :holder, 1, :now, :now, :expires)
ON CONFLICT (name) DO UPDATE SET
  holder = excluded.holder,
  epoch = CASE WHEN l.holder = excluded.holder AND l.expires_at > excluded.renewed_at THEN l.epoch ELSE l.epoch + 1 END,
  acquired_at = CASE WHEN l.holder = excluded.holder AND l.expires_at > excluded.renewed_at
                     THEN l.acquired_at ELSE excluded.acquired_at END,
  renewed_at = excluded.renewed_at,
  expires_at = excluded.expires_at
WHERE l.holder = excluded.holder OR l.expires_at <= excluded.renewed_at
RETURNING epoch
"""
)
RELEASE = text(
    "UPDATE scheduler_leases SET expires_at = :now, renewed_at = :now WHERE name = :name AND holder = :holder"
    " AND expires_at > :now"
)
CURRENT = text("SELECT holder, epoch, acquired_at, renewed_at, expires_at FROM scheduler_leases WHERE name = :name")


def new_holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclasses.dataclass(frozen=True, slots=True)
class LeaseState:
    holder: str
    epoch: int
    acquired_at: dt.datetime
    renewed_at: dt.datetime
    expires_at: dt.datetime


class Lease:
    def __init__(self, db: Database, name: str, *, holder: str | None = None, ttl: float = 15.0, clock: Clock) -> None:
        self.db = db
        self.name = name
        self.holder = holder or new_holder_id()
        self.ttl = dt.timedelta(seconds=ttl)
        self.clock = clock
        self.epoch: int | None = None
        self.expires_at: dt.datetime | None = None
        self.renewed_at: dt.datetime | None = None

    def held(self) -> bool:
        """Whether this instance holds the lease now (by its own clock)."""
        return self.expires_at is not None and self.clock() < self.expires_at

    def due_for_renewal(self) -> bool:
        if self.expires_at is None or self.renewed_at is None:
            return True
        return self.clock() >= self.renewed_at + self.ttl / 3

    async def acquire(self) -> bool:
        """Take the lease if it is free or expired, or renew it if ours; False when another holds it."""
        now = self.clock()
        async with self.db.transaction() as s:
            epoch = (
                await s.execute(
                    ACQUIRE, {"name": self.name, "holder": self.holder, "now": now, "expires": now + self.ttl}
                )
            ).scalar()
        if epoch is None:
            self.epoch = self.expires_at = self.renewed_at = None
            return False
        self.epoch, self.renewed_at, self.expires_at = int(epoch), now, now + self.ttl
        return True

    async def release(self) -> None:
        """Let another instance take over at once (a clean shutdown)."""
        if self.expires_at is None:
            return
        async with self.db.transaction() as s:
            await s.execute(RELEASE, {"name": self.name, "holder": self.holder, "now": self.clock()})
        self.epoch = self.expires_at = self.renewed_at = None

    async def current(self) -> LeaseState | None:
        async with self.db.transaction() as s:
            row = (await s.execute(CURRENT, {"name": self.name})).first()
        if row is None:
            return None
        return LeaseState(row.holder, row.epoch, row.acquired_at, row.renewed_at, row.expires_at)
