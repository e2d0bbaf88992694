"""Plans and credit packs, checkout, subscriptions, invoices, payments, and the webhook inbox.

Authorization: the catalog is public to read and platform admins change it; checkout and plan
changes take a project ADMIN/OWNER; the subscription and effective plan are readable by any member;
invoices and payments by project admins; plan overrides and the webhook inbox are platform-admin only.
"""

from __future__ import annotations

import uuid

import strawberry

from ledgerx import ids
from ledgerx.domain.pagination import decode_cursor, page_size
from ledgerx.domain.payments import catalog, checkout, credit_packs, inbox, plan_changes, plans, reads, subscriptions
from ledgerx.domain.payments.records import SubscriptionRecord
from ledgerx.domain.tenancy import projects
from ledgerx.domain.tenancy.access import Need
from ledgerx.resolvers.guards import project_access, require_platform_admin
from ledgerx.schema.entitlements import parse_entitlements
from ledgerx.schema.info import Info
from ledgerx.schema.pagination import Connection, connection
from ledgerx.schema.payments import (
    CancelSubscriptionInput,
    ChangePlanInput,
    CheckoutSession,
    CreateCheckoutSessionInput,
    CreateCreditPackInput,
    CreatePlanInput,
    CreditPackType,
    EffectivePlanType,
    InvoiceType,
    OverridePlanInput,
    PaymentType,
    PlanChangeType,
    PlanSubscriptionType,
    PlanType,
    UpdateCreditPackInput,
    UpdatePlanInput,
    WebhookEventStatus,
    WebhookEventType,
    money_of,
    parse_quotas,
)
from ledgerx.schema.scalars import BigInt


def _optional(kind: str, value: str | None, field: str) -> uuid.UUID | None:
    return ids.decode(kind, value, field) if value is not None else None


async def _subscription_type(info: Info, sub: SubscriptionRecord) -> PlanSubscriptionType:
    svc = info.context.services.payments
    plans = await catalog.plans_by_id(svc, [p for p in (sub.plan_id, sub.pending_plan_id) if p])
    return PlanSubscriptionType.of(sub, plans, svc.now())


@strawberry.type
class Query:
    @strawberry.field(description="The plans on offer (archived ones on request).")
    async def plans(self, info: Info, include_archived: bool = False) -> list[PlanType]:
        found = await catalog.list_plans(info.context.services.payments, include_archived=include_archived)
        return [PlanType.of(p) for p in found]

    @strawberry.field(description="The credit packs on offer (archived ones on request).")
    async def credit_packs(self, info: Info, include_archived: bool = False) -> list[CreditPackType]:
        found = await catalog.list_credit_packs(info.context.services.payments, include_archived=include_archived)
        return [CreditPackType.of(p) for p in found]

    @strawberry.field(description="The project's subscription (its live one, else its last one; null if never).")
    async def subscription(self, info: Info, project_id: strawberry.ID) -> PlanSubscriptionType | None:
        access = await project_access(info, project_id, Need.MEMBER, write=False)
        sub = await subscriptions.get_subscription(info.context.services.payments, access.project_id)
        return await _subscription_type(info, sub) if sub is not None else None

    @strawberry.field(description="The plan the project is on now (override, subscription or the free plan).")
    async def effective_plan(self, info: Info, project_id: strawberry.ID) -> EffectivePlanType:
        access = await project_access(info, project_id, Need.MEMBER, write=False)
        return EffectivePlanType.of(
            await subscriptions.effective_plan(info.context.services.payments, access.project_id)
        )

    @strawberry.field(description="The project's payments, newest first (project admins).")
    async def payments(
        self, info: Info, project_id: strawberry.ID, first: int | None = 20, after: str | None = None
    ) -> Connection[PaymentType]:
        access = await project_access(info, project_id, Need.ADMIN, write=False)
        limit = page_size(first)
        rows = await reads.list_payments(
            info.context.services.payments, access.project_id, limit=limit, before=decode_cursor(after)
        )
        return connection(rows, limit, lambda p: p.id, PaymentType.of)

    @strawberry.field(description="Platform admins: the Stripe webhook inbox, newest first.")
    async def webhook_events(
        self,
        info: Info,
        status: WebhookEventStatus | None = None,
        type: str | None = None,
        first: int | None = 20,
        after: str | None = None,
    ) -> Connection[WebhookEventType]:
        await require_platform_admin(info)
        limit = page_size(first)
        rows = await inbox.list_events(
            info.context.services.payments,
            status=status.value if status else None,
            event_type=type,
            limit=limit,
            before=decode_cursor(after),
        )
        return connection(rows, limit, lambda e: e.id, WebhookEventType.of)

    @strawberry.field(description="Platform admins: one inbox event.")
    async def webhook_event(self, info: Info, id: strawberry.ID) -> WebhookEventType:
        await require_platform_admin(info)
        row = await inbox.get(info.context.services.payments, ids.decode("webhook_event", id, "id"))
        return WebhookEventType.of(row)


@strawberry.type
class Mutation:
    # -- catalog (platform admins) --------------------------------------------------------------

    @strawberry.mutation(description="Platform admins: a credit pack (its Stripe Product and Price are created).")
    async def create_credit_pack(self, info: Info, input: CreateCreditPackInput) -> CreditPackType:
        await require_platform_admin(info)
        pack = await credit_packs.create_credit_pack(
            info.context.services.payments,
            info.context.actor(),
            name=input.name,
            credits=int(input.credits),
            price=input.price.parse(),
            validity=input.validity_days,
        )
        return CreditPackType.of(pack)

    @strawberry.mutation(description="Platform admins: edit a credit pack (a new price makes a new Stripe Price).")
    async def update_credit_pack(self, info: Info, input: UpdateCreditPackInput) -> CreditPackType:
        await require_platform_admin(info)
        pack = await credit_packs.update_credit_pack(
            info.context.services.payments,
            info.context.actor(),
            ids.decode("credit_pack", input.id, "id"),
            name=input.name,
            credits=int(input.credits) if input.credits is not None else None,
            price=input.price.parse() if input.price is not None else None,
            validity=credit_packs.KEEP if input.validity_days is strawberry.UNSET else input.validity_days,
        )
        return CreditPackType.of(pack)

    @strawberry.mutation(description="Platform admins: stop selling a credit pack.")
    async def archive_credit_pack(self, info: Info, id: strawberry.ID) -> CreditPackType:
        await require_platform_admin(info)
        pack = await credit_packs.archive_credit_pack(
            info.context.services.payments, info.context.actor(), ids.decode("credit_pack", id, "id")
        )
        return CreditPackType.of(pack)

    @strawberry.mutation(description="Platform admins: a plan (paid plans get a recurring Stripe Price).")
    async def create_plan(self, info: Info, input: CreatePlanInput) -> PlanType:
        await require_platform_admin(info)
        plan = await plans.create_plan(
            info.context.services.payments,
            info.context.actor(),
            name=input.name,
            tier=input.tier.value,
            interval=input.interval.value,
            price=input.price.parse(allow_zero=True),
            included_credits=int(input.included_credits),
            rate_limit=input.rate_limit.parse() if input.rate_limit is not None else None,
            monthly_quotas=parse_quotas(input.monthly_quotas),
            features=input.features,
            trial_days=input.trial_days,
            rollover_credits=input.rollover_credits,
            entitlements=parse_entitlements(input.entitlements) or [],
        )
        return PlanType.of(plan)

    @strawberry.mutation(description="Platform admins: edit a plan (existing subscriptions keep their price).")
    async def update_plan(self, info: Info, input: UpdatePlanInput) -> PlanType:
        await require_platform_admin(info)
        kwargs: dict[str, object] = {}
        if input.clear_rate_limit:
            kwargs["rate_limit"] = None
        elif input.rate_limit is not None:
            kwargs["rate_limit"] = input.rate_limit.parse()
        plan = await plans.update_plan(
            info.context.services.payments,
            info.context.actor(),
            ids.decode("plan", input.id, "id"),
            name=input.name,
            price=input.price.parse(allow_zero=True) if input.price is not None else None,
            included_credits=int(input.included_credits) if input.included_credits is not None else None,
            monthly_quotas=parse_quotas(input.monthly_quotas),
            features=input.features,
            trial_days=input.trial_days,
            rollover_credits=input.rollover_credits,
            entitlements=parse_entitlements(input.entitlements),
            **kwargs,  # type: ignore[arg-type]
        )
        return PlanType.of(plan)

    @strawberry.mutation(description="Platform admins: no new subscriptions to this plan.")
    async def archive_plan(self, info: Info, id: strawberry.ID) -> PlanType:
        await require_platform_admin(info)
        plan = await plans.archive_plan(
            info.context.services.payments, info.context.actor(), ids.decode("plan", id, "id")
        )
        return PlanType.of(plan)

    # -- checkout and subscriptions (project admins) -------------------------------------------------

    @strawberry.mutation(
        description="A Stripe Checkout Session for a credit pack or a plan; send the customer to `url`."
    )
    async def create_checkout_session(self, info: Info, input: CreateCheckoutSessionInput) -> CheckoutSession:
        access = await project_access(info, input.project_id, Need.ADMIN, write=True)
        session = await checkout.create_checkout_session(
            info.context.services.payments,
            info.context.actor(),
            access.project_id,
            credit_pack_id=_optional("credit_pack", input.credit_pack_id, "creditPackId"),
            plan_id=_optional("plan", input.plan_id, "planId"),
            success_url=input.success_url,
            cancel_url=input.cancel_url,
            wallet_id=_optional("wallet", input.wallet_id, "walletId"),
            coupon_code=input.coupon_code,
        )
        return CheckoutSession(id=session.id, url=session.url)

    @strawberry.mutation(description="Upgrade now (prorated charge for the time left) or downgrade at the period end.")
    async def change_plan(self, info: Info, input: ChangePlanInput) -> PlanChangeType:
        access = await project_access(info, input.project_id, Need.ADMIN, write=True)
        svc = info.context.services.payments
        result = await plan_changes.change_plan(
            svc, info.context.actor(), access.project_id, ids.decode("plan", input.plan_id, "planId")
        )
        lines = await reads.lines_of(svc, access.project_id, result.invoice.id) if result.invoice else []
        return PlanChangeType(
            subscription=await _subscription_type(info, result.subscription),
            immediate=result.immediate,
            effective_at=result.effective_at,
            proration_amount=money_of(result.amount, result.currency),
            proration_credits=BigInt(result.credits),
            invoice=InvoiceType.of(result.invoice, lines) if result.invoice else None,
        )

    @strawberry.mutation(description="Cancel at the period end (default) or at once.")
    async def cancel_subscription(self, info: Info, input: CancelSubscriptionInput) -> PlanSubscriptionType:
        access = await project_access(info, input.project_id, Need.ADMIN, write=True)
        sub = await plan_changes.cancel_subscription(
            info.context.services.payments, info.context.actor(), access.project_id, at_period_end=input.at_period_end
        )
        return await _subscription_type(info, sub)

    # -- platform admins -----------------------------------------------------------------------------

    @strawberry.mutation(description="Platform admins: put a project on a plan (and/or limits) whatever it pays.")
    async def override_plan(self, info: Info, input: OverridePlanInput) -> EffectivePlanType:
        await require_platform_admin(info)
        project_id = ids.decode("project", input.project_id, "projectId")
        svc = info.context.services.payments
        await projects.get_project(info.context.services.db, project_id)
        await subscriptions.override_plan(
            svc,
            info.context.actor(),
            project_id,
            plan_id=_optional("plan", input.plan_id, "planId"),
            rate_limit=input.rate_limit.parse() if input.rate_limit is not None else None,
            monthly_quotas=parse_quotas(input.monthly_quotas),
            expires_at=input.expires_at,
            reason=input.reason,
        )
        return EffectivePlanType.of(await subscriptions.effective_plan(svc, project_id))

    @strawberry.mutation(description="Platform admins: process a Stripe event again (the books never change twice).")
    async def replay_webhook_event(self, info: Info, id: strawberry.ID) -> WebhookEventType:
        await require_platform_admin(info)
        row = await inbox.replay(
            info.context.services.payments, info.context.actor(), ids.decode("webhook_event", id, "id")
        )
        return WebhookEventType.of(row)
