"""A running subscription follows its buyer's tax (TAX_MODE=rates).

Checkout put the buyer's Stripe TaxRate on the subscription's item, so Stripe taxes every renewal
with it. When the buyer's billing details change (a move to another country, a VAT id that now
makes them reverse-charged), the item must carry the new choice, or renewals keep charging the old
tax while LedgerX's invoices would print the new one. `follow_billing_details` sets the item's tax
rates (none for reverse charge) and the subscription's `ledgerx_tax` metadata to the buyer's
choice now; the next renewal is charged and invoiced with it. Periods already paid keep theirs.
"""

from __future__ import annotations

import logging
import uuid

from ledgerx.domain.errors import AppError
from ledgerx.domain.invoicing import tax_rates
from ledgerx.domain.payments import objects, subscriptions
from ledgerx.domain.payments.service import PaymentsService
from ledgerx.ids import uuid7

log = logging.getLogger("ledgerx.invoicing")


async def follow_billing_details(svc: PaymentsService, project_id: uuid.UUID) -> bool:
    """Point the project's live subscription at the tax its billing details now call for; True if
    Stripe was told. Stripe failing is logged, not raised: the details are saved either way, and
    saving them again retries."""
    if svc.settings.tax_mode != "rates" or svc.stripe is None:
        return False
    async with svc.db.transaction(project_id=project_id) as s:
        sub = await subscriptions.current_subscription(s, project_id)
        if sub is None or not subscriptions.is_live(sub) or not sub.stripe_subscription_id or not sub.stripe_item_id:
            return False
        sub_id, item_id = sub.stripe_subscription_id, sub.stripe_item_id
        choice = await tax_rates.choose(svc, s, project_id)
    try:
        choice = await tax_rates.ensure_stripe_rate(svc, choice)
        ref = tax_rates.reference(choice)
        await svc.stripe.update_subscription(
            sub_id,
            {
                "items": [{"id": item_id, "tax_rates": list(choice.stripe_rates) or ""}],
                "proration_behavior": "none",
                "metadata": {objects.META_TAX: ref},
            },
            # A key of its own per change: moving back to an earlier choice must be applied again.
            f"ledgerx:subscription-tax:{sub_id}:{uuid7()}",
        )
    except AppError as exc:
        log.warning("could not update the tax of subscription %s: %s", sub_id, exc.message)
        return False
    return True
