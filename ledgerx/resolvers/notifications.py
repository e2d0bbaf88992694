"""Notification fields: updateBillingDetails, updateNotificationSettings, createBillingPortalSession.
Project admins only (domain/notifications/policy.py); reads are the Project fields
`billingDetails` and `notificationSettings` (schema/notifications.py)."""

from __future__ import annotations

from typing import Any

import strawberry

from ledgerx.domain.invoicing import subscription_tax
from ledgerx.domain.notifications import billing_details, policy, preferences
from ledgerx.domain.payments import portal
from ledgerx.resolvers.guards import project_access
from ledgerx.schema.info import Info
from ledgerx.schema.notifications import (
    BillingAddressInput,
    BillingDetails,
    BillingPortalSession,
    CreateBillingPortalSessionInput,
    NotificationSettings,
    TaxIdInput,
    UpdateBillingDetailsInput,
    UpdateNotificationSettingsInput,
)


def _given(value: Any) -> bool:
    return value is not strawberry.UNSET


def _address(a: BillingAddressInput | None) -> billing_details.AddressInput | None:
    if a is None:
        return None
    return billing_details.AddressInput(
        country=a.country, line1=a.line1, line2=a.line2, city=a.city, postal_code=a.postal_code, state=a.state
    )


def _tax_ids(values: list[TaxIdInput] | None) -> list[billing_details.TaxIdInput] | None:
    return None if values is None else [billing_details.TaxIdInput(t.type, t.value) for t in values]


def _changes(i: UpdateBillingDetailsInput) -> billing_details.Changes:
    keep = billing_details.KEEP
    return billing_details.Changes(
        email=i.email if _given(i.email) else keep,
        legal_name=i.legal_name if _given(i.legal_name) else keep,
        address=_address(i.address) if _given(i.address) else keep,
        tax_ids=_tax_ids(i.tax_ids) if _given(i.tax_ids) else keep,
    )


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Set the project's billing contact and invoice details (project admins).")
    async def update_billing_details(self, info: Info, input: UpdateBillingDetailsInput) -> BillingDetails:
        ctx = info.context
        access = await project_access(info, input.project_id, policy.MANAGE)
        saved = await billing_details.update(ctx.services.db, ctx.actor(), access.project_id, _changes(input))
        # A running subscription's renewals are taxed as the details now say (TAX_MODE=rates).
        await subscription_tax.follow_billing_details(ctx.services.payments, access.project_id)
        return BillingDetails.of(saved)

    @strawberry.mutation(description="Turn notification kinds off (exactly those listed) or on (project admins).")
    async def update_notification_settings(
        self, info: Info, input: UpdateNotificationSettingsInput
    ) -> NotificationSettings:
        ctx = info.context
        access = await project_access(info, input.project_id, policy.MANAGE)
        saved = await preferences.update(
            ctx.services.db, ctx.actor(), access.project_id, [k.domain() for k in input.disabled]
        )
        return NotificationSettings.of(saved)

    @strawberry.mutation(
        description="A session of Stripe's customer portal for the project (payment methods, invoices, "
        "cancellation); send the browser to `url` (project admins)."
    )
    async def create_billing_portal_session(
        self, info: Info, input: CreateBillingPortalSessionInput
    ) -> BillingPortalSession:
        ctx = info.context
        access = await project_access(info, input.project_id, policy.MANAGE)
        session = await portal.create_billing_portal_session(
            ctx.services.payments, ctx.actor(), access.project_id, return_url=input.return_url
        )
        return BillingPortalSession(url=session.url)
