"""The event types a webhook endpoint can subscribe to (the names DESIGN.md fixes), and `*`."""

from __future__ import annotations

from collections.abc import Iterable

from ledgerx.domain.errors import BadInput

ALL = "*"
TEST = "webhook.test"

EVENT_TYPES: tuple[str, ...] = (
    "transaction.posted",
    "wallet.low_balance",
    "credit_grant.expired",
    "usage.quota_exceeded",
    "billing_run.succeeded",
    "billing_run.failed",
    "invoice.created",
    "invoice.paid",
    "invoice.payment_failed",
    "subscription.created",
    "subscription.updated",
    "subscription.canceled",
    "payment.succeeded",
    "payment.refunded",
    "payment.disputed",
    TEST,
)
_KNOWN = frozenset((*EVENT_TYPES, ALL))


def validate(names: Iterable[str]) -> list[str]:
    """The subscribed types, deduplicated and sorted; BAD_USER_INPUT on `events` for an unknown
    type (`unknown` lists them) or for none at all."""
    given = [n.strip() for n in names]
    unknown = sorted({n for n in given if n not in _KNOWN})
    if unknown:
        raise BadInput(
            f"unknown event type {', '.join(unknown)}; known types: {', '.join((ALL, *EVENT_TYPES))}",
            field="events",
            unknown=unknown,
        )
    if not given:
        raise BadInput('an endpoint needs at least one event type (["*"] for all)', field="events")
    return sorted(set(given))


def check_type(event_type: str) -> str:
    """An event type a domain emits must be one of the catalog's (a typo would send nothing)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}")
    return event_type
