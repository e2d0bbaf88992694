"""The event-bus topics live analytics listens to, and the payloads it understands.

Topics are relative to the bus prefix (`services.events.publish(topic, event)`), like the ledger's
`project:<uuid>:transactions`. Live feeds only need to know *that* something changed (they re-read
their snapshot, at most once per interval); the payloads are small and optional beyond `type`.
Two optional fields are used when present:

- `at`: when the change was committed (ISO 8601 or epoch seconds); feeds report the oldest
  undelivered change per subscriber (`firstEventAt`), which is how lag is measured;
- `count`: how many domain events one message stands for (a batch of usage events).

Publishers (after commit, never inside the transaction):

    # ledger (already published by ledgerx.domain.ledger.apply.ledger_events)
    await bus.publish(f"project:{project_id}:transactions", {"type": "ledger.transaction_posted", ...})
    # usage: one message per recorded batch
    await bus.publish(*usage_recorded(project_id, count=len(accepted)))
    # tenancy: a member removed, a role changed, ownership transferred, an API key revoked
    await bus.publish(*members_changed(project_id, user_id=user_id, change="member.remove"))
    # payments: a payment succeeded or was refunded; a subscription created/changed/canceled
    await bus.publish(*payment_event(project_id, payment_id=..., amount=..., currency=..., status="SUCCEEDED"))
    await bus.publish(*subscription_changed(project_id, subscription_id=..., status=..., plan_id=...))
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

Event = dict[str, Any]

PLATFORM_REVENUE = "platform:revenue"


def project_transactions(project_id: uuid.UUID) -> str:
    return f"project:{project_id}:transactions"


def project_usage(project_id: uuid.UUID) -> str:
    return f"project:{project_id}:usage"


def project_members(project_id: uuid.UUID) -> str:
    return f"project:{project_id}:members"


# Every project's membership/access announcements (the access caches of all instances follow it).
MEMBERS_PATTERN = "project:*:members"


def project_topics(project_id: uuid.UUID) -> tuple[str, ...]:
    """What a project's live metrics listen to (members: access re-checks, not data)."""
    return (project_transactions(project_id), project_usage(project_id), project_members(project_id))


def _now_iso(at: dt.datetime | None) -> str:
    return (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat()


def usage_recorded(
    project_id: uuid.UUID, *, count: int = 1, metric_keys: tuple[str, ...] = (), at: dt.datetime | None = None
) -> tuple[str, Event]:
    """After a usage batch commits: `count` accepted events (duplicates excluded)."""
    event: Event = {"type": "usage.recorded", "projectId": str(project_id), "count": count, "at": _now_iso(at)}
    if metric_keys:
        event["metricKeys"] = list(metric_keys)
    return project_usage(project_id), event


def members_changed(
    project_id: uuid.UUID, *, user_id: uuid.UUID | None = None, change: str = "member.remove"
) -> tuple[str, Event]:
    """After a membership or API key change commits: live subscribers of the project re-check access."""
    event: Event = {"type": "tenancy.members_changed", "projectId": str(project_id), "change": change}
    if user_id is not None:
        event["userId"] = str(user_id)
    return project_members(project_id), event


def payment_event(
    project_id: uuid.UUID,
    *,
    payment_id: uuid.UUID,
    amount: int,
    currency: str,
    status: str = "SUCCEEDED",
    at: dt.datetime | None = None,
) -> tuple[str, Event]:
    """After a payment is recorded (or refunded) and committed."""
    return PLATFORM_REVENUE, {
        "type": "payments.payment",
        "projectId": str(project_id),
        "paymentId": str(payment_id),
        "amount": amount,
        "currency": currency.upper(),
        "status": status,
        "at": _now_iso(at),
    }


def subscription_changed(
    project_id: uuid.UUID,
    *,
    subscription_id: uuid.UUID,
    status: str,
    plan_id: uuid.UUID | None = None,
    at: dt.datetime | None = None,
) -> tuple[str, Event]:
    """After a subscription is created, changes plan or status, or ends (committed)."""
    event: Event = {
        "type": "payments.subscription_changed",
        "projectId": str(project_id),
        "subscriptionId": str(subscription_id),
        "status": status,
        "at": _now_iso(at),
    }
    if plan_id is not None:
        event["planId"] = str(plan_id)
    return PLATFORM_REVENUE, event


def event_time(event: Event) -> dt.datetime | None:
    """The `at` of an event, if it carries a readable one."""
    raw = event.get("at")
    try:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return dt.datetime.fromtimestamp(raw, dt.UTC)
        if isinstance(raw, str):
            parsed = dt.datetime.fromisoformat(raw)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def event_count(event: Event) -> int:
    raw = event.get("count")
    if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
        return raw
    return 1
