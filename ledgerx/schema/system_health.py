"""GraphQL types of `systemHealth` (definitions and thresholds: domain/health.py)."""

from __future__ import annotations

import datetime as dt
import enum

import strawberry

from ledgerx.domain import health


@strawberry.enum(description="The state of a part of the system.")
class HealthStatus(enum.Enum):
    OK = "OK"
    DEGRADED = "DEGRADED"
    DOWN = "DOWN"
    UNKNOWN = "UNKNOWN"
    NOT_CONFIGURED = "NOT_CONFIGURED"


@strawberry.type(description="A service LedgerX depends on (database, read replica, Redis).")
class DependencyHealth:
    status: HealthStatus
    latency_ms: float | None = strawberry.field(description="Round trip of a trivial request, in milliseconds.")
    detail: str | None

    @classmethod
    def of(cls, d: health.Dependency) -> DependencyHealth:
        return cls(status=HealthStatus(d.status.value), latency_ms=d.latency_ms, detail=d.detail)


@strawberry.type(description="Work waiting in a queue table.")
class QueueHealth:
    status: HealthStatus
    depth: int = strawberry.field(description="Items waiting to be processed (counted up to 100,000).")
    oldest_age_seconds: float | None = strawberry.field(description="Age of the oldest waiting item; null when none.")
    dead: int = strawberry.field(description="Items given up on (no more retries; they need an operator).")
    detail: str | None

    @classmethod
    def of(cls, q: health.Queue) -> QueueHealth:
        return cls(
            status=HealthStatus(q.status.value),
            depth=q.depth,
            oldest_age_seconds=q.oldest_age_seconds,
            dead=q.dead,
            detail=q.detail,
        )


@strawberry.type(description="The billing scheduler: which instance holds its lease and how late due rules are.")
class SchedulerHealth:
    status: HealthStatus
    enabled_here: bool = strawberry.field(description="Whether this instance runs the scheduler loop.")
    leader: str | None = strawberry.field(description="The lease holder (host:pid:random); null when none holds it.")
    leader_is_this_instance: bool
    lease_epoch: int | None = strawberry.field(description="Grows each time the lease changes hands.")
    lease_renewed_at: dt.datetime | None
    lease_expires_at: dt.datetime | None
    due_rules: int = strawberry.field(description="Active rules due now and not yet run (counted up to 100,000).")
    lag_seconds: float = strawberry.field(description="How long the oldest due rule has waited (0 when none is due).")
    detail: str | None

    @classmethod
    def of(cls, s: health.SchedulerHealth) -> SchedulerHealth:
        return cls(
            status=HealthStatus(s.status.value),
            enabled_here=s.enabled_here,
            leader=s.leader,
            leader_is_this_instance=s.leader_is_this_instance,
            lease_epoch=s.lease_epoch,
            lease_renewed_at=s.lease_renewed_at,
            lease_expires_at=s.lease_expires_at,
            due_rules=s.due_rules,
            lag_seconds=s.lag_seconds,
            detail=s.detail,
        )


@strawberry.type(
    description="The state of the system as seen from this instance (platform admins). `status` is DOWN when the"
    " database is down, DEGRADED when any part is not OK (NOT_CONFIGURED parts aside), else OK."
)
class SystemHealth:
    status: HealthStatus
    checked_at: dt.datetime
    version: str
    database: DependencyHealth
    replica: DependencyHealth
    redis: DependencyHealth
    scheduler: SchedulerHealth
    webhook_inbox: QueueHealth = strawberry.field(description="Stripe webhook events received and not yet processed.")
    outbound_deliveries: QueueHealth = strawberry.field(description="Outbound webhook deliveries not yet made.")
    mail_outbox: QueueHealth = strawberry.field(description="Mail written to the outbox and not yet sent.")

    @classmethod
    def of(cls, h: health.SystemHealth) -> SystemHealth:
        return cls(
            status=HealthStatus(h.status.value),
            checked_at=h.checked_at,
            version=h.version,
            database=DependencyHealth.of(h.database),
            replica=DependencyHealth.of(h.replica),
            redis=DependencyHealth.of(h.redis),
            scheduler=SchedulerHealth.of(h.scheduler),
            webhook_inbox=QueueHealth.of(h.webhook_inbox),
            outbound_deliveries=QueueHealth.of(h.outbound_deliveries),
            mail_outbox=QueueHealth.of(h.mail_outbox),
        )
