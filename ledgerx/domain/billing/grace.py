"""Unpaid runs: when a run that met insufficient funds is retried, and when its rule's grace runs out.

From a rule's first unpaid run, retries follow `BillingPolicy.retry_delays` (after the 1st, 2nd,
3rd attempt ...); `grace_period` later the unpaid runs get a last attempt and, still unpaid, the
rule is paused (GRACE_EXPIRED) with what it owes. A rule's `grace_until` is set exactly while it
has unpaid runs.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.billing.records import Rule, Run, due_of
from ledgerx.domain.billing.runs import event
from ledgerx.domain.billing.service import BillingPolicy


def next_retry(policy: BillingPolicy, attempts: int, now: dt.datetime) -> dt.datetime | None:
    """When a run that met insufficient funds on its `attempts`-th attempt is tried again (None:
    only the last attempt when the grace period ends)."""
    n = attempts - 1
    return now + dt.timedelta(seconds=policy.retry_delays[n]) if n < len(policy.retry_delays) else None


def retry_now(rule: Rule, run: Run, now: dt.datetime, *, force: bool) -> bool:
    """Whether an unpaid run is attempted in a pass at `now`: its retry time came, the grace
    period ended (its last attempt), or `force` (a manual run)."""
    grace_over = rule.grace_until is not None and rule.grace_until <= now
    return force or grace_over or (run.next_retry_at is not None and run.next_retry_at <= now)


def settle(
    policy: BillingPolicy,
    rules: Sequence[Rule],
    unpaid: dict[uuid.UUID, list[Run]],
    new_unpaid: dict[uuid.UUID, list[Run]],
    now: dt.datetime,
) -> tuple[list[Rule], list[tuple[str, dict[str, Any]]], list[audit.Entry]]:
    """After a pass: start or end each rule's grace period, set its next retry and due time (in
    place), pause the rules whose grace ran out. Returns the paused rules, their events and
    their audit entries."""
    paused: list[Rule] = []
    events: list[tuple[str, dict[str, Any]]] = []
    audits: list[audit.Entry] = []
    system = Actor.system()
    for rule in rules:
        still = [x for x in unpaid.get(rule.id, ()) if x.status == "INSUFFICIENT_FUNDS"]
        still += new_unpaid.get(rule.id, [])
        if still:
            if rule.grace_until is None:
                rule.grace_until = now + dt.timedelta(seconds=policy.grace_period)
            retries = [x.next_retry_at for x in still if x.next_retry_at is not None]
            rule.retry_at = min(retries) if retries else None
            if rule.grace_until <= now:
                before = {"status": rule.status}
                rule.status, rule.paused_reason = "PAUSED", "GRACE_EXPIRED"
                paused.append(rule)
                owed = sum(x.amount for x in still)
                events.append(
                    event(
                        "billing.rule_paused",
                        rule,
                        reason="GRACE_EXPIRED",
                        unpaidRuns=[x.public_id for x in still],
                        owed=str(owed),
                    )
                )
                audits.append(
                    audit.Entry(
                        system,
                        "billing_rule.pause",
                        project_id=rule.project_id,
                        target_type="billing_rule",
                        target_id=rule.public_id,
                        before=before,
                        after={"status": "PAUSED", "pausedReason": "GRACE_EXPIRED", "owed": str(owed)},
                    )
                )
        else:
            rule.grace_until, rule.retry_at = None, None
        rule.due_at = due_of(rule)

    return paused, events, audits
