"""GraphQL types of plans, credit packs, checkout, subscriptions, invoices, payments and the
Stripe webhook inbox. The object type of a project's subscription is `PlanSubscription` (the name
`Subscription` is GraphQL's root subscription type)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

import strawberry
from strawberry.scalars import JSON

from ledgerx import ids
from ledgerx.dataloaders import payments as loaders
from ledgerx.domain.invoicing import issuing
from ledgerx.domain.invoicing.credit_notes import CreditNoteRecord
from ledgerx.domain.invoicing.links import DocumentLinks
from ledgerx.domain.notifications import billing_details
from ledgerx.domain.payments import money, subscriptions
from ledgerx.domain.payments.plans import rate_limit_json
from ledgerx.domain.payments.records import (
    CreditPackRecord,
    InvoiceLineRecord,
    InvoiceRecord,
    PaymentRecord,
    PlanRecord,
    SubscriptionRecord,
    WebhookAttemptRecord,
    WebhookEventRecord,
)
from ledgerx.schema.entitlements import PlanEntitlement, PlanEntitlementInput
from ledgerx.schema.info import Info
from ledgerx.schema.notifications import BillingDetails
from ledgerx.schema.scalars import BigInt


def _id(kind: str, value: uuid.UUID | None) -> strawberry.ID | None:
    return strawberry.ID(ids.encode(kind, value)) if value is not None else None


# -- enums ----------------------------------------------------------------------------------------------


@strawberry.enum
class PlanTier(enum.Enum):
    FREE = "FREE"
    PRO = "PRO"
    ENTERPRISE = "ENTERPRISE"


@strawberry.enum
class PlanInterval(enum.Enum):
    MONTH = "MONTH"
    YEAR = "YEAR"


@strawberry.enum(description="PAST_DUE while an invoice is unpaid (in or after the grace period).")
class SubscriptionStatus(enum.Enum):
    INCOMPLETE = "INCOMPLETE"
    TRIALING = "TRIALING"
    ACTIVE = "ACTIVE"
    PAST_DUE = "PAST_DUE"
    UNPAID = "UNPAID"
    PAUSED = "PAUSED"
    CANCELED = "CANCELED"


@strawberry.enum(description="Where a project's effective plan comes from.")
class PlanSource(enum.Enum):
    OVERRIDE = "OVERRIDE"
    SUBSCRIPTION = "SUBSCRIPTION"
    DEFAULT = "DEFAULT"


@strawberry.enum
class PaymentKind(enum.Enum):
    CREDIT_PACK = "CREDIT_PACK"
    SUBSCRIPTION = "SUBSCRIPTION"


@strawberry.enum
class PaymentStatus(enum.Enum):
    SUCCEEDED = "SUCCEEDED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
    REFUNDED = "REFUNDED"


@strawberry.enum
class InvoiceStatus(enum.Enum):
    DRAFT = "DRAFT"
    OPEN = "OPEN"
    PAID = "PAID"
    VOID = "VOID"
    UNCOLLECTIBLE = "UNCOLLECTIBLE"


@strawberry.enum(
    description="SUBSCRIPTION: a period of a plan; PRORATION: an upgrade charged by LedgerX; TOP_UP: an auto"
    " top-up; CREDIT_PACK: a credit pack bought through Checkout."
)
class InvoiceKind(enum.Enum):
    SUBSCRIPTION = "SUBSCRIPTION"
    PRORATION = "PRORATION"
    OTHER = "OTHER"
    TOP_UP = "TOP_UP"
    CREDIT_PACK = "CREDIT_PACK"


@strawberry.enum
class WebhookEventStatus(enum.Enum):
    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    PROCESSED = "PROCESSED"
    FAILED = "FAILED"
    DEAD = "DEAD"
    IGNORED = "IGNORED"


# -- values ---------------------------------------------------------------------------------------------


@strawberry.type
class Money:
    amount: BigInt
    currency: str = strawberry.field(description="ISO 4217, upper case.")


@strawberry.type(name="RateLimit")
class RateLimitType:
    burst: int
    per_second: float

    @classmethod
    def of(cls, raw: Mapping[str, Any] | None) -> RateLimitType | None:
        if not raw:
            return None
        return cls(burst=int(raw["burst"]), per_second=float(raw["perSecond"]))


@strawberry.type
class Quota:
    metric: str
    limit: BigInt = strawberry.field(description="Units per calendar month.")


def money_of(amount: int, currency: str) -> Money:
    return Money(amount=BigInt(amount), currency=currency)


def _quotas(raw: Mapping[str, Any] | None) -> list[Quota]:
    return [Quota(metric=k, limit=BigInt(int(v))) for k, v in sorted((raw or {}).items())]


@strawberry.input
class MoneyInput:
    amount: BigInt = strawberry.field(description="Minor units (cents).")
    currency: str = strawberry.field(description="ISO 4217 code, either case.")

    def parse(self, field: str = "price", *, allow_zero: bool = False) -> money.Money:
        return money.money(int(self.amount), self.currency, field=field, allow_zero=allow_zero)


@strawberry.input
class RateLimitInput:
    burst: int
    per_second: float

    def parse(self) -> dict[str, Any]:
        return rate_limit_json(self.burst, self.per_second)


@strawberry.input
class QuotaInput:
    metric: str
    limit: BigInt


def parse_quotas(quotas: Sequence[QuotaInput] | None) -> dict[str, int] | None:
    if quotas is None:
        return None
    return {q.metric: int(q.limit) for q in quotas}


# -- catalog --------------------------------------------------------------------------------------------


@strawberry.type(name="Plan")
class PlanType:
    id: strawberry.ID
    name: str
    tier: PlanTier
    interval: PlanInterval
    price: Money
    included_credits: BigInt
    rate_limit: RateLimitType | None
    monthly_quotas: list[Quota]
    features: list[str]
    entitlements: list[PlanEntitlement] = strawberry.field(
        description="What the plan grants (its monthlyQuotas are METERED limits of the same mechanism)."
    )
    trial_days: int
    rollover_credits: bool = strawberry.field(
        description="Included credits never expire (else they expire at the end of their period)."
    )
    archived: bool
    archived_at: dt.datetime | None
    stripe_price_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, p: PlanRecord) -> PlanType:
        return cls(
            id=strawberry.ID(ids.encode("plan", p.id)),
            name=p.name,
            tier=PlanTier(p.tier),
            interval=PlanInterval(p.interval),
            price=money_of(p.price_amount, p.currency),
            included_credits=BigInt(p.included_credits),
            rate_limit=RateLimitType.of(p.rate_limit),
            monthly_quotas=_quotas(p.monthly_quotas),
            features=list(p.features or []),
            entitlements=[PlanEntitlement.of(e) for e in p.entitlements or []],
            trial_days=p.trial_days,
            rollover_credits=p.rollover_credits,
            archived=p.archived_at is not None,
            archived_at=p.archived_at,
            stripe_price_id=p.stripe_price_id,
            created_at=p.created_at,
            updated_at=p.updated_at,
        )


@strawberry.type(name="CreditPack")
class CreditPackType:
    id: strawberry.ID
    name: str
    credits: BigInt
    price: Money
    validity_days: int | None = strawberry.field(
        description="Days a purchase's credits stay spendable after the payment; null: they never expire."
    )
    archived: bool
    archived_at: dt.datetime | None
    stripe_price_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, p: CreditPackRecord) -> CreditPackType:
        return cls(
            id=strawberry.ID(ids.encode("credit_pack", p.id)),
            name=p.name,
            credits=BigInt(p.credits),
            price=money_of(p.price_amount, p.currency),
            validity_days=p.validity_days,
            archived=p.archived_at is not None,
            archived_at=p.archived_at,
            stripe_price_id=p.stripe_price_id,
            created_at=p.created_at,
            updated_at=p.updated_at,
        )


@strawberry.input
class CreateCreditPackInput:
    name: str
    credits: BigInt
    price: MoneyInput
    validity_days: int | None = strawberry.field(
        default=None, description="1 to 3650: each purchase's credits expire that many days after the payment."
    )


@strawberry.input
class UpdateCreditPackInput:
    id: strawberry.ID
    name: str | None = None
    credits: BigInt | None = None
    price: MoneyInput | None = None
    validity_days: int | None = strawberry.field(
        default=strawberry.UNSET, description="null: purchases from then on never expire; omitted: unchanged."
    )


@strawberry.input
class CreatePlanInput:
    name: str
    tier: PlanTier
    interval: PlanInterval
    price: MoneyInput
    included_credits: BigInt = BigInt(0)
    rate_limit: RateLimitInput | None = None
    monthly_quotas: list[QuotaInput] = strawberry.field(default_factory=list)
    features: list[str] = strawberry.field(default_factory=list)
    trial_days: int = 0
    rollover_credits: bool = strawberry.field(
        default=False, description="Included credits never expire (else at the end of their period)."
    )
    entitlements: list[PlanEntitlementInput] = strawberry.field(default_factory=list)


@strawberry.input
class UpdatePlanInput:
    id: strawberry.ID
    name: str | None = None
    price: MoneyInput | None = strawberry.field(
        default=None, description="A new price applies to new subscriptions; existing ones keep theirs."
    )
    included_credits: BigInt | None = None
    rate_limit: RateLimitInput | None = None
    clear_rate_limit: bool = strawberry.field(default=False, description="Back to the default gateway limit.")
    monthly_quotas: list[QuotaInput] | None = None
    features: list[str] | None = None
    trial_days: int | None = None
    rollover_credits: bool | None = None
    entitlements: list[PlanEntitlementInput] | None = strawberry.field(
        default=None, description="Replaces the plan's entitlements; its projects see them at once."
    )


# -- checkout and subscriptions ----------------------------------------------------------------------------


@strawberry.type
class CheckoutSession:
    id: str = strawberry.field(description="The Stripe Checkout Session id.")
    url: str = strawberry.field(description="Where to send the customer.")


@strawberry.input
class CreateCheckoutSessionInput:
    project_id: strawberry.ID
    success_url: str
    cancel_url: str
    credit_pack_id: strawberry.ID | None = None
    plan_id: strawberry.ID | None = None
    wallet_id: strawberry.ID | None = strawberry.field(
        default=None, description="The CREDITS wallet to credit (default: the project's default wallet)."
    )
    coupon_code: str | None = strawberry.field(
        default=None, description="A coupon for this purchase (its slot is held until the session expires)."
    )


@strawberry.type(name="PlanSubscription", description="A project's subscription to a plan (billed through Stripe).")
class PlanSubscriptionType:
    id: strawberry.ID
    project_id: strawberry.ID
    status: SubscriptionStatus
    plan: PlanType
    pending_plan: PlanType | None = strawberry.field(description="A downgrade taking effect at `pendingAt`.")
    pending_at: dt.datetime | None
    current_period_start: dt.datetime | None
    current_period_end: dt.datetime | None
    trial_end: dt.datetime | None
    cancel_at_period_end: bool
    canceled_at: dt.datetime | None
    ended_at: dt.datetime | None
    past_due_since: dt.datetime | None
    grace_until: dt.datetime | None = strawberry.field(
        description="When a past-due project falls back to the free plan."
    )
    in_grace_period: bool
    downgraded_at: dt.datetime | None = strawberry.field(description="When the grace period ran out (free plan since).")
    stripe_subscription_id: str | None

    @classmethod
    def of(
        cls, sub: SubscriptionRecord, plans: Mapping[uuid.UUID, PlanRecord], now: dt.datetime
    ) -> PlanSubscriptionType:
        pending = plans.get(sub.pending_plan_id) if sub.pending_plan_id else None
        return cls(
            id=strawberry.ID(ids.encode("subscription", sub.id)),
            project_id=strawberry.ID(ids.encode("project", sub.project_id)),
            status=SubscriptionStatus(subscriptions.public_status(sub)),
            plan=PlanType.of(plans[sub.plan_id]),
            pending_plan=PlanType.of(pending) if pending else None,
            pending_at=sub.pending_at,
            current_period_start=sub.current_period_start,
            current_period_end=sub.current_period_end,
            trial_end=sub.trial_end,
            cancel_at_period_end=sub.cancel_at_period_end,
            canceled_at=sub.canceled_at,
            ended_at=sub.ended_at,
            past_due_since=sub.past_due_since,
            grace_until=sub.grace_until,
            in_grace_period=sub.past_due_since is not None and subscriptions.in_grace(sub, now),
            downgraded_at=sub.downgraded_at,
            stripe_subscription_id=sub.stripe_subscription_id,
        )


@strawberry.type(name="EffectivePlan", description="The plan a project is on now, and its limits.")
class EffectivePlanType:
    plan: PlanType | None
    source: PlanSource
    rate_limit: RateLimitType | None
    monthly_quotas: list[Quota]
    override_reason: str | None
    override_expires_at: dt.datetime | None

    @classmethod
    def of(cls, e: subscriptions.EffectivePlan) -> EffectivePlanType:
        return cls(
            plan=PlanType.of(e.plan) if e.plan else None,
            source=PlanSource(e.source),
            rate_limit=RateLimitType.of(e.rate_limit),
            monthly_quotas=_quotas(e.monthly_quotas),
            override_reason=e.override.reason if e.override else None,
            override_expires_at=e.override.expires_at if e.override else None,
        )


@strawberry.input
class ChangePlanInput:
    project_id: strawberry.ID
    plan_id: strawberry.ID


@strawberry.input
class CancelSubscriptionInput:
    project_id: strawberry.ID
    at_period_end: bool = True


@strawberry.input
class OverridePlanInput:
    project_id: strawberry.ID
    plan_id: strawberry.ID | None = strawberry.field(
        default=None, description="Leave out planId, rateLimit and monthlyQuotas to clear the override."
    )
    rate_limit: RateLimitInput | None = None
    monthly_quotas: list[QuotaInput] | None = None
    expires_at: dt.datetime | None = None
    reason: str | None = None


# -- invoices and payments ---------------------------------------------------------------------------------


@strawberry.enum(description="ITEM: something charged; DISCOUNT: a coupon or credit taken off (negative).")
class InvoiceLineKind(enum.Enum):
    ITEM = "ITEM"
    DISCOUNT = "DISCOUNT"


@strawberry.type(name="InvoiceLine")
class InvoiceLineType:
    description: str
    amount: Money = strawberry.field(description="Signed: discount lines are negative.")
    quantity: int
    period_start: dt.datetime | None
    period_end: dt.datetime | None
    proration: bool
    plan_id: strawberry.ID | None
    kind: InvoiceLineKind
    unit_amount: Money = strawberry.field(description="`amount` / `quantity` when it divides.")
    discount: Money = strawberry.field(description="This line's share of the discount.")
    tax: Money = strawberry.field(description="This line's tax (rounded half-even per line).")

    @classmethod
    def of(cls, line: InvoiceLineRecord) -> InvoiceLineType:
        return cls(
            description=line.description,
            amount=money_of(line.amount, line.currency),
            quantity=line.quantity,
            period_start=line.period_start,
            period_end=line.period_end,
            proration=line.proration,
            plan_id=_id("plan", line.plan_id),
            kind=InvoiceLineKind(line.kind),
            unit_amount=money_of(line.unit_amount if line.unit_amount is not None else line.amount, line.currency),
            discount=money_of(line.discount, line.currency),
            tax=money_of(line.tax, line.currency),
        )


@strawberry.type(name="TaxLine")
class TaxLineType:
    name: str
    rate: str = strawberry.field(description='A percentage as a decimal string: "20" is 20 %.')
    inclusive: bool = strawberry.field(description="True: the tax is included in the line amounts.")
    amount: Money

    @classmethod
    def of(cls, raw: Mapping[str, Any], currency: str) -> TaxLineType:
        return cls(
            name=str(raw.get("name") or "Tax"),
            rate=str(raw.get("rate") or "0"),
            inclusive=bool(raw.get("inclusive")),
            amount=money_of(int(raw.get("amount") or 0), currency),
        )


@strawberry.type(name="CreditNoteLine")
class CreditNoteLineType:
    description: str
    quantity: int
    unit_amount: Money
    amount: Money


@strawberry.type(name="CreditNote")
class CreditNoteType:
    id: strawberry.ID
    number: str
    invoice_id: strawberry.ID
    lines: list[CreditNoteLineType]
    subtotal: Money
    tax: Money = strawberry.field(description="The tax credited back (the refund's share of the invoice's tax).")
    total: Money
    reason: str
    issued_at: dt.datetime
    pdf_url: str | None = strawberry.field(description="A signed link to the PDF; it expires.")

    @classmethod
    def of(cls, n: CreditNoteRecord, pdf_url: str | None) -> CreditNoteType:
        def m(amount: int) -> Money:
            return money_of(amount, n.currency)

        return cls(
            id=strawberry.ID(ids.encode("credit_note", n.id)),
            number=n.number,
            invoice_id=strawberry.ID(ids.encode("invoice", n.invoice_id)),
            lines=[
                CreditNoteLineType(
                    description=str(x["description"]),
                    quantity=int(x["quantity"]),
                    unit_amount=m(int(x["unitAmount"])),
                    amount=m(int(x["amount"])),
                )
                for x in n.lines
            ],
            subtotal=m(n.subtotal),
            tax=m(n.tax),
            total=m(n.total),
            reason=n.reason,
            issued_at=n.issued_at,
            pdf_url=pdf_url,
        )


@strawberry.type(name="Invoice")
class InvoiceType:
    id: strawberry.ID
    kind: InvoiceKind
    status: InvoiceStatus
    billing_reason: str | None
    total: Money = strawberry.field(description="What the buyer pays: subtotal - discount + exclusive tax.")
    amount_due: Money = strawberry.field(description="The total less the credit notes issued against it.")
    amount_paid: Money
    period_start: dt.datetime | None
    period_end: dt.datetime | None
    attempt_count: int
    next_payment_attempt: dt.datetime | None
    paid_at: dt.datetime | None
    credits: BigInt = strawberry.field(description="Credits granted when paid.")
    plan_id: strawberry.ID | None
    subscription_id: strawberry.ID | None
    stripe_invoice_id: str | None
    lines: list[InvoiceLineType]
    created_at: dt.datetime
    number: str | None = strawberry.field(
        description="Gapless per year (LX-2026-000042), given when issued (paid); null before."
    )
    issued_at: dt.datetime | None
    subtotal: Money = strawberry.field(description="The item lines before discount and tax.")
    discount: Money = strawberry.field(description="What the discount lines take off.")
    tax: Money
    tax_lines: list[TaxLineType]
    tax_note: str | None = strawberry.field(description="Reverse charge wording, or why there is no tax.")
    billing_details: BillingDetails | None = strawberry.field(
        description="The buyer's billing details as they were when the invoice was issued (null before)."
    )
    amount_credited: Money = strawberry.field(description="The credit notes' total.")
    credit_notes: list[CreditNoteType]
    pdf_url: str | None = strawberry.field(
        description="A signed link to the PDF that works without signing in; it expires. Null until issued."
    )

    @classmethod
    def of(
        cls,
        i: InvoiceRecord,
        lines: Sequence[InvoiceLineRecord],
        *,
        credit_notes: Sequence[CreditNoteRecord] = (),
        links: DocumentLinks | None = None,
        now: dt.datetime | None = None,
    ) -> InvoiceType:
        def m(amount: int) -> Money:
            return money_of(amount, i.currency)

        def link(path: str) -> str | None:
            return links.sign(path, now) if links is not None and now is not None else None

        return cls(
            id=strawberry.ID(ids.encode("invoice", i.id)),
            kind=InvoiceKind(i.kind),
            status=InvoiceStatus(i.status),
            billing_reason=i.billing_reason,
            total=m(i.total),
            amount_due=m(i.amount_due),
            amount_paid=m(i.amount_paid),
            period_start=i.period_start,
            period_end=i.period_end,
            attempt_count=i.attempt_count,
            next_payment_attempt=i.next_payment_attempt,
            paid_at=i.paid_at,
            credits=BigInt(i.credits),
            plan_id=_id("plan", i.plan_id),
            subscription_id=_id("subscription", i.subscription_id),
            stripe_invoice_id=i.stripe_invoice_id,
            lines=[InvoiceLineType.of(line) for line in lines],
            created_at=i.created_at,
            number=i.number,
            issued_at=i.issued_at,
            subtotal=m(i.subtotal),
            discount=m(i.discount),
            tax=m(i.tax),
            tax_lines=[TaxLineType.of(t, i.currency) for t in i.tax_lines],
            tax_note=i.tax_note,
            billing_details=BillingDetails.of(billing_details.from_snapshot(i.project_id, i.billing_details))
            if i.billing_details is not None
            else None,
            amount_credited=m(i.amount_credited),
            credit_notes=[CreditNoteType.of(n, link(issuing.credit_note_pdf_path(n.id))) for n in credit_notes],
            pdf_url=link(issuing.pdf_path(i.id)) if i.number is not None else None,
        )


@strawberry.type(name="PlanChange")
class PlanChangeType:
    subscription: PlanSubscriptionType
    immediate: bool = strawberry.field(description="False: the change applies at the period end (downgrades).")
    effective_at: dt.datetime
    proration_amount: Money = strawberry.field(description="Charged now for the time left in the period.")
    proration_credits: BigInt
    invoice: InvoiceType | None


@strawberry.type(name="Payment")
class PaymentType:
    id: strawberry.ID
    kind: PaymentKind
    status: PaymentStatus
    amount: Money
    amount_refunded: Money
    credits: BigInt
    credits_reversed: BigInt
    credits_held: BigInt = strawberry.field(description="Held in the DISPUTES account while disputed.")
    credit_pack_id: strawberry.ID | None
    plan_id: strawberry.ID | None
    invoice_id: strawberry.ID | None
    wallet_id: strawberry.ID | None
    transaction_id: strawberry.ID | None
    stripe_checkout_session_id: str | None
    stripe_invoice_id: str | None
    stripe_payment_intent_id: str | None
    stripe_charge_id: str | None
    created_at: dt.datetime
    discount: Money = strawberry.field(description="What a coupon took off (`amount` is what was paid).")
    coupon_id: strawberry.ID | None

    @classmethod
    def of(cls, p: PaymentRecord) -> PaymentType:
        return cls(
            id=strawberry.ID(ids.encode("payment", p.id)),
            kind=PaymentKind(p.kind),
            status=PaymentStatus(p.status),
            amount=money_of(p.amount, p.currency),
            amount_refunded=money_of(p.amount_refunded, p.currency),
            credits=BigInt(p.credits),
            credits_reversed=BigInt(p.credits_reversed),
            credits_held=BigInt(p.credits_held),
            credit_pack_id=_id("credit_pack", p.credit_pack_id),
            plan_id=_id("plan", p.plan_id),
            invoice_id=_id("invoice", p.invoice_id),
            wallet_id=_id("wallet", p.wallet_id),
            transaction_id=_id("transaction", p.transaction_id),
            stripe_checkout_session_id=p.stripe_checkout_session_id,
            stripe_invoice_id=p.stripe_invoice_id,
            stripe_payment_intent_id=p.stripe_payment_intent_id,
            stripe_charge_id=p.stripe_charge_id,
            created_at=p.created_at,
            discount=money_of(p.discount, p.currency),
            coupon_id=_id("coupon", p.coupon_id),
        )


# -- the webhook inbox -----------------------------------------------------------------------------------


@strawberry.type(name="WebhookAttempt")
class WebhookAttemptType:
    attempt: int
    trigger: str
    ok: bool
    result: str | None
    error: str | None
    started_at: dt.datetime
    finished_at: dt.datetime

    @classmethod
    def of(cls, a: WebhookAttemptRecord) -> WebhookAttemptType:
        return cls(
            attempt=a.attempt,
            trigger=a.trigger,
            ok=a.ok,
            result=a.result,
            error=a.error,
            started_at=a.started_at,
            finished_at=a.finished_at,
        )


@strawberry.type(name="WebhookEvent", description="A Stripe event in the inbox (platform admins).")
class WebhookEventType:
    id: strawberry.ID
    stripe_event_id: str
    type: str
    status: WebhookEventStatus
    attempts: int
    source: str
    created_at: dt.datetime = strawberry.field(description="When Stripe created the event.")
    received_at: dt.datetime
    processed_at: dt.datetime | None
    next_attempt_at: dt.datetime | None
    last_error: str | None
    result: str | None
    project_id: strawberry.ID | None
    payload: JSON
    uuid: strawberry.Private[uuid.UUID]

    @strawberry.field
    async def attempt_log(self, info: Info) -> list[WebhookAttemptType]:
        """Every processing attempt, oldest first."""
        return [WebhookAttemptType.of(a) for a in await loaders.webhook_attempts(info.context).load(self.uuid)]

    @classmethod
    def of(cls, e: WebhookEventRecord) -> WebhookEventType:
        return cls(
            id=strawberry.ID(ids.encode("webhook_event", e.id)),
            stripe_event_id=e.stripe_event_id,
            type=e.type,
            status=WebhookEventStatus(e.status),
            attempts=e.attempts,
            source=e.source,
            created_at=e.created,
            received_at=e.received_at,
            processed_at=e.processed_at,
            next_attempt_at=e.next_attempt_at if e.status in ("PENDING", "FAILED") else None,
            last_error=e.last_error,
            result=e.result,
            project_id=_id("project", e.project_id),
            payload=cast(JSON, e.payload),
            uuid=e.id,
        )
