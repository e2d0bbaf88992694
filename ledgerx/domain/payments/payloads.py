"""Payments' records as outbound webhook `data`: the field names of the GraphQL types `Plan`,
`PlanSubscription` (GraphQL's name for a project's subscription: `Subscription` is the root
subscription type), `Payment` and `Invoice` (with its `InvoiceLine`s), each value written as the
API writes it (domain/scalars.py); each mirrors the `of` of its type in schema/payments.py.
tests/test_webhook_events.py checks every key against the schema and every value against a query.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from ledgerx import ids
from ledgerx.domain.payments import subscriptions
from ledgerx.domain.payments.records import (
    InvoiceLineRecord,
    InvoiceRecord,
    PaymentRecord,
    PlanRecord,
    SubscriptionRecord,
)
from ledgerx.domain.scalars import bigint_text, datetime_text, optional, public_id


def money(amount: int, currency: str) -> dict[str, Any]:
    """GraphQL `Money`."""
    return {"amount": bigint_text(amount), "currency": currency}


def plan(p: PlanRecord) -> dict[str, Any]:
    """GraphQL `Plan`."""
    limit = p.rate_limit
    return {
        "id": ids.encode("plan", p.id),
        "name": p.name,
        "tier": p.tier,
        "interval": p.interval,
        "price": money(p.price_amount, p.currency),
        "includedCredits": bigint_text(p.included_credits),
        "rateLimit": {"burst": int(limit["burst"]), "perSecond": float(limit["perSecond"])} if limit else None,
        "monthlyQuotas": [
            {"metric": k, "limit": bigint_text(int(v))} for k, v in sorted((p.monthly_quotas or {}).items())
        ],
        "features": list(p.features or []),
        "trialDays": p.trial_days,
        "rolloverCredits": p.rollover_credits,
        "archived": p.archived_at is not None,
        "archivedAt": optional(datetime_text, p.archived_at),
        "stripePriceId": p.stripe_price_id,
        "createdAt": datetime_text(p.created_at),
        "updatedAt": datetime_text(p.updated_at),
    }


def subscription(sub: SubscriptionRecord, plans: Mapping[uuid.UUID, PlanRecord], now: dt.datetime) -> dict[str, Any]:
    """GraphQL `PlanSubscription` (the `subscription.*` events), its plans included, as of `now`."""
    pending = plans.get(sub.pending_plan_id) if sub.pending_plan_id else None
    return {
        "id": ids.encode("subscription", sub.id),
        "projectId": ids.encode("project", sub.project_id),
        "status": subscriptions.public_status(sub),
        "plan": plan(plans[sub.plan_id]),
        "pendingPlan": plan(pending) if pending else None,
        "pendingAt": optional(datetime_text, sub.pending_at),
        "currentPeriodStart": optional(datetime_text, sub.current_period_start),
        "currentPeriodEnd": optional(datetime_text, sub.current_period_end),
        "trialEnd": optional(datetime_text, sub.trial_end),
        "cancelAtPeriodEnd": sub.cancel_at_period_end,
        "canceledAt": optional(datetime_text, sub.canceled_at),
        "endedAt": optional(datetime_text, sub.ended_at),
        "pastDueSince": optional(datetime_text, sub.past_due_since),
        "graceUntil": optional(datetime_text, sub.grace_until),
        "inGracePeriod": sub.past_due_since is not None and subscriptions.in_grace(sub, now),
        "downgradedAt": optional(datetime_text, sub.downgraded_at),
        "stripeSubscriptionId": sub.stripe_subscription_id,
    }


def payment(p: PaymentRecord) -> dict[str, Any]:
    """GraphQL `Payment` (the `payment.*` events)."""
    return {
        "id": ids.encode("payment", p.id),
        "kind": p.kind,
        "status": p.status,
        "amount": money(p.amount, p.currency),
        "amountRefunded": money(p.amount_refunded, p.currency),
        "credits": bigint_text(p.credits),
        "creditsReversed": bigint_text(p.credits_reversed),
        "creditsHeld": bigint_text(p.credits_held),
        "creditPackId": public_id("credit_pack", p.credit_pack_id),
        "planId": public_id("plan", p.plan_id),
        "invoiceId": public_id("invoice", p.invoice_id),
        "walletId": public_id("wallet", p.wallet_id),
        "transactionId": public_id("transaction", p.transaction_id),
        "stripeCheckoutSessionId": p.stripe_checkout_session_id,
        "stripeInvoiceId": p.stripe_invoice_id,
        "stripePaymentIntentId": p.stripe_payment_intent_id,
        "stripeChargeId": p.stripe_charge_id,
        "createdAt": datetime_text(p.created_at),
        "discount": money(p.discount, p.currency),
        "couponId": public_id("coupon", p.coupon_id),
    }


def invoice_line(line: InvoiceLineRecord) -> dict[str, Any]:
    """GraphQL `InvoiceLine`."""
    return {
        "description": line.description,
        "amount": money(line.amount, line.currency),
        "quantity": line.quantity,
        "periodStart": optional(datetime_text, line.period_start),
        "periodEnd": optional(datetime_text, line.period_end),
        "proration": line.proration,
        "planId": public_id("plan", line.plan_id),
        "kind": line.kind,
        "unitAmount": money(line.unit_amount if line.unit_amount is not None else line.amount, line.currency),
        "discount": money(line.discount, line.currency),
        "tax": money(line.tax, line.currency),
    }


def invoice(i: InvoiceRecord, lines: Sequence[InvoiceLineRecord]) -> dict[str, Any]:
    """GraphQL `Invoice` (the `invoice.*` events), its lines in their order."""
    return {
        "id": ids.encode("invoice", i.id),
        "kind": i.kind,
        "status": i.status,
        "billingReason": i.billing_reason,
        "total": money(i.total, i.currency),
        "amountDue": money(i.amount_due, i.currency),
        "amountPaid": money(i.amount_paid, i.currency),
        "periodStart": optional(datetime_text, i.period_start),
        "periodEnd": optional(datetime_text, i.period_end),
        "attemptCount": i.attempt_count,
        "nextPaymentAttempt": optional(datetime_text, i.next_payment_attempt),
        "paidAt": optional(datetime_text, i.paid_at),
        "credits": bigint_text(i.credits),
        "planId": public_id("plan", i.plan_id),
        "subscriptionId": public_id("subscription", i.subscription_id),
        "stripeInvoiceId": i.stripe_invoice_id,
        "lines": [invoice_line(line) for line in lines],
        "createdAt": datetime_text(i.created_at),
        "number": i.number,
        "issuedAt": optional(datetime_text, i.issued_at),
        "subtotal": money(i.subtotal, i.currency),
        "discount": money(i.discount, i.currency),
        "tax": money(i.tax, i.currency),
        "taxLines": [
            {
                "name": t.get("name"),
                "rate": str(t.get("rate")),
                "inclusive": bool(t.get("inclusive")),
                "amount": money(int(t.get("amount") or 0), i.currency),
            }
            for t in i.tax_lines
        ],
        "taxNote": i.tax_note,
        "amountCredited": money(i.amount_credited, i.currency),
    }
