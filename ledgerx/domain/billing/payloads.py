"""Billing's records as outbound webhook `data`: the field names of the GraphQL type `BillingRun`,
each value written as the API writes it (domain/scalars.py). `transaction` (an object the API
loads) is left out: its own `transaction.posted` event carries it, and `transactionId` names it.
tests/test_webhook_events.py checks every key against the schema and every value against a query.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from ledgerx import ids
from ledgerx.domain.billing.records import Run
from ledgerx.domain.scalars import bigint_text, datetime_text, decimal_text, optional, public_id


def _ms(a: dt.datetime | None, b: dt.datetime | None) -> int | None:
    return None if a is None or b is None else int((b - a).total_seconds() * 1000)


def run(x: Run) -> dict[str, Any]:
    """GraphQL `BillingRun` (the `billing_run.succeeded` / `billing_run.failed` events)."""
    return {
        "id": x.public_id,
        "ruleId": ids.encode("rule", x.rule_id),
        "walletId": ids.encode("wallet", x.wallet_id),
        "scheduledAt": datetime_text(x.scheduled_at),
        "periodStart": datetime_text(x.period_start),
        "periodEnd": datetime_text(x.period_end),
        "status": x.status,
        "trigger": x.trigger,
        "amount": bigint_text(x.amount),
        "baseAmount": optional(bigint_text, x.base_amount),
        "units": optional(decimal_text, x.units),
        "unitPrice": optional(decimal_text, x.unit_price),
        "remainderBefore": optional(decimal_text, x.remainder_before),
        "remainderAfter": optional(decimal_text, x.remainder_after),
        "idempotencyKey": x.idempotency_key,
        "transactionId": public_id("transaction", x.transaction_id),
        "error": x.error,
        "attempts": x.attempts,
        "nextRetryAt": optional(datetime_text, x.next_retry_at),
        "firstAttemptAt": optional(datetime_text, x.first_attempt_at),
        "lastAttemptAt": optional(datetime_text, x.last_attempt_at),
        "startedAt": datetime_text(x.started_at),
        "finishedAt": datetime_text(x.finished_at),
        "durationMs": _ms(x.started_at, x.finished_at),
        "lagMs": _ms(x.scheduled_at, x.finished_at) if x.trigger == "SCHEDULE" and x.status != "SKIPPED" else None,
    }
