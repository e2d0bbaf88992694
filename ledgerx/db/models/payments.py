"""Plans, credit packs, Stripe customers, subscriptions, invoices, payments and the webhook inbox.

Amounts are BIGINT minor units; credits are whole credits. The catalog (plans, credit packs and
their Stripe prices) is global; everything else is a tenant row (RLS by `project_id`), except the
webhook inbox, which only the explicit system path sees.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, Text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from ledgerx.db.models.base import Base, pk, ts_now

PLAN_TIERS = ("FREE", "PRO", "ENTERPRISE")
PLAN_INTERVALS = ("MONTH", "YEAR")


class Plan(Base):
    __tablename__ = "plans"

    id: Mapped[uuid.UUID] = pk()
    name: Mapped[str] = mapped_column(Text, nullable=False)
    tier: Mapped[str] = mapped_column(Text, nullable=False)  # FREE | PRO | ENTERPRISE
    interval: Mapped[str] = mapped_column(Text, nullable=False)  # MONTH | YEAR
    price_amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(Text, nullable=False)
    included_credits: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    # {"burst": int, "perSecond": number}, the gateway limit of the plan's projects; NULL = default.
    rate_limit: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    # {metric key: units per calendar month}, read by the usage domain.
    monthly_quotas: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False, default=dict)
    features: Mapped[list[str]] = mapped_column(JSONB, nullable=False, default=list)
    # [{featureKey, type, enabled, limit, metricKey, period, config}] (domain/entitlements).
    entitlements: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False, default=list)
    trial_days: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Included credits without expiry (else they expire at the end of their period).
    rollover_credits: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    stripe_product_id: Mapped[str | None] = mapped_column(Text)
    stripe_price_id: Mapped[str | None] = mapped_column(Text)
    archived_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()


class CreditPack(Base):
    __tablename__ = "credit_packs"

    id: Mapped[uuid.UUID] = pk()
    name: Mapped[str] = mapped_column(Text, nullable=False)
    credits: Mapped[int] = mapped_column(BigInteger, nullable=False)
    price_amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(Text, nullable=False)
    # Days a purchase's credits stay spendable (1-3650); NULL: they never expire.
    validity_days: Mapped[int | None] = mapped_column(Integer)
    stripe_product_id: Mapped[str | None] = mapped_column(Text)
    stripe_price_id: Mapped[str | None] = mapped_column(Text)
    archived_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()


class CatalogPrice(Base):
    """Every Stripe Price a plan or pack ever had (subscriptions keep their old price after an edit)."""

    __tablename__ = "catalog_prices"

    stripe_price_id: Mapped[str] = mapped_column(Text, primary_key=True)
    plan_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("plans.id", ondelete="RESTRICT"))
    credit_pack_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("credit_packs.id", ondelete="RESTRICT"))
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(Text, nullable=False)
    interval: Mapped[str | None] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[dt.datetime] = ts_now()


class PaymentCustomer(Base):
    """The one Stripe Customer of a project."""

    __tablename__ = "payment_customers"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), primary_key=True)
    stripe_customer_id: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    # The payment method Stripe saved for off-session use (auto top-up charges it).
    default_payment_method: Mapped[str | None] = mapped_column(Text)
    payment_method_saved_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = ts_now()


class PlanSubscription(Base):
    """A project's Stripe subscription as LedgerX last understood it.

    `synced_at`/`synced_event_id` order the Stripe snapshots applied so far: an older snapshot never
    overwrites a newer one. Dunning (`past_due_since`, `grace_until`) is derived from the
    subscription's unpaid failed invoices, so it converges whatever order invoices arrive in.
    """

    __tablename__ = "subscriptions"
    __table_args__ = (Index("ix_subscriptions_project", "project_id", "id"),)

    id: Mapped[uuid.UUID] = pk()
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)
    plan_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("plans.id", ondelete="RESTRICT"), nullable=False)
    stripe_subscription_id: Mapped[str | None] = mapped_column(Text, unique=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(Text)
    stripe_item_id: Mapped[str | None] = mapped_column(Text)
    # The Stripe subscription schedule carrying a change planned for the period end.
    stripe_schedule_id: Mapped[str | None] = mapped_column(Text)
    # Stripe's status: incomplete, incomplete_expired, trialing, active, past_due, unpaid, canceled, paused.
    stripe_status: Mapped[str] = mapped_column(Text, nullable=False, default="incomplete")
    current_period_start: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    current_period_end: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    trial_end: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    canceled_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # A downgrade waiting for the period end.
    pending_plan_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("plans.id", ondelete="RESTRICT"))
    pending_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    past_due_since: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    grace_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Set once the grace period ran out and the fall back to the free plan was announced.
    downgraded_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    wallet_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    synced_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    synced_event_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()


class Invoice(Base):
    """A Stripe invoice (subscription cycles, proration charges) with its lines."""

    __tablename__ = "invoices"
    __table_args__ = (
        Index("ix_invoices_project", "project_id", "id"),
        Index("ix_invoices_subscription", "subscription_id"),
    )

    id: Mapped[uuid.UUID] = pk()
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)
    subscription_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("subscriptions.id", ondelete="RESTRICT"))
    stripe_invoice_id: Mapped[str | None] = mapped_column(Text, unique=True)
    kind: Mapped[str] = mapped_column(Text, nullable=False)  # SUBSCRIPTION | PRORATION | OTHER | TOP_UP | CREDIT_PACK
    billing_reason: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, nullable=False)  # DRAFT | OPEN | PAID | VOID | UNCOLLECTIBLE
    currency: Mapped[str] = mapped_column(Text, nullable=False)
    total: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    amount_due: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    amount_paid: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    period_start: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    attempt_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_payment_attempt: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    first_failed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_failed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    paid_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    plan_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("plans.id", ondelete="RESTRICT"))
    # Credits granted when the invoice is paid (the plan's included credits, or a prorated share).
    credits: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    grant_transaction_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    stripe_charge_id: Mapped[str | None] = mapped_column(Text)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(Text)
    # Set once, in the transaction that issues it (domain/invoicing/issuing.py): a gapless number.
    number: Mapped[str | None] = mapped_column(Text, unique=True)
    issued_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    subtotal: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    discount: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    tax: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    # [{"name", "rate" (a percentage as a string), "inclusive", "amount"}]
    tax_lines: Mapped[list[dict[str, Any]]] = mapped_column(JSONB, nullable=False, default=list)
    tax_note: Mapped[str | None] = mapped_column(Text)
    tax_rate_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("tax_rates.id", ondelete="RESTRICT"))
    # The buyer's billing details at issue (billing_details.snapshot()).
    billing_details: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    amount_credited: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    coupon_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("coupons.id", ondelete="RESTRICT"))
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()


class InvoiceLine(Base):
    __tablename__ = "invoice_lines"
    __table_args__ = (Index("ix_invoice_lines_invoice", "invoice_id", "position"),)

    id: Mapped[uuid.UUID] = pk()
    invoice_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"), nullable=False)
    project_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False)
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)  # signed (credits are negative)
    currency: Mapped[str] = mapped_column(Text, nullable=False)
    quantity: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    period_start: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    plan_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    proration: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False, default="ITEM")  # ITEM | DISCOUNT
    unit_amount: Mapped[int | None] = mapped_column(BigInteger)
    # The line's share of the invoice discount and its tax (ITEM lines; rounding: domain/invoicing/tax.py).
    discount: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    tax: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)


class Payment(Base):
    """Money received through Stripe and the credits it bought."""

    __tablename__ = "payments"
    __table_args__ = (
        Index("ix_payments_project", "project_id", "id"),
        Index("ix_payments_payment_intent", "stripe_payment_intent_id"),
        Index("ix_payments_charge", "stripe_charge_id"),
    )

    id: Mapped[uuid.UUID] = pk()
    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), nullable=False)
    kind: Mapped[str] = mapped_column(Text, nullable=False)  # CREDIT_PACK | SUBSCRIPTION
    status: Mapped[str] = mapped_column(Text, nullable=False)  # SUCCEEDED | PARTIALLY_REFUNDED | REFUNDED
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(Text, nullable=False)
    credits: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    credit_pack_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("credit_packs.id", ondelete="RESTRICT"))
    plan_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("plans.id", ondelete="RESTRICT"))
    invoice_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("invoices.id", ondelete="RESTRICT"))
    wallet_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    # The ledger transaction that granted `credits` (refunds and disputes reverse it).
    transaction_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    stripe_checkout_session_id: Mapped[str | None] = mapped_column(Text, unique=True)
    stripe_invoice_id: Mapped[str | None] = mapped_column(Text, unique=True)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(Text)
    stripe_charge_id: Mapped[str | None] = mapped_column(Text)
    amount_refunded: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    credits_reversed: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    credits_held: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    # What a coupon took off (Stripe's computation), in minor units of `currency`.
    discount: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    coupon_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("coupons.id", ondelete="RESTRICT"))
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()


class PaymentRefund(Base):
    __tablename__ = "payment_refunds"

    stripe_refund_id: Mapped[str] = mapped_column(Text, primary_key=True)
    payment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("payments.id", ondelete="RESTRICT"), nullable=False)
    project_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    credits: Mapped[int] = mapped_column(BigInteger, nullable=False)
    transaction_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[dt.datetime] = ts_now()


class PaymentDispute(Base):
    __tablename__ = "payment_disputes"

    stripe_dispute_id: Mapped[str] = mapped_column(Text, primary_key=True)
    payment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("payments.id", ondelete="RESTRICT"), nullable=False)
    project_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), nullable=False)
    amount: Mapped[int] = mapped_column(BigInteger, nullable=False)
    credits_held: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)  # OPEN | WON | LOST
    hold_transaction_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    release_transaction_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()


class PlanOverride(Base):
    """A platform admin's override of a project's plan (and, optionally, of its limits)."""

    __tablename__ = "plan_overrides"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    plan_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("plans.id", ondelete="RESTRICT"))
    rate_limit: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    monthly_quotas: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    reason: Mapped[str | None] = mapped_column(Text)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()


class EntitlementOverride(Base):
    """A platform admin's override of one feature of a project's plan; NULL fields keep the plan's."""

    __tablename__ = "entitlement_overrides"

    project_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("projects.id", ondelete="RESTRICT"), primary_key=True)
    feature_key: Mapped[str] = mapped_column(Text, primary_key=True)
    # The feature's shape when overridden (BOOLEAN | METERED | CONFIG; METERED: metric and period).
    type: Mapped[str] = mapped_column(Text, nullable=False)
    metric_key: Mapped[str | None] = mapped_column(Text)
    period: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool | None] = mapped_column(Boolean)
    limit: Mapped[int | None] = mapped_column(BigInteger)
    config: Mapped[Any] = mapped_column(JSONB)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = ts_now()
    updated_at: Mapped[dt.datetime] = ts_now()


class WebhookEvent(Base):
    """The inbox: every verified Stripe event, stored once by its id, then processed (with retries)."""

    __tablename__ = "webhook_events"
    __table_args__ = (Index("ix_webhook_events_type", "type", "id"),)

    id: Mapped[uuid.UUID] = pk()
    stripe_event_id: Mapped[str] = mapped_column(Text, nullable=False, unique=True)
    type: Mapped[str] = mapped_column(Text, nullable=False)
    created: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)  # Stripe's
    livemode: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    api_version: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    source: Mapped[str] = mapped_column(Text, nullable=False, default="WEBHOOK")  # WEBHOOK | RECONCILE
    # PENDING | PROCESSING | PROCESSED | FAILED | DEAD | IGNORED
    status: Mapped[str] = mapped_column(Text, nullable=False, default="PENDING")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[dt.datetime] = ts_now()
    locked_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(Text)
    project_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    received_at: Mapped[dt.datetime] = ts_now()
    processed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookAttempt(Base):
    """One processing attempt of an inbox event (append-only)."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_event", "event_id", "attempt"),)

    id: Mapped[uuid.UUID] = pk()
    event_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_events.id", ondelete="RESTRICT"), nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    trigger: Mapped[str] = mapped_column(Text, nullable=False)  # WORKER | REPLAY | RECONCILE
    ok: Mapped[bool] = mapped_column(Boolean, nullable=False)
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    finished_at: Mapped[dt.datetime] = ts_now()
