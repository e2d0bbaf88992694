"""GraphQL types of notifications (DESIGN.md "Notifications"): billing details, notification
settings, the billing portal session; and the two Project fields that read them, guarded on their
own (`notifications.policy.READ`: members, or API keys with billing:read)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

import strawberry

from ledgerx.dataloaders import notifications as loaders
from ledgerx.domain.notifications import policy
from ledgerx.domain.notifications.kinds import Kind
from ledgerx.domain.notifications.records import BillingDetailsRecord, SettingsRecord
from ledgerx.schema.info import Info


@strawberry.enum(description="A kind of notification mail a project can turn off.")
class NotificationKind(enum.Enum):
    PAYMENT_FAILED = strawberry.enum_value("PAYMENT_FAILED", description="A subscription payment failed.")
    GRACE_ENDING = strawberry.enum_value(
        "GRACE_ENDING", description="An unpaid subscription's grace period ends within a day."
    )
    DOWNGRADED = strawberry.enum_value(
        "DOWNGRADED", description="The grace period ran out: the project moved to the free plan."
    )
    LOW_BALANCE = strawberry.enum_value(
        "LOW_BALANCE", description="A wallet's balance fell below its threshold (once per crossing)."
    )
    CREDITS_EXPIRING = strawberry.enum_value("CREDITS_EXPIRING", description="Granted credits expire soon.")
    INVOICE_ISSUED = strawberry.enum_value("INVOICE_ISSUED", description="An invoice was issued (with its PDF).")
    WEBHOOK_ENDPOINT_DISABLED = strawberry.enum_value(
        "WEBHOOK_ENDPOINT_DISABLED",
        description="A webhook endpoint failed for too long and was disabled (mailed to the owner and admins).",
    )
    TOP_UP_FAILED = strawberry.enum_value(
        "TOP_UP_FAILED", description="A wallet's automatic top-up payment failed (it is not retried by itself)."
    )

    @classmethod
    def of(cls, kind: Kind) -> NotificationKind:
        return cls(kind.value)

    def domain(self) -> Kind:
        return Kind(self.value)


@strawberry.type(description="A postal address for invoices.")
class BillingAddress:
    line1: str | None
    line2: str | None
    city: str | None
    postal_code: str | None
    state: str | None
    country: str = strawberry.field(description="ISO 3166-1 alpha-2, upper case.")


@strawberry.type(description="A tax id as Stripe names its type (eu_vat, gb_vat, us_ein, ...).")
class TaxId:
    type: str
    value: str


@strawberry.type(
    description="The project's billing contact: notification mails go to `email` (else to the owner and "
    "admins); invoices print the legal name, address and tax ids."
)
class BillingDetails:
    email: str | None
    legal_name: str | None
    address: BillingAddress | None
    tax_ids: list[TaxId]
    updated_at: dt.datetime | None = strawberry.field(description="Null while nothing was ever set.")

    @classmethod
    def of(cls, r: BillingDetailsRecord) -> BillingDetails:
        a = r.address
        return cls(
            email=r.email,
            legal_name=r.legal_name,
            address=None
            if a is None
            else BillingAddress(
                line1=a.line1,
                line2=a.line2,
                city=a.city,
                postal_code=a.postal_code,
                state=a.state,
                country=a.country,
            ),
            tax_ids=[TaxId(type=t.type, value=t.value) for t in r.tax_ids],
            updated_at=r.updated_at,
        )


@strawberry.type(description="Which notification kinds the project turned off.")
class NotificationSettings:
    disabled: list[NotificationKind]
    enabled: list[NotificationKind]
    updated_at: dt.datetime | None = strawberry.field(description="Null while every kind is on by default.")

    @classmethod
    def of(cls, r: SettingsRecord) -> NotificationSettings:
        return cls(
            disabled=[NotificationKind.of(k) for k in r.disabled],
            enabled=[NotificationKind.of(k) for k in r.enabled],
            updated_at=r.updated_at,
        )


@strawberry.type(description="A session of Stripe's customer portal: send the browser to `url` (valid minutes).")
class BillingPortalSession:
    url: str


@strawberry.input(description="A postal address; it replaces the stored one as a whole.")
class BillingAddressInput:
    country: str = strawberry.field(description="ISO 3166-1 alpha-2 (either case).")
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    postal_code: str | None = None
    state: str | None = None


@strawberry.input
class TaxIdInput:
    type: str = strawberry.field(description="A Stripe tax id type, such as eu_vat, gb_vat or us_ein.")
    value: str


@strawberry.input(
    description="Fields left out stay as they are; null (or an empty string) clears one. `address` and `taxIds` "
    "replace the stored ones as a whole."
)
class UpdateBillingDetailsInput:
    project_id: strawberry.ID
    email: str | None = strawberry.UNSET
    legal_name: str | None = strawberry.UNSET
    address: BillingAddressInput | None = strawberry.UNSET
    tax_ids: list[TaxIdInput] | None = strawberry.UNSET


@strawberry.input
class UpdateNotificationSettingsInput:
    project_id: strawberry.ID
    disabled: list[NotificationKind] = strawberry.field(
        description="Exactly the kinds to turn off (every other kind is on); [] turns every kind on."
    )


@strawberry.input
class CreateBillingPortalSessionInput:
    project_id: strawberry.ID
    return_url: str = strawberry.field(description="Where the portal's back link goes (an http(s) URL).")


# -- the Project fields -------------------------------------------------------------------------


async def project_billing_details(info: Info, project_id: uuid.UUID) -> BillingDetails:
    await info.context.authorizer().require(project_id, policy.READ)
    return BillingDetails.of(await loaders.billing_details_of(info.context).load(project_id))


async def project_notification_settings(info: Info, project_id: uuid.UUID) -> NotificationSettings:
    await info.context.authorizer().require(project_id, policy.READ)
    return NotificationSettings.of(await loaders.notification_settings_of(info.context).load(project_id))
