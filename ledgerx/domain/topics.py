"""Every event-bus topic, and the events published on it: the one place a topic name is spelled.

Topics are relative to the bus prefix (`EventBus.channel` adds `<prefix>ev:`). Publishers and
subscribers call the functions here instead of formatting names, so a topic cannot be published
under one spelling and listened to under another. Publishing happens after the change committed
(an event never announces something rolled back); delivery is at-most-once (see events.py).

topic                        events                                     published by -> heard by
project:<id>:transactions    ledger.transaction_posted                  ledger -> transactionPosted, live metrics
wallet:<id>                  ledger.wallet_updated                      ledger -> walletUpdated
project:<id>:low_balance     ledger.low_balance                         ledger -> integrations
project:<id>:usage           usage.recorded                             usage ingest -> live metrics
project:<id>:billing         billing.run_*, billing.rule_*              billing runner -> integrations
project:<id>:subscription    subscription.*                             payments -> live revenue (pattern)
project:<id>:payments        payment.*                                  payments -> live revenue (pattern)
platform:revenue             payments.payment, .subscription_changed    integrations -> live revenue
project:<id>:members         tenancy.members_changed                    domain/changes.py -> access caches
                                                                        (pattern), live streams, websockets
platform:plan_changes        payments.plan_changed                      domain/changes.py -> rate-limit, quota
                                                                        and plan caches of every instance
auth:sessions_revoked        auth.session_revoked                       auth sessions -> the session's websockets

Live feeds only need to know *that* something changed (they re-read their snapshot); two optional
fields are read when present: `at` (when the change committed: ISO 8601 or epoch seconds; how lag
is measured) and `count` (how many domain events one message stands for).
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

Event = dict[str, Any]
# A topic and the event to publish on it (`bus.publish(*message)`, `bus.publish_many([...])`).
Message = tuple[str, Event]

# -- ledger -----------------------------------------------------------------------------------------


def project_transactions(project_id: uuid.UUID) -> str:
    return f"project:{project_id}:transactions"


def transaction_posted(project_id: uuid.UUID, transaction: Event) -> Message:
    """After a transaction committed (`transaction`: its JSON, ledger.codec)."""
    return project_transactions(project_id), {"type": "ledger.transaction_posted", "transaction": transaction}


def wallet(wallet_id: uuid.UUID) -> str:
    return f"wallet:{wallet_id}"


def wallet_updated(wallet_id: uuid.UUID, wallet_json: Event, transaction: Event, *, low_balance: bool) -> Message:
    """After a transaction that changed the wallet committed. `seq` is the wallet's entry in it
    (its place in the wallet's chain): `walletUpdated` orders by it and sees a lost message as a
    hole (domain/ledger/wallet_feed.py)."""
    me = str(wallet_id)
    seq = next((e.get("seq") for e in transaction.get("entries") or () if e.get("walletId") == me), None)
    return wallet(wallet_id), {
        "type": "ledger.wallet_updated",
        "wallet": wallet_json,
        "transaction": transaction,
        "lowBalance": low_balance,
        "seq": seq,
    }


def project_low_balance(project_id: uuid.UUID) -> str:
    return f"project:{project_id}:low_balance"


def low_balance(project_id: uuid.UUID, wallet_json: Event, transaction_id: uuid.UUID) -> Message:
    """After a transaction left the wallet below its low-balance threshold."""
    return project_low_balance(project_id), {
        "type": "ledger.low_balance",
        "wallet": wallet_json,
        "transactionId": str(transaction_id),
    }


# -- usage and billing ------------------------------------------------------------------------------


def project_usage(project_id: uuid.UUID) -> str:
    return f"project:{project_id}:usage"


def usage_recorded(
    project_id: uuid.UUID, *, count: int = 1, metric_keys: tuple[str, ...] = (), at: dt.datetime | None = None
) -> Message:
    """After a usage batch commits: `count` accepted events (duplicates excluded)."""
    event: Event = {"type": "usage.recorded", "projectId": str(project_id), "count": count, "at": _now_iso(at)}
    if metric_keys:
        event["metricKeys"] = list(metric_keys)
    return project_usage(project_id), event


def project_billing(project_id: uuid.UUID) -> str:
    """Billing runs and rules (the billing runner builds the events)."""
    return f"project:{project_id}:billing"


# -- payments (the payments domain builds the events of its own topics) -----------------------------


def project_subscription(project_id: uuid.UUID) -> str:
    return f"project:{project_id}:subscription"


# Every project's subscription events, then payment events (platform revenue listens to all).
SUBSCRIPTION_PATTERN = "project:*:subscription"


def project_payments(project_id: uuid.UUID) -> str:
    return f"project:{project_id}:payments"


PAYMENTS_PATTERN = "project:*:payments"
PLATFORM_REVENUE = "platform:revenue"


def payment_event(
    project_id: uuid.UUID,
    *,
    payment_id: uuid.UUID,
    amount: int,
    currency: str,
    status: str = "SUCCEEDED",
    at: dt.datetime | None = None,
) -> Message:
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
) -> Message:
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


# What a project's plan allows (rate limit, quotas) may have changed: one topic for all projects,
# heard by every instance's plan-derived caches (domain/changes.py).
PLAN_CHANGES = "platform:plan_changes"


def plan_changed(project_id: uuid.UUID | None, *, change: str) -> Message:
    """After a change of a project's effective plan committed; `project_id` None: every project
    (a plan of the catalog itself changed)."""
    return PLAN_CHANGES, {
        "type": "payments.plan_changed",
        "projectId": str(project_id) if project_id is not None else None,
        "change": change,
    }


# -- tenancy and auth -------------------------------------------------------------------------------


def project_members(project_id: uuid.UUID) -> str:
    return f"project:{project_id}:members"


# Every project's membership/access announcements (the access caches of all instances follow it).
MEMBERS_PATTERN = "project:*:members"


def members_changed(
    project_id: uuid.UUID, *, user_id: uuid.UUID | None = None, change: str = "member.remove"
) -> Message:
    """After a change that can narrow access to the project committed (a member removed, a role
    changed, ownership transferred, an API key revoked, the project suspended): live subscribers
    of the project re-check access and every instance forgets the access it cached."""
    event: Event = {"type": "tenancy.members_changed", "projectId": str(project_id), "change": change}
    if user_id is not None:
        event["userId"] = str(user_id)
    return project_members(project_id), event


SESSIONS_REVOKED = "auth:sessions_revoked"


def session_revoked(session_id: str) -> Message:
    """After a session (refresh-token family) was revoked: its websockets close at once."""
    return SESSIONS_REVOKED, {"type": "auth.session_revoked", "sessionId": session_id}


def project_topics(project_id: uuid.UUID) -> tuple[str, ...]:
    """What a project's live metrics listen to (members: access re-checks, not data)."""
    return (project_transactions(project_id), project_usage(project_id), project_members(project_id))


# -- reading events ---------------------------------------------------------------------------------


def _now_iso(at: dt.datetime | None) -> str:
    return (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat()


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


def project_of(event: Event) -> uuid.UUID | None:
    """The project an announcement names (`projectId`), None when it names none or no valid one."""
    raw = event.get("projectId")
    if not isinstance(raw, str):
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None
