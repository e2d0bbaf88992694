"""Stripe's customer portal: a short-lived session URL where a project admin updates payment
methods, pays open invoices, reads past ones, or cancels the subscription (what the portal offers
is configured in Stripe's dashboard). The project's Stripe Customer is created first if it has
none, the way Checkout does. The return URL is checked like Checkout's redirects (in production,
only this server's CHECKOUT_REDIRECT_ORIGINS)."""

from __future__ import annotations

import dataclasses
import uuid

from ledgerx import ids
from ledgerx.domain import audit
from ledgerx.domain.actor import Actor
from ledgerx.domain.payments.checkout import ensure_customer, redirect_url
from ledgerx.domain.payments.service import PaymentsService


@dataclasses.dataclass(frozen=True, slots=True)
class PortalSession:
    url: str


async def create_billing_portal_session(
    svc: PaymentsService, actor: Actor, project_id: uuid.UUID, *, return_url: str
) -> PortalSession:
    back = redirect_url(return_url, "returnUrl", svc.settings)
    stripe = svc.require_stripe()
    customer = await ensure_customer(svc, project_id)
    session = await stripe.create_billing_portal_session(customer, back)
    # The URL logs whoever holds it into the customer's billing: it goes to the caller only, never
    # into the audit log.
    async with svc.db.transaction(project_id=project_id) as s:
        await audit.record(
            s,
            actor,
            "payments.billing_portal.create",
            project_id=project_id,
            target_type="project",
            target_id=ids.encode("project", project_id),
            after={"stripeSessionId": str(session.get("id") or ""), "returnUrl": back},
        )
    return PortalSession(str(session.get("url") or ""))
