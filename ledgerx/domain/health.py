"""System health (`systemHealth`, platform admins) and the backlog gauges of /metrics.

What an operator asks first when something is slow or stuck: is the database there and how fast,
is Redis there, who drives the billing scheduler and how late it is, how much waits in the Stripe
webhook inbox, the outbound webhook queue and the mail outbox, and for how long.

Cheap by construction, so it can back a dashboard that polls and a Prometheus scrape:

- one round trip reads every backlog (`BACKLOG_SQL`): each count walks a partial index that
  holds only the waiting rows (`ix_webhook_events_due`, `ix_mail_outbox_due`, `ix_billing_rules_due`)
  and stops at `COUNT_CAP` rows, so a huge backlog reads as "at least COUNT_CAP", never as a scan;
- the database and Redis are pinged with a timeout each, concurrently with that read;
- a failed check is reported (status DOWN or UNKNOWN with the error's type), never raised: the
  point of a health report is to describe failures.

Statuses: OK; DEGRADED (works, but something needs attention: a backlog older than
`STALE_AFTER`, a scheduler lag past `SCHEDULER_LAG_LIMIT` or no scheduler lease holder); DOWN (a
dependency does not answer); UNKNOWN (could not be read because the database did not answer);
NOT_CONFIGURED (the feature is off here: no read replica, no SMTP).
The overall status is DOWN when the database is down, DEGRADED when any part is not OK (parts
that are NOT_CONFIGURED do not count), else OK.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import enum
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ledgerx import __version__
from ledgerx.db.engine import Database

if TYPE_CHECKING:
    from ledgerx.db.replica import Replica
    from ledgerx.services import Services

CHECK_TIMEOUT = 2.0  # seconds per dependency check
COUNT_CAP = 100_000  # backlog counts stop here ("at least")
STALE_AFTER = dt.timedelta(minutes=15)  # a waiting webhook event or mail older than this: DEGRADED
SCHEDULER_LAG_LIMIT = dt.timedelta(minutes=1)  # the oldest due rule waiting longer: DEGRADED
REPLICA_LAG_LIMIT = dt.timedelta(seconds=30)  # a read replica further behind: DEGRADED

# One statement: every backlog and the scheduler lease, as of the database's clock. $1: the mail
# sender's attempt limit (rows past it stay unsent for good: "dead"); $2: the scheduler lease name.
BACKLOG_SQL = f"""
SELECT now() AS db_now,
  (SELECT count(*) FROM (SELECT 1 FROM webhook_events WHERE status IN ('PENDING', 'FAILED', 'PROCESSING')
     LIMIT {COUNT_CAP}) x) AS inbox_depth,
  (SELECT min(received_at) FROM webhook_events WHERE status IN ('PENDING', 'FAILED', 'PROCESSING')) AS inbox_oldest,
  (SELECT count(*) FROM (SELECT 1 FROM webhook_events WHERE status = 'DEAD' LIMIT {COUNT_CAP}) x) AS inbox_dead,
  (SELECT count(*) FROM (SELECT 1 FROM mail_outbox WHERE sent_at IS NULL AND attempts < $1 LIMIT {COUNT_CAP}) x)
    AS mail_depth,
  (SELECT min(created_at) FROM mail_outbox WHERE sent_at IS NULL AND attempts < $1) AS mail_oldest,
  (SELECT count(*) FROM (SELECT 1 FROM mail_outbox WHERE sent_at IS NULL AND attempts >= $1 LIMIT {COUNT_CAP}) x)
    AS mail_dead,
  (SELECT count(*) FROM (SELECT 1 FROM webhook_deliveries WHERE status = 'PENDING' LIMIT {COUNT_CAP}) x)
    AS deliveries_depth,
  (SELECT min(next_attempt_at) FROM webhook_deliveries WHERE status = 'PENDING' AND next_attempt_at <= now())
    AS deliveries_oldest_due,
  (SELECT min(due_at) FROM billing_rules WHERE status = 'ACTIVE' AND NOT test_mode) AS rules_next_due,
  (SELECT count(*) FROM (SELECT 1 FROM billing_rules WHERE status = 'ACTIVE' AND NOT test_mode AND due_at <= now()
     LIMIT {COUNT_CAP}) x) AS rules_due,
  l.holder AS lease_holder, l.epoch AS lease_epoch, l.renewed_at AS lease_renewed_at, l.expires_at AS lease_expires_at
FROM (SELECT 1) one LEFT JOIN scheduler_leases l ON l.name = $2
"""  # noqa: S608 (constants only)


class Status(enum.Enum):
    OK = "OK"
    DEGRADED = "DEGRADED"
    DOWN = "DOWN"
    UNKNOWN = "UNKNOWN"
    NOT_CONFIGURED = "NOT_CONFIGURED"


@dataclasses.dataclass(frozen=True, slots=True)
class Dependency:
    status: Status
    latency_ms: float | None = None
    detail: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Queue:
    """Work waiting in a table: `depth` rows to do (capped at COUNT_CAP), the oldest one's age,
    and `dead` rows that will not be retried any more."""

    status: Status
    depth: int = 0
    oldest_age_seconds: float | None = None
    dead: int = 0
    detail: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class SchedulerHealth:
    status: Status
    enabled_here: bool
    leader: str | None = None
    leader_is_this_instance: bool = False
    lease_epoch: int | None = None
    lease_renewed_at: dt.datetime | None = None
    lease_expires_at: dt.datetime | None = None
    due_rules: int = 0
    lag_seconds: float = 0.0
    detail: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Backlogs:
    """One read of BACKLOG_SQL."""

    at: dt.datetime
    inbox_depth: int
    inbox_oldest: dt.datetime | None
    inbox_dead: int
    mail_depth: int
    mail_oldest: dt.datetime | None
    mail_dead: int
    deliveries_depth: int
    deliveries_oldest_due: dt.datetime | None
    rules_due: int
    rules_next_due: dt.datetime | None
    lease_holder: str | None
    lease_epoch: int | None
    lease_renewed_at: dt.datetime | None
    lease_expires_at: dt.datetime | None

    def age(self, oldest: dt.datetime | None) -> float | None:
        return None if oldest is None else max((self.at - oldest).total_seconds(), 0.0)

    @property
    def scheduler_lag(self) -> float:
        """How long the oldest due rule has been waiting (0 when none is due)."""
        return (self.age(self.rules_next_due) or 0.0) if self.rules_due else 0.0

    @property
    def lease_live(self) -> bool:
        return self.lease_expires_at is not None and self.lease_expires_at > self.at


@dataclasses.dataclass(frozen=True, slots=True)
class SystemHealth:
    status: Status
    checked_at: dt.datetime
    version: str
    database: Dependency
    replica: Dependency
    redis: Dependency
    scheduler: SchedulerHealth
    webhook_inbox: Queue
    outbound_deliveries: Queue
    mail_outbox: Queue


async def read_backlogs(db: Database, *, mail_max_attempts: int, lease_name: str) -> Backlogs:
    # System scope: mail_outbox and billing_rules are tenant tables; this reads across projects.
    async with db.raw(system=True) as conn:
        r = await conn.fetchrow(BACKLOG_SQL, mail_max_attempts, lease_name)
    assert r is not None  # FROM (SELECT 1): always one row
    return Backlogs(
        at=r["db_now"],
        inbox_depth=int(r["inbox_depth"]),
        inbox_oldest=r["inbox_oldest"],
        inbox_dead=int(r["inbox_dead"]),
        mail_depth=int(r["mail_depth"]),
        mail_oldest=r["mail_oldest"],
        mail_dead=int(r["mail_dead"]),
        deliveries_depth=int(r["deliveries_depth"]),
        deliveries_oldest_due=r["deliveries_oldest_due"],
        rules_due=int(r["rules_due"]),
        rules_next_due=r["rules_next_due"],
        lease_holder=r["lease_holder"],
        lease_epoch=r["lease_epoch"],
        lease_renewed_at=r["lease_renewed_at"],
        lease_expires_at=r["lease_expires_at"],
    )


async def _timed(check: Callable[[], Awaitable[Any]]) -> Dependency:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), timeout=CHECK_TIMEOUT)
    except TimeoutError:
        return Dependency(Status.DOWN, detail=f"no answer within {CHECK_TIMEOUT:g} s")
    except Exception as exc:  # a health report describes failures rather than raising them
        return Dependency(Status.DOWN, detail=f"error: {type(exc).__name__}")
    return Dependency(Status.OK, latency_ms=round((time.perf_counter() - started) * 1000, 3))


async def _replica(replica: Replica | None) -> Dependency:
    """The replica's ping time and replay lag. Not a standby, or lagging past REPLICA_LAG_LIMIT:
    DEGRADED (reads still work, but may be stale or the primary's load). Unreachable: DOWN, and its
    reads go to the primary meanwhile (db/replica.py)."""
    if replica is None:
        return Dependency(Status.NOT_CONFIGURED, detail="no read replica is configured; every query uses the primary")
    found: list[tuple[bool, float]] = []

    async def check() -> None:
        found.append(await replica.lag())

    timed = await _timed(check)
    if timed.status is not Status.OK:
        return dataclasses.replace(timed, detail=f"{timed.detail}; its reads go to the primary meanwhile")
    standby, lag = found[0]
    if not standby:
        return dataclasses.replace(timed, status=Status.DEGRADED, detail="DATABASE_REPLICA_URL is not a standby")
    detail = f"replay lag {lag:.1f} s"
    if lag > REPLICA_LAG_LIMIT.total_seconds():
        return dataclasses.replace(timed, status=Status.DEGRADED, detail=detail)
    return dataclasses.replace(timed, detail=detail)


def _queue(depth: int, age: float | None, dead: int, *, configured: bool = True, what: str) -> Queue:
    if not configured:
        status = Status.NOT_CONFIGURED
        detail: str | None = f"{what} is not configured here; waiting rows stay until it is"
    elif age is not None and age > STALE_AFTER.total_seconds():
        status, detail = Status.DEGRADED, f"the oldest waiting item is older than {STALE_AFTER}"
    else:
        status, detail = Status.OK, None
    return Queue(status, depth=depth, oldest_age_seconds=age, dead=dead, detail=detail)


def _scheduler(b: Backlogs, *, enabled_here: bool, holder_here: str) -> SchedulerHealth:
    lag = b.scheduler_lag
    live = b.lease_live
    if not live:
        status, detail = Status.DEGRADED, "no instance holds the scheduler lease: billing rules are not being run"
    elif lag > SCHEDULER_LAG_LIMIT.total_seconds():
        status, detail = Status.DEGRADED, f"due rules have waited longer than {SCHEDULER_LAG_LIMIT}"
    else:
        status, detail = Status.OK, None
    return SchedulerHealth(
        status=status,
        enabled_here=enabled_here,
        leader=b.lease_holder if live else None,
        leader_is_this_instance=live and b.lease_holder == holder_here,
        lease_epoch=b.lease_epoch,
        lease_renewed_at=b.lease_renewed_at,
        lease_expires_at=b.lease_expires_at,
        due_rules=b.rules_due,
        lag_seconds=lag,
        detail=detail,
    )


def overall(*parts: Status, database: Status) -> Status:
    if database is Status.DOWN:
        return Status.DOWN
    if any(p not in (Status.OK, Status.NOT_CONFIGURED) for p in parts):
        return Status.DEGRADED
    return Status.OK


async def system_health(services: Services) -> SystemHealth:
    settings = services.settings
    lease = services.scheduler.lease

    async def backlogs() -> Backlogs | BaseException:
        try:
            return await asyncio.wait_for(
                read_backlogs(services.db, mail_max_attempts=settings.mail_max_attempts, lease_name=lease.name),
                timeout=CHECK_TIMEOUT,
            )
        except Exception as exc:
            return exc

    database, redis, read, replica = await asyncio.gather(
        _timed(services.db.ping), _timed(services.redis.ping), backlogs(), _replica(services.replica)
    )
    if isinstance(read, Backlogs):
        scheduler = _scheduler(read, enabled_here=settings.scheduler_enabled, holder_here=lease.holder)
        inbox = _queue(read.inbox_depth, read.age(read.inbox_oldest), read.inbox_dead, what="the webhook inbox")
        mail = _queue(
            read.mail_depth,
            read.age(read.mail_oldest),
            read.mail_dead,
            configured=settings.smtp_url is not None,
            what="SMTP_URL",
        )
        # Outbound deliveries: how many wait (retries included) and how late the most overdue
        # one is. Given-up deliveries are not counted (no index holds them; an endpoint's log
        # lists them): `dead` stays 0.
        outbound = _queue(
            read.deliveries_depth, read.age(read.deliveries_oldest_due), 0, what="outbound webhook deliveries"
        )
        checked_at = read.at
    else:
        why = "could not be read: " + ("timeout" if isinstance(read, TimeoutError) else type(read).__name__)
        scheduler = SchedulerHealth(Status.UNKNOWN, enabled_here=settings.scheduler_enabled, detail=why)
        inbox = Queue(Status.UNKNOWN, detail=why)
        mail = Queue(Status.UNKNOWN, detail=why)
        outbound = Queue(Status.UNKNOWN, detail=why)
        checked_at = dt.datetime.now(dt.UTC)
    return SystemHealth(
        status=overall(
            redis.status,
            replica.status,
            scheduler.status,
            inbox.status,
            outbound.status,
            mail.status,
            database=database.status,
        ),
        checked_at=checked_at,
        version=__version__,
        database=database,
        replica=replica,
        redis=redis,
        scheduler=scheduler,
        webhook_inbox=inbox,
        outbound_deliveries=outbound,
        mail_outbox=mail,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class PoolStats:
    """A connection pool's state: its maximum, open connections, those lent out, and tasks waiting."""

    name: str
    size: int
    open: int
    in_use: int
    waiting: int


def _waiters(queue: object) -> int:
    # Both pools park waiting tasks on an asyncio queue; neither exposes their number. Read it
    # defensively (0 if a library version moves it): a gauge must never break a scrape.
    getters = getattr(queue, "_getters", None)
    try:
        return sum(1 for f in getters or () if not f.done())
    except Exception:
        return 0


def pool_stats(db: Database) -> list[PoolStats]:
    """The app's two pools, from memory (no query): `orm` (SQLAlchemy's, for `transaction()`) and
    `raw` (asyncpg's, for `raw()` and the ledger), which exists once first used."""
    out: list[PoolStats] = []
    pool: Any = db.engine.pool
    # contextlib.suppress: a pool class without QueuePool's counters (NullPool in some tools).
    with contextlib.suppress(Exception):
        size = int(pool.size()) + int(getattr(pool, "_max_overflow", 0))
        in_use = int(pool.checkedout())
        waiting = _waiters(getattr(getattr(pool, "_pool", None), "_queue", None))  # its asyncio.Queue
        out.append(PoolStats("orm", size, in_use + int(pool.checkedin()), in_use, waiting))
    raw: Any = getattr(db, "_pool", None)  # created lazily by Database.pool(); None until then
    if raw is None:
        out.append(PoolStats("raw", int(getattr(db, "_pool_size", 0)), 0, 0, 0))
    else:
        opened = int(raw.get_size())
        out.append(
            PoolStats("raw", int(raw.get_max_size()), opened, opened - int(raw.get_idle_size()), _waiters(raw._queue))
        )
    return out
