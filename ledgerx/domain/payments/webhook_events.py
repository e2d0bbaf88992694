"""The outbound webhook events of payments, written in the transaction of the change they describe:
`subscription.created` / `.updated` / `.canceled`, `payment.succeeded` / `.refunded` /
`.disputed` and `invoice.created` / `.paid` / `.payment_failed`. `data` is payloads.py's (GraphQL
`PlanSubscription`, `Payment` and `Invoice`).

A subscription's event compares what the API would show before and after the change, inside the
transaction that holds the row's lock: a change that alters nothing visible (a stale or replayed
Stripe event, a second delivery) emits nothing, and concurrent handlers of one subscription each
see the other's committed state, so each visible change is announced once.

An invoice's events are decided by its writers from what their own statements did (the insert that
made the row, the status change to PAID, a Stripe attempt higher than any recorded), under the
invoice row's lock; their data is the invoice as the transaction leaves it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ledgerx.db.models import Invoice, InvoiceLine, Payment, Plan, PlanSubscription
from ledgerx.domain.payments import payloads, records
from ledgerx.domain.payments.records import (
    InvoiceLineRecord,
    InvoiceRecord,
    PaymentRecord,
    PlanRecord,
    SubscriptionRecord,
)
from ledgerx.domain.webhooks import outbox

Data = dict[str, Any]


async def subscription_data(s: AsyncSession, sub: PlanSubscription, now: dt.datetime) -> Data:
    """The subscription as GraphQL shows it at `now` (with its plans, read in this transaction)."""
    plans: dict[Any, PlanRecord] = {}
    for plan_id in {sub.plan_id, sub.pending_plan_id} - {None}:
        row = await s.get(Plan, plan_id)
        if row is not None:
            plans[row.id] = records.of(PlanRecord, row)
    return payloads.subscription(records.of(SubscriptionRecord, sub), plans, now)


async def subscription_changed(s: AsyncSession, sub: PlanSubscription, before: Data | None, now: dt.datetime) -> None:
    """Announce the subscription's change in this transaction: `before` is its data when the
    transaction found it (None: this transaction created the row). Created, canceled (it ended
    just now), updated (anything else the API shows changed), or nothing."""
    after = await subscription_data(s, sub, now)
    if before is None:
        kind = "subscription.created"
    elif after == before:
        return
    elif after["status"] == "CANCELED" and before["status"] != "CANCELED":
        kind = "subscription.canceled"
    else:
        kind = "subscription.updated"
    await outbox.emit(s, sub.project_id, kind, after)


async def payment(s: AsyncSession, kind: str, row: Payment) -> None:
    """Announce a payment event (`payment.succeeded`, `.refunded`, `.disputed`) with the payment as
    it is now in this transaction (flushed by the caller)."""
    await outbox.emit(s, row.project_id, kind, payloads.payment(records.of(PaymentRecord, row)))


async def invoice_data(s: AsyncSession, row: Invoice) -> Data:
    """The invoice as GraphQL will show it once this transaction commits: flushed and read back, so
    that server-set columns (createdAt) and the values as stored are what the event says."""
    await s.flush()
    await s.refresh(row)
    lines = await s.scalars(select(InvoiceLine).where(InvoiceLine.invoice_id == row.id).order_by(InvoiceLine.position))
    return payloads.invoice(records.of(InvoiceRecord, row), [records.of(InvoiceLineRecord, li) for li in lines])


async def invoice(s: AsyncSession, row: Invoice, kinds: Sequence[str]) -> None:
    """Announce `kinds` (`invoice.created`, `.paid`, `.payment_failed`, in this order) for the
    invoice, each with its data as this transaction leaves it (one read, one statement)."""
    if not kinds:
        return
    data = await invoice_data(s, row)
    batch = outbox.Batch()
    for kind in kinds:
        batch.add(row.project_id, kind, data)
    await outbox.emit_many(s, batch)
