"""What the payments domain hands to its callers: plain, frozen records (no database session or
ORM row leaves the domain). Field names are the columns' names, so a record reads like its row.

Rows whose `updated_at` is set by the database in the same transaction (subscriptions, invoices,
payments) are recorded without it: nothing outside the domain reads it, and its value is only
known to the database once the transaction commits.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import uuid
from typing import Any

# The payments domain's modules say records.of(...): one converter for every domain (domain/records.py).
from ledgerx.domain.records import of as of


@dataclasses.dataclass(frozen=True, slots=True)
class PlanRecord:
    id: uuid.UUID
    name: str
    tier: str  # FREE | PRO | ENTERPRISE
    interval: str  # MONTH | YEAR
    price_amount: int
    currency: str
    included_credits: int
    rate_limit: dict[str, Any] | None  # {"burst": int, "perSecond": float}
    monthly_quotas: dict[str, Any]
    features: list[str]
    entitlements: list[dict[str, Any]]  # domain/entitlements/definitions.py parses them
    trial_days: int
    rollover_credits: bool
    stripe_product_id: str | None
    stripe_price_id: str | None
    archived_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class CreditPackRecord:
    id: uuid.UUID
    name: str
    credits: int
    price_amount: int
    currency: str
    validity_days: int | None
    stripe_product_id: str | None
    stripe_price_id: str | None
    archived_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class SubscriptionRecord:
    id: uuid.UUID
    project_id: uuid.UUID
    plan_id: uuid.UUID
    stripe_subscription_id: str | None
    stripe_customer_id: str | None
    stripe_status: str
    current_period_start: dt.datetime | None
    current_period_end: dt.datetime | None
    trial_end: dt.datetime | None
    cancel_at_period_end: bool
    canceled_at: dt.datetime | None
    ended_at: dt.datetime | None
    pending_plan_id: uuid.UUID | None
    pending_at: dt.datetime | None
    past_due_since: dt.datetime | None
    grace_until: dt.datetime | None
    downgraded_at: dt.datetime | None
    wallet_id: uuid.UUID | None
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class OverrideRecord:
    project_id: uuid.UUID
    plan_id: uuid.UUID | None
    rate_limit: dict[str, Any] | None
    monthly_quotas: dict[str, Any] | None
    reason: str | None
    expires_at: dt.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class InvoiceLineRecord:
    id: uuid.UUID
    invoice_id: uuid.UUID
    position: int
    description: str
    amount: int  # signed (credits are negative)
    currency: str
    quantity: int
    period_start: dt.datetime | None
    period_end: dt.datetime | None
    plan_id: uuid.UUID | None
    proration: bool
    kind: str = "ITEM"  # ITEM | DISCOUNT (negative amount)
    unit_amount: int | None = None
    discount: int = 0  # the line's share of the invoice discount
    tax: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class InvoiceRecord:
    id: uuid.UUID
    project_id: uuid.UUID
    subscription_id: uuid.UUID | None
    stripe_invoice_id: str | None
    kind: str  # SUBSCRIPTION | PRORATION | OTHER | TOP_UP | CREDIT_PACK
    billing_reason: str | None
    status: str  # DRAFT | OPEN | PAID | VOID | UNCOLLECTIBLE
    currency: str
    total: int
    amount_due: int
    amount_paid: int
    period_start: dt.datetime | None
    period_end: dt.datetime | None
    attempt_count: int
    next_payment_attempt: dt.datetime | None
    paid_at: dt.datetime | None
    plan_id: uuid.UUID | None
    credits: int
    created_at: dt.datetime
    # Issued invoices (invoicing/issuing.py): the number, the instant, the frozen billing details.
    number: str | None = None
    issued_at: dt.datetime | None = None
    subtotal: int = 0
    discount: int = 0
    tax: int = 0
    tax_lines: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    tax_note: str | None = None
    billing_details: dict[str, Any] | None = None
    amount_credited: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class PaymentRecord:
    id: uuid.UUID
    project_id: uuid.UUID
    kind: str  # CREDIT_PACK | SUBSCRIPTION
    status: str  # SUCCEEDED | PARTIALLY_REFUNDED | REFUNDED
    amount: int
    currency: str
    credits: int
    credit_pack_id: uuid.UUID | None
    plan_id: uuid.UUID | None
    invoice_id: uuid.UUID | None
    wallet_id: uuid.UUID | None
    transaction_id: uuid.UUID | None
    stripe_checkout_session_id: str | None
    stripe_invoice_id: str | None
    stripe_payment_intent_id: str | None
    stripe_charge_id: str | None
    amount_refunded: int
    credits_reversed: int
    credits_held: int
    created_at: dt.datetime
    discount: int = 0  # what a coupon took off, minor units of `currency`
    coupon_id: uuid.UUID | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookEventRecord:
    id: uuid.UUID
    stripe_event_id: str
    type: str
    created: dt.datetime  # Stripe's
    livemode: bool
    api_version: str | None
    payload: dict[str, Any]
    source: str  # WEBHOOK | RECONCILE
    status: str  # PENDING | PROCESSING | PROCESSED | FAILED | DEAD | IGNORED
    attempts: int
    next_attempt_at: dt.datetime
    locked_until: dt.datetime | None
    last_error: str | None
    result: str | None
    project_id: uuid.UUID | None
    received_at: dt.datetime
    processed_at: dt.datetime | None


@dataclasses.dataclass(frozen=True, slots=True)
class WebhookAttemptRecord:
    id: uuid.UUID
    event_id: uuid.UUID
    attempt: int
    trigger: str  # WORKER | REPLAY | RECONCILE
    ok: bool
    result: str | None
    error: str | None
    started_at: dt.datetime
    finished_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class CouponRecord:
    id: uuid.UUID
    code: str
    name: str
    percent_off: decimal.Decimal | None
    amount_off: int | None
    currency: str | None
    bonus_credits: int | None
    bonus_valid_days: int | None
    duration: str  # ONCE | REPEATING | FOREVER
    duration_in_months: int | None
    max_redemptions: int | None
    times_redeemed: int
    expires_at: dt.datetime | None
    plan_ids: tuple[uuid.UUID, ...]
    credit_pack_ids: tuple[uuid.UUID, ...]
    stripe_coupon_id: str | None
    stripe_promotion_code_id: str | None
    archived_at: dt.datetime | None
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True, slots=True)
class CouponRedemptionRecord:
    id: uuid.UUID
    project_id: uuid.UUID
    coupon_id: uuid.UUID
    code: str
    status: str  # RESERVED | REDEEMED | RELEASED
    stripe_checkout_session_id: str | None
    subscription_id: uuid.UUID | None
    payment_id: uuid.UUID | None
    wallet_id: uuid.UUID | None
    bonus_credits: int
    bonus_transaction_id: uuid.UUID | None
    created_at: dt.datetime
