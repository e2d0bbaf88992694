"""SQLAlchemy models. Each module holds one domain's tables; the alembic revisions create them."""

from ledgerx.db.models.base import Base
from ledgerx.db.models.billing import BillingRule, BillingRun, BillingTestClock, SchedulerLease
from ledgerx.db.models.coupons import Coupon, CouponRedemption
from ledgerx.db.models.identity import AuditLog, EmailVerification, RefreshToken, User
from ledgerx.db.models.invoicing import CreditNote, DocumentSequence, TaxRate
from ledgerx.db.models.ledger import LedgerEntry, LedgerSystemAccount, LedgerTransaction, Wallet
from ledgerx.db.models.notifications import BillingDetails, NotificationSettings
from ledgerx.db.models.payments import (
    CatalogPrice,
    CreditPack,
    EntitlementOverride,
    Invoice,
    InvoiceLine,
    Payment,
    PaymentCustomer,
    PaymentDispute,
    PaymentRefund,
    Plan,
    PlanOverride,
    PlanSubscription,
    WebhookAttempt,
    WebhookEvent,
)
from ledgerx.db.models.tenancy import ROLES, ApiKey, Invite, MailOutbox, Project, ProjectMember
from ledgerx.db.models.top_ups import AutoTopUp, AutoTopUpAttempt
from ledgerx.db.models.usage import (
    UsageCharge,
    UsageChargeRemainder,
    UsageEvent,
    UsageEventKey,
    UsageMetric,
    UsageMetricPrice,
    UsageRollup,
    UsageRollupValue,
)
from ledgerx.db.models.webhooks import WebhookDelivery, WebhookDeliveryAttempt, WebhookEndpoint, WebhookOutboxEvent

__all__ = [
    "ROLES",
    "ApiKey",
    "AuditLog",
    "AutoTopUp",
    "AutoTopUpAttempt",
    "Base",
    "BillingDetails",
    "BillingRule",
    "BillingRun",
    "BillingTestClock",
    "CatalogPrice",
    "Coupon",
    "CouponRedemption",
    "CreditNote",
    "CreditPack",
    "DocumentSequence",
    "EmailVerification",
    "EntitlementOverride",
    "Invite",
    "Invoice",
    "InvoiceLine",
    "LedgerEntry",
    "LedgerSystemAccount",
    "LedgerTransaction",
    "MailOutbox",
    "NotificationSettings",
    "Payment",
    "PaymentCustomer",
    "PaymentDispute",
    "PaymentRefund",
    "Plan",
    "PlanOverride",
    "PlanSubscription",
    "Project",
    "ProjectMember",
    "RefreshToken",
    "SchedulerLease",
    "TaxRate",
    "UsageCharge",
    "UsageChargeRemainder",
    "UsageEvent",
    "UsageEventKey",
    "UsageMetric",
    "UsageMetricPrice",
    "UsageRollup",
    "UsageRollupValue",
    "User",
    "Wallet",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookDeliveryAttempt",
    "WebhookEndpoint",
    "WebhookEvent",
    "WebhookOutboxEvent",
]
